FROM alpine
RUN <<-"END" sh -e
	set -x
	echo $PATH
	END
