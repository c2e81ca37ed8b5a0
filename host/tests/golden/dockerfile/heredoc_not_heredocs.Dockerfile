FROM alpine
RUN cat <<<word
RUN echo '<<EOF'
RUN a <<- EOF
RUN echo a<<b<<c
RUN echo "<<X"
