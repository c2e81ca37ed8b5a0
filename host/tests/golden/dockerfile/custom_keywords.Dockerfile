FROM scratch
sign --key=cosign.pub --annotate ["a=b", "c=d"]
Frobnicate the widgets
PLUGIN-STEP [1, 2]
onbuild run --mount=type=cache,target=/c make
ONBUILD COPY . /app
maintainer Jane Doe <jane@example.com>
