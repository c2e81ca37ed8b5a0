FROM alpine
RUN --mount=type=cache,target=/a --mount=type=cache,target=/b true
COPY --exclude=*.md --exclude=*.txt . /
RUN --network=none --network=host true
