FROM alpine
RUN \
  <<EOF sh
echo inside
EOF
RUN cat <<EOF \
  && echo done
body
EOF
