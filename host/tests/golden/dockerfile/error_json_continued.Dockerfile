FROM alpine
RUN ["echo", \
     "x", \
     3.5]
