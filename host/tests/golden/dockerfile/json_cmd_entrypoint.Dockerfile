FROM alpine
CMD ["a"]
CMD a b c
CMD [ ]
CMD [""]
ENTRYPOINT ["/bin/sh", "-c"]
ENTRYPOINT /bin/sh -c
ENTRYPOINT [/bin/sh]
