"""Write contracts/two_area.toml: the second source paper's two aggregators, every device listed.

The paper ("Two-Stage Secure Bottom-Up Load Coordination Mechanism in
Distribution Grids", IEEE SEGE 2023) gives only its abstract: 70 PV/battery
setups and 80 heat pumps under contract with two aggregators, on two areas fed
by two transformers (feeders/two_area.toml).  Which house holds which device,
and the devices' parameters, are drawn here once (seeded) from the
distributions of priors/default.toml where it has them, each one sourced or
marked ASSUMPTION in the file written; the file then lists every device
explicitly, as an aggregator's contract register would.

Run:  python contracts/derive_two_area.py [--seed 1] [--out contracts/two_area.toml]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bayesflex as bf
from bayesflex.priors.heat_pump import cop, normal_temperature

HERE = Path(__file__).resolve().parent
FLOW_C = 45.0  # degC, hplib generic air-source COP at this flow temperature (priors/default.toml [heat_pump])

# Day-ahead price per half-hour of a winter weekday, GBP/kWh, from 00:00 local time: ASSUMPTION, the shape
# of a UK half-hourly import tariff (Octopus Agile-like: cheapest 02:00-04:00, peak 16:00-19:00).
PRICE_DAY = [0.14, 0.13, 0.12, 0.12, 0.11, 0.11, 0.11, 0.12, 0.12, 0.13, 0.14, 0.16,
             0.19, 0.22, 0.26, 0.28, 0.27, 0.25, 0.23, 0.21, 0.20, 0.19, 0.19, 0.18,
             0.18, 0.18, 0.18, 0.19, 0.19, 0.20, 0.22, 0.25, 0.33, 0.36, 0.38, 0.38,
             0.36, 0.32, 0.28, 0.25, 0.23, 0.21, 0.19, 0.18, 0.17, 0.16, 0.15, 0.15]


def holders(agents) -> tuple[list[str], list[str]]:
    """The houses with a PV/battery setup (70) and with a heat pump (80): in each area, of every 17
    houses along the feeders, the first 7 and the next 8; the other 2 are uncontrollable (as
    priors/two_area.toml's [pv] owners)."""
    pv, hp = [], []
    for area in "AB":
        for k, a in enumerate(x for x in agents if x.startswith(area)):
            (pv if k % 17 < 7 else hp if k % 17 < 15 else []).append(a)
    return pv, hp


def draw(agents, seed: int) -> tuple[list[dict], list[dict], np.ndarray, np.ndarray]:
    """Battery and heat-pump parameters (dicts of the file's keys), the outdoor temperature and the COP
    per half-hour of the day; in the order, and from the random stream, bench/two_area.py used."""
    rng = np.random.default_rng(seed)
    pv, hp = holders(agents)
    day = pd.date_range("2026-01-14", periods=48, freq="30min").values
    t_out = normal_temperature(day, 1.7, 7.3)  # Manchester January normal (default.toml)
    c = cop(t_out, FLOW_C)
    batteries = [{"agent": a, "capacity_kwh": float(rng.lognormal(2.2, 0.3)), "power_kw": float(rng.uniform(3.0, 5.0))}
                 for a in pv]
    pumps = []
    for a in hp:
        h = float(rng.lognormal(-1.662, 0.4))
        setpoint = float(rng.normal(20.0, 1.0))
        need = h * (setpoint + 2 - t_out.min()) / c.min()  # electric kW to hold the upper band on the coldest step
        rating = max(float(rng.lognormal(1.435, 0.2)), 1.3 * need)
        cap = float(rng.lognormal(np.log(10.0), 0.3))
        pumps.append({"agent": a, "rating_kw": rating, "c_kwh_per_k": cap, "h_kw_per_k": h, "t_init_c": setpoint,
                      "t_min_c": setpoint - 1, "t_max_c": setpoint + 2})
    return batteries, pumps, t_out, c


def _num(x: float, digits: int) -> str:
    return f"{round(float(x), digits):.{digits}f}".rstrip("0").rstrip(".") if digits else str(round(x))


def _row(d: dict, digits: int = 4) -> str:
    return "{ " + ", ".join(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {_num(v, digits)}"
                           for k, v in d.items()) + " },"


def _list(values, digits: int, per_line: int = 12, indent: str = "    ") -> str:
    chunks = [", ".join(_num(v, digits) for v in values[i:i + per_line]) for i in range(0, len(values), per_line)]
    return "[\n" + ",\n".join(indent + c for c in chunks) + ",\n]"


def text(seed: int) -> str:
    agents = bf.load_feeder("two_area").agents
    batteries, pumps, t_out, _cop = draw(agents, seed)
    imbalance = 2 * max(PRICE_DAY)
    out = [f'''# Aggregator contracts of the two-area test system (feeders/two_area.toml, priors/two_area.toml),
# after "Two-Stage Secure Bottom-Up Load Coordination Mechanism in Distribution Grids" (IEEE SEGE 2023):
# "70 PV/battery setups, and 80 heating systems supplied by heat pumps (HP) that are in contract with
# two aggregators".  Only the paper's abstract is available: who holds which device and every parameter
# below are our assumptions, drawn once (seed {seed}) by contracts/derive_two_area.py from the
# distributions of priors/default.toml where it has them; do not edit by hand, re-run the script.
# The format is documented in contracts/README.md.

[contracts]
name = "two_area"
feeder = "two_area"           # the feeder these agents are on (bayesflex coordinate --feeder default)
priors = "two_area"           # their uncontrollable demand and PV (--priors default)

[market]
currency = "GBP"
# Day-ahead price per half-hour, GBP/kWh, a daily profile from 00:00 local time repeated over the
# horizon: ASSUMPTION, the shape of a UK half-hourly import tariff (Octopus Agile-like: cheapest
# 02:00-04:00, peak 16:00-19:00); bench/two_area.py's PRICE_DAY.
price_per_kwh = {_list(PRICE_DAY, 2)}
# Every kWh off a commitment costs this, GBP/kWh: ASSUMPTION, twice the highest day-ahead price (the
# default of bayesflex.aggregator.portfolio.schedule), above every price so that a re-plan never leaves its
# commitment to save energy cost, only where the DSO's limits leave no other way.
imbalance_price_per_kwh = {_num(imbalance, 2)}

[weather]
# Outdoor temperature forecast, degC per half-hour of the day from 00:00: the January normal daily low
# and high of Manchester Ringway, 1.7 and 7.3 degC (Met Office 1981-2010, priors/default.toml
# [heat_pump] forecast_min_c/forecast_max_c), joined by a cosine with its maximum at 14:30
# (bayesflex.priors.heat_pump.normal_temperature).
t_out_c = {_list(t_out, 2)}

[defaults.battery]
# Every battery is kept between 10 and 95 % state of charge (priors/default.toml [battery] soc_min,
# soc_max) and starts half full (soc0: ASSUMPTION, the mean of default.toml's initial_soc Beta(4, 4));
# it must end the horizon no emptier than it began.
soc0 = 0.5
soc_min = 0.1
soc_max = 0.95

[defaults.heat_pump]
# COP from the outdoor temperature at a {FLOW_C:g} degC flow: hplib 1.9 generic air-source heat pump
# (priors/default.toml [heat_pump]); 'cop' would give it directly instead (a number or a profile).
flow_temperature_c = {FLOW_C:g}
# Comfort band: from 1 K below the setpoint (t_min_c) to 2 K above (t_max_c), with a 3 K night setback of
# the lower bound from 22:00 to 06:00 local time: ASSUMPTION (a programmable thermostat's usual setback).
setback_k = 3.0
setback = ["22:00", "06:00"]
''']
    for k, name in enumerate(("alpha", "beta")):
        bats, hps = batteries[k::2], pumps[k::2]
        out.append(f'''
# Aggregator {name}: every other PV/battery house and every other heat-pump house of both areas
# ({len(bats)} batteries, {len(hps)} heat pumps).  Its market commitment is its stage-1 schedule (no
# commitment_kw given).
[[aggregator]]
name = "{name}"
# Batteries: capacity, kWh, log-normal (ln mean 2.2, ln sd 0.3: median 9.0 kWh) and power, kW, uniform
# 3-5 kW (priors/default.toml [battery]).
batteries = [''')
        out += ["    " + _row(b, 3) for b in bats]
        out.append(''']
# Heat pumps: heat loss h_kw_per_k log-normal (ln mean -1.662, ln sd 0.4) and electrical rating_kw
# log-normal (ln mean 1.435, ln sd 0.2), an earlier ENWL calibration of priors/default.toml [heat_pump]
# (today's there: ln mean -1.395, ln sd 0.268 and ln mean 1.293, ln sd 0.183; kept here so that the
# two-area figures stay comparable), the rating at least 1.3 times the power that holds the upper band
# on the coldest half-hour (never undersized); setpoint normal (20, 1) degC (default.toml setpoint_c):
# t_init_c = the setpoint, t_min_c and t_max_c 1 K below and 2 K above it (ASSUMPTION); thermal
# capacity c_kwh_per_k log-normal, median 10 kWh/K, ln sd 0.3: ASSUMPTION (default.toml's median is
# 6.25 kWh/K; 10 gives a time constant of about two days).
heat_pumps = [''')
        out += ["    " + _row(h, 3) for h in hps]
        out.append("]")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "two_area.toml"))
    args = ap.parse_args(argv)
    Path(args.out).write_text(text(args.seed))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
