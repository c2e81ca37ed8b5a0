FROM debian:bookworm
RUN <<EOF
set -e
apt-get update
echo "$HOME"
EOF
RUN <<EOF python3
print("hello")
EOF
RUN cat <<<here-string
RUN echo "<<not-a-heredoc" a<<b
