FROM alpine
SHELL [true]
