"""Aggregator contracts as data: who holds which device, at what prices, committed to what.

``load_contracts("two_area")`` reads ``contracts/two_area.toml`` (a name, or a
path) into the :class:`~bayesflex.aggregator.coordination.Aggregator` objects that
:func:`bayesflex.aggregator.coordination.coordinate` takes, with the price, imbalance
price and commitments per half-hour of the study's horizon.  The format
(``contracts/README.md`` shows it whole)::

    [contracts]                 # optional
    name = "two_area"           #   default: the file's stem
    feeder = "two_area"         #   the feeder and priors `bayesflex coordinate` uses by default
    priors = "two_area"

    [market]
    currency = "GBP"
    price_per_kwh = [...]              # day-ahead price, currency per kWh
    imbalance_price_per_kwh = 0.76     # per kWh off a commitment (default: twice the highest price)

    [weather]
    t_out_c = [...]                    # outdoor temperature, degC (for heat pumps without their own)

    [defaults.heat_pump]               # keys every heat pump takes unless it gives its own
    flow_temperature_c = 45            # (likewise [defaults.battery], [defaults.ev_charger])

    [[aggregator]]
    name = "alpha"
    commitment_kw = [...]              # optional: its market position, kW; default: its stage-1 schedule
    batteries = [ { agent = "A1-01", capacity_kwh = 10.0, power_kw = 4.9 }, ... ]
    heat_pumps = [ { agent = "A1-08", rating_kw = 4.4, c_kwh_per_k = 9.7, h_kw_per_k = 0.19 }, ... ]
    ev_chargers = [ { agent = "B2-03", power_kw = 7.4, energy_kwh = 20, home = ["18:00", "07:30"],
                      departure = "07:30" }, ... ]

A value per half-hour (prices, commitments, temperatures, COP, comfort
bounds) is a number (every half-hour), 48 numbers (a daily profile from
00:00 local time, repeated over the horizon by the time of day) or one
number per half-hour of the horizon.  Device keys (units in their names):

* battery: ``agent``, ``capacity_kwh`` (> 0), ``power_kw`` (> 0), ``soc0``
  (0.5), ``soc_min`` (0.1), ``soc_max`` (0.95): ``0 <= soc_min <= soc0 <=
  soc_max <= 1``; it ends the horizon no emptier than it began;
* heat pump: ``agent``, ``rating_kw`` (> 0, electrical), ``c_kwh_per_k``
  (> 0, thermal capacity), ``h_kw_per_k`` (>= 0, heat loss), ``cop`` (per
  half-hour) or ``flow_temperature_c`` (the COP of hplib's generic air-source
  heat pump at that flow and ``t_out_c``), ``t_out_c`` (default
  ``[weather]``), ``t_init_c`` (20), ``t_min_c`` (19) < ``t_max_c`` (22),
  ``setback_k`` (0) lowering ``t_min_c`` in the daily window ``setback =
  ["22:00", "06:00"]`` (local time);
* EV charger: ``agent``, ``power_kw`` (> 0), ``energy_kwh`` (>= 0) needed
  before ``departure`` (local ``"HH:MM"``, its first time in the horizon after
  the start, or ``"YYYY-MM-DD HH:MM"``), ``home`` (a daily window
  ``["18:00", "07:30"]``, or one 0/1 per half-hour of the horizon),
  ``efficiency`` (0.9, in (0, 1]).

Each agent holds at most one contracted device (what
:func:`~bayesflex.aggregator.coordination.coordinate` supports).  Every error names the
file, the table and key, the value and what is allowed; an agent not on the
feeder is named with the closest names it has.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import numbers
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bayesflex.aggregator.coordination import Aggregator
from bayesflex.aggregator.portfolio import Battery, EVCharger, HeatPump
from bayesflex.core.checks import did_you_mean, not_among, resolve_contracts
from bayesflex.errors import ConfigError
from bayesflex.io.feeders import load_feeder
from bayesflex.priors import load_priors
from bayesflex.priors.heat_pump import cop as hplib_cop

__all__ = ["Contracts", "load_contracts"]

HALF_HOURS_PER_DAY = 48
_TOP = {"contracts", "market", "weather", "defaults", "aggregator"}
_HEADER = {"name", "feeder", "priors"}
_MARKET = {"currency", "price_per_kwh", "imbalance_price_per_kwh"}
_AGGREGATOR = {"name", "commitment_kw", "batteries", "heat_pumps", "ev_chargers"}
#: per kind: the table key in [[aggregator]], the [defaults.*] name, required and optional keys
_KINDS = {
    "batteries": ("battery", ("agent", "capacity_kwh", "power_kw"), {"soc0": 0.5, "soc_min": 0.1, "soc_max": 0.95}),
    "heat_pumps": ("heat_pump", ("agent", "rating_kw", "c_kwh_per_k", "h_kw_per_k"),
                   {"cop": None, "flow_temperature_c": None, "t_out_c": None, "t_init_c": 20.0, "t_min_c": 19.0,
                    "t_max_c": 22.0, "setback_k": 0.0, "setback": None}),
    "ev_chargers": ("ev_charger", ("agent", "power_kw", "energy_kwh", "home", "departure"), {"efficiency": 0.9}),
}


@dataclass(frozen=True)
class Contracts:
    """Aggregators and their devices, on the half-hours ``times`` (naive local time of the site, or
    aware): ``price_per_kwh`` and ``imbalance_price_per_kwh`` (time,) in ``currency`` per kWh;
    ``commitment_kw``: the aggregators with an explicit market position (kW per half-hour; the others
    commit to their stage-1 schedule).  ``feeder``/``priors``: what the file says they belong to."""

    name: str
    origin: str
    sha256: str
    times: pd.DatetimeIndex
    aggregators: tuple[Aggregator, ...]
    price_per_kwh: np.ndarray
    imbalance_price_per_kwh: np.ndarray
    commitment_kw: dict[str, np.ndarray] = field(default_factory=dict)
    currency: str = "GBP"
    feeder: str | None = None
    priors: str | None = None

    @property
    def agents(self) -> tuple[str, ...]:
        return tuple(d.agent for a in self.aggregators for d in a.devices)


class _File:
    """Where an error is: the file, and how to say a key in it."""

    def __init__(self, origin: str):
        self.origin = origin

    def error(self, where: str, text: str) -> ConfigError:
        return ConfigError(f"{self.origin}: {where}: {text}")


def load_contracts(path_or_name, feeder=None, times=None) -> Contracts:
    """Read a contracts file (module docstring): a path, or the name of ``contracts/<name>.toml``
    (of the current folder, else the built-in one).

    ``feeder``: a :class:`~bayesflex.grid.feeder.Feeder` (or its name) whose agents the contracts must
    name.  ``times``: the study's half-hours (a DatetimeIndex: aware, or naive wall-clock time of
    the site), by whose local time of day daily profiles are read; default: the horizon of the
    priors the file names (``[contracts] priors``; reading them imports PyMC).
    """
    path, raw, cfg = _read(path_or_name)
    f = _File(str(path))
    header = _header(f, cfg)
    times = _times(f, header, times)
    market = _table(f, cfg, "market")
    _keys(f, "[market]", market, _MARKET, required=("price_per_kwh",))
    price = _profile(f, "[market] price_per_kwh", market["price_per_kwh"], times)
    imbalance = (_profile(f, "[market] imbalance_price_per_kwh", market["imbalance_price_per_kwh"], times)
                 if "imbalance_price_per_kwh" in market else np.full(len(times), 2 * np.abs(price).max()))
    if (imbalance < 0).any():
        raise f.error("[market] imbalance_price_per_kwh", f"{imbalance.min():g} is negative (allowed: >= 0)")
    weather = _table(f, cfg, "weather")
    _keys(f, "[weather]", weather, {"t_out_c"})
    t_out = _profile(f, "[weather] t_out_c", weather["t_out_c"], times) if "t_out_c" in weather else None
    defaults = _table(f, cfg, "defaults")
    kinds = {name: kind for kind, (name, *_rest) in _KINDS.items()}
    _keys(f, "[defaults]", defaults, set(kinds))
    aggs, commitments = [], {}
    tables = cfg["aggregator"]
    if not isinstance(tables, list) or not tables:
        raise f.error("aggregator", "give one [[aggregator]] table per aggregator (none given)")
    fd = _feeder(feeder)
    held: dict[str, str] = {}
    for k, agg in enumerate(tables):
        where = f"[[aggregator]] #{k + 1}"
        if not isinstance(agg, dict):
            raise f.error(where, "must be a table")
        name = agg.get("name")
        if not isinstance(name, str) or not name.strip():
            raise f.error(where, f"name = {name!r}: give each aggregator a name (text)")
        if name in {a.name for a in aggs}:
            raise f.error(where, f"name = {name!r} is given to two aggregators (names must differ)")
        where = f"[[aggregator]] {name!r}"
        _keys(f, where, agg, _AGGREGATOR, required=("name",))
        devices = []
        for kind, (default_name, required, optional) in _KINDS.items():
            base = _table(f, defaults, default_name, where=f"[defaults.{default_name}]")
            _keys(f, f"[defaults.{default_name}]", base, set(optional))
            rows = agg.get(kind, [])
            if not isinstance(rows, list):
                raise f.error(f"{where} {kind}", "must be a list of tables, one per device")
            for i, row in enumerate(rows):
                at = f"{where} {kind}[{i}]"
                if not isinstance(row, dict):
                    raise f.error(at, "must be a table such as { agent = \"...\", ... }")
                d = _device(f, at, kind, {**base, **row}, required, optional, times, t_out)
                _agent(f, at, d.agent, fd, held, name)
                devices.append(d)
        if not devices:
            raise f.error(where, "has no device (give batteries, heat_pumps or ev_chargers)")
        aggs.append(Aggregator(name, tuple(devices)))
        if "commitment_kw" in agg:
            commitments[name] = _profile(f, f"{where} commitment_kw", agg["commitment_kw"], times)
    currency = market.get("currency", "GBP")
    if not isinstance(currency, str):
        raise f.error("[market] currency", f"{currency!r}: give a currency code such as \"GBP\"")
    return Contracts(name=header.get("name", path.stem), origin=str(path), sha256=hashlib.sha256(raw).hexdigest(),
                     times=times, aggregators=tuple(aggs), price_per_kwh=price, imbalance_price_per_kwh=imbalance,
                     commitment_kw=commitments, currency=currency, feeder=header.get("feeder"),
                     priors=header.get("priors"))


def _read(path_or_name) -> tuple[Path, bytes, dict]:
    path = resolve_contracts(path_or_name)
    if not path.is_file():
        raise ConfigError(f"{path}: a contracts file must be a TOML file, not a folder")
    raw = path.read_bytes()
    try:
        cfg = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    return path, raw, cfg


def _header(f: _File, cfg: dict) -> dict:
    _keys(f, "the file", cfg, _TOP, required=("market", "aggregator"))
    header = _table(f, cfg, "contracts")
    _keys(f, "[contracts]", header, _HEADER)
    for key in ("name", "feeder", "priors"):
        if key in header and not isinstance(header[key], str):
            raise f.error(f"[contracts] {key}", f"{header[key]!r}: must be text")
    return header


# ----------------------------------------------------------------------------
# tables and keys
# ----------------------------------------------------------------------------
def _keys(f: _File, where: str, table: dict, allowed: set, required=()) -> None:
    """Unknown keys (with the closest allowed) and missing required ones, named."""
    for key in table:
        if key not in allowed:
            raise f.error(where, f"unknown key {key!r}{did_you_mean(key, allowed)} (allowed: "
                                 f"{', '.join(sorted(allowed))})")
    for key in required:
        if key not in table:
            raise f.error(where, f"missing key {key!r} (required: {', '.join(required)})")


def _table(f: _File, parent: dict, key: str, where: str | None = None) -> dict:
    value = parent.get(key, {})
    if not isinstance(value, dict):
        raise f.error(where or f"[{key}]", f"must be a table, not {type(value).__name__}")
    return value


def _feeder(feeder):
    if feeder is None or not isinstance(feeder, (str, Path)):
        return feeder

    return load_feeder(feeder)


def _agent(f: _File, where: str, agent: str, fd, held: dict, aggregator: str) -> None:
    unknown = "" if fd is None else not_among([agent], fd.agents, f"on feeder {fd.name!r}")
    if unknown:
        raise f.error(f"{where} agent", unknown)
    if agent in held:
        other = held[agent]
        again = "again" if other == aggregator else f"already under contract with aggregator {other!r}"
        raise f.error(f"{where} agent", f"{agent!r} is listed twice ({again}); each agent may hold one "
                                        "contracted device")
    held[agent] = aggregator


# ----------------------------------------------------------------------------
# the horizon and values per half-hour
# ----------------------------------------------------------------------------
def _times(f: _File, header: dict, times) -> pd.DatetimeIndex:
    """The study's half-hours: ``times``, else the horizon of the priors the file names."""
    if times is None:
        if "priors" not in header:
            raise f.error("[contracts]", "no horizon: give times= (the study's half-hours), or name the priors "
                                         "whose [horizon] it is ([contracts] priors = \"...\")")

        pri = load_priors(header["priors"])  # start: naive UTC; the profiles follow the site's clock
        return pd.date_range(pri.start, periods=pri.periods, freq="30min", tz="UTC").tz_convert(pri.timezone or "UTC")
    try:
        t = pd.DatetimeIndex(times)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"times: give the study's half-hours as date-times ({e})") from e
    if not len(t):
        raise ConfigError("times: the horizon has no half-hour")
    return t


def _local(times: pd.DatetimeIndex) -> pd.DatetimeIndex:
    """The wall-clock times (aware times in their own zone)."""
    return times.tz_localize(None) if times.tz is not None else times


def _half_hour_of_day(times: pd.DatetimeIndex) -> np.ndarray:
    t = _local(times)
    return np.asarray(t.hour * 2 + t.minute // 30)


def _profile(f: _File, where: str, value, times: pd.DatetimeIndex) -> np.ndarray:
    """A number, a daily profile of 48 values or one value per half-hour, as (time,) floats."""
    n = len(times)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        arr = np.full(n, float(value))
    elif isinstance(value, list) and all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in value):
        if len(value) == n:
            arr = np.asarray(value, float)
        elif len(value) == HALF_HOURS_PER_DAY:
            arr = np.asarray(value, float)[_half_hour_of_day(times)]
        else:
            raise f.error(where, f"{len(value)} values: give a number, 48 values (a daily profile from 00:00 "
                                 f"local time) or one per half-hour of the horizon ({n})")
    else:
        raise f.error(where, f"{_short(value)}: give a number, 48 numbers (a daily profile from 00:00 local "
                             f"time) or one per half-hour of the horizon ({n})")
    if not np.isfinite(arr).all():
        raise f.error(where, "has a value that is not finite (nan or inf)")
    return arr


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(f: _File, where: str, value, *, low: float | None = None, strict: bool = False,
            high: float | None = None) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if strict else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        rng = (f"> {low:g}" if strict else f">= {low:g}") if low is not None else "a number"
        rng += f" and <= {high:g}" if high is not None else ""
        raise f.error(where, f"{_short(value)}: allowed: a finite number {rng}")
    return float(value)


def _clock(f: _File, where: str, value) -> _dt.time:
    try:
        t = _dt.time.fromisoformat(str(value))
    except ValueError:
        raise f.error(where, f"{value!r}: give a time of day such as \"22:00\"") from None
    if t.minute % 30 or t.second or t.microsecond:
        raise f.error(where, f"{value!r}: must fall on a half-hour (:00 or :30)")
    return t


def _window(f: _File, where: str, value, times: pd.DatetimeIndex) -> np.ndarray:
    """A daily window ["HH:MM", "HH:MM"] (from, up to; may pass midnight) as a flag per half-hour."""
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise f.error(where, f"{_short(value)}: give a daily window such as [\"22:00\", \"06:00\"] (from, to)")
    a, b = (_clock(f, where, v) for v in value)
    hh = _half_hour_of_day(times)
    lo, hi = a.hour * 2 + a.minute // 30, b.hour * 2 + b.minute // 30
    return (hh >= lo) & (hh < hi) if lo <= hi else (hh >= lo) | (hh < hi)


# ----------------------------------------------------------------------------
# devices
# ----------------------------------------------------------------------------
def _device(f: _File, where: str, kind: str, row: dict, required, optional: dict, times, t_out):
    _keys(f, where, row, set(required) | set(optional), required=required)
    agent = row["agent"]
    if not isinstance(agent, str) or not agent:
        raise f.error(f"{where} agent", f"{agent!r}: give the agent's name as the feeder spells it (text)")
    if kind == "batteries":
        return _battery(f, where, {**optional, **row})
    if kind == "heat_pumps":
        return _heat_pump(f, where, {**optional, **row}, times, t_out)
    return _ev(f, where, {**optional, **row}, times)


def _battery(f: _File, where: str, r: dict) -> Battery:
    cap = _number(f, f"{where} capacity_kwh", r["capacity_kwh"], low=0, strict=True)
    power = _number(f, f"{where} power_kw", r["power_kw"], low=0, strict=True)
    soc = {k: _number(f, f"{where} {k}", r[k], low=0, high=1) for k in ("soc_min", "soc0", "soc_max")}
    if not soc["soc_min"] <= soc["soc0"] <= soc["soc_max"]:
        raise f.error(where, f"soc_min {soc['soc_min']:g}, soc0 {soc['soc0']:g}, soc_max {soc['soc_max']:g} are "
                             "out of order (need 0 <= soc_min <= soc0 <= soc_max <= 1)")
    return Battery(r["agent"], capacity_kwh=cap, power_kw=power, **soc)


def _heat_pump(f: _File, where: str, r: dict, times, t_out) -> HeatPump:
    rating = _number(f, f"{where} rating_kw", r["rating_kw"], low=0, strict=True)
    c = _number(f, f"{where} c_kwh_per_k", r["c_kwh_per_k"], low=0, strict=True)
    h = _number(f, f"{where} h_kw_per_k", r["h_kw_per_k"], low=0)
    if r["t_out_c"] is not None:
        t_out = _profile(f, f"{where} t_out_c", r["t_out_c"], times)
    elif t_out is None:
        raise f.error(where, "no outdoor temperature: give t_out_c, or [weather] t_out_c for every heat pump")
    if (r["cop"] is None) == (r["flow_temperature_c"] is None):
        raise f.error(where, "give either cop (a number or a profile) or flow_temperature_c (the COP from hplib's "
                             "generic air-source heat pump), not " + ("both" if r["cop"] is not None else "neither"))
    if r["cop"] is not None:
        cop = _profile(f, f"{where} cop", r["cop"], times)
        if (cop <= 0).any():
            raise f.error(f"{where} cop", f"{cop.min():g}: allowed: > 0")
    else:
        cop = hplib_cop(t_out, _number(f, f"{where} flow_temperature_c", r["flow_temperature_c"], low=0, strict=True))
    lo = _profile(f, f"{where} t_min_c", r["t_min_c"], times)
    hi = _profile(f, f"{where} t_max_c", r["t_max_c"], times)
    bad = np.flatnonzero(lo >= hi)
    if bad.size:
        t = bad[0]
        raise f.error(where, f"t_min_c {lo[t]:g} is not below t_max_c {hi[t]:g} at half-hour {t} "
                             f"({_local(times)[t]:%Y-%m-%d %H:%M}); need t_min_c < t_max_c")
    setback = _number(f, f"{where} setback_k", r["setback_k"], low=0)
    if setback:
        if r["setback"] is None:
            raise f.error(where, f"setback_k = {setback:g} needs setback = [\"HH:MM\", \"HH:MM\"] (its daily window)")
        lo = np.where(_window(f, f"{where} setback", r["setback"], times), lo - setback, lo)
    t_init = _number(f, f"{where} t_init_c", r["t_init_c"])
    return HeatPump(r["agent"], rating_kw=rating, cop=tuple(map(float, cop)), c_kwh_per_k=c, h_kw_per_k=h,
                    t_out_c=tuple(map(float, t_out)), t_init_c=t_init, t_min_c=tuple(map(float, lo)),
                    t_max_c=tuple(map(float, hi)))


def _ev(f: _File, where: str, r: dict, times) -> EVCharger:
    power = _number(f, f"{where} power_kw", r["power_kw"], low=0, strict=True)
    energy = _number(f, f"{where} energy_kwh", r["energy_kwh"], low=0)
    eff = _number(f, f"{where} efficiency", r["efficiency"], low=0, strict=True, high=1)
    home = r["home"]
    n = len(times)
    if isinstance(home, list) and len(home) == n and all(isinstance(x, (bool, int)) and x in (0, 1) for x in home):
        home = np.asarray(home, bool)
    elif isinstance(home, list) and len(home) == 2 and all(isinstance(x, str) for x in home):
        home = _window(f, f"{where} home", home, times)
    else:
        raise f.error(f"{where} home", f"{_short(home)}: give a daily window such as [\"18:00\", \"07:30\"] or one "
                                       f"0/1 per half-hour of the horizon ({n})")
    departure = _departure(f, f"{where} departure", r["departure"], times)
    most = power * eff * 0.5 * np.count_nonzero(home[:departure])  # kWh while home before departure
    if energy > most:
        raise f.error(where, f"energy_kwh {energy:g} cannot be charged before departure at {power:g} kW while home "
                             f"({most:.3g} kWh at most)")
    return EVCharger(r["agent"], power_kw=power, energy_kwh=energy, home=tuple(map(bool, home)), departure=departure,
                     efficiency=eff)


def _departure(f: _File, where: str, value, times: pd.DatetimeIndex) -> int:
    """The half-hour before which the energy must be in: a time of day (its first occurrence after
    the horizon's start) or a local date and time in the horizon (or just past its end)."""
    if not isinstance(value, str):
        raise f.error(where, f"{_short(value)}: give a time such as \"07:30\" or \"2026-01-15 07:30\"")
    local = _local(times)
    if len(value) <= 5:
        t = _clock(f, where, value)
        hits = np.flatnonzero((local.hour == t.hour) & (local.minute == t.minute))
        hits = hits[hits > 0]
        if not hits.size:
            raise f.error(where, f"{value!r} does not occur in the horizon after its first half-hour "
                                 f"({local[0]:%Y-%m-%d %H:%M} .. {local[-1]:%Y-%m-%d %H:%M})")
        return int(hits[0])
    try:
        t = pd.Timestamp(value)
    except ValueError:
        raise f.error(where, f"{value!r}: not a date-time; give one such as \"2026-01-15 07:30\"") from None
    end = local[-1] + pd.Timedelta(minutes=30)
    if t == end:
        return len(times)
    hits = np.flatnonzero(local == t)
    if not hits.size or hits[0] == 0:
        raise f.error(where, f"{value!r} is not a half-hour after the start of the horizon "
                             f"({local[0]:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M})")
    return int(hits[0])
