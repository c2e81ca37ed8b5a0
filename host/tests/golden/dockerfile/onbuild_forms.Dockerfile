FROM alpine
ONBUILD RUN echo trigger
ONBUILD COPY --from=base /a /b
ONBUILD CMD ["x"]
onbuild env A=1 B=2
ONBUILD	WORKDIR /w
