#ESCAPE=`
# SYNTAX=docker/dockerfile:1
FROM alpine
