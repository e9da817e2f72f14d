"""Air-source heat pumps: one outdoor temperature for the feeder, a house each,
heating called for in timed periods and delivered at the pump's rating.

Why this structure.  ENWL's measured heat pumps (100 units, 5-minute kW) are
fixed-speed machines: a unit draws either nothing or its rating (3.0 or 4.3 kW,
``priors/derive_heat_pump.py``), and it runs in timed heating periods, mostly
morning and evening: off in 63 % of half-hours, near its rating when on.  A
model that heats continuously to a setpoint gets the daily energy right but
spreads it thin (about 1.2 kW all day) and halves the coincident peak (ADMD).
So the model keeps the physics that sets the energy (a house losing heat to
the outdoors, a COP that falls with the cold) and adds the two things that set
the tails and coincidence: *when* heat is called for (a timer and thermostat
calls, as measured) and *how* it is delivered (at the rating, a fraction of
the half-hour, with a recovery at full power after every off period).

Outdoor temperature, shared by every agent (one weather)::

    T_out,t = normal_t + e_t,   e AR(1) with marginal sd temp_error_sd, lag-1 temp_error_rho
    normal_t = (forecast_min_c + forecast_max_c)/2
               + (forecast_max_c - forecast_min_c)/2 * cos(2 pi (hour - 14.5) / 24)

(warmest at 14:30, coldest at 02:30).

Call for heat, per house: a two-state Markov chain over the half-hours, the
house's heating called for (timer period and thermostat) or not, switching on
with probability ``call_start[h]`` and off with ``call_stop[h]`` at half-hour
of the day ``h`` (UTC), from the chain's own day-periodic share at the first
half-hour.  Both arrays are ENWL's on/off transitions (a half-hour's mean above
0.1 kW), so the share called for matches the data's by half-hour and the
lengths of on and off runs (recoveries, cycling gaps) follow the data's.  The
houses' chains are independent: coincidence comes from the clock, not from a
common switch.

House ``a``, one thermal node (SAP's heat-loss and thermal-mass view of a
dwelling)::

    C dT_in/dt = COP(T_out) p - H (T_in - T_out),     tau = C / H
    H = heat_loss_kw_per_k_a (kW/K), C = heat_capacity_kwh_per_k_a (kWh/K)
    COP = max(1, 0.15405 T_out - 0.087567 T_flow + 7.04544)    hplib's generic regulated
          air/water heat pump (group 1), flow temperature T_flow = flow_temp_c

solved exactly over each half-hour with constant ``p`` and ``T_out``.  In a
half-hour the pump draws the electrical power ``p`` that brings the house to its
target at the half-hour's end, within ``[0, rating_kw_a]``: the target is
``setpoint_c_a`` while heat is called for and ``setpoint_c_a - setback_k``
(frost and setback protection) while it is not.  A fixed-speed pump meets
``p`` by running at its rating for ``p / rating`` of the half-hour, so ``p``
is the half-hour's mean: the rating after an off period (recovery), what the
house loses once it is back at its setpoint, nothing when it is warm enough.
Each house starts the horizon as it ends a day of its own (one simulated day
of burn-in from ``setpoint_c``).

Heat the rating cannot deliver: ``unmet_kwh``, the electricity above the rating
that holding the setpoint would take while heat is called for (an undersized
pump).  Flexibility per half-hour, from the house's state at its start: the
lowest and highest power, within ``[0, rating]``, that end the half-hour no
more than ``comfort_band_k`` below the simulated path's end temperature or the
setpoint, whichever is lower (while heat is called for: a recovery can be
slowed, by up to the band; ``setpoint - setback_k`` while it is not), and no
more than ``comfort_band_k`` above the setpoint (heat stored ahead):
``p_lb <= p <= p_ub``.  Each bound is one half-hour's move from the simulated
path, not a schedule.

References: hplib (the heat pump library), v1.9, its "Generic" parameters; BRE,
SAP 2012, Table 1e (thermal mass parameter); ENWL, Low Voltage Network
Solutions, winter heat-pump profiles (``priors/derive_heat_pump.py``).
"""

from __future__ import annotations

import numpy as np

from bayesflex.core.checks import HALF_HOURS_PER_DAY, toml_number, toml_numbers
from bayesflex.priors.baseload import ar1, half_hour_of_day
from bayesflex.priors.technology import Context, Model, Output, Simulation

#: hplib 1.9, "Generic" regulated outdoor-air/water heat pump: COP = (p1+p4) T_air + p2 T_flow + p3
COP_COEFFS = (0.15405, -0.087567, 7.04544)
DT_H = 0.5  # a half-hour, h
BURN_IN = 48  # half-hours simulated before the horizon, discarded


def cop(t_out_c: np.ndarray, t_flow_c: float) -> np.ndarray:
    a, b, c = COP_COEFFS
    return np.maximum(1.0, a * np.asarray(t_out_c) + b * t_flow_c + c)


def normal_temperature(times: np.ndarray, t_min: float, t_max: float) -> np.ndarray:
    hour = half_hour_of_day(times) / 2 + 0.25  # middle of the half-hour
    return (t_min + t_max) / 2 + (t_max - t_min) / 2 * np.cos(2 * np.pi * (hour - 14.5) / 24)


def periodic_share(start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """(48,) share of houses called for at each half-hour of the day: the fixed
    point of the chain over one day (``s_h = s_{h-1} (1 - stop_h) + (1 - s_{h-1}) start_h``,
    half-hour 0 following 47)."""
    start, stop = np.asarray(start, float), np.asarray(stop, float)
    slope, icpt = 1.0, 0.0  # s_47 = slope * s_47(previous day) + icpt, composed over the day
    for h in range(48):
        g = 1.0 - start[h] - stop[h]
        slope, icpt = g * slope, g * icpt + start[h]
    s = icpt / (1.0 - slope) if slope < 1.0 else float(start.mean() > 0)
    out = np.empty(48)
    for h in range(48):
        s = s * (1.0 - stop[h]) + (1.0 - s) * start[h]
        out[h] = s
    return out


def call_for_heat(start: np.ndarray, stop: np.ndarray, hh: np.ndarray, shape: tuple[int, int],
                  rng: np.random.Generator) -> np.ndarray:
    """``(draw, time, agent)`` bool: heat called for, each house its own chain
    over the half-hours of the day ``hh (time,)``, started from the periodic share."""
    start, stop = np.asarray(start, float), np.asarray(stop, float)
    u = rng.random((shape[0], len(hh), shape[1]))
    out = np.empty(u.shape, bool)
    out[:, 0] = u[:, 0] < periodic_share(start, stop)[hh[0]]
    for i in range(1, len(hh)):
        h = hh[i]
        out[:, i] = np.where(out[:, i - 1], u[:, i] >= stop[h], u[:, i] < start[h])
    return out


def _power_for(t_end: np.ndarray, drift: np.ndarray, k_per_kw: np.ndarray, rating: np.ndarray) -> np.ndarray:
    """Electrical kW, within ``[0, rating]``, that ends the half-hour at ``t_end``: the house
    would end it at ``drift`` with the pump off, and each electrical kW adds ``k_per_kw`` K."""
    return np.clip((t_end - drift) / k_per_kw, 0.0, rating)


def heat_houses(par: dict, extra: dict, times: np.ndarray, owners: np.ndarray,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``p_kw, p_lb_kw, p_ub_kw, t_in_c (draw, time, agent)`` in kW and degC,
    ``call (draw, time, agent)`` bool, ``t_out_c (draw, time)``, ``unmet_kwh (draw, agent)``."""
    n, n_t = owners.shape[0], len(times)
    n_agent = owners.shape[1]
    step = np.timedelta64(30, "m")
    all_times = np.asarray(times, "datetime64[ns]")[0] + step * np.arange(-BURN_IN, n_t)
    hh = half_hour_of_day(all_times)
    t_out = normal_temperature(all_times, extra["forecast_min_c"], extra["forecast_max_c"])[None] + \
        ar1(rng, par["temp_error_rho"], par["temp_error_sd"], (n, len(all_times)))
    call = call_for_heat(extra["call_start"], extra["call_stop"], hh, (n, n_agent), rng)
    c_op = cop(t_out, extra["flow_temp_c"])

    h_kw = par["heat_loss_kw_per_k"]  # (draw, agent)
    decay = np.exp(-DT_H * h_kw / par["heat_capacity_kwh_per_k"])  # e^(-dt/tau)
    gain = (1.0 - decay) / h_kw  # K per kW thermal held over the half-hour
    t_set, rating = par["setpoint_c"], par["rating_kw"]
    t_low_off = t_set - extra["setback_k"]
    band = extra["comfort_band_k"]

    t_in = np.array(t_set, float)
    shape = (n, n_t, n_agent)
    p, p_lb, p_ub, temp = (np.empty(shape) for _ in range(4))
    unmet = np.zeros((n, n_agent))
    for i in range(len(all_times)):
        to, cp = t_out[:, i, None], c_op[:, i, None]
        drift = to + (t_in - to) * decay  # end temperature with the pump off
        on = call[:, i]
        q = _power_for(np.where(on, t_set, t_low_off), drift, gain * cp, rating)
        t_next = drift + q * cp * gain
        j = i - BURN_IN
        if j >= 0:
            p[:, j], temp[:, j] = q, t_in
            low = np.where(on, np.minimum(t_set, t_next) - band, t_low_off)
            p_lb[:, j] = np.minimum(q, _power_for(low, drift, gain * cp, rating))
            p_ub[:, j] = np.maximum(q, _power_for(t_set + band, drift, gain * cp, rating))
            unmet += np.where(on, np.maximum(h_kw * (t_set - to) / cp - rating, 0.0), 0.0) * DT_H
        t_in = t_next

    own = owners[:, None, :]
    return {
        "p_kw": p * own,
        "p_lb_kw": p_lb * own,
        "p_ub_kw": p_ub * own,
        "t_in_c": temp,
        "call": call[:, BURN_IN:],
        "t_out_c": t_out[:, BURN_IN:],
        "unmet_kwh": unmet * owners,
    }


def simulate(params: dict, extra: dict, owners: np.ndarray, context: Context,
             rng: np.random.Generator) -> Simulation:
    """The owners' houses heated through the horizon, under one outdoor temperature."""
    res = heat_houses(params, extra, context.times.values, owners, rng)
    return Simulation(res["p_kw"], res["p_lb_kw"], res["p_ub_kw"],
                      rating_kw=np.where(owners, params["rating_kw"], 0.0), variables={
                          "hp_outdoor_temp_c": (("draw", "time"), res["t_out_c"], {"units": "degC"}),
                          "hp_unmet_kwh": (("draw", "agent"), res["unmet_kwh"], {"units": "kWh"}),
                      })


def parse(tab: dict, where: str) -> dict:
    extra = {"forecast_min_c": toml_number(tab, "forecast_min_c", where, lo=-60, hi=60)}
    extra["forecast_max_c"] = toml_number(tab, "forecast_max_c", where, lo=extra["forecast_min_c"], hi=60)
    extra["setback_k"] = toml_number(tab, "setback_k", where, lo=0, hi=30, default=0.0)
    extra["flow_temp_c"] = toml_number(tab, "flow_temp_c", where, lo=20, hi=80, default=45.0)
    extra["comfort_band_k"] = toml_number(tab, "comfort_band_k", where, lo=0, hi=10, default=0.0)
    for key in ("call_start", "call_stop"):
        extra[key] = toml_numbers(tab, key, where, lo=0, hi=1, n=HALF_HOURS_PER_DAY,
                                  what=f"{HALF_HOURS_PER_DAY} probabilities in [0, 1] (one per half-hour from 00:00)")
    return extra


MODEL = Model(
    name="heat_pump",
    schema={"heat_loss_kw_per_k": "positive", "heat_capacity_kwh_per_k": "positive", "setpoint_c": "real",
            "rating_kw": "positive", "temp_error_sd": "positive", "temp_error_rho": "unit"},
    per_agent=("heat_loss_kw_per_k", "heat_capacity_kwh_per_k", "setpoint_c", "rating_kw"),
    keys=frozenset({"forecast_min_c", "forecast_max_c", "setback_k", "flow_temp_c", "comfort_band_k", "call_start",
                    "call_stop"}), parse=parse,
    output=Output("p_hp_kw", "heat pump", "heat pumps"),
    simulate=simulate, random=True, service="electrified", prefix="hp",
)
