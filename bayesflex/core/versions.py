"""Versions: bayesflex's own and its dependencies', as recorded in every result's provenance."""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__", "package_versions"]

try:
    __version__ = version("bayesflex")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"


def package_versions(names) -> dict[str, str]:
    """The installed version of each of these packages (those not installed are left out)."""
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
