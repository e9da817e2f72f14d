"""Checks shared by the readers of tidy tables (meter readings, EV logs, positions).

Times: a study's time base is UTC half-hours held as naive ``datetime64``.
:func:`utc_times` is the one parser every tidy-table reader uses: ISO 8601
text with an offset (``Z``, ``+01:00``; mixed offsets across a clock change)
and tz-aware values are converted to UTC; naive times are local times of the
site's zone (``[site] timezone`` of the priors; UTC when none is given).
"""

from __future__ import annotations

import datetime
import warnings
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from bayesflex.errors import ConfigError

#: examples named when a zone is unknown
ZONE_EXAMPLES = "an IANA zone name such as 'Europe/London', 'Europe/Amsterdam' or 'UTC'"


def read_csv(path: Path) -> pd.DataFrame:
    """A CSV file as a frame; any reader failure is a :class:`ConfigError` naming the file.

    Unlike ``pd.read_csv``, a row with more fields than the header is an error
    naming the row (pandas would take the first column as an index and shift
    the others)."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(path, index_col=False)
    except pd.errors.ParserWarning:
        import csv

        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        r = next(i for i, row in enumerate(rows) if len(row) > len(rows[0]))
        raise ConfigError(f"{path}: row {r + 1} has {len(rows[r])} fields, the header {len(rows[0])}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable CSV: {e}") from e


#: the first bytes of an HDF5 file (NetCDF-4); NetCDF-3 files begin with b"CDF"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def netcdf_engine(path: Path) -> str:
    """xarray's engine for a NetCDF file given to us: h5netcdf for NetCDF-4 (HDF5), scipy for
    NetCDF-3.  Named, not left to xarray: with netCDF4 installed xarray would pick the netCDF-C
    library, which this process does not read through (its HDF5 beside h5py's; ARCHITECTURE.md)."""
    with open(path, "rb") as f:
        return "h5netcdf" if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE else "scipy"


def zone(name: str | None, key: str = "tz") -> ZoneInfo:
    """The IANA time zone ``name`` (None: UTC); unknown names are a :class:`ConfigError` naming ``key``."""
    if name is None:
        return ZoneInfo("UTC")
    if not isinstance(name, str):
        raise ConfigError(f"{key} = {name!r}: must be the name of a time zone, {ZONE_EXAMPLES}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as e:  # ValueError: not a valid key ('', '../x')
        raise ConfigError(f"{key} = {name!r}: unknown time zone (allowed: {ZONE_EXAMPLES})") from e


def agents_and_times(df: pd.DataFrame, where: str, *, tz: str | None = None) -> pd.DataFrame:
    """Agent names as text and times as naive UTC date-times (see :func:`utc_times`);
    a missing one is named by its row."""
    if df.empty:
        raise ConfigError(f"{where}: no rows (needed: one row per agent and half-hour)")
    if df["agent"].isna().any():
        raise ConfigError(f"{where}: row {int(np.flatnonzero(df['agent'].isna())[0]) + 2}: agent is missing")
    df["agent"] = df["agent"].astype(str)
    df["time"] = utc_times(df["time"], where, tz=tz, groups=df["agent"])
    return df


def utc_times(times: pd.Series, where: str, *, tz: str | None = None, groups: pd.Series | None = None) -> pd.Series:
    """Times of a tidy table as naive UTC ``datetime64[ns]`` (the study's base).

    ``times``: ISO 8601 text, ``datetime`` objects or a ``datetime64`` column.
    A time with an offset (``Z``, ``+01:00``) or a tz-aware value is converted
    to UTC; a naive time is a wall-clock time in ``tz`` (an IANA name; None:
    UTC).  One table gives all its times with an offset or none.  A naive time
    the clocks skip (spring forward) is an error; one they repeat (fall back)
    is read by order within its group (``groups``, e.g. the agent): its first
    occurrence is summer time, its second winter time, and a repeated time that
    occurs only once is an error.  Errors name the row (the file's line: row 2
    is the first after the header).
    """
    z = zone(tz)
    s = times.reset_index(drop=True)
    missing = np.flatnonzero(s.isna().to_numpy())
    if len(missing):
        raise ConfigError(f"{where}: row {missing[0] + 2}: time is missing")
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        stamps, aware = s.dt.tz_convert("UTC").dt.tz_localize(None), np.ones(len(s), bool)
    elif pd.api.types.is_datetime64_dtype(s):
        stamps, aware = s, np.zeros(len(s), bool)
    else:
        stamps, aware = _parse(s, where)
    stamps = pd.Series(stamps.to_numpy("datetime64[ns]"))
    missing = np.flatnonzero(stamps.isna().to_numpy())  # 'NaT' as text
    if len(missing):
        raise ConfigError(f"{where}: row {missing[0] + 2}: time is missing")
    _one_kind(s, aware, where)
    if not aware.any() and tz not in (None, "UTC"):
        stamps = _local_to_utc(s, stamps, z, tz, where, groups)
    return pd.Series(stamps.to_numpy("datetime64[ns]"), index=times.index, name=times.name)


def _parse(s: pd.Series, where: str) -> tuple[pd.Series, np.ndarray]:
    """Values of an object column -> (wall time if naive, UTC if not, per row; whether each had a zone)."""
    codes, uniq = pd.factorize(s)
    try:
        if any(isinstance(v, str) and v.strip().lower() in ("now", "today") for v in uniq):
            raise ValueError("now/today")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = pd.to_datetime(pd.Series(uniq, dtype=object), format="ISO8601", utc=True)
        parsed = parsed.dt.tz_localize(None).astype("datetime64[ns]")
    except (ValueError, TypeError, OverflowError) as e:
        r = _first_bad(s)
        raise ConfigError(f"{where}: row {r + 2}: time {s.iloc[r]!r} is not a date-time "
                          "(ISO 8601, e.g. 2026-01-14T17:00 or 2026-01-14T17:00+00:00)") from e
    zoned = np.array([_has_zone(v) for v in uniq], bool)
    return parsed.iloc[codes].reset_index(drop=True), zoned[codes]


def _has_zone(v) -> bool:
    if isinstance(v, datetime.datetime):  # pd.Timestamp too
        return v.tzinfo is not None
    if isinstance(v, str):
        return pd.Timestamp(v).tzinfo is not None
    return False


def _first_bad(s: pd.Series) -> int:
    """Row of the first value that is not an ISO 8601 date-time (0 if none is found)."""
    for i, v in enumerate(s):
        try:
            if isinstance(v, str) and v.strip().lower() in ("now", "today"):
                return i
            pd.to_datetime(pd.Series([v], dtype=object), format="ISO8601", utc=True).astype("datetime64[ns, UTC]")
        except (ValueError, TypeError, OverflowError):
            return i
    return 0


def _one_kind(s: pd.Series, aware: np.ndarray, where: str) -> None:
    """All times with a zone or all without: else name the first row of the other kind than row 2."""
    other = np.flatnonzero(aware != aware[0])
    if len(other):
        r = other[0]
        this, first = ("no UTC offset", "has one") if aware[0] else ("a UTC offset", "has none")
        raise ConfigError(f"{where}: row {r + 2}: time {s.iloc[r]!r} has {this}, but row 2 ({s.iloc[0]!r}) "
                          f"{first} (give every time with its offset, or none and set the site's time zone)")


def _local_to_utc(s: pd.Series, wall: pd.Series, z: ZoneInfo, tz: str, where: str,
                  groups: pd.Series | None) -> pd.Series:
    """Naive wall-clock times in zone ``z`` -> naive UTC, with the checks of :func:`utc_times`."""
    codes, uniq = pd.factorize(wall)  # a table repeats each time once per agent: localize each once
    uniq = pd.DatetimeIndex(uniq)
    n = len(uniq)
    summer = uniq.tz_localize(z, ambiguous=np.ones(n, bool), nonexistent="NaT")
    winter = uniq.tz_localize(z, ambiguous=np.zeros(n, bool), nonexistent="NaT")
    skipped = np.flatnonzero(np.asarray(summer.isna())[codes])
    if len(skipped):
        r = skipped[0]
        raise ConfigError(f"{where}: row {r + 2}: time {s.iloc[r]!r} does not exist in {tz} (the clocks go forward "
                          "over it); give the time with its UTC offset, or correct it")
    utc = summer.tz_convert("UTC").tz_localize(None).to_numpy()[codes]
    repeated = np.flatnonzero(np.asarray(summer != winter)[codes])  # rows the clocks go back over
    if not len(repeated):
        return pd.Series(utc)
    key = pd.DataFrame({"group": 0 if groups is None else groups.to_numpy()[repeated], "wall": codes[repeated]})
    nth = key.groupby(["group", "wall"], sort=False).cumcount().to_numpy()
    count = key.groupby(["group", "wall"], sort=False)["wall"].transform("size").to_numpy()
    if (count == 1).any():
        r = repeated[np.flatnonzero(count == 1)[0]]
        who = "" if groups is None else f" for {groups.iloc[r]!r}"
        raise ConfigError(f"{where}: row {r + 2}: time {s.iloc[r]!r} occurs twice in {tz} (the clocks go back) "
                          f"but only once{who}, so which one is meant is unknown; give it with its UTC offset")
    key["t"], key["nth"] = uniq.to_numpy()[codes[repeated]], nth
    back = key.groupby(["group", "nth"], sort=False)["t"].transform(lambda t: t.diff().dt.total_seconds() < 0)
    if back.any():  # a file in reverse order would swap the two readings of each repeated time
        r = repeated[np.flatnonzero(back.to_numpy())[0]]
        raise ConfigError(f"{where}: row {r + 2}: time {s.iloc[r]!r} is in the hour the clocks go back over in {tz}, "
                          "whose two occurrences are told apart by their order (summer time first), but the file "
                          "is not in time order there; sort it by time, or give the times with their UTC offset")
    second = repeated[nth > 0]  # its first occurrence is summer time, a later one winter time
    utc[second] = winter.tz_convert("UTC").tz_localize(None).to_numpy()[codes[second]]
    return pd.Series(utc)
