"""`python -m hvqcodec.cli`: the console script."""
from . import run

run()
