"""Markets as data: the products an aggregator can sell its portfolio's flexibility in.

A market set is a TOML file (``markets/<name>.toml``; the format is
``markets/README.md``, the GB example ``markets/uk.toml``).  Each product has

* a ``direction``: ``"down"`` (the portfolio draws less than its planned
  position: sells energy, a Balancing Mechanism offer, low-frequency
  response) or ``"up"`` (draws more);
* a ``kind``: ``"energy"`` (always delivered: day-ahead, intraday),
  ``"utilisation"`` (paid on the share ``called`` that is accepted: a
  Balancing Mechanism offer or bid) or ``"availability"`` (paid for holding
  the power ready, and the energy price on the share ``called``);
* when it may be sold: ``block_hours`` (0.5: per half-hour; 4 with
  ``block_start = "23:00"``: EFA blocks), an optional local ``window`` and
  ``days``; a block is offered only if all its half-hours are in the study;
* sizes: ``min_kw`` (a commitment is 0 or at least this), ``step_kw``
  (granularity; 0: any), ``max_kw``;
* prices, forecasts for the study's days: ``availability_gbp_per_mw_h``,
  ``energy_gbp_per_mwh``, and the non-delivery ``penalty_gbp_per_mwh``,
  charged on every kWh short (``tested = "always"``) or on the share called
  (``"when_called"``);
* ``stacks_with``: products that may sell the same kW in the same
  half-hour.  Otherwise products are exclusive: the kW committed to the
  products of one direction in a half-hour add up.

A forecast is one number, 48 numbers (by local half-hour of the day from
00:00, repeated over the study's days), quantiles (a table of ``p10``,
``p50``... each a number or 48 numbers; read as a quantile function,
linear between the levels and flat beyond them, evaluated at 100 equally
likely levels: one scenario each, the same level all day) or ``scenarios``
(a list of equally likely 48-value days).

The set also gives the carbon intensity per half-hour (``[carbon]``), the
households' tariff and their share of the revenue (``[retail]``), and the
``[rebound]``: energy not drawn now is drawn later (and the other way round),
at the rebound's price, intensity and tariff -- the decision pays for it, so
a turn-down is worth selling only where it beats buying the energy back.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bayesflex.core.checks import did_you_mean, resolve_markets
from bayesflex.core.checks import toml_number as _number
from bayesflex.core.tables import zone
from bayesflex.errors import ConfigError

__all__ = ["DIRECTIONS", "Forecast", "Markets", "Product", "load_markets", "parse_markets"]

DIRECTIONS = ("up", "down")
KINDS = ("energy", "utilisation", "availability")
TESTED = ("always", "when_called")
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
SLOTS = 48  # half-hours of a day
#: equally likely levels at which a quantile forecast is read
QUANTILE_LEVELS = (np.arange(100) + 0.5) / 100
_PRODUCT_KEYS = {"direction", "kind", "block_hours", "block_start", "window", "days", "called", "min_kw", "step_kw",
                 "max_kw", "availability_gbp_per_mw_h", "energy_gbp_per_mwh", "penalty_gbp_per_mwh", "tested",
                 "stacks_with", "source"}


@dataclass(frozen=True, eq=False)
class Forecast:
    """A forecast per local half-hour of the day: ``values (scenario, 48)``, equally likely scenarios."""

    values: np.ndarray
    form: str  # "constant", "profile", "quantiles" or "scenarios"

    def mean(self) -> np.ndarray:
        return self.values.mean(axis=0)


@dataclass(frozen=True, eq=False)
class Product:
    """One market product (module docstring).  Prices: availability GBP/MW/h, energy and penalty GBP/MWh."""

    name: str
    direction: str
    kind: str
    penalty: Forecast
    availability: Forecast | None = None
    energy: Forecast | None = None
    block_hours: float = 0.5
    block_start_min: int = 0
    window_min: tuple[int, int] | None = None
    days: tuple[int, ...] = tuple(range(7))
    called: float = 1.0
    min_kw: float = 0.0
    step_kw: float = 0.0
    max_kw: float = math.inf
    tested: str = "always"
    stacks_with: tuple[str, ...] = ()
    source: str = ""

    @property
    def sign(self) -> int:
        """+1 for a turn-down (energy not drawn now is drawn back later), -1 for a turn-up."""
        return 1 if self.direction == "down" else -1


@dataclass(frozen=True, eq=False)
class Markets:
    """A market set: its products, the carbon and tariff forecasts and the rebound (module docstring)."""

    name: str
    products: tuple[Product, ...]
    timezone: str | None = None
    carbon: Forecast | None = None  # gCO2/kWh
    tariff: Forecast | None = None  # GBP/kWh
    revenue_share: float = 0.5
    rebound_fraction: float = 1.0
    rebound_price_gbp_per_mwh: float = 0.0
    rebound_carbon_g_per_kwh: float = 0.0
    rebound_tariff_gbp_per_kwh: float = 0.0
    origin: str = "markets"
    sha256: str = ""
    text: str = ""

    def product(self, name: str) -> Product:
        for p in self.products:
            if p.name == name:
                return p
        names = [p.name for p in self.products]
        raise ConfigError(f"{self.origin}: no product {name!r}{did_you_mean(name, names)} (products: "
                          f"{', '.join(names)})")

    def stack_groups(self) -> list[tuple[int, ...]]:
        """Indices of products that may sell the same kW (``stacks_with``, both ways, transitively):
        one group per set, singletons for exclusive products."""
        parent = list(range(len(self.products)))

        def root(i):
            while parent[i] != i:
                i = parent[i]
            return i

        index = {p.name: i for i, p in enumerate(self.products)}
        for i, p in enumerate(self.products):
            for other in p.stacks_with:
                parent[root(index[other])] = root(i)
        groups: dict[int, list[int]] = {}
        for i in range(len(self.products)):
            groups.setdefault(root(i), []).append(i)
        return [tuple(g) for g in groups.values()]


def load_markets(name_or_path: str | Path) -> Markets:
    """Load ``markets/<name>.toml`` (current folder, else built-in) or a path."""
    path = resolve_markets(name_or_path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
        cfg = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    return parse_markets(cfg, origin=str(path), text=text, sha256=hashlib.sha256(raw).hexdigest(), name=path.stem)


def parse_markets(cfg: dict, *, origin: str = "markets", text: str = "", sha256: str = "",
                  name: str = "markets") -> Markets:
    """A :class:`Markets` from a parsed TOML table; a :class:`ConfigError` naming the file and key on bad input."""
    known = {"name", "timezone", "rebound", "carbon", "retail", "products"}
    _unknown(cfg, known, origin, "")
    products = cfg.get("products")
    if not isinstance(products, dict) or not products:
        raise ConfigError(f"{origin}: no [products.<name>] tables (a market set needs at least one product)")
    prods = tuple(_product(n, p, origin) for n, p in products.items())
    names = [p.name for p in prods]
    for p in prods:
        for other in p.stacks_with:
            if other not in names or other == p.name:
                raise ConfigError(f"{origin}: [products.{p.name}] stacks_with: {other!r} is not another product"
                                  f"{did_you_mean(other, names)} (products: {', '.join(names)})")
            if prods[names.index(other)].direction != p.direction:
                raise ConfigError(f"{origin}: [products.{p.name}] stacks_with {other!r}: the two products go in "
                                  "different directions, so they cannot sell the same kW")
    tz = cfg.get("timezone")
    if tz is not None:
        try:
            zone(tz)
        except ConfigError as err:
            raise ConfigError(f"{origin}: timezone: {err}") from None
    reb = _table(cfg, "rebound", origin)
    _unknown(reb, {"fraction", "price_gbp_per_mwh", "carbon_g_per_kwh", "tariff_gbp_per_kwh"}, origin, "[rebound] ")
    carbon = _table(cfg, "carbon", origin)
    _unknown(carbon, {"intensity_g_per_kwh"}, origin, "[carbon] ")
    retail = _table(cfg, "retail", origin)
    _unknown(retail, {"tariff_gbp_per_kwh", "revenue_share"}, origin, "[retail] ")
    return Markets(
        name=str(cfg.get("name", name)), products=prods, timezone=tz,
        carbon=_forecast(carbon["intensity_g_per_kwh"], f"{origin}: [carbon] intensity_g_per_kwh", lo=0)
        if "intensity_g_per_kwh" in carbon else None,
        tariff=_forecast(retail["tariff_gbp_per_kwh"], f"{origin}: [retail] tariff_gbp_per_kwh")
        if "tariff_gbp_per_kwh" in retail else None,
        revenue_share=_number(retail, "revenue_share", f"{origin}: [retail]", lo=0, hi=1, default=0.5),
        rebound_fraction=_number(reb, "fraction", f"{origin}: [rebound]", lo=0, hi=1, default=1.0),
        rebound_price_gbp_per_mwh=_number(reb, "price_gbp_per_mwh", f"{origin}: [rebound]", lo=-1e4, hi=1e5,
                                          default=0.0),
        rebound_carbon_g_per_kwh=_number(reb, "carbon_g_per_kwh", f"{origin}: [rebound]", lo=0, hi=5e3, default=0.0),
        rebound_tariff_gbp_per_kwh=_number(reb, "tariff_gbp_per_kwh", f"{origin}: [rebound]", lo=-10, hi=100,
                                           default=0.0),
        origin=origin, sha256=sha256, text=text)


def _product(name: str, tab, origin: str) -> Product:
    where = f"{origin}: [products.{name}]"
    if not isinstance(tab, dict):
        raise ConfigError(f"{origin}: products.{name} must be a table ([products.{name}])")
    _unknown(tab, _PRODUCT_KEYS, origin, f"[products.{name}] ")
    direction = _choice(tab, "direction", DIRECTIONS, where)
    kind = _choice(tab, "kind", KINDS, where)
    called = _number(tab, "called", where, lo=0, hi=1, default=1.0)
    if kind == "energy" and called != 1.0:
        raise ConfigError(f"{where} called = {called:g}: an energy product is always delivered (called = 1); "
                          "use kind = \"utilisation\" for a product only partly accepted")
    prices = {k: _forecast(tab[k], f"{where} {k}") if k in tab else None
              for k in ("availability_gbp_per_mw_h", "energy_gbp_per_mwh")}
    if kind == "availability" and prices["availability_gbp_per_mw_h"] is None:
        raise ConfigError(f"{where}: an availability product needs availability_gbp_per_mw_h")
    if kind in ("energy", "utilisation") and prices["energy_gbp_per_mwh"] is None:
        raise ConfigError(f"{where}: an {kind} product needs energy_gbp_per_mwh")
    if "penalty_gbp_per_mwh" not in tab:
        raise ConfigError(f"{where}: penalty_gbp_per_mwh required (the price of a MWh not delivered; 0 if none)")
    block_h = _number(tab, "block_hours", where, lo=0.5, hi=24, default=0.5)
    if abs(block_h * 2 - round(block_h * 2)) > 1e-9:
        raise ConfigError(f"{where} block_hours = {block_h:g}: must be a whole number of half-hours (0.5, 1, 4...)")
    window = tab.get("window")
    if window is not None:
        if not (isinstance(window, list) and len(window) == 2):
            raise ConfigError(f"{where} window = {window!r}: give [\"HH:MM\", \"HH:MM\"] (local start, end)")
        window = (_clock(window[0], f"{where} window"), _clock(window[1], f"{where} window"))
    days = tab.get("days", list(DAYS))
    if not isinstance(days, list) or not days or any(d not in DAYS for d in days):
        raise ConfigError(f"{where} days = {days!r}: a list of {', '.join(DAYS)}")
    stacks = tab.get("stacks_with", [])
    if not isinstance(stacks, list) or not all(isinstance(s, str) for s in stacks):
        raise ConfigError(f"{where} stacks_with = {stacks!r}: a list of product names")
    min_kw = _number(tab, "min_kw", where, lo=0, hi=1e6, default=0.0)
    step_kw = _number(tab, "step_kw", where, lo=0, hi=1e6, default=0.0)
    max_kw = _number(tab, "max_kw", where, lo=0, hi=math.inf, default=math.inf)
    if max_kw < min_kw:
        raise ConfigError(f"{where}: max_kw {max_kw:g} < min_kw {min_kw:g}")
    return Product(
        name=name, direction=direction, kind=kind, called=called,
        availability=prices["availability_gbp_per_mw_h"], energy=prices["energy_gbp_per_mwh"],
        penalty=_forecast(tab["penalty_gbp_per_mwh"], f"{where} penalty_gbp_per_mwh", lo=0),
        block_hours=block_h, block_start_min=_clock(tab.get("block_start", "00:00"), f"{where} block_start"),
        window_min=window, days=tuple(DAYS.index(d) for d in days), min_kw=min_kw, step_kw=step_kw, max_kw=max_kw,
        tested=_choice(tab, "tested", TESTED, where, default="always"), stacks_with=tuple(stacks),
        source=str(tab.get("source", "")))


def _forecast(value, where: str, *, lo: float = -1e5, hi: float = 1e6) -> Forecast:
    """A number, 48 numbers, a table of quantiles ``pNN`` or ``scenarios`` -> :class:`Forecast`."""
    if isinstance(value, dict):
        if set(value) == {"scenarios"}:
            sc = value["scenarios"]
            if not isinstance(sc, list) or not sc:
                raise ConfigError(f"{where}.scenarios: a list of days (each 48 numbers or one number)")
            rows = [_day(v, f"{where}.scenarios[{i}]", lo, hi) for i, v in enumerate(sc)]
            return Forecast(np.array(rows), "scenarios")
        levels = {}
        for k, v in value.items():
            if not (k.startswith("p") and k[1:].isdigit() and 0 < int(k[1:]) < 100):
                raise ConfigError(f"{where}: key {k!r} unknown (quantiles p1..p99, e.g. p10, p50, p90; or scenarios)")
            levels[int(k[1:]) / 100] = _day(v, f"{where}.{k}", lo, hi)
        if len(levels) < 2:
            raise ConfigError(f"{where}: give at least two quantiles (e.g. p10 and p90) or one number")
        qs = sorted(levels)
        vals = np.array([levels[q] for q in qs])  # (level, 48)
        if np.any(np.diff(vals, axis=0) < 0):
            j = int(np.argwhere(np.diff(vals, axis=0) < 0)[0][1])
            raise ConfigError(f"{where}: quantiles must not decrease with the level (half-hour {j // 2:02d}:"
                              f"{30 * (j % 2):02d} does)")
        scen = np.array([np.interp(QUANTILE_LEVELS, qs, vals[:, j]) for j in range(SLOTS)]).T
        return Forecast(scen, "quantiles")
    row = _day(value, where, lo, hi)
    return Forecast(row[None, :], "constant" if not isinstance(value, list) else "profile")


def _day(value, where: str, lo: float, hi: float) -> np.ndarray:
    if isinstance(value, bool):
        raise ConfigError(f"{where} = {value!r}: a number or a list of {SLOTS} numbers (one per half-hour from 00:00)")
    if isinstance(value, (int, float)):
        value = [value] * SLOTS
    if not isinstance(value, list) or len(value) != SLOTS or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        n = len(value) if isinstance(value, list) else type(value).__name__
        raise ConfigError(f"{where}: a number or a list of {SLOTS} numbers (one per half-hour from 00:00), got {n}")
    arr = np.asarray(value, float)
    if not np.all(np.isfinite(arr)) or arr.min() < lo or arr.max() > hi:
        raise ConfigError(f"{where}: values must be finite numbers in [{lo:g}, {hi:g}]")
    return arr


def _clock(value, where: str) -> int:
    """``"HH:MM"`` on a half-hour -> minutes after midnight."""
    try:
        hh, mm = str(value).split(":")
        minutes = int(hh) * 60 + int(mm)
    except ValueError:
        raise ConfigError(f"{where} = {value!r}: a local time \"HH:MM\"") from None
    if not 0 <= minutes <= 24 * 60 or minutes % 30:
        raise ConfigError(f"{where} = {value!r}: a half-hour between \"00:00\" and \"24:00\"")
    return minutes


def _table(cfg: dict, key: str, origin: str) -> dict:
    tab = cfg.get(key, {})
    if not isinstance(tab, dict):
        raise ConfigError(f"{origin}: {key} must be a table ([{key}])")
    return tab


def _unknown(tab: dict, known: set, origin: str, where: str) -> None:
    for k in tab:
        if k not in known:
            raise ConfigError(f"{origin}: {where}key {k!r} unknown{did_you_mean(k, sorted(known))} "
                              f"(allowed: {', '.join(sorted(known))})")


def _choice(tab: dict, key: str, allowed, where: str, default=None) -> str:
    v = tab.get(key, default)
    if v is None:
        raise ConfigError(f"{where} {key}: required (one of {', '.join(allowed)})")
    if v not in allowed:
        raise ConfigError(f"{where} {key} = {v!r}: one of {', '.join(allowed)}")
    return v


# ----------------------------------------------------------------------------
# products on a study's half-hours
# ----------------------------------------------------------------------------

def local_clock(times, tz: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For naive UTC half-hours: the local half-hour of the day (0..47), the weekday (0 = Monday)
    and the local minutes since Monday 2000-01-03 00:00 (to align blocks)."""
    loc = pd.DatetimeIndex(times).tz_localize("UTC").tz_convert(tz).tz_localize(None)
    slot = (loc.hour * 2 + loc.minute // 30).to_numpy()
    minutes = ((loc - pd.Timestamp("2000-01-03")) // pd.Timedelta(minutes=1)).to_numpy()
    return slot, loc.weekday.to_numpy(), minutes


def blocks(product: Product, times, tz: str) -> np.ndarray:
    """Per half-hour of ``times``, the index of the product's block it belongs to, -1 where the product
    cannot be sold (outside its window or days, or in a block not wholly inside the study)."""
    slot, weekday, minutes = local_clock(times, tz)
    t_min = slot * 30
    open_ = np.isin(weekday, product.days)
    if product.window_min is not None:
        a, b = product.window_min
        open_ &= ((t_min >= a) & (t_min < b)) if a < b else ((t_min >= a) | (t_min < b))
    length = round(product.block_hours * 60)
    raw = (minutes - product.block_start_min) // length
    full = length // 30
    out = np.full(len(slot), -1)
    ids, counts = np.unique(raw, return_counts=True)
    k = 0
    for r, c in zip(ids, counts):
        members = raw == r
        if c == full and open_[members].all():
            out[members] = k
            k += 1
    return out
