FROM alpine
RUN <<EOF
# not a comment
FROM scratch \
  RUN this is data

<<NESTED
EOF
