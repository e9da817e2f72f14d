"""A study's result file: ``result.nc`` written, checked and opened.

Integrity: ``result.nc`` is written under another name and renamed when
complete; beside it ``result.nc.sha256`` holds the SHA-256 of the whole file
(the format of ``sha256sum``, so ``sha256sum -c result.nc.sha256`` checks it
too).  :func:`open_study` checks it before reading anything: a file changed or
damaged after it was written is a clear error, never numbers.  A report
built from an earlier result in the same folder is removed when a new result
takes its place.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import xarray as xr

from bayesflex.core.outdir import fresh, regular
from bayesflex.errors import ConfigError
from bayesflex.study.schema import RESULT_FILE

__all__ = ["CHECKSUM_SUFFIX", "DERIVED_FILES", "checksum_path", "compressed", "file_sha256", "install",
           "open_study", "save_study", "verify_result"]

#: the result's checksum file: ``result.nc.sha256``
CHECKSUM_SUFFIX = ".sha256"
#: files built from a result; removed when a new result replaces it (they would describe the old one)
DERIVED_FILES = ("report.html",)


def save_study(tree: xr.DataTree, directory: str | Path) -> Path:
    """Write ``directory/result.nc`` (NetCDF4 groups); written to a temporary
    name and renamed, so a partial file is never taken for a finished one."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / RESULT_FILE
    tmp = fresh(d / f".{RESULT_FILE}.partial-{os.getpid()}")
    try:
        enc = {node.path: compressed(node.dataset) for node in tree.subtree}
        tree.to_netcdf(tmp, engine="h5netcdf", encoding={k: v for k, v in enc.items() if v})
        install(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def compressed(ds: xr.Dataset) -> dict:
    """Encoding that compresses a dataset's large numeric arrays (most agent-phase cells are zero)."""
    return {k: {"zlib": True, "complevel": 1, "shuffle": True} for k, v in ds.data_vars.items()
            if v.size > 100_000 and v.dtype.kind in "fiub"}


def install(part: Path, final: Path) -> None:
    """Put the finished file ``part`` in place as ``final``, with its checksum; remove what was
    built from the result it replaces.  The checksum goes first: a crash in between leaves a
    result that fails its check (and is computed again), never an unchecked one."""
    digest = file_sha256(part)
    for name in DERIVED_FILES:
        (final.parent / name).unlink(missing_ok=True)
    side = checksum_path(final)
    tmp = fresh(side.with_name(f".{side.name}.tmp"))
    tmp.write_text(f"{digest}  {final.name}\n")
    os.replace(tmp, side)
    os.replace(part, final)


def checksum_path(result: Path) -> Path:
    """Where the checksum of the result file ``result`` is kept."""
    return result.with_name(result.name + CHECKSUM_SUFFIX)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def verify_result(f: Path) -> None:
    """Raise a ConfigError if ``f`` has no checksum file beside it or does not match it."""
    side = checksum_path(f)
    if not regular(side):
        raise ConfigError(f"{f}: no checksum file {side.name} beside it, so its numbers cannot be checked; keep "
                          f"{f.name} and {side.name} together (copy both), or, for a file you trust, "
                          "open_study(path, verify=False)")
    try:
        expected = side.read_text(encoding="ascii").split()[0]
    except (OSError, UnicodeDecodeError, IndexError) as err:
        raise ConfigError(f"{side}: not a readable checksum file ({err})") from err
    if file_sha256(f) != expected:
        raise ConfigError(f"{f}: the file does not match its checksum ({side.name}): it was changed or damaged "
                          "after bayesflex wrote it, so its numbers cannot be trusted; run the study again")


def open_study(path: str | Path, *, verify: bool = True) -> xr.DataTree:
    """Open a study from its folder or its ``result.nc``; a clear error if it is not one, or
    (``verify``) if the file does not match its checksum."""
    p = Path(path)
    f = p / RESULT_FILE if p.is_dir() else p
    if not f.is_file():
        raise ConfigError(f"{f}: no study result here (expected {RESULT_FILE}, written by 'bayesflex run')")
    if verify:
        verify_result(f)
    try:
        tree = xr.open_datatree(f, engine="h5netcdf")
    except Exception as err:  # any reader failure means the same thing to the user
        raise ConfigError(f"{f}: not a readable study result ({err})") from err
    if tree.attrs.get("creation_library") != "bayesflex" or "heuristic" not in tree.children:
        raise ConfigError(f"{f}: not a bayesflex study result (no provenance or no 'heuristic' group)")
    return tree
