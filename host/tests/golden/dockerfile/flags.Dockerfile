FROM --platform=$BUILDPLATFORM golang AS build
RUN --mount=type=cache,target=/root/.cache/go-build --mount=type=secret,id=token,required --network=none go build ./...
COPY --chown=app:app --chmod=0755 --link bin/ /usr/local/bin/
COPY --from=build --parents --exclude=*.md "--exclude=a b" ./src/ /dst/
ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d https://example.com/a.tar.gz /
RUN --network=host -- --not-a-flag
RUN --security=insecure\
 echo --still-args
RUN -x
