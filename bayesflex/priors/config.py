"""Priors TOML -> frozen dataclasses, checked.

A priors file has a ``[horizon]`` and ``[site]`` table and one table per
technology.  Every key of a technology table is declared by its model
(:mod:`bayesflex.priors.registry`) with its domain; unknown keys, bad types,
values out of range and unknown agent names raise
:class:`~bayesflex.errors.ConfigError` naming the file and the key.
"""

from __future__ import annotations

import datetime
import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bayesflex.core.checks import MAX_PERIODS, check_on_feeder, priors_dir, resolve_priors
from bayesflex.core.checks import toml_number as _number
from bayesflex.core.tables import zone
from bayesflex.core.timefmt import utc_of_local
from bayesflex.errors import ConfigError
from bayesflex.priors.registry import technologies
from bayesflex.priors.spec import Param, parse_param
from bayesflex.priors.technology import Model

__all__ = ["Priors", "Technology", "load_priors", "priors_dir"]

@dataclass(frozen=True)
class Technology:
    """One technology table: its parameters, and who has it."""

    name: str
    params: dict[str, Param]
    penetration: float | None = None  # probability that an agent has it
    agents: tuple[str, ...] | None = None  # or exactly these agents
    extra: dict[str, Any] = field(default_factory=dict)
    model: Model | None = field(default=None, compare=False, repr=False)  # what it is (its simulation...)

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
    models = technologies()
    known = {"horizon", "site", *(m.name for m in models)}
    for table in cfg:
        if table not in known:
            raise ConfigError(f"{origin}: unknown table [{table}] (allowed: horizon, site, "
                              f"{', '.join(m.name for m in models)})")
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
    techs = {m.name: _technology(m, cfg[m.name], origin) for m in models if m.name in cfg}
    return Priors(
        name=name, origin=origin, sha256=hashlib.sha256(text.encode()).hexdigest(), start=start,
        periods=periods, latitude=lat, longitude=lon, technologies=techs, text=text, timezone=tz,
    )


def _technology(model: Model, tab: Any, origin: str) -> Technology:
    where = f"{origin} [{model.name}]"
    if not isinstance(tab, dict):
        raise ConfigError(f"{where}: must be a table")
    allowed = set(model.schema) | set(model.keys) | ({"penetration", "agents"} if model.owned else set())
    retired = [k for k in tab if k in model.retired]
    if retired:
        raise ConfigError(f"{where}: {model.retired[retired[0]]}")
    for k in tab:
        if k not in allowed:
            raise ConfigError(f"{where}: unknown key {k!r} (allowed: {', '.join(sorted(allowed))})")
    missing = [k for k in model.schema if k not in tab and k not in model.optional]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    params = {k: parse_param(tab[k], where=where, key=k, domain=d) for k, d in model.schema.items() if k in tab}
    pen, agents = None, None
    if model.owned:
        if ("penetration" in tab) == ("agents" in tab):
            raise ConfigError(f"{where}: give exactly one of penetration (a probability) or agents (a list of names)")
        if "penetration" in tab:
            pen = _number(tab, "penetration", where, lo=0, hi=1)
        else:
            agents = tab["agents"]
            if not isinstance(agents, list) or not all(isinstance(a, str) for a in agents):
                raise ConfigError(f"{where} agents: must be a list of agent names")
            agents = tuple(agents)
    return Technology(name=model.name, params=params, penetration=pen, agents=agents, extra=model.parse(tab, where),
                      model=model)


def check_agents(priors: Priors, agent_names: tuple[str, ...]) -> None:
    """Every agent a priors file names must be on the feeder."""
    for tech in priors.technologies.values():
        check_on_feeder(tech.agents or (), agent_names, f"{priors.origin} [{tech.name}] agents")
