FROM alpine
RUN <<EOF
echo last
EOF