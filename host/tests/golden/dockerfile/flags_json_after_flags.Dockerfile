FROM alpine
RUN --network=none ["echo", "exec"]
COPY --from=build ["/a", "/b"]
