FROM alpine AS base
RUN echo base

FROM base AS build
COPY --from=0 /a /b

FROM scratch
COPY --from=build /b /
