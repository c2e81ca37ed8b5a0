FROM alpine
RUN echo ﻿inside
