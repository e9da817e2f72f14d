"""Household baseload tails: bayesflex prior draws against ENWL's measured households.

    python bench/priors_tails.py                      # default priors (winter) vs Winter_Load_Profiles.csv
    python bench/priors_tails.py --priors summer      # summer priors vs Summer_Load_Profiles.csv
    python bench/priors_tails.py --npz draws.npz      # any model's draws: array "p_kw" (draw, house, 48)

Prints the target table of the baseload-tail issue: each figure of the data
(100 ENWL households, one day each, 5-minute kW averaged to half-hours) with
its bootstrap 95 % interval (households resampled), the same figure of the
model's draws and PASS/MISS against the target.

Draws: ``bayesflex.sample_priors`` on the ``ieee_eu_lv`` feeder (55
households), the baseload component ``p_base_kw`` summed over phases, and only
the first whole day of the horizon (48 half-hours from the model's half-hour 0)
that is a weekday, the day type of ENWL's profiles (and of the shipped
horizons).  Figures:

* pooled half-hourly p90, p99, p99.9 of household kW; ``max``: for the data the
  largest of its 4,800 house-half-hours, for the draws the median over blocks of
  100 house-days of each block's largest (the same sample size: the pooled
  maximum of millions of draws would not be comparable);
* per house-day evening peak (16:00-20:00, half-hours 32-39): p90, p99;
* ADMD per house (mean over random groups of N houses of the group's largest
  half-hourly mean kW per house), N = 1, 2, 5, 10, 20, 55, 100; draws: groups
  inside one draw (one feeder), N = 100 joins 55 houses of a draw with 45 of the
  next;
* CV of daily kWh across house-days (sd / mean, pooled over draws);
* lag-1 autocorrelation of half-hourly kW, pooled over house-days after centring
  each one;
* share of house-half-hours above 15 kW and above 23 kW (100 A at 230 V).

Targets: the data's figure, within +-20 % for quantiles, maxima, CV and lag-1
(the issue's tolerance for quantiles), +-10 % for ADMD; above 15 kW at most
1e-5 of house-half-hours (the data have none of 4,800; 1e-5 is one house-half-hour
in about 38 days of the 55-house feeder) and above 23 kW none (a single-phase
100 A service cannot take it).  Plain numpy; about 20 s, most of it importing
and sampling.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

PROFILES = Path(__file__).resolve().parents[2] / "shared" / "data" / "enwl" / "profiles"
EVENING = slice(32, 40)  # 16:00-20:00
ADMD_N = (1, 2, 5, 10, 20, 55, 100)
QUANT = (("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


def read_profiles(path: Path) -> np.ndarray:
    """(house, 48) half-hourly mean kW of an ENWL profile file (288 x 100, no header, BOM)."""
    x = pd.read_csv(path, header=None, encoding="utf-8-sig").to_numpy(float)
    if x.shape[0] != 288:
        raise SystemExit(f"{path}: {x.shape[0]} rows, expected 288 five-minute readings")
    return x.reshape(48, 6, -1).mean(axis=1).T


def model_day(priors_name: str, draws: int, seed: int, feeder: str = "ieee_eu_lv") -> np.ndarray:
    """(draw, house, 48) baseload kW of the first whole weekday of the horizon."""
    warnings.simplefilter("ignore")
    import bayesflex as bf
    from bayesflex.priors import load_priors
    from bayesflex.priors.baseload import half_hour_of_day

    pri = load_priors(priors_name)
    ds = bf.sample_priors(bf.load_feeder(feeder), pri, draws=draws, seed=seed)
    times = pd.DatetimeIndex(ds.time.values)
    hh = half_hour_of_day(times.values)
    starts = [i for i in range(len(times) - 47) if hh[i] == 0 and times[i].dayofweek < 5]
    if not starts:
        raise SystemExit(f"priors {priors_name!r}: the horizon holds no whole weekday (48 half-hours from 00:00)")
    i = starts[0]
    print(f"draws: {draws} x {ds.sizes['agent']} houses, {priors_name!r} priors, day {times[i]:%a %Y-%m-%d %H:%M} "
          f"+ 48 half-hours, seed {seed}")
    p = ds["p_base_kw"].isel(chain=0).sum("phase").transpose("draw", "agent", "time").values
    return np.asarray(p[:, :, i:i + 48], float)


# ---- figures ---------------------------------------------------------------------------------

def _admd_data(x: np.ndarray, n: int, groups: int, rng) -> float:
    h = x.shape[0]
    if n == 1:
        return float(x.max(axis=1).mean())
    if n >= h:
        return float(x.mean(axis=0).max())
    idx = np.argsort(rng.random((groups, h)), axis=1)[:, :n]
    return float(x[idx].mean(axis=1).max(axis=1).mean())


def _admd_draws(p: np.ndarray, n: int, rng) -> float:
    d, h, _ = p.shape
    if n == 1:
        return float(p.max(axis=2).mean())
    if n > h:  # join houses of consecutive draws
        k = -(-n // h)
        m = d // k
        q = p[:m * k].reshape(m, k * h, 48)
        return _admd_draws(q, n, rng)
    idx = np.argsort(rng.random((d, h)), axis=1)[:, :n]
    g = np.take_along_axis(p, idx[:, :, None], axis=1)
    return float(g.mean(axis=1).max(axis=1).mean())


def _lag1(x: np.ndarray) -> float:
    c = x - x.mean(axis=-1, keepdims=True)
    return float((c[..., 1:] * c[..., :-1]).sum() / (c**2).sum())


def _cv(daily: np.ndarray) -> float:
    return float(daily.std(ddof=1) / daily.mean())


def figures_data(x: np.ndarray, rng, groups: int = 200) -> dict[str, float]:
    """Every figure of one set of measured house-days ``x (house, 48)``."""
    f = {}
    for k, q in QUANT:
        f[f"half-hour {k}"] = float(np.percentile(x, q))
    f["half-hour max"] = float(x.max())
    ev = x[:, EVENING].max(axis=1)
    f["evening peak p90"] = float(np.percentile(ev, 90))
    f["evening peak p99"] = float(np.percentile(ev, 99))
    for n in ADMD_N:
        f[f"ADMD N={n}"] = _admd_data(x, n, groups, rng)
    f["CV daily kWh"] = _cv(x.sum(axis=1) / 2)
    f["lag-1 autocorr"] = _lag1(x)
    f["share > 15 kW"] = float((x > 15).mean())
    f["share > 23 kW"] = float((x > 23).mean())
    return f


def figures_draws(p: np.ndarray, rng, block: int = 100) -> dict[str, float]:
    """The same figures of model draws ``p (draw, house, 48)``."""
    f = {}
    flat = p.reshape(-1, 48)
    for k, q in QUANT:
        f[f"half-hour {k}"] = float(np.percentile(flat, q))
    m = flat.shape[0] // block
    f["half-hour max"] = float(np.median(flat[:m * block].reshape(m, -1).max(axis=1)))
    ev = flat[:, EVENING].max(axis=1)
    f["evening peak p90"] = float(np.percentile(ev, 90))
    f["evening peak p99"] = float(np.percentile(ev, 99))
    for n in ADMD_N:
        f[f"ADMD N={n}"] = _admd_draws(p, n, rng)
    f["CV daily kWh"] = _cv(flat.sum(axis=1) / 2)
    f["lag-1 autocorr"] = _lag1(flat)
    f["share > 15 kW"] = float((flat > 15).mean())
    f["share > 23 kW"] = float((flat > 23).mean())
    return f


def bootstrap(x: np.ndarray, reps: int, rng, groups: int = 100) -> dict[str, tuple[float, float]]:
    """95 % percentile intervals of every data figure, households resampled."""
    h = x.shape[0]
    runs = [figures_data(x[rng.integers(0, h, h)], rng, groups) for _ in range(reps)]
    return {k: tuple(np.percentile([r[k] for r in runs], [2.5, 97.5])) for k in runs[0]}


def verdict(name: str, data: float, model: float) -> tuple[str, str]:
    """(target text, PASS/MISS)."""
    if name == "share > 15 kW":
        return "<= 1e-5", "PASS" if model <= 1e-5 else "MISS"
    if name == "share > 23 kW":
        return "0", "PASS" if model == 0 else "MISS"
    tol = 0.10 if name.startswith("ADMD") else 0.20
    ok = abs(model / data - 1) <= tol if data > 0 else model == 0
    return f"+-{tol:.0%}", "PASS" if ok else "MISS"


def table(x: np.ndarray, p: np.ndarray, *, reps: int = 300, seed: int = 0, label: str = "bayesflex") -> str:
    """The target table as Markdown: data (bootstrap 95 %) vs model draws."""
    rng = np.random.default_rng(seed)
    fd = figures_data(x, rng, groups=1000)
    ci = bootstrap(x, reps, rng)
    fm = figures_draws(p, rng)
    rows = [f"| figure | data (95 % bootstrap) | {label} | ratio | target | |",
            "|---|---:|---:|---:|---:|---|"]
    n_pass = 0
    for k, d in fd.items():
        m = fm[k]
        tgt, ok = verdict(k, d, m)
        n_pass += ok == "PASS"
        if k.startswith("share"):
            rows.append(f"| {k} | {d:.2g} ({ci[k][0]:.2g}-{ci[k][1]:.2g}) | {m:.2g} | | {tgt} | {ok} |")
        else:
            unit = "" if k.startswith(("CV", "lag")) else " kW"
            rows.append(f"| {k}{unit and ', kW'} | {d:.3g} ({ci[k][0]:.3g}-{ci[k][1]:.3g}) | {m:.3g} | "
                        f"{m / d:.2f} | {tgt} | {ok} |")
    rows.append(f"\n{n_pass} of {len(fd)} PASS")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--priors", default="default", help="prior set (default: default = winter)")
    ap.add_argument("--season", choices=("winter", "summer"), help="ENWL file (default: summer for "
                    "priors named summer*, else winter)")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=300, help="bootstrap resamples of the households")
    ap.add_argument("--profiles", type=Path, default=PROFILES, help="folder of the ENWL profile CSVs")
    ap.add_argument("--npz", type=Path, help="evaluate these draws instead: array p_kw (draw, house, 48)")
    args = ap.parse_args()
    season = args.season or ("summer" if Path(args.priors).stem.startswith("summer") else "winter")
    path = args.profiles / f"{season.capitalize()}_Load_Profiles.csv"
    if not path.exists():
        sys.exit(f"{path}: not found (give --profiles, the folder of shared/data/enwl/profiles)")
    x = read_profiles(path)
    t = time.perf_counter()
    if args.npz:
        p = np.load(args.npz)["p_kw"]
        label = args.npz.stem
    else:
        p = model_day(args.priors, args.draws, args.seed)
        label = f"bayesflex {args.priors}"
    print(f"data: {path.name}, {x.shape[0]} households x 48 half-hours; model {p.shape[0]} x {p.shape[1]} house-days")
    print(table(x, p, reps=args.reps, seed=args.seed, label=label))
    print(f"({time.perf_counter() - t:.1f} s)")


if __name__ == "__main__":
    main()
