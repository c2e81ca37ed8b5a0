#check=skip=all
# escape=`
# CHECK=error=true
