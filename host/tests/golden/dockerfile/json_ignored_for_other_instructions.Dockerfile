FROM alpine
LABEL ["a", "b"]
EXPOSE ["80"]
WORKDIR ["/w"]
USER ["root"]
ARG ["x"]
STOPSIGNAL ["9"]
