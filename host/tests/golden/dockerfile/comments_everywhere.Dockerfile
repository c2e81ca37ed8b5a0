# leading comment
FROM alpine
   # indented comment
RUN echo hi # not a comment
#RUN commented out
	# tab comment
