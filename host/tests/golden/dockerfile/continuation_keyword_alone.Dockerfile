FROM alpine
RUN \
  echo on next line
COPY \
  --chown=1:1 \
  a \
  b
