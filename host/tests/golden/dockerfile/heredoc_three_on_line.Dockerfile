FROM alpine
RUN <<A <<B <<C cat /dev/stdin
a
A
b
B
c
C
RUN echo after
