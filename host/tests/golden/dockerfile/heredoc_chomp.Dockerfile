FROM alpine
RUN <<-EOF
	echo one
		echo two
    spaces stay
	EOF
