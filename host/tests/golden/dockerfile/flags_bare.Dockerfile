FROM alpine
COPY --link a b
ADD --keep-git-dir https://github.com/a/b.git /src
COPY --parents --link=false a/ /
