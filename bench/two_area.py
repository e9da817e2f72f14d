"""The second source paper's test case: two-stage DSO-aggregator coordination on two areas.

"Two-Stage Secure Bottom-Up Load Coordination Mechanism in Distribution Grids"
(IEEE SEGE 2023) reports, on two areas fed by two transformers with
uncontrollable loads, 70 PV/battery setups and 80 heat pumps contracted to two
aggregators: transformer overloads prevented, loading reduced by up to 27 %,
customers' electricity cost up by about 4.6 %.  Only its abstract is available,
so the network (feeders/two_area.toml), the uncontrollable demand and PV
(priors/two_area.toml) and the devices below are our assumptions, each stated.

Run:  python bench/two_area.py [--draws 200] [--risk 0.05] [--seed 1] [--jobs 2] [--confirm-draws N]

It prints each round of the coordination (the highest probability of a broken
limit with its 95 % interval, each transformer's expected and P95 peak loading,
costs and shortfall), the final schedules on fresh draws (the verdict's
confirmation) and the paper's two figures beside ours.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bayesflex as bf
from bayesflex.coordination import Aggregator, coordinate
from bayesflex.portfolio import Battery, HeatPump

PAPER = {"peak_reduction_max": 0.27, "cost_increase": 0.046}

# Day-ahead price per half-hour of a winter weekday, GBP/kWh: ASSUMPTION, the shape of a
# UK half-hourly import tariff (Octopus Agile-like: cheapest 02:00-04:00, peak 16:00-19:00).
PRICE_DAY = [0.14, 0.13, 0.12, 0.12, 0.11, 0.11, 0.11, 0.12, 0.12, 0.13, 0.14, 0.16,
             0.19, 0.22, 0.26, 0.28, 0.27, 0.25, 0.23, 0.21, 0.20, 0.19, 0.19, 0.18,
             0.18, 0.18, 0.18, 0.19, 0.19, 0.20, 0.22, 0.25, 0.33, 0.36, 0.38, 0.38,
             0.36, 0.32, 0.28, 0.25, 0.23, 0.21, 0.19, 0.18, 0.17, 0.16, 0.15, 0.15]


def contracts(feeder: bf.Feeder) -> tuple[list[str], list[str]]:
    """Which houses hold a PV/battery setup (70) and which a heat pump (80): in each
    area, of every 17 houses along the feeders, 7 and 8; the other 2 are uncontrollable
    (as priors/two_area.toml's [pv] owners)."""
    pv, hp = [], []
    for area in "AB":
        for k, a in enumerate(x for x in feeder.agents if x.startswith(area)):
            (pv if k % 17 < 7 else hp if k % 17 < 15 else []).append(a)
    return pv, hp


def devices(feeder: bf.Feeder, times: pd.DatetimeIndex, seed: int) -> tuple[list, list]:
    """Batteries and heat pumps, parameters drawn (seeded) from priors/default.toml's
    distributions where it has them."""
    from bayesflex.priors.heat_pump import cop, normal_temperature

    rng = np.random.default_rng(seed)
    pv, hp = contracts(feeder)
    batteries = [Battery(a, capacity_kwh=float(rng.lognormal(2.2, 0.3)), power_kw=float(rng.uniform(3.0, 5.0)),
                         soc0=0.5, soc_min=0.1, soc_max=0.95) for a in pv]  # default.toml [battery]
    t_out = normal_temperature(times.values, 1.7, 7.3)  # Manchester January normal (default.toml)
    c = cop(t_out, 45.0)  # hplib generic air-source COP at 45 degC flow (default.toml)
    hour = times.hour + times.minute / 60
    night = (hour >= 22) | (hour < 6)
    pumps = []
    for a in hp:
        h = float(rng.lognormal(-1.662, 0.4))  # heat loss, kW/K (default.toml, ENWL-calibrated)
        setpoint = float(rng.normal(20.0, 1.0))  # degC (default.toml)
        need = h * (setpoint + 2 - t_out.min()) / c.min()  # electric kW to hold the upper band on the coldest step
        rating = max(float(rng.lognormal(1.435, 0.2)), 1.3 * need)  # default.toml rating; never undersized
        cap = float(rng.lognormal(np.log(10.0), 0.3))  # thermal capacity, kWh/K: ASSUMPTION (time constant ~2 days)
        lo = np.where(night, setpoint - 1 - 3.0, setpoint - 1)  # comfort band: setpoint -1 K, 3 K setback at night
        pumps.append(HeatPump(a, rating_kw=rating, cop=tuple(c), c_kwh_per_k=cap, h_kw_per_k=h,
                              t_out_c=tuple(t_out), t_init_c=setpoint, t_min_c=tuple(lo), t_max_c=setpoint + 2))
    return batteries, pumps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--risk", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=-1)
    ap.add_argument("--max-rounds", type=int, default=12)
    ap.add_argument("--method", default="central", choices=("central", "distributed"))
    ap.add_argument("--confirm-draws", type=int, default=None, help="fresh draws confirming the verdict "
                    "(default: ceil(50 / risk))")
    args = ap.parse_args(argv)

    feeder = bf.load_feeder("two_area")
    priors = bf.load_priors("two_area")
    price = np.array(PRICE_DAY * 2)
    times = pd.date_range(priors.start, periods=len(price), freq="30min")
    bats, pumps = devices(feeder, times, args.seed)
    aggs = [Aggregator("alpha", tuple(bats[0::2] + pumps[0::2])), Aggregator("beta", tuple(bats[1::2] + pumps[1::2]))]
    t0 = time.perf_counter()
    res = coordinate(feeder, priors, aggs, price, risk=args.risk, draws=args.draws, seed=args.seed,
                     max_rounds=args.max_rounds, method=args.method, jobs=args.jobs,
                     confirm_draws=args.confirm_draws)
    wall = time.perf_counter() - t0
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(res.table().to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"\n{res.outcome} ({len(res.rounds)} studies of {args.draws} draws and one of "
          f"{res.confirmation.draws} x {len(price)} half-hours, {wall:.0f} s)")
    first, last = res.rounds[0], res.rounds[-1]
    for i, t in enumerate(res.trafos):
        print(f"transformer {t}: expected peak loading {first.trafo_peak_pu[i]:.3f} -> {last.trafo_peak_pu[i]:.3f} pu "
              f"({100 * res.peak_reduction()[i]:.1f} % lower); P95 {first.trafo_peak_p95_pu[i]:.3f} -> "
              f"{last.trafo_peak_p95_pu[i]:.3f} pu; P(overload) worst half-hour "
              f"{first.p_trafo_overload[:, i].max():.3f} -> {last.p_trafo_overload[:, i].max():.3f}")
    shortfall = sum(last.shortfall_kwh.values())
    print(f"contracted customers' electricity cost: {100 * res.customer_cost_increase():+.1f} % "
          f"(devices {sum(s.cost for s in res.first.values()):.2f} -> {sum(s.cost for s in res.final.values()):.2f} GBP, "
          f"own demand and PV {res.uncontrolled_cost:.2f} GBP); market commitments: shortfall {shortfall:.1f} kWh, "
          f"imbalance cost {sum(last.imbalance_cost.values()):.2f} GBP")
    net, summ = res.confirm_tree["network"], res.confirm_tree["summary"]
    print("what is left (fresh draws), worst half-hour: P(undervoltage) {:.3f}, P(overvoltage) {:.3f}, P(line overload) {:.3f}, "
          "P(transformer overload) {:.3f}, P(unresolvable by the agents' flexibility) {:.3f}".format(
              *(float(net[k].max()) for k in ("p_undervoltage", "p_overvoltage", "p_overload", "p_trafo_overload")),
              float(summ["p_unresolved"].max())))
    print(f"paper: loading reduced by up to {100 * PAPER['peak_reduction_max']:.0f} %, cost up by about "
          f"{100 * PAPER['cost_increase']:.1f} %; here: up to {100 * res.peak_reduction().max():.1f} % and "
          f"{100 * res.customer_cost_increase():+.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
