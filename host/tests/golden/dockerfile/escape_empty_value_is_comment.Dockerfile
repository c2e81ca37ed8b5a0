# escape=
# escape=`
FROM alpine
