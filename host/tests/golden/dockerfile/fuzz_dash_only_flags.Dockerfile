FROM a
COPY ------chown="a b" --link x y
RUN -- ----
