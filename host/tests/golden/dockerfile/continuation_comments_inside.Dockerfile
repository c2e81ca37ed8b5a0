FROM alpine
RUN apk add \
  # first comment
  curl \
# second comment \
  jq
