"""The request path, split by concern: ``wire`` (parse and validate the forced
command, error answers), ``store`` (the SQL route.py runs), ``forward`` (the
backend connection). Standard library only; kept cheap to import."""
