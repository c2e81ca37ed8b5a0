FROM alpine
COPY <<'EOF' /etc/motd
Welcome to $HOSTNAME
EOF
