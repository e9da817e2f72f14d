"""Times as a study prints them: stored in UTC, printed in the site's local time with the zone named.

A study's ``time`` coordinate holds naive UTC half-hours (``datetime64``); the
site's IANA time zone is the result's root attribute ``timezone`` (the priors'
``[site] timezone``, or ``run_study(timezone=...)`` / ``bayesflex run
--timezone``).  Every time a person reads -- the CLI summary, ``bayesflex query``
tables, ``report.html``, map titles and axes -- goes through this module, so it
is local and carries the zone's abbreviation: "Wed 18:00 GMT", "2026-07-15 13:00
BST"; a header says "times in Europe/London (BST)".

Times a person types (``--start``, ``--time``, ``--end``, the priors' ``[horizon]
start``) are wall-clock times of the same zone (:func:`utc_of_local`); one with
an offset (``+01:00``, ``Z``) is taken as given.  A wall-clock time the clocks
skip (``01:30`` on the last Sunday of March in London) or pass twice (``01:30``
on the last Sunday of October) is an error that asks for the offset.

The Python functions of :mod:`bayesflex.analysis.query` and :mod:`bayesflex.analysis.maps` take and
return the stored UTC times; only what is printed is local.
"""

from __future__ import annotations

import datetime as _dt
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from bayesflex.core.tables import zone
from bayesflex.errors import ConfigError

__all__ = ["ZONE_ATTR", "fmt_time", "local", "local_axis", "local_frame", "local_half_hour", "site_zone",
           "utc_of_local", "zone_note"]

#: the result's root attribute naming the site's time zone
ZONE_ATTR = "timezone"
#: the zone of a result that names none (written before the attribute existed): UTC, its time base
FALLBACK_ZONE = "UTC"
_UTC = _dt.UTC


def site_zone(where) -> str:
    """The site's IANA zone name: a study tree's ``timezone`` attribute, or ``where`` itself if it is a name."""
    if isinstance(where, str):
        return where
    return str(getattr(where, "attrs", {}).get(ZONE_ATTR) or FALLBACK_ZONE)


def local(times, where) -> pd.DatetimeIndex:
    """Naive UTC times (one or many) as time-zone-aware local times of the site of ``where``
    (a study tree or a zone name)."""
    idx = pd.DatetimeIndex(np.atleast_1d(np.asarray(times, dtype="datetime64[ns]")))
    return idx.tz_localize("UTC").tz_convert(zone(site_zone(where)))


def fmt_time(t, where, fmt: str = "%a %H:%M") -> str:
    """One naive UTC time as the site's local time with the zone's abbreviation: ``"Wed 18:00 GMT"``."""
    return local(t, where)[0].strftime(f"{fmt} %Z")


def zone_note(tree) -> str:
    """``"times in Europe/London (GMT)"``: the zone and the abbreviations the study's half-hours use
    (two across a clock change: ``"(BST, GMT)"``)."""
    name = site_zone(tree)
    abbr = list(dict.fromkeys(local(tree["summary"].time.values, tree).strftime("%Z")))
    return f"times in {name}" + ("" if abbr == [name] else f" ({', '.join(abbr)})")


def utc_of_local(value, where, what: str = "time") -> pd.Timestamp:
    """A time a person typed, as a naive UTC ``Timestamp``: without an offset it is a wall-clock
    time of the site's zone; with one (``+01:00``, ``Z``) it is taken as given.  ``what`` names the
    argument in errors (a time the clocks skip or pass twice asks for the offset)."""
    name = site_zone(where)
    try:
        t = pd.Timestamp(value if isinstance(value, (_dt.datetime, np.datetime64)) else str(value))
    except (ValueError, TypeError, OverflowError) as err:
        raise ConfigError(f"{what} {str(value)!r}: not a date-time ({' '.join(str(err).split())}); give one such "
                          f"as '2026-01-14 17:00' (local time in {name})") from None
    if t is pd.NaT:
        raise ConfigError(f"{what} {str(value)!r}: not a date-time; give one such as '2026-01-14 17:00'")
    if t.tzinfo is not None:
        return t.tz_convert("UTC").tz_localize(None)
    z = zone(name)
    wall = t.to_pydatetime()
    first, second = (wall.replace(tzinfo=z, fold=f).astimezone(_UTC) for f in (0, 1))
    if first != second:
        if first.astimezone(z).replace(tzinfo=None) != wall:
            raise ConfigError(f"{what} {str(value)!r}: does not exist in {name} (the clocks go forward over it); "
                              "give another time, or one with its UTC offset")
        raise ConfigError(f"{what} {str(value)!r}: occurs twice in {name} (the clocks go back); give it with its "
                          f"UTC offset: {' or '.join(_offset_form(wall, z, f) for f in (0, 1))}")
    return pd.Timestamp(first.replace(tzinfo=None)) + pd.Timedelta(t.nanosecond, "ns")


def _offset_form(wall: _dt.datetime, z: ZoneInfo, fold: int) -> str:
    return f"'{wall.replace(tzinfo=z, fold=fold).isoformat(sep=' ', timespec='minutes')}'"


def local_half_hour(tree, value, what: str = "time") -> pd.Timestamp:
    """A half-hour of the study typed as local time (see :func:`utc_of_local`), as the stored naive
    UTC ``Timestamp``; a clear error, with the horizon in local time, if it is not one."""
    times = pd.to_datetime(tree["summary"].time.values)
    t = utc_of_local(value, tree, what)
    if t not in times:
        fmt = "%Y-%m-%d %H:%M"
        raise ConfigError(f"{what} {str(value)!r} is not a half-hour of the study ({fmt_time(times[0], tree, fmt)} "
                          f".. {fmt_time(times[-1], tree, fmt)}, every 30 min; {zone_note(tree)})")
    return t


def local_frame(df: pd.DataFrame, where, *, text: bool = True) -> pd.DataFrame:
    """``df`` with its date-time columns (naive UTC) as the site's local times: text such as
    ``"2026-07-15 13:00 BST"`` (``text``), else ISO 8601 with the UTC offset
    (``"2026-07-15T13:00:00+01:00"``, unambiguous for CSV and JSON)."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype.kind == "M":
            loc = local(out[col].to_numpy(), where)
            out[col] = loc.strftime("%Y-%m-%d %H:%M %Z") if text else [t.isoformat() for t in loc]
    return out


def local_axis(ax, tree, *, label: bool = True) -> None:
    """Tick a matplotlib axis of naive UTC times in the site's local time; with ``label``, name the zone
    below it (for the lowest of panels sharing the axis)."""
    import matplotlib.dates as mdates

    tz = zone(site_zone(tree))
    locator = mdates.AutoDateLocator(tz=tz)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=tz))
    if label:
        ax.set_xlabel(zone_note(tree))
