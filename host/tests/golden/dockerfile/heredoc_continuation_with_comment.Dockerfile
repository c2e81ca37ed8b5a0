FROM alpine
RUN --mount=type=cache,target=/var/cache/apk \
# comment inside the continuation
    <<EOF
apk add curl
EOF
