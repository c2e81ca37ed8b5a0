# escape=`
# Escape=\
FROM alpine
