FROM alpine
COPY --chown="app user":app a b
RUN --mount='type=secret,id=a b' true
COPY --exclude="" a b
RUN --x=\"q\" true
