"""``python -m bayesflex.cli``: the ``bayesflex`` command."""

from bayesflex.cli.main import entry

entry()
