# check=skip=JSONArgsRecommended
# escape=`
# syntax=docker/dockerfile:1
FROM alpine
