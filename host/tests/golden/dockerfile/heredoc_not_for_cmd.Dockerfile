FROM alpine
CMD <<EOF
echo not a heredoc
EOF
ENTRYPOINT cat <<X
X
