# escape=`
FROM alpine
COPY --chown=a` b x y
RUN --x=c:\dir true
