FROM alpine
ONBUILD COPY <<EOF /trigger.txt
from onbuild
EOF
onbuild run <<-X
	x
	X
