FROM alpine
RUN	echo tab
COPY	 	a	 b
CMD 	 ["x"]
