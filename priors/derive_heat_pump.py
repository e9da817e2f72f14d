"""Derive the data-based numbers of the ``[heat_pump]`` tables from ENWL's heat pumps.

    python priors/derive_heat_pump.py [path/to/shared/data/enwl/profiles] [--priors default]

Reads ``Winter_EHP_Profiles.csv`` (100 heat pumps, one winter day, 5-minute kW,
288 rows, no header) and prints:

* ``rating_kw``: a log-normal fit of each unit's running power, the median of
  its 5-minute readings above 0.5 kW (the units are fixed-speed: 3.0 or 4.3 kW);
* ``call_start``/``call_stop``: the on/off transitions of the half-hourly
  means (on: above 0.1 kW, as ``bench/priors_techs.py`` counts a heat pump
  on), per half-hour of the day, pooled over units, the day read as periodic
  (half-hour 0 follows 47): ``call_start[h]`` = units switching on at ``h``
  over units off at ``h - 1``, ``call_stop[h]`` the reverse.  A half-hour with
  no unit in the state it leaves takes the day's pooled rate;
* ``heat_loss_kw_per_k``: the log-normal's ``mu`` and ``sigma`` that make the
  model's mean daily kWh and its spread across houses, ln(p90 / p10) of daily
  kWh, equal the data's, found by simulating ``bayesflex.priors.heat_pump`` with the rest of
  the prior set (``--priors``, its first day; fixed point iteration with common
  random numbers).

Nothing here is imported by bayesflex.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "enwl" / "profiles"
ON_KW = 0.1  # a half-hour's mean above this: on
RUNNING_KW = 0.5  # a 5-minute reading above this: the compressor running


def read(profiles: Path) -> np.ndarray:
    """(288, unit) 5-minute kW."""
    x = pd.read_csv(profiles / "Winter_EHP_Profiles.csv", header=None, encoding="utf-8-sig").to_numpy(float)
    if x.shape[0] != 288:
        raise SystemExit(f"{profiles}: {x.shape[0]} rows, expected 288 five-minute readings")
    return x


def rating(x: np.ndarray) -> dict:
    level = np.array([np.median(u[u > RUNNING_KW]) for u in x.T if (u > RUNNING_KW).any()])
    lv = np.log(level)
    return {"mu": round(float(lv.mean()), 3), "sigma": round(float(lv.std(ddof=1)), 3),
            "levels_kw_p5_p50_p95": np.round(np.percentile(level, [5, 50, 95]), 2).tolist()}


def transitions(on: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``on (48, unit)`` bool -> (call_start, call_stop), each (48,)."""
    prev = np.roll(on, 1, axis=0)
    n_off, n_on = (~prev).sum(axis=1), prev.sum(axis=1)
    starts, stops = (on & ~prev).sum(axis=1), (~on & prev).sum(axis=1)
    start = np.where(n_off > 0, starts / np.maximum(n_off, 1), starts.sum() / n_off.sum())
    stop = np.where(n_on > 0, stops / np.maximum(n_on, 1), stops.sum() / n_on.sum())
    return np.round(start, 3), np.round(stop, 3)


def daily_kwh_model(pri, mu: float, sigma: float, draws: int, seed: int) -> np.ndarray:
    """(draw * house,) daily kWh of the first day, every one of 55 houses an owner."""
    import dataclasses

    from bayesflex.priors import heat_pump
    from bayesflex.priors.sampling import _params, draw_parameters
    from bayesflex.priors.spec import parse_param

    tech = pri.technologies["heat_pump"]
    params = dict(tech.params)
    params["heat_loss_kw_per_k"] = parse_param({"dist": "LogNormal", "mu": mu, "sigma": sigma},
                                               where="derive", key="heat_loss_kw_per_k", domain="positive")
    one = dataclasses.replace(pri, technologies={"baseload": pri.technologies["baseload"],
                                                 "heat_pump": dataclasses.replace(tech, params=params)})
    ss = np.random.SeedSequence(seed)
    par = _params(draw_parameters(one, 55, draws, ss.spawn(1)[0]), "heat_pump")
    times = pd.date_range(pri.start, periods=48, freq="30min").values
    res = heat_pump.heat_houses(par, tech.extra, times, np.ones((draws, 55), bool), np.random.default_rng(seed))
    return res["p_kw"].sum(axis=1).ravel() / 2


def spread(kwh: np.ndarray) -> float:
    """ln(p90 / p10) of daily kWh across houses: the spread, robust to the few nearly idle houses."""
    p10, p90 = np.percentile(kwh, [10, 90])
    return float(np.log(p90 / p10))


def heat_loss(pri, data_kwh: np.ndarray, draws: int = 400, seed: int = 0, steps: int = 8) -> dict:
    target_mean, target_spread = data_kwh.mean(), spread(data_kwh)
    mu, sigma = pri.technologies["heat_pump"]["heat_loss_kw_per_k"].kwargs().get("mu", -1.66), 0.3
    for _ in range(steps):
        kwh = daily_kwh_model(pri, mu, sigma, draws, seed)
        mu += np.log(target_mean / kwh.mean())
        sigma = max(0.01, sigma * target_spread / spread(kwh))
    kwh = daily_kwh_model(pri, mu, sigma, draws, seed)
    return {"mu": round(float(mu), 3), "sigma": round(float(sigma), 3),
            "model_mean_kwh": round(float(kwh.mean()), 2), "data_mean_kwh": round(float(target_mean), 2),
            "model_ln_p90_over_p10": round(spread(kwh), 3), "data_ln_p90_over_p10": round(target_spread, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("profiles", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--priors", default="default", help="prior set whose other [heat_pump] numbers to simulate with")
    args = ap.parse_args()
    x = read(args.profiles)
    hh = x.reshape(48, 6, -1).mean(axis=1)
    on = hh > ON_KW
    start, stop = transitions(on)
    print(f"rating_kw (log-normal of each unit's running power): {rating(x)}")
    print(f"share of half-hours on: {on.mean():.3f}")
    print(f"call_start = {start.tolist()}")
    print(f"call_stop = {stop.tolist()}")
    sys.stdout.flush()
    from bayesflex.priors import load_priors

    print(f"heat_loss_kw_per_k (LogNormal): {heat_loss(load_priors(args.priors), hh.sum(axis=0) / 2)}")


if __name__ == "__main__":
    main()
