"""The command line: ``bayesflex run | query | report | map | check-priors | coordinate | market``.

The console script is :func:`entry`; tests call :func:`main` with a list of arguments.
"""

from bayesflex.cli.main import entry, main

__all__ = ["entry", "main"]
