FROM alpine
CMD	["tab"]
CMD ["a"]   
CMD   [	"b"	,	"c"	]
