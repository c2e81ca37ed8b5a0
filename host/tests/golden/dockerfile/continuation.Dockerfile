FROM alpine
RUN apk add --no-cache \
# a comment line inside the continuation is dropped, even with a trailing \
      curl \

      git   \	
    && echo done
RUN echo one\\
RUN echo two \
	\
   three
  run echo "indented, lower case"
