FROM alpine
COPY --chown= a b
RUN --=x true
RUN --mount=a=b=c,d=e true
RUN ---triple true
