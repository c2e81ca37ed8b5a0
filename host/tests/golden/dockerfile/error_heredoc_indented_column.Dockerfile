

  	RUN <<EOF
no end
