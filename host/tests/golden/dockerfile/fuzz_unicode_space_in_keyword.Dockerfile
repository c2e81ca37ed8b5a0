FROM a
onbuild ["x"]
RUN x y
ıv OLD value
