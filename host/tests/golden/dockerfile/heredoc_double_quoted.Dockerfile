FROM alpine
RUN <<"EOF"
echo "$HOME" ${X:-y}
EOF
