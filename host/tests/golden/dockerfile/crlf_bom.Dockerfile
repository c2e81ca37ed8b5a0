# escape=\
FROM alpine
RUN echo a \
    b
RUN <<EOF
echo $HOME
EOF
