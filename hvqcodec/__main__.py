"""`python -m hvqcodec`: the console script (`hvqcodec.cli.run`), for when the `hvqcodec` script is not on PATH."""
from .cli import run

run()
