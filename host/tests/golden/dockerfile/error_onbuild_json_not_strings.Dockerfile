FROM alpine
ONBUILD RUN ["a", 2]
