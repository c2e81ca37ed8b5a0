FROM alpine
ADD <<EOF /opt/version.txt
1.2.3
EOF
ADD --chmod=600 <<one <<two /dst/
first
one
second
two
