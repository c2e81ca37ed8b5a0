# escape=`
FROM alpine
RUN <<EOF `
  sh
C:\path\with\backslashes `
EOF
