"""python -m fieldmon: the same as the fieldmon command."""

from fieldmon.cli import main

main()
