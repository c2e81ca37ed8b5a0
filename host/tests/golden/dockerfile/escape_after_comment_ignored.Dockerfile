# a leading comment
# escape=`
FROM alpine
RUN echo \
  continued
