FROM alpine
VOLUME ["/data"]
VOLUME /var/lib /var/log
VOLUME [/nope]
VOLUME []
