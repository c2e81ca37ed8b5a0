FROM alpine
SHELL ["/bin/bash", "-eo", "pipefail", "-c"]
SHELL /bin/sh -c
SHELL ["cmd" "/S"]
