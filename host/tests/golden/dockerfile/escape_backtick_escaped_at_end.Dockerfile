# escape=`
FROM alpine
RUN echo ``
RUN echo c:\ 
COPY ["c:\\a", "d:\\"]
