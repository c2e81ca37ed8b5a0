FROM alpine
HEALTHCHECK --retries=3 CMD ["curl", "-f", "localhost"]
HEALTHCHECK CMD ['curl']
HEALTHCHECK CMD ["a"] || true
