"""Home batteries: the linear state-of-charge model of the aggregator paper.

With ``B_t`` the battery's power (kW, charging positive), ``E`` its capacity
(kWh) and ``dT = 0.5 h``::

    SoC_s = SoC_0 + dT / E * sum_{t <= s} B_t,   soc_min <= SoC_s <= soc_max for every s

(lossless, as in the paper).  Position: self-consumption, the usual home
mode: charge from the household's surplus (net power below zero, e.g. PV),
discharge to cover its demand, within ``power_kw`` and the SoC limits.

Flexibility, exact for this model: at half-hour ``t`` the battery can move by
``d`` from its position only if every later SoC stays within limits, so::

    p_ub_t = min(power_kw, B_t + (soc_max - max_{s >= t} SoC_s) E / dT)
    p_lb_t = max(-power_kw, B_t - (min_{s >= t} SoC_s - soc_min) E / dT)
"""

from __future__ import annotations

import numpy as np

from bayesflex.core.checks import toml_number
from bayesflex.errors import ConfigError
from bayesflex.priors.technology import Context, Model, Output, Simulation

DT_H = 0.5


def self_consumption(par: dict, extra: dict, net_kw: np.ndarray, owners: np.ndarray) -> dict[str, np.ndarray]:
    """``p_kw, p_lb_kw, p_ub_kw, soc (draw, time, agent)`` given the household's
    net power without the battery ``net_kw (draw, time, agent)``."""
    n, T, n_agent = net_kw.shape
    cap = par["capacity_kwh"]
    pmax = par["power_kw"]
    lo, hi = extra["soc_min"], extra["soc_max"]
    soc = np.clip(par["initial_soc"], lo, hi).copy()
    b = np.zeros((n, T, n_agent))
    socs = np.zeros((n, T, n_agent))
    for t in range(T):
        want = -net_kw[:, t]  # surplus -> charge, demand -> discharge
        room_up = (hi - soc) * cap / DT_H
        room_down = (soc - lo) * cap / DT_H
        bt = np.clip(want, -np.minimum(pmax, room_down), np.minimum(pmax, room_up))
        soc = soc + bt * DT_H / cap
        b[:, t], socs[:, t] = bt, soc
    future_max = np.maximum.accumulate(socs[:, ::-1], axis=1)[:, ::-1]
    future_min = np.minimum.accumulate(socs[:, ::-1], axis=1)[:, ::-1]
    ub = np.minimum(pmax[:, None], b + (hi - future_max) * cap[:, None] / DT_H)
    lb = np.maximum(-pmax[:, None], b - (future_min - lo) * cap[:, None] / DT_H)
    own = owners[:, None, :]
    return {"p_kw": b * own, "p_lb_kw": lb * own, "p_ub_kw": ub * own,
            "soc": np.where(own, socs, np.nan)}


def simulate(params: dict, extra: dict, owners: np.ndarray, context: Context, rng=None) -> Simulation:
    """The owners' batteries in self-consumption, against the net power of the rest of the household."""
    res = self_consumption(params, extra, context.net_kw, owners)
    dims = ("draw", "time", "agent")
    return Simulation(res["p_kw"], res["p_lb_kw"], res["p_ub_kw"], variables={
        "battery_soc": (dims, res["soc"], {"units": "1"}),
        **{f"battery_{k}": (dims, res[k].astype(np.float32), {"units": "kW", "long_name": "the battery's own bound"})
           for k in ("p_lb_kw", "p_ub_kw")},
    })


def parse(tab: dict, where: str) -> dict:
    extra = {"soc_min": toml_number(tab, "soc_min", where, lo=0, hi=1, default=0.1),
             "soc_max": toml_number(tab, "soc_max", where, lo=0, hi=1, default=0.95)}
    if not extra["soc_min"] < extra["soc_max"]:
        raise ConfigError(f"{where}: soc_min {extra['soc_min']} must be below soc_max {extra['soc_max']}")
    return extra


MODEL = Model(
    name="battery",
    schema={"capacity_kwh": "positive", "power_kw": "positive", "initial_soc": "unit"},
    per_agent=("capacity_kwh", "power_kw", "initial_soc"),
    keys=frozenset({"soc_min", "soc_max"}), parse=parse,
    output=Output("p_battery_kw", "battery, charging positive", "batteries"),
    simulate=simulate, after_baseload=True,  # it answers to the household's net power
)
