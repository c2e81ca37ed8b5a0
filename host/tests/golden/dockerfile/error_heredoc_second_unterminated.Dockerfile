FROM alpine
COPY <<a <<b /
A
a
B
