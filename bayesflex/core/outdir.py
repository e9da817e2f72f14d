"""The output folder: safe names inside it, checks before a study starts, and faults as one-line errors.

Everything a study writes goes inside one folder ``OUT`` (``--out``, or
``reports/<feeder>_<priors>``).  Names that come from received files (a
feeder's name, a fleet member's folder) are reduced to a safe set of
characters before they become part of a path (:func:`safe_name`), every path
is checked to stay inside ``OUT`` without passing through a symbolic link
(:func:`inside`), and the folder is checked for writing and free space
before any heavy work (:func:`check_writable`, :func:`check_space`).  A write
that fails later (a full disk, a folder made read-only) becomes one
:class:`~bayesflex.errors.OutputError` naming the path (:func:`as_output_error`).

:func:`estimate` gives the memory and disk a study needs, from the sizes that
drive them (draws, half-hours, agents, buses, lines, workers), so that a
request beyond the machine is refused with the figure instead of running out
of memory part-way.  Its constants were measured on the IEEE European LV
feeder and ENWL feeders (bench/README.md) and err on the large side.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bayesflex.errors import ConfigError, OutputError

__all__ = ["RESULT_FILE", "Resources", "as_output_error", "check_memory", "check_space", "check_writable",
           "default_label", "ensure_space", "estimate", "fresh", "inside", "memory_available", "quiet_failed_writes",
           "regular", "result_file", "safe_name"]

#: the result file in a study's folder
RESULT_FILE = "result.nc"


def result_file(path: str | Path) -> Path:
    """The result file of the study at ``path`` (its folder or the file itself); a ConfigError
    naming what is missing if there is none.  Without imports beyond the standard library, so
    that a command given a wrong folder says so at once."""
    p = Path(path)
    f = p / RESULT_FILE if p.is_dir() else p
    if not f.is_file():
        raise ConfigError(f"{f}: no study result here (expected {RESULT_FILE}, written by 'bayesflex run')")
    return f


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_MAX_NAME = 120
#: errno values that mean "this folder cannot take the write"
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def safe_name(name: str) -> str:
    """``name`` as one path component: letters, digits and ``._+-`` only (others become ``_``),
    no leading dot or dash, at most 120 characters; ``..``, ``/x`` or ``""`` cannot result."""
    s = re.sub(r"\.\.+", "_", _UNSAFE.sub("_", str(name)))  # "../" and "..." become "_" too
    s = re.sub(r"_+", "_", s).strip("_").lstrip(".-").strip("_")
    return s[:_MAX_NAME] or "unnamed"


def default_label(feeder) -> str:
    """A folder name for ``feeder``, unique per feeder path where the source's own name is not:
    an OpenDSS model is named by its folder and the folder above it (``network_7_Feeder_6``),
    since many model sets repeat folder names (ENWL's ``Feeder_6``); other feeders by their name."""
    origin = Path(str(feeder.origin))
    if origin.suffix.lower() in (".toml", ".json"):
        return safe_name(feeder.name)
    folder = origin.parent if origin.suffix else origin
    parts = [p for p in (folder.parent.name, folder.name) if p]
    return safe_name("_".join(parts) or feeder.name)


def inside(out: str | Path, *parts: str) -> Path:
    """``out/part/...``, refused unless it stays inside ``out``: no absolute part, no ``..``,
    no symbolic link on the way (a link could send writes or deletions anywhere)."""
    root = Path(out)
    path = root
    for part in parts:
        p = Path(part)
        if p.is_absolute() or ".." in p.parts or not p.parts:
            raise OutputError(f"{root}: {part!r} would leave the output folder (give a plain name)")
        path = path / p
    cur = root
    for piece in path.relative_to(root).parts:
        cur = cur / piece
        if cur.is_symlink():
            raise OutputError(f"{cur} is a symbolic link; bayesflex writes only into real folders inside "
                              f"{root} (remove the link or choose another --out)")
    if root.exists() and not path.resolve().is_relative_to(root.resolve()):
        raise OutputError(f"{path} resolves outside {root}")
    return path


def fresh(path: str | Path) -> Path:
    """``path``, cleared for a new file: a link or other non-regular file left there (by anyone
    who could write into the folder) is removed, never followed, so the write cannot land
    elsewhere.  A folder in the way is an error."""
    p = Path(path)
    if p.is_symlink() or (p.exists() and not p.is_dir() and not p.is_file()):
        p.unlink()
    elif p.is_dir():
        raise OutputError(f"{p} is a folder where bayesflex writes a file; remove it")
    return p


def regular(path: str | Path) -> bool:
    """``path`` is a regular file and not a link (so reading it cannot block or leave the folder)."""
    p = Path(path)
    return p.is_file() and not p.is_symlink()


def check_writable(out: str | Path) -> Path:
    """Create ``out`` if needed and prove a file can be written there; else one OutputError."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise as_output_error(out, err) from None
    return out


def check_space(out: str | Path, need_bytes: float, what: str) -> None:
    """Refuse, with both figures, a study whose files need more than the free space of ``out``'s disk."""
    free = shutil.disk_usage(out).free
    if need_bytes > free:
        raise OutputError(f"{out}: {what} needs about {_size(need_bytes)} of disk, {_size(free)} free "
                          "(choose another --out, or fewer draws or half-hours)")


#: free space kept in reserve by :func:`ensure_space` (HDF5 fails badly on a full disk: never get there)
RESERVE_BYTES = 16e6


def ensure_space(folder: str | Path, nbytes: float, what: str) -> None:
    """Refuse a write of up to ``nbytes`` that would fill the disk of ``folder``, before it starts.

    HDF5 does not recover from a full disk (it reports the failure again from every object it
    frees, and the process may crash at exit), so every large write is checked here first
    against its uncompressed size plus :data:`RESERVE_BYTES`."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # cannot tell: the write itself will say
    if free < nbytes + RESERVE_BYTES:
        raise OutputError(f"cannot write to {folder}: the disk is full or nearly ({_size(free)} free; {what} "
                          f"needs up to {_size(nbytes)}); nothing was lost: finished chunks stay in "
                          ".partial for --resume (free space, then run the same command with --resume)")


@contextmanager
def quiet_failed_writes():
    """While it lasts, HDF5 objects that fail to flush as they are freed after a failed write do
    not print a traceback each (hundreds of lines): the failure itself is raised once, as an
    :class:`OutputError`.  Everything else reaches ``sys.unraisablehook`` as before."""
    previous = sys.unraisablehook

    def hook(u):
        if as_output_error("", u.exc_value) is not u.exc_value:
            return
        previous(u)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def as_output_error(path: str | Path, err: BaseException) -> OutputError | BaseException:
    """A failed write as one line naming ``path`` (disk full, read-only, no permission);
    anything else is returned as it is."""
    if isinstance(err, OutputError):
        return err
    code = getattr(err, "errno", None)
    text = str(err)
    if code is None:  # HDF5 reports the C library's errno inside a RuntimeError's text
        m = re.search(r"errno = (\d+)", text)
        code = int(m.group(1)) if m else None
    if code not in _OUTPUT_ERRNOS:
        return err
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
           errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied", errno.EFBIG: "the file is too large for this file system"}[code]
    out = OutputError(f"cannot write to {path}: {why}; nothing was lost: finished chunks stay in the "
                      "output folder's .partial for --resume (free space or choose another --out)"
                      if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
                      else f"cannot write to {path}: {why} (choose another --out)")
    out.failed_write = True
    return out


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def memory_available() -> float:
    """Bytes of memory available to new work (``MemAvailable``; the physical memory where it is unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return float("inf")


# Measured on this project's 2-core machine: a worker process with PyMC imported holds about
# 0.45 GB before its first chunk; a chunk of the IEEE European LV feeder (55 agents, 907 buses,
# 905 lines) peaks at 61-69 kB per draw and half-hour over that (48 and 192 half-hours), taken
# here as 10 bytes per monitored bus or line phase and 80 bytes per agent phase; the main
# process keeps about 20 kB per draw (96 half-hours) of reductions; result.nc and the
# checkpoint take about 230 kB per draw each for that study (55 agents, 96 half-hours), i.e.
# about 45 bytes per agent and half-hour each.  With these, the default study (1,000 draws,
# 2 workers) is estimated at 2.3 GB and measured at 2.06 GB (bench/scale.py).
_WORKER_BASE = 0.45e9
_MAIN_BASE = 0.35e9
_PER_ROW = 10.0  # bytes per draw, half-hour and monitored bus/line phase in a worker
_PER_AGENT_PHASE = 80.0  # bytes per draw, half-hour and agent phase in a worker
_MAIN_PER_DRAW_PERIOD = 220.0  # bytes per draw and half-hour kept by the main process
_DISK_PER_AGENT_PERIOD = 90.0  # bytes per draw, agent and half-hour on disk (result + checkpoint)


@dataclass(frozen=True)
class Resources:
    """What a study needs: bytes of memory (all processes) and of disk, and how they add up."""

    memory_bytes: float
    disk_bytes: float
    worker_bytes: float
    main_bytes: float

    def describe(self, jobs: int, *, least: bool = False) -> str:
        """The memory in words; ``least``: a lower bound, whatever the feeder."""
        if least:
            return (f"at least {_size(self.memory_bytes)} of memory on any feeder ({jobs} worker(s) of at least "
                    f"{_size(self.worker_bytes)} and at least {_size(self.main_bytes)} in the main process)")
        return (f"about {_size(self.memory_bytes)} of memory ({jobs} worker(s) of {_size(self.worker_bytes)} "
                f"and {_size(self.main_bytes)} in the main process)")


def estimate(*, draws: int, periods: int, n_agent: int, n_bus: int, n_line: int, jobs: int, chunk_draws: int,
             wave: int, full_voltages: bool = False, in_memory: bool = False) -> Resources:
    """Memory and disk a study needs (an upper estimate; see the constants above).  ``in_memory``:
    the per-agent arrays are kept in memory instead of streamed to a file (no ``out``)."""
    chunk = min(chunk_draws, draws)
    rows = 3 * (n_bus + n_line)
    worker = _WORKER_BASE + chunk * periods * (_PER_ROW * rows + _PER_AGENT_PHASE * 3 * n_agent)
    result_chunk = chunk * periods * (3 * n_agent * 4 * 16 + (3 * n_bus * 4 if full_voltages else 0))
    counts = periods * 8 * (6 * n_bus + 2 * n_line)  # probability counts, summed in the main process
    main = _MAIN_BASE + draws * periods * _MAIN_PER_DRAW_PERIOD + counts + wave * jobs * result_chunk
    disk = draws * periods * (_DISK_PER_AGENT_PERIOD * n_agent + (2 * 3 * n_bus if full_voltages else 0))
    if in_memory:
        main += result_chunk * draws / chunk
        disk = 0.0
    return Resources(memory_bytes=main + jobs * worker, disk_bytes=disk, worker_bytes=worker, main_bytes=main)


def check_memory(res: Resources, jobs: int, *, least: bool = False) -> None:
    """Refuse, with the figure, a study that needs more memory than the machine has available.
    ``least``: ``res`` is a lower bound (:func:`estimate` for a feeder of no agents, buses or lines),
    so that a study no feeder could fit is refused before the feeder is read."""
    avail = memory_available()
    if res.memory_bytes > avail:
        raise ConfigError(f"this study needs {res.describe(jobs, least=least)}; {_size(avail)} is available. "
                          "Use fewer draws, half-hours (--periods) or workers (--jobs), or a bigger machine")
