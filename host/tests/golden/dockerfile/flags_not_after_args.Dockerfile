FROM alpine
COPY a --link b
RUN echo --flag
RUN -single true
RUN --
RUN -- --
