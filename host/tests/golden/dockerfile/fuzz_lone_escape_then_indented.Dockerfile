\
	 OM a
FROM b
