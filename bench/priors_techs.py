"""EV, heat-pump and PV tails and coincidence: bayesflex prior draws against ENWL's profiles.

    python bench/priors_techs.py                 # all three
    python bench/priors_techs.py --tech ev       # one of ev, hp, pv

Prints the target tables of issue 14's deliverable 2 for the low-carbon
technologies, in the format of ``bench/priors_tails.py``: each figure of the
data (ENWL's 100 profiles, 5-minute kW averaged to half-hours by
``bayesflex.priors.check.read_enwl``) with its bootstrap 95 % interval (profiles
resampled), the same figure of the model's draws, their ratio and PASS/MISS
against the target.

Draws: ``bayesflex.sample_priors`` on the ``ieee_eu_lv`` feeder (55
households) with the technology's ``penetration`` set to 1, so that every
household is an owner: ownership has a random stream of its own and the
simulators run every agent whatever it owns, so the owners of the shipped
penetration get exactly these draws, only fewer of them.  Only the first whole
weekday of the horizon is kept (48 half-hours from 00:00 UTC), as in
``priors_tails``.

EV (``default`` priors, winter, against ``Winter_EV_Profiles.csv``).  The data
are 100 car-days, each charging at 3 kW exactly (5-minute readings are 0 or
3 kW), every one of them on some part of its day (0.75 to 23.75 kWh; no
profile is all zero).  A car *charges* in a half-hour when its mean power
there is above 0.1 kW (in the data: any 5-minute reading at 3 kW).  Figures:
share of EVs charging per half-hour (the profile is printed; its peak, the
peak's time and the day's mean are targets), coincidence = share charging at
once in 17:00-21:00 (half-hours 34-41; peak and mean), pooled half-hourly p99
of kW per EV, ADMD per EV for N = 1, 5, 20, 55 (groups of N cars; in the model
inside one draw, one feeder).  The model's share is pooled over all cars of all
draws, as the data's is over 100 cars.

Heat pumps (``default`` against ``Winter_EHP_Profiles.csv``): pooled half-hourly
p50, p90, p99 of kW per heat pump, p10/p50/p90 of daily kWh across units, ADMD
N = 1, 5, 20, 55.  The data's day and its weather are unknown; the model's day is
a January-normal day at Manchester (mean 4.5 degC) with its own weather spread.

PV (``summer`` priors against ``Summer_PV_Profiles.csv``).  The data are one
day of one system: all 100 profiles are the same 5-minute series scaled to
1.57, 2, 2.5, 3, 3.5 or 4 kW peaks (the priors' ``capacity_kw`` is fitted to
these peaks).  Output per kWp: the data divided by each profile's 5-minute peak
(its kWp, the same convention as the priors), the model by its drawn
``capacity_kw``.  Figures: pooled half-hourly p99 per kWp, the day's largest
half-hour per kWp, daily kWh per kWp.  Because the data are one day,
resampling its profiles changes nothing (the interval is a point) and the
clear/cloudy spread between days cannot be measured from it; the model's days
(one sky per draw) are summarised by p10/p50/p90 and the data's day is placed
among them (its percentile rank).

Targets: the data's figure within +-20 % (quantiles, shares, peaks), +-10 %
(ADMD), times of day within +-1 h, a data quantile of 0 (heat pumps off) met by
a model below 0.1 kW; a model figure at a target's edge passes within 3 of its
Monte Carlo standard errors (batch means over 10 batches of draws, printed
after the model's figure).  PV's one-day figures: the data's day within the
model's 5-95 % range of days.  Plain numpy; about 30 s.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from bayesflex.priors.check import ENWL as PROFILES
from bayesflex.priors.check import admd_data, admd_draws, first_weekday, read_enwl

CHARGING_KW = 0.1  # a half-hour's mean above this: the car is charging
OFF_KW = 0.1  # a heat pump's half-hour below this: off
EVENING = slice(34, 42)  # 17:00-21:00
ADMD_N = (1, 5, 20, 55)
FILES = {"ev": "Winter_EV_Profiles.csv", "hp": "Winter_EHP_Profiles.csv", "pv": "Summer_PV_Profiles.csv"}
PRIORS = {"ev": "default", "hp": "default", "pv": "summer"}
SECTION = {"ev": "ev", "hp": "heat_pump", "pv": "pv"}
VARIABLE = {"ev": "p_ev_kw", "hp": "p_hp_kw", "pv": "p_pv_kw"}


# ---- data and draws --------------------------------------------------------------------------

def read_data(tech: str, profiles: Path = PROFILES) -> np.ndarray:
    """(unit, 48) half-hourly kW of a technology's ENWL file; PV as kW per kWp
    (each profile over its own 5-minute peak), generation positive."""
    path = profiles / FILES[tech]
    x = read_enwl(path)
    if tech == "pv":
        peak = pd.read_csv(path, header=None, encoding="utf-8-sig").to_numpy(float).max(axis=0)
        x = x / peak[:, None]
    return x


def everyone_owns(priors_name: str, techs, directory: Path, edits=()) -> Path:
    """A copy of a prior set with ``penetration = 1.0`` in each ``[tech]`` table
    (and any further ``(old, new)`` text edits, each of which must occur once)."""
    from bayesflex.priors import load_priors

    text = load_priors(priors_name).text
    for t in techs:
        # the table's header, then lines that open no other table, then its penetration
        pat = re.compile(rf"(^\[{SECTION[t]}\]\n(?:(?!\[)[^\n]*\n)*?penetration = )[0-9.]+", re.MULTILINE)
        text, n = pat.subn(r"\g<1>1.0", text, count=1)
        if n != 1:
            raise SystemExit(f"priors {priors_name!r}: no penetration in [{SECTION[t]}]")
    for old, new in edits:
        if text.count(old) != 1:
            raise SystemExit(f"priors {priors_name!r}: {old!r} occurs {text.count(old)} times")
        text = text.replace(old, new)
    path = Path(directory) / f"{Path(priors_name).stem}_owners.toml"
    path.write_text(text)
    return path


def model_days(priors_name: str, techs, draws: int, seed: int, feeder: str = "ieee_eu_lv",
               edits=()) -> dict[str, np.ndarray]:
    """``{tech: (draw, unit, 48)}`` kW of the first whole weekday, every
    household an owner; PV as kW per kWp (over the drawn ``capacity_kw``),
    generation positive."""
    warnings.simplefilter("ignore")
    import bayesflex as bf

    with tempfile.TemporaryDirectory() as d:
        path = everyone_owns(priors_name, techs, Path(d), edits)
        ds = bf.sample_priors(bf.load_feeder(feeder), path, draws=draws, seed=seed)
    times = pd.DatetimeIndex(ds.time.values)
    i = first_weekday(times)
    if i is None:
        raise SystemExit(f"priors {priors_name!r}: the horizon holds no whole weekday (48 half-hours from 00:00)")
    out = {}
    for t in techs:
        has = ds[f"{'hp' if t == 'hp' else t}_has"].isel(chain=0).values
        if not has.all():
            raise SystemExit(f"{t}: not every household owns one in this copy of the priors")
        p = ds[VARIABLE[t]].isel(chain=0).sum("phase").transpose("draw", "agent", "time").values
        p = np.asarray(p[:, :, i:i + 48], float)
        if t == "pv":
            p = -p / ds["pv_capacity_kw"].isel(chain=0).values[:, :, None]
        out[t] = p
    out["day"] = np.array(str(times[i]))
    return out


# ---- figures ---------------------------------------------------------------------------------

def share_charging(x: np.ndarray) -> np.ndarray:
    """(48,) share of EVs charging per half-hour; ``x (..., unit, 48)`` pooled over all but the last axis."""
    return (x.reshape(-1, 48) > CHARGING_KW).mean(axis=0)


def ev_figures(share: np.ndarray, flat: np.ndarray, admd) -> dict[str, float]:
    f = {
        "share of EV-days that charge": float((flat.reshape(-1, 48) > CHARGING_KW).any(axis=1).mean()),
        "share charging, peak": float(share.max()),
        "share charging, peak at, h": float(share.argmax() / 2),
        "share charging, day mean": float(share.mean()),
        "coincidence 17-21, peak": float(share[EVENING].max()),
        "coincidence 17-21, mean": float(share[EVENING].mean()),
        "half-hour p99, kW": float(np.percentile(flat, 99)),
    }
    f.update({f"ADMD N={n}, kW": admd(n) for n in ADMD_N})
    return f


def hp_figures(x: np.ndarray, admd) -> dict[str, float]:
    flat = x.reshape(-1, 48)
    daily = flat.sum(axis=1) / 2
    f = {"share of half-hours off": float((flat < OFF_KW).mean())}
    f.update({f"half-hour p{q}, kW": float(np.percentile(flat, q)) for q in (50, 90, 99)})
    f.update({f"daily kWh p{q}": float(np.percentile(daily, q)) for q in (10, 50, 90)})
    f.update({f"ADMD N={n}, kW": admd(n) for n in ADMD_N})
    return f


def figures_data(tech: str, x: np.ndarray, rng, groups: int = 200) -> dict[str, float]:
    """Every figure of one set of measured unit-days ``x (unit, 48)``."""
    def admd(n):
        return admd_data(x, n, groups, rng)

    if tech == "ev":
        return ev_figures(share_charging(x), x, admd)
    if tech == "hp":
        return hp_figures(x, admd)
    return pv_figures(x[None])


def figures_draws(tech: str, p: np.ndarray, rng) -> dict[str, float]:
    """The same figures of model draws ``p (draw, unit, 48)``."""
    def admd(n):
        return admd_draws(p, n, rng)

    if tech == "ev":
        return ev_figures(share_charging(p), p, admd)
    if tech == "hp":
        return hp_figures(p, admd)
    return pv_figures(p)


def pv_days(p: np.ndarray) -> dict[str, np.ndarray]:
    """Per day (draw) of ``p (day, system, 48)`` kW/kWp, each the median over
    the day's systems: the pooled half-hourly p99, the largest half-hour, the
    daily kWh/kWp, and the first and last half-hour with output above 1 % of
    the system's largest and the output-weighted mean time of day (hours UTC,
    half-hour middles): where the day sits on the clock."""
    t_h = np.arange(48) / 2 + 0.25
    lit = p > 0.01 * p.max(axis=2, keepdims=True)
    kwh = p.sum(axis=2) / 2
    first = np.where(lit.any(axis=2), t_h[lit.argmax(axis=2)], np.nan)
    last = np.where(lit.any(axis=2), t_h[47 - lit[..., ::-1].argmax(axis=2)], np.nan)
    centre = (p * t_h).sum(axis=2) / np.where(kwh > 0, kwh * 2, np.nan)
    return {"half-hour p99, kW/kWp": np.median(np.percentile(p, 99, axis=2), axis=1),
            "day's largest half-hour, kW/kWp": np.median(p.max(axis=2), axis=1),
            "daily kWh/kWp": np.median(kwh, axis=1),
            "output starts, h": np.nanmedian(first, axis=1),
            "output ends, h": np.nanmedian(last, axis=1),
            "centre of output, h": np.nanmedian(centre, axis=1)}


def pv_figures(p: np.ndarray) -> dict[str, float]:
    """One figure per PV quantity: the median day."""
    return {k: float(np.median(v)) for k, v in pv_days(p).items()}


def bootstrap(tech: str, x: np.ndarray, reps: int, rng, centre: dict[str, float],
              groups: int = 100) -> dict[str, tuple[float, float]]:
    """95 % percentile intervals of every data figure, profiles resampled; a
    time of day is taken within 12 h of ``centre`` (23:30 and 00:30 are an hour apart)."""
    h = x.shape[0]
    runs = [figures_data(tech, x[rng.integers(0, h, h)], rng, groups) for _ in range(reps)]
    out = {}
    for k in runs[0]:
        v = np.array([r[k] for r in runs])
        if k.endswith(", h"):
            v = centre[k] + (v - centre[k] + 12) % 24 - 12
        out[k] = tuple(np.percentile(v, [2.5, 97.5]))
    return out


def verdict(name: str, data: float, model: float, se: float = 0.0) -> tuple[str, bool]:
    """(target text, pass) for one figure; ``se`` is the Monte Carlo standard
    error of the model's figure: a model at the target's edge passes within 3 of them."""
    if name.endswith(", h"):  # a time of day
        return "+-1 h", abs((model - data + 12) % 24 - 12) <= 1.0 + 3 * se
    if data == 0:  # a quantile at which the data's units are off
        return f"< {OFF_KW} kW", model < OFF_KW + 3 * se
    tol = 0.10 if name.startswith("ADMD") else 0.20
    return f"+-{tol:.0%}", abs(model - data) <= tol * data + 3 * se


def mc_se(tech: str, p: np.ndarray, rng, batches: int = 10) -> dict[str, float]:
    """Monte Carlo standard error of every model figure: batch means over the draws."""
    runs = [figures_draws(tech, q, rng) for q in np.array_split(p, batches)]
    return {k: float(np.std([r[k] for r in runs], ddof=1) / np.sqrt(batches)) for k in runs[0]}


def rows(tech: str, x: np.ndarray, p: np.ndarray, *, reps: int = 300, seed: int = 0) -> list[dict]:
    """One dict per figure: name, data, lo, hi (the data's bootstrap 95 %;
    the data figure itself when ``reps`` is 0), model, se (Monte Carlo), target, ok, note."""
    rng = np.random.default_rng(seed)
    out = []
    if tech == "pv":
        days = pv_days(p)
        fd = pv_figures(x[None])
        for k, v in days.items():
            lo, med, hi = np.percentile(v, [5, 50, 95])
            rank = float((v < fd[k]).mean())
            if k.endswith(", h"):
                tgt, ok = verdict(k, fd[k], med)
            else:
                tgt, ok = "model's 5-95 % of days", bool(lo <= fd[k] <= hi)
            out.append({"name": k, "data": fd[k], "lo": fd[k], "hi": fd[k], "model": med, "se": 0.0,
                        "target": tgt, "ok": ok,
                        "note": f"model's days p5 {lo:.3g}, p95 {hi:.3g}; the data's day at p{100 * rank:.0f}"})
        return out
    fd = figures_data(tech, x, rng, groups=1000)
    ci = bootstrap(tech, x, reps, rng, fd) if reps else {k: (v, v) for k, v in fd.items()}
    fm = figures_draws(tech, p, rng)
    se = mc_se(tech, p, rng)
    for k, d in fd.items():
        tgt, ok = verdict(k, d, fm[k], se[k])
        out.append({"name": k, "data": d, "lo": ci[k][0], "hi": ci[k][1], "model": fm[k], "se": se[k],
                    "target": tgt, "ok": ok, "note": ""})
    return out


def table(tech: str, x: np.ndarray, p: np.ndarray, *, reps: int = 300, seed: int = 0,
          label: str = "bayesflex") -> str:
    """The target table as Markdown: data (bootstrap 95 %) vs model draws (+- Monte Carlo SE)."""
    r = rows(tech, x, p, reps=reps, seed=seed)
    lines = [f"| figure | data (95 % bootstrap) | {label} | ratio | target | |",
             "|---|---:|---:|---:|---:|---|"]
    for row in r:
        ratio = "" if row["name"].endswith(", h") or not row["data"] else f"{row['model'] / row['data']:.2f}"
        se = f" +- {row['se']:.2g}" if row["se"] else ""
        lines.append(f"| {row['name']} | {row['data']:.3g} ({row['lo']:.3g}-{row['hi']:.3g}) | {row['model']:.3g}{se} "
                     f"| {ratio} | {row['target']} | {'PASS' if row['ok'] else 'MISS'} |")
    lines += [f"| ({row['name']}: {row['note']}) | | | | | |" for row in r if row["note"]]
    lines.append(f"\n{sum(row['ok'] for row in r)} of {len(r)} PASS")
    return "\n".join(lines)


def profile(x: np.ndarray, p: np.ndarray) -> str:
    """The share of EVs charging, data and model, per hour (mean of its two half-hours)."""
    d, m = share_charging(x).reshape(24, 2).mean(axis=1), share_charging(p).reshape(24, 2).mean(axis=1)
    return ("hour   " + " ".join(f"{h:5d}" for h in range(24)) + "\ndata   " + " ".join(f"{v:5.2f}" for v in d)
            + "\nmodel  " + " ".join(f"{v:5.2f}" for v in m))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tech", choices=("ev", "hp", "pv"), action="append", help="default: all three")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=300, help="bootstrap resamples of the profiles")
    ap.add_argument("--profiles", type=Path, default=PROFILES, help="folder of the ENWL profile CSVs")
    ap.add_argument("--edit", nargs=2, action="append", default=[], metavar=("OLD", "NEW"),
                    help="replace a text of the priors file first (e.g. a what-if on one prior)")
    args = ap.parse_args()
    techs = args.tech or ["ev", "hp", "pv"]
    for f in {FILES[t] for t in techs}:
        if not (args.profiles / f).exists():
            sys.exit(f"{args.profiles / f}: not found (give --profiles, the folder of shared/data/enwl/profiles)")
    t0 = time.perf_counter()
    by_priors = {}
    for t in techs:
        by_priors.setdefault(PRIORS[t], []).append(t)
    draws = {}
    for name, ts in by_priors.items():
        draws.update(model_days(name, ts, args.draws, args.seed, edits=args.edit))
        print(f"draws: {args.draws} x 55 houses, {name!r} priors, {', '.join(ts)} in every house, "
              f"day {draws['day']} + 48 half-hours, seed {args.seed}")
    for t in techs:
        x = read_data(t, args.profiles)
        print(f"\n## {t}: {FILES[t]}, {x.shape[0]} profiles x 48 half-hours; model {draws[t].shape[0]} x "
              f"{draws[t].shape[1]} unit-days ({PRIORS[t]})\n")
        print(table(t, x, draws[t], reps=args.reps, seed=args.seed, label=f"bayesflex {PRIORS[t]}"))
        if t == "ev":
            print("\nshare of EVs charging (> 0.1 kW), by hour of the day (UTC = UK winter time)")
            print(profile(x, draws[t]))
    print(f"\n({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
