from alpine
run <<eof
echo lower
eof
copy <<Name.TXT /
Mixed case name
Name.TXT
