FROM alpine
ENTRYPOINT [{"a": "b"}]
