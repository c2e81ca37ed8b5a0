FROM alpine
RUN 0<<IN 9<<-NINE cat - /dev/fd/9
stdin
IN
	nine
	NINE
