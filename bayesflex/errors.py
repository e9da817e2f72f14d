"""One error hierarchy for bayesflex.

Every error a user can cause by what they give us (a file, a key, an array)
derives from :class:`BayesflexError`, and its message names the file, the
element or key, and what would be allowed instead.
"""

from __future__ import annotations

__all__ = ["BayesflexError", "ConfigError", "FeederError", "FeederWarning", "OutputError", "SolverError"]


class BayesflexError(Exception):
    """Root of all bayesflex errors."""


class ConfigError(BayesflexError, ValueError):
    """A configuration file or argument is malformed or out of range."""


class FeederError(BayesflexError, ValueError):
    """A feeder definition cannot be turned into a solvable network.

    ``problems`` lists every problem found, not only the first one.
    """

    def __init__(self, source: str, problems: list[str] | str):
        self.source = str(source)
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.source}: feeder is not usable:\n{lines}")


class FeederWarning(UserWarning):
    """A feeder loads, but some of what it rests on was not given by its model and was
    filled in by a default (e.g. OpenDSS's 400 A line rating); the message says what and
    how to set it."""


class SolverError(BayesflexError, RuntimeError):
    """The load flow was asked for something it cannot do."""


class OutputError(BayesflexError, OSError):
    """The output folder cannot take what the study writes (full disk, read-only,
    a path that would leave it); the message names the path and what to do.

    ``failed_write``: a write was attempted and failed (rather than refused before it
    began), so library objects may be left in a state that is unsafe to clean up."""

    failed_write = False
