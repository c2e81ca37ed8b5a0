FROM a
RUN echo x \
  y
RUN echo z\
