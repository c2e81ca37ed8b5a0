FROM alpine
RUN <<EOF
line one
line two
EOF
RUN echo next
