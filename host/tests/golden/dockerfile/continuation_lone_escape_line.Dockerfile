\
FROM alpine
