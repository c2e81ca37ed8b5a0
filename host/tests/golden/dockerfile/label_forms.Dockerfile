FROM alpine
LABEL a=1 "b c"=2 d="e f"
LABEL multi.line="a" \
      other=b
LABEL x=
