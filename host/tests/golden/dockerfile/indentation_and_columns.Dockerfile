FROM alpine
    RUN four spaces
		COPY two tabs /
  	 ENV MIX=1
