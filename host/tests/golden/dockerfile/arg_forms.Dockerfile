ARG A
ARG B=1 C=2
ARG D="quoted value"
FROM alpine
ARG E=${A:-x}
