FROM alpine
CMD ["a", \
     "b"]
ENTRYPOINT [ \
  "c" \
]
