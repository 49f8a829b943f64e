"""gunicorn reads this file from the working directory: an access log without query
strings (the guide's webhook URLs carry their secret as ``?secret=``)."""

accesslog = "-"
access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(D)sus'
