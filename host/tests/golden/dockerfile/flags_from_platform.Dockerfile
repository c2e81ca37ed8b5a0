FROM --platform=linux/arm64 alpine AS arm
FROM --platform=$BUILDPLATFORM alpine
FROM --unknown alpine
