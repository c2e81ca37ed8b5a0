FROM alpine
RUN echo héllo wörld 日本
LABEL émoji="😀"
COPY ./données /data
