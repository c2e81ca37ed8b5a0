FROM alpine
ENV A=1
ENV B="two words" C='single $x' D=\$E
ENV LEGACY value with  spaces
ENV E=a\ b\ c F=
ENV G="x" \
    H=y
