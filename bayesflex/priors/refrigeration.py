"""Commercial refrigeration: compressor packs with defrost flexibility.

For a refrigeration agent (a shop; listed in the priors file), per minute::

    normal        p = compressor_kw * duty
    defrost       p = 0: the compressor stops; the shelf air warms at
                  shelf_warming_c_per_min from setpoint_c, and the calculated
                  product temperature (the aggregator paper's moving average)
                  CPT_k = (sum_{i=1..29} CPT_{k-i} + T_shelf,k) / 30
                  ends the defrost when it reaches cpt_max_c
    recovery      p = compressor_kw until the cooling missed during the
                  defrost is made up: duty * D / (1 - duty) minutes

Defrosts start at ``defrost_hours``; half-hourly power is the mean of the
minutes.  A shop whose defrost and recovery do not fit between two defrosts
cannot make up the missed cooling: it is flagged (``recovered`` False), and
the energy it misses is lost, not invented.  Flexibility per half-hour: outside a defrost or recovery, starting
a defrost now cuts the half-hour's mean by ``duty * compressor_kw *
min(D, 30) / 30`` (turn-down); lowering the suction pressure raises it by
``suction_flex * compressor_kw`` up to full power (turn-up).
"""

from __future__ import annotations

import numpy as np

from bayesflex.core.checks import toml_number, toml_numbers
from bayesflex.priors.baseload import half_hour_of_day
from bayesflex.priors.technology import Context, Model, Output, Simulation

WINDOW = 30  # minutes in the moving average
MAX_DEFROST_MIN = 240


def defrost_minutes(setpoint_c: np.ndarray, cpt_max_c: float, warming: np.ndarray) -> np.ndarray:
    """Duration (minutes) of a defrost that ends when CPT reaches ``cpt_max_c``;
    vectorised over any shape.  CPT starts at the setpoint (the product was
    held there), the shelf air warms linearly from the setpoint."""
    setpoint_c, warming = np.broadcast_arrays(np.asarray(setpoint_c, float), np.asarray(warming, float))
    hist = np.repeat(setpoint_c[..., None], WINDOW - 1, axis=-1)  # CPT_{k-29..k-1}
    dur = np.full(setpoint_c.shape, MAX_DEFROST_MIN)
    done = np.zeros(setpoint_c.shape, bool)
    for k in range(1, MAX_DEFROST_MIN + 1):
        shelf = setpoint_c + warming * k
        cpt = (hist.sum(axis=-1) + shelf) / WINDOW
        hit = ~done & (cpt >= cpt_max_c)
        dur[hit] = k
        done |= hit
        if done.all():
            break
        hist = np.concatenate([hist[..., 1:], cpt[..., None]], axis=-1)
    return dur


def refrigerate(par: dict, extra: dict, minutes_of_day: np.ndarray, owners: np.ndarray) -> dict[str, np.ndarray]:
    """Half-hourly ``p_kw, p_lb_kw, p_ub_kw (draw, time, agent)``, the defrost
    duration ``defrost_min`` and ``recovered (draw, agent)``.  ``minutes_of_day`` gives
    the first minute of each half-hour."""
    n, n_agent = owners.shape
    kw, duty = par["compressor_kw"], par["duty"]
    d = defrost_minutes(extra["setpoint_c"], extra["cpt_max_c"], par["shelf_warming_c_per_min"])  # (draw, agent)
    rec = np.ceil(duty * d / np.maximum(1 - duty, 1e-6)).astype(int)
    minute = (minutes_of_day[:, None] + np.arange(30)[None]) % 1440  # (time, 30)
    starts = np.array(extra["defrost_hours"], float) * 60
    # minutes since the latest defrost start (wrapping over midnight)
    since = np.min((minute[..., None] - starts) % 1440, axis=-1)  # (time, 30)
    in_def = since[None, :, :, None] < d[:, None, None, :]  # (draw, time, 30, agent)
    in_rec = ~in_def & (since[None, :, :, None] < (d + rec)[:, None, None, :])
    level = np.where(in_def, 0.0, np.where(in_rec, 1.0, duty[:, None, None, :]))
    p = (kw[:, None, None, :] * level).mean(axis=2)  # (draw, time, agent)
    busy = (in_def | in_rec).any(axis=2)
    cut = duty * kw * np.minimum(d, 30) / 30
    lb = np.where(busy, p, p - cut[:, None, :])
    ub = np.minimum(kw[:, None, :], p + extra["suction_flex"] * kw[:, None, :])
    own = owners[:, None, :]
    hours = np.sort(np.array(extra["defrost_hours"], float))
    gap = np.min(np.diff(np.r_[hours, hours[0] + 24])) * 60 if len(hours) else np.inf
    return {"p_kw": p * own, "p_lb_kw": lb * own, "p_ub_kw": ub * own, "defrost_min": d * owners,
            "recovered": (d + rec <= gap) | ~owners}


def simulate(params: dict, extra: dict, owners: np.ndarray, context: Context, rng=None) -> Simulation:
    """The shops' compressor packs through their defrosts."""
    res = refrigerate(params, extra, half_hour_of_day(context.times.values) * 30, owners)
    return Simulation(res["p_kw"], res["p_lb_kw"], res["p_ub_kw"],
                      rating_kw=np.where(owners, params["compressor_kw"], 0.0), variables={
                          "refrigeration_defrost_min": (("draw", "agent"), res["defrost_min"], {"units": "min"}),
                          "refrigeration_recovered": (("draw", "agent"), res["recovered"]),
                      })


def parse(tab: dict, where: str) -> dict:
    extra = {"setpoint_c": toml_number(tab, "setpoint_c", where, lo=-40, hi=20)}
    extra["cpt_max_c"] = toml_number(tab, "cpt_max_c", where, lo=extra["setpoint_c"] + 1e-6, hi=30)
    extra["suction_flex"] = toml_number(tab, "suction_flex", where, lo=0, hi=1, default=0.0)
    extra["defrost_hours"] = toml_numbers(tab, "defrost_hours", where, lo=0, hi=24 - 1e-9, n=None, default=[],
                                          what="a list of hours of the day in [0, 24)")
    return extra


MODEL = Model(
    name="refrigeration",
    schema={"compressor_kw": "positive", "duty": "unit", "shelf_warming_c_per_min": "positive"},
    per_agent=("compressor_kw", "duty", "shelf_warming_c_per_min"),
    keys=frozenset({"setpoint_c", "cpt_max_c", "defrost_hours", "suction_flex"}), parse=parse,
    output=Output("p_refrigeration_kw", "commercial refrigeration", "refrigeration"),
    simulate=simulate, service="sized",  # a shop's supply is sized to its plant
)
