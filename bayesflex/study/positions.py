"""The aggregator's planned positions: what it will dispatch, per agent and half-hour.

A position is the power of an agent's *controllable* devices (batteries, heat
pumps, EV chargers...) that the aggregator schedules, ``p_kw``, with the range
it may still move them in that half-hour, ``p_lb_kw <= p_kw <= p_ub_kw``, and
the price at which it offers that movement (``offer_price``, currency per MWh,
as in the paper's price curves).  In a study with positions, a listed agent's
power is its drawn *uncontrollable* demand (baseload and PV generation from the
priors) plus its position; the priors' flexible technologies of that agent (EV,
heat pump, battery, refrigeration) are replaced by the position, and its
flexibility bounds are the position's.  The portfolio is the listed agents:
``P_T = sum_a p_kw`` with its bounds.

Files: CSV in long form, one row per agent and half-hour, columns ``agent,
time, p_kw, p_lb_kw, p_ub_kw`` and optionally ``offer_price``; or NetCDF with
those variables over ``(time, agent)``.  Every agent listed must have every
half-hour of the study.  Times are read as UTC: text with an offset (``Z``,
``+01:00``) is converted, naive text is the site's local time (``tz``), and
NetCDF times are UTC (CF); :func:`write_positions` writes UTC with ``Z``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from bayesflex.core.checks import check_on_feeder
from bayesflex.core.tables import agents_and_times, netcdf_engine, read_csv, zone
from bayesflex.errors import ConfigError
from bayesflex.priors.registry import power_vars

__all__ = ["Positions", "apply_positions", "positions_from_schedule", "read_positions", "uncontrolled_kw",
           "write_positions"]

_COLUMNS = ("agent", "time", "p_kw", "p_lb_kw", "p_ub_kw")
_TOL_KW = 1e-6


@dataclass(frozen=True, eq=False)
class Positions:
    """Planned positions: arrays ``(time, agent)`` in kW, offer price in currency/MWh."""

    agents: tuple[str, ...]
    times: pd.DatetimeIndex
    p_kw: np.ndarray
    p_lb_kw: np.ndarray
    p_ub_kw: np.ndarray
    offer_price: np.ndarray
    origin: str = "positions"
    sha256: str = ""

    def to_dataset(self) -> xr.Dataset:
        return xr.Dataset(
            {"p_kw": (("time", "agent"), self.p_kw, {"units": "kW", "long_name": "planned position"}),
             "p_lb_kw": (("time", "agent"), self.p_lb_kw, {"units": "kW", "long_name": "lowest position"}),
             "p_ub_kw": (("time", "agent"), self.p_ub_kw, {"units": "kW", "long_name": "highest position"}),
             "offer_price": (("time", "agent"), self.offer_price,
                             {"units": "currency/MWh", "long_name": "price at which the agent's flexibility is "
                                                                     "offered"})},
            coords={"time": self.times.values, "agent": list(self.agents)},
            attrs={"origin": self.origin, "sha256": self.sha256})

    def on(self, times) -> Positions:
        """The positions at the study's half-hours ``times``; a clear error if any is missing."""
        times = pd.DatetimeIndex(times)
        missing = times.difference(self.times)
        if len(missing):
            raise ConfigError(f"{self.origin}: no positions for half-hour {missing[0]:%Y-%m-%d %H:%M} of the study "
                              f"(positions cover {self.times[0]:%Y-%m-%d %H:%M} .. {self.times[-1]:%Y-%m-%d %H:%M})")
        i = self.times.get_indexer(times)
        return Positions(self.agents, times, self.p_kw[i], self.p_lb_kw[i], self.p_ub_kw[i], self.offer_price[i],
                         self.origin, self.sha256)


def read_positions(source, *, agents: tuple[str, ...] | None = None, tz: str | None = None) -> Positions:
    """Positions from a CSV or NetCDF file, a long ``DataFrame`` or a ``Dataset``
    (module docstring), or :class:`Positions` as they are.  ``agents``: the
    feeder's agents, to check the names; ``tz``: the zone (IANA name) of naive
    times in a CSV file or DataFrame (None: UTC; a study passes the priors'
    ``[site] timezone``)."""
    zone(tz)
    if isinstance(source, Positions):
        _check_agents(source.agents, known=agents, origin=source.origin)
        return source
    origin, digest = "positions", ""
    if isinstance(source, (str, Path)):
        path = Path(source)
        origin = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such positions file (give a CSV or NetCDF file)")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if path.suffix.lower() in (".nc", ".nc4", ".netcdf"):
            try:
                with xr.open_dataset(path, engine=netcdf_engine(path)) as ds:
                    source = ds.load()
            except Exception as err:  # any reader failure means the same to the user
                raise ConfigError(f"{path}: not a readable NetCDF positions file ({err})") from err
        elif path.suffix.lower() == ".csv":
            source = read_csv(path)
        else:
            raise ConfigError(f"{path}: positions must be a .csv or .nc file")
    if isinstance(source, xr.Dataset):
        missing = [k for k in _COLUMNS[2:] if k not in source]
        if missing:
            raise ConfigError(f"{origin}: variable(s) {missing} missing (need {', '.join(_COLUMNS[2:])} over "
                              f"(time, agent); offer_price optional)")
        keep = [k for k in (*_COLUMNS[2:], "offer_price") if k in source]
        source = source[keep].to_dataframe().reset_index()
        if "time" in source and pd.api.types.is_datetime64_dtype(source["time"]):
            tz = "UTC"  # decoded NetCDF times: CF defines a time without a zone as UTC
    if not isinstance(source, pd.DataFrame):
        raise ConfigError(f"positions: give a CSV or NetCDF path, a DataFrame or a Dataset, not {type(source).__name__}")
    return _from_frame(source, origin, digest, agents, tz)


def _from_frame(df: pd.DataFrame, origin: str, digest: str, known, tz: str | None) -> Positions:
    missing = [c for c in _COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"{origin}: column(s) {missing} missing (need {', '.join(_COLUMNS)}; offer_price optional)")
    df = agents_and_times(df.reset_index(drop=True), origin, tz=tz)
    if "offer_price" not in df.columns:
        df["offer_price"] = np.nan
    for c in ("p_kw", "p_lb_kw", "p_ub_kw", "offer_price"):
        v = pd.to_numeric(df[c], errors="coerce")
        bad = v.isna() & (df[c].notna() if c == "offer_price" else True)
        if bad.any():
            r = df.index[bad][0]
            raise ConfigError(f"{origin}: row {r + 2}: {c} = {df[c].iloc[r]!r} is not a number")
        if not np.isfinite(v.dropna()).all():
            raise ConfigError(f"{origin}: column {c} has an infinite value")
        df[c] = v.astype(float)
    if (df.time.dt.minute % 30 != 0).any() or (df.time.dt.second != 0).any():
        r = df.index[(df.time.dt.minute % 30 != 0) | (df.time.dt.second != 0)][0]
        raise ConfigError(f"{origin}: row {r + 2}: time {df.time.iloc[r]} is not the start of a half-hour")
    dup = df.duplicated(["agent", "time"])
    if dup.any():
        r = df.index[dup][0]
        raise ConfigError(f"{origin}: row {r + 2}: agent {df.agent.iloc[r]!r} at {df.time.iloc[r]} is given twice")
    _check_agents(df.agent, known=known, origin=origin)
    for lo, hi in (("p_lb_kw", "p_kw"), ("p_kw", "p_ub_kw")):
        bad = df[lo] > df[hi] + _TOL_KW
        if bad.any():
            r = df.index[bad][0]
            raise ConfigError(f"{origin}: row {r + 2}: agent {df.agent.iloc[r]!r} at {df.time.iloc[r]}: "
                              f"{lo} {df[lo].iloc[r]} > {hi} {df[hi].iloc[r]} (need p_lb_kw <= p_kw <= p_ub_kw)")
    times = pd.DatetimeIndex(sorted(df.time.unique()))
    agents = tuple(dict.fromkeys(df.agent))  # in the order first given
    if len(df) != len(times) * len(agents):
        full = pd.MultiIndex.from_product([agents, times])
        gap = full.difference(pd.MultiIndex.from_frame(df[["agent", "time"]]))[0]
        raise ConfigError(f"{origin}: agent {gap[0]!r} has no position at {gap[1]} (every agent needs every "
                          f"half-hour)")
    wide = df.set_index(["time", "agent"]).sort_index()
    arr = {c: wide[c].unstack("agent").reindex(index=times, columns=list(agents)).to_numpy(float)
           for c in ("p_kw", "p_lb_kw", "p_ub_kw", "offer_price")}
    return Positions(agents, times, arr["p_kw"], arr["p_lb_kw"], arr["p_ub_kw"], arr["offer_price"], origin, digest)


def _check_agents(names, *, known, origin: str) -> None:
    if known is not None:
        check_on_feeder(names, known, f"{origin} agent")


def write_positions(pos: Positions, path: str | Path) -> Path:
    """Write positions as CSV (long form) or NetCDF, by the file's suffix."""
    path = Path(path)
    ds = pos.to_dataset()
    if path.suffix.lower() == ".nc":
        ds.to_netcdf(path, engine="h5netcdf")
    else:
        df = ds.to_dataframe().reset_index()[["agent", "time", "p_kw", "p_lb_kw", "p_ub_kw", "offer_price"]]
        df.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%MZ")  # UTC, whatever the site's zone
    return path


def positions_from_schedule(schedule, times, *, lb_kw, ub_kw, offer_price=None, origin="schedule") -> Positions:
    """Positions from a :class:`bayesflex.aggregator.portfolio.Schedule` (device, step), or a list
    of them (their devices stacked in order), with per-step bounds ``lb_kw``/``ub_kw``
    of the same (device, step) shape; devices of one agent are summed."""
    times = pd.DatetimeIndex(times)
    scheds = list(schedule) if isinstance(schedule, (list, tuple)) else [schedule]
    devices = [a for s in scheds for a in s.agents]
    p_kw = np.concatenate([s.p_kw for s in scheds])
    agents = tuple(dict.fromkeys(devices))
    col = {a: i for i, a in enumerate(agents)}
    out = {k: np.zeros((len(times), len(agents))) for k in ("p", "lb", "ub")}
    for d, a in enumerate(devices):
        for k, v in (("p", p_kw), ("lb", lb_kw), ("ub", ub_kw)):
            out[k][:, col[a]] += np.asarray(v)[d]
    price = np.full((len(times), len(agents)), np.nan) if offer_price is None else \
        np.broadcast_to(np.asarray(offer_price, float).reshape(-1, 1), (len(times), len(agents))).copy()
    return Positions(agents, times, out["p"], np.minimum(out["lb"], out["p"]), np.maximum(out["ub"], out["p"]),
                     price, origin)


def uncontrolled_kw(draws):
    """The power a position leaves as drawn (``p_base_kw + p_pv_kw``: the components that
    are not controllable, those present) of draws ``draws`` (a Dataset or a predictive group)."""
    base, *others = power_vars(controllable=False)
    out = draws[base]
    for name in others:
        if name in draws:
            out = out + draws[name]
    return out


def apply_positions(ds: xr.Dataset, pos: Positions, agent_phases: np.ndarray) -> xr.Dataset:
    """Replace the listed agents' controllable power in sampled draws ``ds`` by their positions.

    ``p_kw = p_base_kw + p_pv_kw + position`` (and the bounds likewise: the
    components that are not controllable, plus the position), the replaced
    components zeroed; ``pos`` must be on the draws' half-hours.
    Single-phase agents take the position on their phase, three-phase agents
    split it equally.
    """
    agents = [str(a) for a in ds.agent.values]
    idx = np.array([agents.index(a) for a in pos.agents], dtype=np.int64)
    split = agent_phases[idx] / agent_phases[idx].sum(axis=1, keepdims=True)  # (agent, phase)
    base, *others = power_vars(controllable=False)
    unc = ds[base].values[..., idx, :].astype(np.float64)
    for name in others:
        if name in ds:
            unc = unc + ds[name].values[..., idx, :]
    out = ds.copy()
    for name, v in (("p_kw", pos.p_kw), ("p_lb_kw", pos.p_lb_kw), ("p_ub_kw", pos.p_ub_kw)):
        arr = out[name].values.copy()
        arr[..., idx, :] = unc + v[:, :, None] * split
        out[name] = out[name].copy(data=arr)
    for name in power_vars(controllable=True):
        if name in out:
            arr = out[name].values.copy()
            arr[..., idx, :] = 0
            out[name] = out[name].copy(data=arr)
    return out
