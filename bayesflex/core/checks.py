"""Checks of what a user gives that need no heavy import: run before any work.

``bayesflex run`` calls these first, so that a mistyped option or a missing
file is one line in a fraction of a second, not after seconds of importing
PyMC, pandapower and xarray (or minutes of drawing).  Only the standard
library is imported here; what needs more (a priors file's contents, a
feeder's network) is checked by its reader, after these.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import math
import numbers
from pathlib import Path

from bayesflex.errors import ConfigError

__all__ = ["BUILTIN_BACKENDS", "MAX_PERIODS", "check_backend", "check_horizon", "check_input_file", "check_on_feeder",
           "contracts_dir", "did_you_mean", "feeder_dir", "not_among", "priors_dir", "resolve_contracts",
           "resolve_feeder", "resolve_markets", "resolve_priors"]

HALF_HOURS_PER_DAY = 48
#: longest horizon, half-hours: ten years (its end must stay a valid date-time)
MAX_PERIODS = 10 * 366 * HALF_HOURS_PER_DAY
#: joblib's own backends, and dask (a dask.distributed cluster)
BUILTIN_BACKENDS = ("dask", "loky", "multiprocessing", "sequential", "threading")


def did_you_mean(value: str, names) -> str:
    """"; did you mean X or Y?" with the names closest to ``value`` (case ignored), or ""."""
    folded: dict[str, str] = {}
    for n in map(str, names):
        folded.setdefault(n.casefold(), n)
    v = str(value).casefold()
    close = difflib.get_close_matches(v, list(folded), n=3, cutoff=0.6)
    close += [c for c in folded if v and c.startswith(v) and c not in close][:3 - len(close)]
    words = [folded[c] for c in close]
    return f"; did you mean {' or '.join([', '.join(words[:-1]), words[-1]] if len(words) > 1 else words)}?" \
        if words else ""


#: names of a feeder (or study) shown when a name given is not one of them
KNOWN_SHOWN = 8


def not_among(given, known, among: str = "on the feeder") -> str:
    """The one message for names that are not ``known`` (a feeder's agents, buses, lines or line
    codes; a study's): ``"'LOAD99' not on the feeder; did you mean LOAD9? (allowed: LOAD1, LOAD2,
    ... 55 in all)"``, up to five of the unknown names in the order given, the closest known name
    for one (:func:`did_you_mean`) and the first known ones; "" when every name is known.
    ``among``: ``"on the feeder"``, ``"on feeder 'x'"``, ``"in the study"``."""
    known = [str(k) for k in known]
    have = set(known)
    bad = [g for g in map(str, dict.fromkeys(given)) if g not in have]  # each once, in the order given
    if not bad:
        return ""
    names = ", ".join(map(repr, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    hint = did_you_mean(bad[0], known) if len(bad) == 1 else ""
    shown = ", ".join(known[:KNOWN_SHOWN]) or "none"
    more = f", ... {len(known)} in all" if len(known) > KNOWN_SHOWN else ""
    return f"{names} not {among}{hint} (allowed: {shown}{more})"


def check_on_feeder(given, known, where: str, *, feeder: str | None = None) -> None:
    """Every name in ``given`` is one of ``known``, the feeder's names; else a :class:`ConfigError`
    ``"{where}: {not_among(...)}"``, ``where`` naming the file and the key (or column) that gave them,
    ``feeder`` the feeder's name when at hand."""
    text = not_among(given, known, "on the feeder" if feeder is None else f"on feeder {feeder!r}")
    if text:
        raise ConfigError(f"{where}: {text}")


def check_horizon(start, periods, *, label: str = "{} = ") -> tuple[str | None, int | None]:
    """``start`` (a date and time on a half-hour: the site's wall-clock time, or with its UTC
    offset; see :func:`bayesflex.study.engine.local_start`) and ``periods`` (1 .. ten years of
    half-hours), checked.  ``label`` names an argument in messages (``"--{} "`` for the command
    line).  Text is read as ISO 8601 ('2026-01-14 17:00', '2026-01-14T17:00+01:00')."""
    if periods is not None:
        if isinstance(periods, bool) or not isinstance(periods, numbers.Integral) or not 1 <= periods <= MAX_PERIODS:
            raise ConfigError(f"{label.format('periods')}{periods!r}: must be a whole number of half-hours from 1 "
                              f"to {MAX_PERIODS} (ten years)")
        periods = int(periods)
    if start is not None:
        t = _start_time(start, f"{label.format('start')}{start!r}")
        utc = t if t.tzinfo is None else t.astimezone(_dt.UTC)  # the study's half-hours are UTC ones
        if utc.minute % 30 or utc.second or utc.microsecond:
            e_g = utc.replace(minute=utc.minute // 30 * 30, second=0, microsecond=0)
            e_g = e_g if t.tzinfo is None else e_g.astimezone(t.tzinfo)
            raise ConfigError(f"{label.format('start')}{start!r}: must fall on a half-hour, a time on :00 or :30 "
                              f"(e.g. {e_g.isoformat(' ', 'minutes')})")
    return start, periods


def _start_time(start, where: str) -> _dt.datetime:
    """``start`` as a date-time (aware when it carries an offset); a clear error for anything else."""
    if isinstance(start, _dt.datetime):  # a pandas Timestamp is one too
        t = start
    else:
        text = str(start).strip()
        try:
            t = _dt.datetime.fromisoformat(text)
        except ValueError as err:
            try:
                _dt.time.fromisoformat(text)
            except ValueError:
                raise ConfigError(f"{where}: not a date-time ({err}); give one such as '2026-01-14 17:00' "
                                  "(YYYY-MM-DD HH:MM)") from None
            # pandas would take a time alone for today's: a study must not change with the day it runs
            raise ConfigError(f"{where}: a time without a date (it would mean today); give a date and a time "
                              "on :00 or :30, e.g. '2026-01-14 17:00'") from None
    return t


def check_backend(backend: str | None, scheduler: str | None, *, registered: bool = True) -> None:
    """A known joblib backend (or dask), and a scheduler only with dask; checked before any work.
    ``registered``: also accept backends registered with joblib in this process (imports joblib);
    the command line cannot register any, so it passes False."""
    if backend is not None and backend not in BUILTIN_BACKENDS:
        known = list(BUILTIN_BACKENDS)
        if registered:
            from joblib.parallel import BACKENDS

            known = sorted(set(known) | set(BACKENDS))
        if backend not in known:
            extra = ", or one registered with joblib.register_parallel_backend" if registered else ""
            raise ConfigError(f"backend {backend!r} unknown (allowed: {', '.join(known)}{extra})")
    if scheduler is not None and backend not in (None, "dask"):
        raise ConfigError(f"--scheduler {scheduler!r} needs backend 'dask' (given: {backend!r})")


def _builtin(kind: str) -> Path:
    """A folder of built-in definitions (``feeders``, ``priors``): packaged in a wheel, or the repo's."""
    package = Path(__file__).resolve().parents[1]  # bayesflex/
    packaged = package / "data" / kind
    return packaged if packaged.is_dir() else package.parent / kind


def feeder_dir() -> Path:
    """The built-in feeder definitions: packaged in a wheel, or the repo's ``feeders/``."""
    return _builtin("feeders")


def priors_dir() -> Path:
    """The built-in prior sets: packaged in a wheel, or the repo's ``priors/``."""
    return _builtin("priors")


def contracts_dir() -> Path:
    """The built-in aggregator contracts: packaged in a wheel, or the repo's ``contracts/``."""
    return _builtin("contracts")


def _named(name: str, kind: str) -> Path | None:
    """``kind/<name>.toml`` of the current folder, else the built-in one; None if neither exists."""
    return next((c for c in (Path(kind) / f"{name}.toml", _builtin(kind) / f"{name}.toml") if c.exists()), None)


def _known(kind: str) -> list[str]:
    return sorted(q.stem for q in _builtin(kind).glob("*.toml"))


def _resolve(name_or_path: str | Path, kind: str, what: str, *, folders: bool = False) -> Path:
    """The one lookup of a named input: a path (a file; with ``folders``, whatever is there, e.g. an
    OpenDSS model's folder), else ``<kind>/<name>.toml`` of the current folder, else the built-in
    one; a clear error naming the built-in ones (and the closest), or the missing path."""
    path = Path(name_or_path)
    if path.is_file() or (folders and path.exists()):
        return path
    name = str(name_or_path)
    if "/" in name or "\\" in name or path.suffix:
        raise ConfigError(f"{path}: no such {what} file{' or folder' if folders else ''}")
    found = _named(name, kind)
    if found is None:
        known = _known(kind)
        raise ConfigError(f"no {what} named {name!r}{did_you_mean(name, known)} (built-in {kind}: {', '.join(known)})")
    return found


def resolve_feeder(name_or_path: str | Path) -> Path:
    """The file or folder of a feeder (:func:`_resolve`)."""
    return _resolve(name_or_path, "feeders", "feeder", folders=True)


def resolve_markets(name_or_path: str | Path) -> Path:
    """The file of a market set (:func:`_resolve`)."""
    return _resolve(name_or_path, "markets", "market set")


def resolve_priors(name_or_path: str | Path) -> Path:
    """The file of a prior set (:func:`_resolve`)."""
    return _resolve(name_or_path, "priors", "prior set")


def resolve_contracts(name_or_path: str | Path) -> Path:
    """The file of an aggregator contracts set (:func:`_resolve`)."""
    return _resolve(name_or_path, "contracts", "contracts")


def toml_number(tab: dict, key: str, where: str, *, lo: float, hi: float, default=None) -> float:
    """``tab[key]`` (or ``default``) as a float in ``[lo, hi]``; a :class:`ConfigError` naming ``where`` and
    ``key`` if it is missing, not a number (booleans are not) or out of range."""
    v = tab.get(key, default)
    if v is None:
        raise ConfigError(f"{where} {key}: required")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ConfigError(f"{where} {key} = {v!r}: must be a number in [{lo:g}, {hi:g}]")
    return float(v)


def toml_numbers(tab: dict, key: str, where: str, *, lo: float, hi: float, n: int | None, what: str,
                 default=None) -> tuple[float, ...]:
    """``tab[key]`` (or ``default``) as a list of finite numbers in ``[lo, hi]``, of length ``n`` if given;
    a :class:`ConfigError` naming ``where`` and ``key`` that says it must be ``what`` otherwise."""
    v = tab.get(key, default)
    ok = isinstance(v, list) and (n is None or len(v) == n) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and lo <= x <= hi for x in v)
    if not ok:
        raise ConfigError(f"{where} {key}: must be {what}")
    return tuple(float(x) for x in v)


def check_input_file(path, option: str) -> None:
    """A file the study will read (``--observations``, ``--positions``...) is there."""
    if path is not None and not Path(path).exists():
        raise ConfigError(f"{option} {path}: no such file")
