FROM alpine
HEALTHCHECK NONE
HEALTHCHECK CMD curl -f http://localhost/
HEALTHCHECK --interval=30s --timeout=10s --start-period=5s --start-interval=1s --retries=3 CMD ["true"]
healthcheck cmd true
HEALTHCHECK
HEALTHCHECK CMD
