FROM alpine
COPY ["with space.txt", "/dst dir/"]
COPY --chown=1:1 ["a", "b"]
ADD ["http://example.com/x", "/x"]
ADD [a, b]
COPY ["a"]extra
