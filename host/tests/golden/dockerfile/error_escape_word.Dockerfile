# escape=ab
FROM alpine
