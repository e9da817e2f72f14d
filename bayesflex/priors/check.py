"""Prior predictive check of household baseload against metered households.

:func:`check_priors` draws the baseload of a prior set (or posterior) and
sets its figures beside the same figures of measured house-days: pooled
half-hourly quantiles and maximum, the per house-day evening peak, the ADMD
curve (after-diversity maximum demand per house for groups of N houses), the
spread of daily kWh, the lag-1 autocorrelation and the share of
house-half-hours beyond 15 kW and 23 kW (the largest single-phase domestic
fuse, 100 A at 230 V).  Each data figure carries a 95 % bootstrap interval
(households resampled); each is judged against a target (within 20 % for
quantiles, maxima, spread and autocorrelation, 10 % for ADMD, the issue's
tolerances; the shares against physical limits).

Measured house-days are a ``(house-day, 48)`` array of half-hourly kW from
00:00: ENWL's profiles (one weekday each, 5-minute kW averaged to
half-hours) by default, or a user's own readings (the tidy CSV or NetCDF
that :func:`bayesflex.condition` reads), cut into whole local days.

Figures (draws: the first whole weekday of the horizon, every house of every draw):

* ``max``: for the data the largest house-half-hour; for the draws the median
  over blocks of as many house-days as the data have of each block's largest
  (the same sample size: the maximum of millions of draws would not compare);
* evening peak: each house-day's largest half-hour in 16:00-20:00;
* ``ADMD N``: mean over random groups of N houses of the group's largest
  half-hourly mean kW per house; in the draws groups are houses of one draw
  (one feeder), joined over consecutive draws when N exceeds the feeder;
* CV of daily kWh across house-days; lag-1 autocorrelation of half-hourly kW,
  pooled over house-days after centring each.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bayesflex.errors import ConfigError
from bayesflex.grid.feeder import Feeder
from bayesflex.io.feeders import load_feeder
from bayesflex.priors.baseload import half_hour_of_day
from bayesflex.priors.conditioning import Posterior, read_observations
from bayesflex.priors.config import Priors, load_priors
from bayesflex.priors.sampling import sample_priors

__all__ = ["CheckResult", "check_priors", "enwl_house_days", "figures_data", "figures_draws", "house_days"]

EVENING = slice(32, 40)  # 16:00-20:00
ADMD_N = (1, 2, 5, 10, 20, 55, 100)
QUANT = (("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
#: the largest single-phase domestic service, kW (100 A at 230 V), and a level no household
#: approaches (ENWL's largest of 9,600 house-half-hours is 5.5 kW; the 15 kW level and its
#: 1e-5 allowance are ASSUMPTIONS: one house-half-hour in about 38 days of a 55-house feeder)
FUSE_KW, HIGH_KW = 23.0, 15.0
ENWL = Path(__file__).resolve().parents[3] / "shared" / "data" / "enwl" / "profiles"


def enwl_house_days(season: str, folder: Path | None = None) -> np.ndarray:
    """(house, 48) half-hourly mean kW of ENWL's ``{Winter,Summer}_Load_Profiles.csv``
    (288 five-minute rows x 100 households, no header)."""
    path = Path(folder or ENWL) / f"{season.capitalize()}_Load_Profiles.csv"
    if not path.exists():
        raise ConfigError(f"{path}: not found (give the folder of ENWL's profiles, or your own readings "
                          "with --against)")
    return read_enwl(path)


def read_enwl(path: Path) -> np.ndarray:
    """(profile, 48) half-hourly mean kW of an ENWL profile file (288 five-minute rows x
    profiles, no header, perhaps a byte-order mark)."""
    x = pd.read_csv(path, header=None, encoding="utf-8-sig").to_numpy(float)
    if x.ndim != 2 or x.shape[0] != 288:
        raise ConfigError(f"{path}: {x.shape[0]} rows, expected 288 five-minute readings per household")
    return x.reshape(48, 6, -1).mean(axis=1).T


def house_days(wide: pd.DataFrame, tz: str = "UTC") -> tuple[np.ndarray, np.ndarray]:
    """(house-day, 48) from readings ``wide`` (UTC half-hours x agent, as
    :func:`bayesflex.priors.conditioning.read_observations` returns): every
    whole local day (48 half-hours from local midnight) of every agent, and
    each row's agent (its column in ``wide``).  Days with a clock change (46 or
    50 half-hours) are left out."""
    local = pd.DatetimeIndex(wide.index).tz_localize("UTC").tz_convert(tz)
    date = local.normalize()
    rows, owner = [], []
    for d in pd.unique(date):
        sel = np.flatnonzero(date == d)
        if len(sel) == 48 and local[sel[0]].hour == 0 and local[sel[0]].minute == 0:
            rows.append(wide.to_numpy(float)[sel].T)
            owner.append(np.arange(wide.shape[1]))
    if not rows:
        raise ConfigError("readings: no whole local day (48 half-hours from midnight) to compare with")
    return np.concatenate(rows, axis=0), np.concatenate(owner)


def admd_data(x: np.ndarray, n: int, groups: int, rng) -> float:
    h = x.shape[0]
    if n == 1:
        return float(x.max(axis=1).mean())
    if n >= h:
        return float(x.mean(axis=0).max())
    idx = np.argsort(rng.random((groups, h)), axis=1)[:, :n]
    return float(x[idx].mean(axis=1).max(axis=1).mean())


def admd_draws(p: np.ndarray, n: int, rng) -> float:
    d, h, _ = p.shape
    if n == 1:
        return float(p.max(axis=2).mean())
    if n > h:  # join houses of consecutive draws
        k = -(-n // h)
        m = d // k
        if m == 0:
            return float("nan")
        return admd_draws(p[:m * k].reshape(m, k * h, p.shape[2]), n, rng)
    idx = np.argsort(rng.random((d, h)), axis=1)[:, :n]
    g = np.take_along_axis(p, idx[:, :, None], axis=1)
    return float(g.mean(axis=1).max(axis=1).mean())


def _lag1(x: np.ndarray) -> float:
    c = x - x.mean(axis=-1, keepdims=True)
    return float((c[..., 1:] * c[..., :-1]).sum() / (c**2).sum())


def _cv(daily: np.ndarray) -> float:
    return float(daily.std(ddof=1) / daily.mean())


def _admd_sizes(h: int) -> tuple[int, ...]:
    return tuple(n for n in ADMD_N if n <= h)


def figures_data(x: np.ndarray, rng, groups: int = 200) -> dict[str, float]:
    """Every figure of measured house-days ``x (house-day, 48)``."""
    f = {f"half-hour {k}": float(np.percentile(x, q)) for k, q in QUANT}
    f["half-hour max"] = float(x.max())
    ev = x[:, EVENING].max(axis=1)
    f["evening peak p90"] = float(np.percentile(ev, 90))
    f["evening peak p99"] = float(np.percentile(ev, 99))
    for n in _admd_sizes(x.shape[0]):
        f[f"ADMD N={n}"] = admd_data(x, n, groups, rng)
    f["CV daily kWh"] = _cv(x.sum(axis=1) / 2)
    f["lag-1 autocorr"] = _lag1(x)
    f[f"share > {HIGH_KW:g} kW"] = float((x > HIGH_KW).mean())
    f[f"share > {FUSE_KW:g} kW"] = float((x > FUSE_KW).mean())
    return f


def figures_draws(p: np.ndarray, rng, block: int = 100, sizes: tuple[int, ...] = ADMD_N) -> dict[str, float]:
    """The same figures of draws ``p (draw, house, 48)``; ``block`` house-days per maximum."""
    flat = p.reshape(-1, 48)
    f = {f"half-hour {k}": float(np.percentile(flat, q)) for k, q in QUANT}
    m = max(flat.shape[0] // block, 1)
    f["half-hour max"] = float(np.median(flat[:m * block].reshape(m, -1).max(axis=1)))
    ev = flat[:, EVENING].max(axis=1)
    f["evening peak p90"] = float(np.percentile(ev, 90))
    f["evening peak p99"] = float(np.percentile(ev, 99))
    for n in sizes:
        f[f"ADMD N={n}"] = admd_draws(p, n, rng)
    f["CV daily kWh"] = _cv(flat.sum(axis=1) / 2)
    f["lag-1 autocorr"] = _lag1(flat)
    f[f"share > {HIGH_KW:g} kW"] = float((flat > HIGH_KW).mean())
    f[f"share > {FUSE_KW:g} kW"] = float((flat > FUSE_KW).mean())
    return f


def bootstrap(x: np.ndarray, reps: int, rng, groups: int = 100,
              owner: np.ndarray | None = None) -> dict[str, tuple[float, float]]:
    """95 % percentile intervals of every data figure, households resampled (all the
    days of each drawn household, by ``owner``; every house-day its own household
    when not given)."""
    owner = np.arange(x.shape[0]) if owner is None else np.asarray(owner)
    ids = np.unique(owner)
    rows = [np.flatnonzero(owner == i) for i in ids]

    def resample():
        return x[np.concatenate([rows[i] for i in rng.integers(0, len(ids), len(ids))])]

    runs = [figures_data(resample(), rng, groups) for _ in range(reps)]
    return {k: tuple(np.percentile([r[k] for r in runs], [2.5, 97.5])) for k in runs[0]}


def target(name: str) -> tuple[str, float | None]:
    """(kind, tolerance) of a figure: relative ("rel", 0.2 / 0.1) or a limit on a share."""
    if name == f"share > {HIGH_KW:g} kW":
        return "at most", 1e-5
    if name == f"share > {FUSE_KW:g} kW":
        return "at most", 0.0
    return "within", 0.10 if name.startswith("ADMD") else 0.20


def verdict(name: str, data: float, model: float) -> bool:
    kind, tol = target(name)
    if kind == "at most":
        return model <= tol
    return abs(model / data - 1) <= tol if data > 0 else model == 0


@dataclass(frozen=True)
class CheckResult:
    """Figures of the data (with 95 % bootstrap intervals) and of the draws, and the verdicts."""

    table: pd.DataFrame  # index: figure; columns data, data_lo, data_hi, model, ratio, target, ok
    data_label: str
    model_label: str
    house_days: int
    draws: np.ndarray  # (draw, house, 48) the model's day, kW
    observed: np.ndarray  # (house-day, 48), kW

    @property
    def ok(self) -> bool:
        return bool(self.table["ok"].all())

    @property
    def misses(self) -> list[str]:
        return [k for k, v in self.table["ok"].items() if not v]

    def markdown(self) -> str:
        rows = [f"| figure | {self.data_label} (95 % bootstrap) | {self.model_label} | ratio | target | |",
                "|---|---:|---:|---:|---:|---|"]
        for k, r in self.table.iterrows():
            ok = "PASS" if r["ok"] else "MISS"
            if k.startswith("share"):
                rows.append(f"| {k} | {r['data']:.2g} ({r['data_lo']:.2g}-{r['data_hi']:.2g}) | {r['model']:.2g} | "
                            f"| {r['target']} | {ok} |")
            else:
                unit = "" if k.startswith(("CV", "lag")) else ", kW"
                rows.append(f"| {k}{unit} | {r['data']:.3g} ({r['data_lo']:.3g}-{r['data_hi']:.3g}) | "
                            f"{r['model']:.3g} | {r['ratio']:.2f} | {r['target']} | {ok} |")
        n = int(self.table["ok"].sum())
        rows.append(f"\n{n} of {len(self.table)} PASS")
        return "\n".join(rows)


def first_weekday(times: pd.DatetimeIndex) -> int | None:
    """Index of the first half-hour at 00:00 of a weekday with 48 half-hours after it, or None."""
    hh = half_hour_of_day(times.values)
    starts = [i for i in range(len(times) - 47) if hh[i] == 0 and times[i].dayofweek < 5]
    return starts[0] if starts else None


def season_of(t: pd.Timestamp) -> str:
    """ENWL's season for a date: summer from April to September, else winter."""
    return "summer" if 4 <= t.month <= 9 else "winter"


def weekday_kw(ds) -> tuple[pd.Timestamp, np.ndarray] | None:
    """The first whole weekday of draws ``ds`` (``p_base_kw``, chain 0; ENWL's profiles
    are weekdays): its first half-hour and the baseload (draw, agent, 48) kW; None if the
    horizon holds no whole weekday."""
    times = pd.DatetimeIndex(ds.time.values)
    i = first_weekday(times)
    if i is None:
        return None
    p = ds["p_base_kw"].isel(chain=0, time=slice(i, i + 48)).sum("phase").transpose("draw", "agent", "time")
    return times[i], np.asarray(p.values, float)


def model_day(feeder, priors, draws: int, seed: int) -> np.ndarray:
    """(draw, house, 48) baseload kW of the first whole weekday of the horizon, every
    agent of ``feeder``."""
    day = weekday_kw(sample_priors(feeder, priors, draws=draws, seed=seed))
    if day is None:
        raise ConfigError(f"{getattr(getattr(priors, 'priors', priors), 'origin', 'priors')}: the horizon holds "
                          "no whole weekday (48 half-hours from 00:00) to compare with")
    return day[1]


def compare(observed: np.ndarray, draws: np.ndarray, *, reps: int = 300, seed: int = 0,
            data_label: str = "data", model_label: str = "model", owner: np.ndarray | None = None) -> CheckResult:
    """The figures of ``observed (house-day, 48)`` (with bootstrap intervals,
    households resampled) beside those of ``draws (draw, house, 48)``; ``owner``
    gives each house-day's household (default: every house-day is one); ADMD is
    for groups of at most as many households as were measured."""
    houses = len(np.unique(owner)) if owner is not None else observed.shape[0]
    sizes = _admd_sizes(min(observed.shape[0], houses))
    fd, ci, state = _data_figures(observed, owner, reps, seed, sizes)
    rng = np.random.default_rng(seed)
    rng.bit_generator.state = state  # where the data's figures and bootstrap left the generator
    fm = figures_draws(draws, rng, block=observed.shape[0], sizes=sizes)
    rows = {}
    for k, d in fd.items():
        kind, tol = target(k)
        m = fm[k]
        rows[k] = {"data": d, "data_lo": ci[k][0], "data_hi": ci[k][1], "model": m,
                   "ratio": m / d if d > 0 else np.nan,
                   "target": f"± {tol:.0%}" if kind == "within" else "none" if tol == 0 else f"≤ {tol:g}",
                   "ok": verdict(k, d, m)}
    return CheckResult(pd.DataFrame.from_dict(rows, orient="index"), data_label, model_label,
                       observed.shape[0], draws, observed)


#: the data side of :func:`compare` (figures, bootstrap intervals and the generator's state after
#: them) by the data's and owners' bytes, ``reps``, ``seed`` and ADMD sizes: every report compares
#: its study with the same ENWL season (200 bootstrap resamples, ~1.1 s), a fleet's 29 of them too
_DATA_FIGURES: dict[tuple, tuple[dict, dict, dict]] = {}
_DATA_FIGURES_KEPT = 4


def _data_figures(observed: np.ndarray, owner: np.ndarray | None, reps: int, seed: int,
                  sizes: tuple[int, ...]) -> tuple[dict, dict, dict]:
    """``compare``'s figures of ``observed``, their bootstrap intervals and the state of
    ``default_rng(seed)`` after drawing them, computed once a process for each data and settings."""
    def digest(a):
        a = np.asarray(a)
        return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest(), a.dtype.str, a.shape

    key = (digest(observed), None if owner is None else digest(owner), int(reps), int(seed), tuple(sizes))
    if key not in _DATA_FIGURES:
        rng = np.random.default_rng(seed)
        fd = {k: v for k, v in figures_data(observed, rng, groups=1000).items()
              if not k.startswith("ADMD") or int(k.split("=")[1]) in sizes}
        ci = bootstrap(observed, reps, rng, owner=owner) if reps else dict.fromkeys(fd, (np.nan, np.nan))
        while len(_DATA_FIGURES) >= _DATA_FIGURES_KEPT:
            _DATA_FIGURES.pop(next(iter(_DATA_FIGURES)))
        _DATA_FIGURES[key] = (fd, ci, rng.bit_generator.state)
    fd, ci, state = _DATA_FIGURES[key]
    return dict(fd), dict(ci), copy.deepcopy(state)


def check_priors(priors="default", *, against=None, feeder="ieee_eu_lv", draws: int = 1000, seed: int = 0,
                 reps: int = 300, season: str | None = None) -> CheckResult:
    """Prior predictive check of the baseload of ``priors`` against measured
    house-days: ``against`` a readings file (tidy CSV ``agent,time,p_kw`` or
    NetCDF, naive times local in the priors' zone), else ENWL's profiles of
    ``season`` ("winter"/"summer"; default: by the month of the horizon's start,
    April-September summer)."""
    pri = priors.priors if isinstance(priors, Posterior) else priors if isinstance(priors, Priors) \
        else load_priors(priors)
    fd = feeder if isinstance(feeder, Feeder) else load_feeder(feeder)
    if against is None:
        season = season or season_of(pri.start)
        observed, owner = enwl_house_days(season), None
        label = f"ENWL {season}"
    else:
        observed, owner = house_days(read_observations(against, tz=pri.timezone), pri.timezone)
        label = Path(str(against)).name
    need = -(-max(observed.shape[0], 2 * max(ADMD_N)) // fd.n_agent)
    if draws < need:
        raise ConfigError(f"--draws {draws}: too few to compare with {observed.shape[0]} measured house-days and "
                          f"groups of up to {max(ADMD_N)} houses on feeder {fd.name!r} ({fd.n_agent} agents); "
                          f"give at least {need}")
    p = model_day(fd, priors if isinstance(priors, Posterior) else pri, draws, seed)
    return compare(observed, p, reps=reps, seed=seed, data_label=label, model_label=f"priors {pri.name}",
                   owner=owner)


def figure(result: CheckResult, path: Path) -> Path:
    """Quantile-quantile plot of half-hourly kW and the ADMD curve, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    q = np.concatenate([np.linspace(0, 99, 100), [99.5, 99.9, 99.95]])
    xd = np.percentile(result.observed, q)
    xm = np.percentile(result.draws, q)
    top = max(xd.max(), xm.max()) * 1.05
    ax1.plot([0, top], [0, top], color="0.6", lw=1, label="equal")
    ax1.plot(xd, xm, "o", ms=3, label="p0-p99.95")
    ax1.set(xlabel=f"{result.data_label}, kW", ylabel=f"{result.model_label}, kW",
            title="Half-hourly household kW, quantiles")
    ax1.legend(frameon=False)
    t = result.table
    admd = [k for k in t.index if k.startswith("ADMD")]
    n = [int(k.split("=")[1]) for k in admd]
    ax2.fill_between(n, t.loc[admd, "data_lo"], t.loc[admd, "data_hi"], alpha=0.25, label="data 95 % bootstrap")
    ax2.plot(n, t.loc[admd, "data"], "o-", label=result.data_label)
    ax2.plot(n, t.loc[admd, "model"], "s--", label=result.model_label)
    ax2.set(xscale="log", xlabel="houses N", ylabel="ADMD per house, kW", title="After-diversity maximum demand")
    ax2.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
