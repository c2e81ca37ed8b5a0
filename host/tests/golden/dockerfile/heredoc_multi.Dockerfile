FROM alpine
COPY <<config.ini <<"script.sh" /etc/app/
[main]
name=$NAME
config.ini
#!/bin/sh
echo $HOME
script.sh
RUN <<-'EOT' sh
	if true; then
		echo "$tabbed"
	fi
	EOT
RUN 3<<EOF cat /dev/fd/3 && cat <<E"N"D
fd three
EOF
end
END
ONBUILD RUN <<X
x
X
