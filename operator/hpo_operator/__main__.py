"""`python -m hpo_operator` runs the `hpo` command line."""

from .cli import main

main()
