FROM alpine
CMD []
CMD ['single', 'quotes']
CMD ["trailing"] text
CMD [ "spaced" , "out" ]
ENTRYPOINT ["\u00e9t\u00e9", "tab\there", "\ud83d\ude00"]
VOLUME ["/data", "/logs"]
VOLUME /a /b
HEALTHCHECK --interval=30s --timeout=3s CMD ["curl", "-f", "http://localhost/"]
HEALTHCHECK CMD curl -f http://localhost/ || exit 1
HEALTHCHECK NONE
RUN ["sh", "-c", "echo <<EOF"]
FROM ["not", "json", "here"]
