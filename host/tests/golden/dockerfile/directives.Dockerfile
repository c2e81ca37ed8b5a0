# syntax = docker/dockerfile:1.7
#CHECK=skip=all
# This comment ends the directive block,
# escape=`
FROM busybox
RUN echo done \
  && true
