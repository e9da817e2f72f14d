"""Priors TOML -> frozen dataclasses, checked.

A priors file has a ``[horizon]`` and ``[site]`` table and one table per
technology.  Every key of a technology table is declared here with its
domain; unknown keys, bad types, values out of range and unknown agent names
raise :class:`~bayesflex.errors.ConfigError` naming the file and the key.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bayesflex.core.checks import HALF_HOURS_PER_DAY, MAX_PERIODS, check_on_feeder, priors_dir, resolve_priors
from bayesflex.core.checks import toml_number as _number
from bayesflex.core.tables import zone
from bayesflex.core.timefmt import utc_of_local
from bayesflex.errors import ConfigError
from bayesflex.priors.baseload import MAX_MEAN_SHARE
from bayesflex.priors.spec import Param, parse_param

__all__ = ["SCHEMA", "Priors", "Technology", "load_priors", "priors_dir"]

#: key -> domain for each technology; "penetration"/"agents" say who has it
SCHEMA: dict[str, dict[str, str]] = {
    "baseload": {
        "level_log_mean": "real",
        "level_log_sd": "positive",
        "day_share": "unit",
        "appliance_kw": "positive",
        "knee_kw": "positive",
        "knee_power": "positive",
        "persistence": "unit",
        "power_factor": "unit",
    },
    "pv": {
        "capacity_kw": "positive",
        "performance_ratio": "unit",
        "cloud_logit_mean": "real",
        "cloud_logit_sd": "positive",
        "cloud_rho": "unit",
        "agent_factor_sd": "positive",
    },
    "ev": {
        "battery_kwh": "positive",
        "charger_kw": "positive",
        "kwh_per_halfhour_moving": "positive",
        "initial_soc": "unit",
        "timed_share": "unit",  # optional (see _OPTIONAL)
        "timer_start_h": "positive",
    },
    "heat_pump": {
        "heat_loss_kw_per_k": "positive",
        "heat_capacity_kwh_per_k": "positive",
        "setpoint_c": "real",
        "rating_kw": "positive",
        "temp_error_sd": "positive",
        "temp_error_rho": "unit",
    },
    "battery": {
        "capacity_kwh": "positive",
        "power_kw": "positive",
        "initial_soc": "unit",
    },
    "refrigeration": {
        "compressor_kw": "positive",
        "duty": "unit",
        "shelf_warming_c_per_min": "positive",
    },
}
_EXTRA_KEYS = {
    "baseload": {"shape_kw", "service_kw", "service_share", "electrified_service_kw"},
    "pv": {"penetration", "agents", "tilt_deg", "azimuth_deg"},
    "ev": {"penetration", "agents", "concentration", "leave_home", "leave_other", "home_share", "keep_moving",
           "charge_efficiency", "charge_elsewhere", "timer_end_h"},
    "heat_pump": {"penetration", "agents", "forecast_min_c", "forecast_max_c", "setback_k", "flow_temp_c",
                  "comfort_band_k", "call_start", "call_stop"},
    "battery": {"penetration", "agents", "soc_min", "soc_max"},
    "refrigeration": {"penetration", "agents", "setpoint_c", "cpt_max_c", "defrost_hours", "suction_flex"},
}


#: parameters a table may leave out (then not drawn: the model's behaviour without them)
_OPTIONAL = {"ev": {"timed_share", "timer_start_h"}}


@dataclass(frozen=True)
class Technology:
    """One technology table: its parameters, and who has it."""

    name: str
    params: dict[str, Param]
    penetration: float | None = None  # probability that an agent has it
    agents: tuple[str, ...] | None = None  # or exactly these agents
    extra: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Param:
        return self.params[key]


@dataclass(frozen=True)
class Priors:
    """A checked prior set."""

    name: str
    origin: str
    sha256: str
    start: pd.Timestamp
    periods: int
    latitude: float
    longitude: float
    technologies: dict[str, Technology]
    text: str = ""  # the file as used, for provenance
    timezone: str = "UTC"  # IANA name: the zone of naive local times in meter readings, EV logs and positions

    def __contains__(self, tech: str) -> bool:
        return tech in self.technologies

    def __getitem__(self, tech: str) -> Technology:
        return self.technologies[tech]


def load_priors(name_or_path: str | Path) -> Priors:
    """Load ``priors/<name>.toml`` (current folder, else built-in) or a path."""
    path = resolve_priors(name_or_path)
    raw = path.read_bytes()
    try:
        cfg = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    return parse_priors(cfg, origin=str(path), text=raw.decode("utf-8"), name=path.stem)


def _table(cfg: dict, key: str, origin: str) -> dict:
    tab = cfg.get(key, {})
    if not isinstance(tab, dict):
        raise ConfigError(f"{origin}: {key} = {tab!r} must be a table ([{key}])")
    return tab




def _numbers(tab: dict, key: str, where: str, *, lo: float, hi: float, n: int | None, what: str,
             default=None) -> tuple[float, ...]:
    """A list of finite numbers in [lo, hi] (``hi`` excluded when ``what`` says so), of length ``n`` if given."""
    v = tab.get(key, default)
    ok = isinstance(v, list) and (n is None or len(v) == n) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and lo <= x <= hi for x in v)
    if not ok:
        raise ConfigError(f"{where} {key}: must be {what}")
    return tuple(float(x) for x in v)


def _local_start(start: pd.Timestamp, cfg: dict, where: str, raw) -> pd.Timestamp:
    """The horizon's start as naive UTC (the study's time base): a time with an offset as given, a
    naive one a wall-clock time of the site's ``[site] timezone`` (UTC when absent)."""
    site = cfg.get("site")
    tz = site.get("timezone", "UTC") if isinstance(site, dict) else "UTC"
    try:
        zone(tz)
    except ConfigError:
        tz = "UTC"  # a bad zone is reported, naming [site] timezone, when [site] is read
    start = utc_of_local(start, tz, f"{where} start")
    if start != start.floor("30min"):
        raise ConfigError(f"{where} start = {raw!r}: must fall on a UTC half-hour ({start} UTC)")
    return start


def parse_priors(cfg: dict, *, origin: str, text: str = "", name: str = "priors") -> Priors:
    known = {"horizon", "site", *SCHEMA}
    for table in cfg:
        if table not in known:
            raise ConfigError(f"{origin}: unknown table [{table}] (allowed: horizon, site, {', '.join(SCHEMA)})")
    hz = _table(cfg, "horizon", origin)
    where = f"{origin} [horizon]"
    for k in hz:
        if k not in ("start", "periods"):
            raise ConfigError(f"{where}: unknown key {k!r} (allowed: start, periods)")
    raw_start = hz.get("start", "2026-01-14T00:00")
    if not isinstance(raw_start, (str, datetime.date)):  # a number would count nanoseconds from 1970
        raise ConfigError(f"{where} start = {raw_start!r}: must be a date-time such as \"2026-01-14T00:00\"")
    try:
        start = pd.Timestamp(raw_start)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where} start = {raw_start!r}: not a date-time ({e})") from e
    if start is pd.NaT:
        raise ConfigError(f"{where} start = {raw_start!r}: must be a date-time such as \"2026-01-14T00:00\"")
    start = _local_start(start, cfg, where, raw_start)
    periods = hz.get("periods", 96)
    if isinstance(periods, bool) or not isinstance(periods, int) or not 1 <= periods <= MAX_PERIODS:
        raise ConfigError(f"{where} periods = {periods!r}: must be a whole number of half-hours "
                          f"from 1 to {MAX_PERIODS} (ten years)")
    site = _table(cfg, "site", origin)
    where = f"{origin} [site]"
    for k in site:
        if k not in ("latitude", "longitude", "name", "timezone"):
            raise ConfigError(f"{where}: unknown key {k!r} (allowed: latitude, longitude, name, timezone)")
    if not isinstance(site.get("name", ""), str):
        raise ConfigError(f"{where} name = {site['name']!r}: must be a string")
    tz = site.get("timezone", "UTC")  # UTC when absent, so that older prior files keep their meaning
    zone(tz, key=f"{where} timezone")
    lat = _number(site, "latitude", where, lo=-90, hi=90, default=53.48)
    lon = _number(site, "longitude", where, lo=-180, hi=180, default=-2.24)

    if "baseload" not in cfg:
        raise ConfigError(f"{origin}: a [baseload] table is required (every agent has a baseload)")
    techs = {}
    for tech, schema in SCHEMA.items():
        if tech in cfg:
            techs[tech] = _technology(tech, cfg[tech], schema, origin)
    return Priors(
        name=name, origin=origin, sha256=hashlib.sha256(text.encode()).hexdigest(), start=start,
        periods=periods, latitude=lat, longitude=lon, technologies=techs, text=text, timezone=tz,
    )


def _technology(tech: str, tab: Any, schema: dict[str, str], origin: str) -> Technology:
    where = f"{origin} [{tech}]"
    if not isinstance(tab, dict):
        raise ConfigError(f"{where}: must be a table")
    allowed = set(schema) | _EXTRA_KEYS.get(tech, set())
    if tech == "baseload" and {"log_daily_kwh_mean", "noise_sd"} & set(tab):
        raise ConfigError(f"{where}: log_daily_kwh_mean, log_daily_kwh_sd, noise_sd and noise_rho belong to the "
                          "log-normal baseload that bayesflex replaced (its tail drew houses beyond any fuse); "
                          "copy the [baseload] table of priors/default.toml and keep your shape_kw")
    for k in tab:
        if k not in allowed:
            raise ConfigError(f"{where}: unknown key {k!r} (allowed: {', '.join(sorted(allowed))})")
    optional = _OPTIONAL.get(tech, set())
    missing = [k for k in schema if k not in tab and k not in optional]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    params = {k: parse_param(tab[k], where=where, key=k, domain=d) for k, d in schema.items() if k in tab}
    pen, agents = None, None
    if "penetration" in _EXTRA_KEYS.get(tech, set()):
        if ("penetration" in tab) == ("agents" in tab):
            raise ConfigError(f"{where}: give exactly one of penetration (a probability) or agents (a list of names)")
        if "penetration" in tab:
            pen = _number(tab, "penetration", where, lo=0, hi=1)
        else:
            agents = tab["agents"]
            if not isinstance(agents, list) or not all(isinstance(a, str) for a in agents):
                raise ConfigError(f"{where} agents: must be a list of agent names")
            agents = tuple(agents)
    extra = {}
    if tech == "baseload":
        what = f"{HALF_HOURS_PER_DAY} non-negative numbers (mean kW per half-hour from 00:00), not all zero"
        extra["shape_kw"] = _numbers(tab, "shape_kw", where, lo=0, hi=float("inf"), n=HALF_HOURS_PER_DAY, what=what)
        if sum(extra["shape_kw"]) <= 0:
            raise ConfigError(f"{where} shape_kw: must be {what}")
        extra["service_kw"] = _numbers(tab, "service_kw", where, lo=1, hi=1000, n=None,
                                       what="a list of service capacities per phase in kW, each in [1, 1000] "
                                            "(fuse rating x 230 V, e.g. [13.8, 18.4, 23.0])")
        extra["service_share"] = _numbers(tab, "service_share", where, lo=0, hi=1, n=len(extra["service_kw"]),
                                          what=f"{len(extra['service_kw'])} probabilities (one per service_kw) "
                                               "that add up to 1")
        if not extra["service_kw"] or abs(sum(extra["service_share"]) - 1) > 1e-6:
            raise ConfigError(f"{where} service_share: must be {len(extra['service_kw'])} probabilities "
                              "(one per service_kw) that add up to 1")
        extra["electrified_service_kw"] = _number(tab, "electrified_service_kw", where, lo=1, hi=1000,
                                                  default=max(extra["service_kw"]))
        top = max(extra["shape_kw"])
        if top > MAX_MEAN_SHARE * min(extra["service_kw"]):
            raise ConfigError(f"{where} shape_kw: a mean of {top:g} kW does not fit a service of "
                              f"{min(extra['service_kw']):g} kW (service_kw; at most "
                              f"{MAX_MEAN_SHARE:g} of it)")
    if tech == "ev":
        for key in ("leave_home", "leave_other", "home_share"):
            extra[key] = _numbers(tab, key, where, lo=0, hi=1, n=HALF_HOURS_PER_DAY,
                                  what=f"{HALF_HOURS_PER_DAY} probabilities in [0, 1] (one per half-hour from 00:00)")
        extra["keep_moving"] = _number(tab, "keep_moving", where, lo=0, hi=1)
        extra["concentration"] = _number(tab, "concentration", where, lo=1e-6, hi=1e9)
        extra["charge_efficiency"] = _number(tab, "charge_efficiency", where, lo=1e-6, hi=1, default=0.9)
        elsewhere = tab.get("charge_elsewhere", False)
        if not isinstance(elsewhere, bool):
            raise ConfigError(f"{where} charge_elsewhere = {elsewhere!r}: must be true or false")
        extra["charge_elsewhere"] = elsewhere
        if ("timed_share" in tab) != ("timer_start_h" in tab):
            raise ConfigError(f"{where}: give timed_share (the share of cars on a timer) and timer_start_h "
                              "(its start, local hours after midnight) together, or neither")
        extra["timer_end_h"] = _number(tab, "timer_end_h", where, lo=0, hi=24, default=8.0)
    if tech == "heat_pump":
        extra["forecast_min_c"] = _number(tab, "forecast_min_c", where, lo=-60, hi=60)
        extra["forecast_max_c"] = _number(tab, "forecast_max_c", where, lo=extra["forecast_min_c"], hi=60)
        extra["setback_k"] = _number(tab, "setback_k", where, lo=0, hi=30, default=0.0)
        extra["flow_temp_c"] = _number(tab, "flow_temp_c", where, lo=20, hi=80, default=45.0)
        extra["comfort_band_k"] = _number(tab, "comfort_band_k", where, lo=0, hi=10, default=0.0)
        for key in ("call_start", "call_stop"):
            extra[key] = _numbers(tab, key, where, lo=0, hi=1, n=HALF_HOURS_PER_DAY,
                                  what=f"{HALF_HOURS_PER_DAY} probabilities in [0, 1] (one per half-hour from 00:00)")
    if tech == "battery":
        extra["soc_min"] = _number(tab, "soc_min", where, lo=0, hi=1, default=0.1)
        extra["soc_max"] = _number(tab, "soc_max", where, lo=0, hi=1, default=0.95)
        if not extra["soc_min"] < extra["soc_max"]:
            raise ConfigError(f"{where}: soc_min {extra['soc_min']} must be below soc_max {extra['soc_max']}")
    if tech == "refrigeration":
        extra["setpoint_c"] = _number(tab, "setpoint_c", where, lo=-40, hi=20)
        extra["cpt_max_c"] = _number(tab, "cpt_max_c", where, lo=extra["setpoint_c"] + 1e-6, hi=30)
        extra["suction_flex"] = _number(tab, "suction_flex", where, lo=0, hi=1, default=0.0)
        extra["defrost_hours"] = _numbers(tab, "defrost_hours", where, lo=0, hi=24 - 1e-9, n=None, default=[],
                                          what="a list of hours of the day in [0, 24)")
    if tech == "pv":
        extra["tilt_deg"] = _number(tab, "tilt_deg", where, lo=0, hi=90, default=35.0)
        extra["azimuth_deg"] = _number(tab, "azimuth_deg", where, lo=0, hi=360, default=180.0)
    return Technology(name=tech, params=params, penetration=pen, agents=agents, extra=extra)


def check_agents(priors: Priors, agent_names: tuple[str, ...]) -> None:
    """Every agent a priors file names must be on the feeder."""
    for tech in priors.technologies.values():
        check_on_feeder(tech.agents or (), agent_names, f"{priors.origin} [{tech.name}] agents")
