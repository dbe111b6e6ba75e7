from imgpipe.cli import app

app()
