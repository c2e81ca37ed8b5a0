FROM alpine
COPY --chown=a\ b x y
RUN --mount=type=bind,source=a\,b true
