FROM alpine
RUN cat << EOF
spaced opener
EOF
RUN cat <<	TAB
tabbed opener
TAB
