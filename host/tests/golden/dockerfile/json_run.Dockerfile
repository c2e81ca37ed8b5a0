FROM alpine
RUN ["echo", "exec form"]
RUN [ "echo" ,"tight"]
RUN ['echo', 'single']
RUN ["echo", "trailing",]
RUN ["echo"] && true
RUN ["unterminated"
