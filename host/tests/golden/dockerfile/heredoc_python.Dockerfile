FROM python:3.12
RUN <<EOF python3
import sys
print(sys.version)
EOF
RUN --network=none <<PY python3 -u -
print('no network')
PY
