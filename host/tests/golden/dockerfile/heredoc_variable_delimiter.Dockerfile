FROM alpine
RUN <<$X
body
$X
RUN <<${Y}
more
${Y}
