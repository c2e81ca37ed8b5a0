ARG BASE=alpine:3.20
ARG VERSION
FROM ${BASE}
ENV PATH=/usr/local/bin:$PATH LANG="C.UTF-8" EMPTY=
ENV OLD_STYLE value with spaces
ENV ESCAPED=a\ b QUOTED='single $NOT'
LABEL org.opencontainers.image.title="kiln" \
      org.opencontainers.image.version=${VERSION:-dev}
STOPSIGNAL SIGTERM
