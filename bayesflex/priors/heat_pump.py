"""Air-source heat pumps: one outdoor temperature for the feeder, a house each.

Outdoor temperature, shared by every agent (one weather)::

    T_out,t = normal_t + e_t,   e AR(1) with marginal sd temp_error_sd, lag-1 temp_error_rho
    normal_t = (forecast_min_c + forecast_max_c)/2
               + (forecast_max_c - forecast_min_c)/2 * cos(2 pi (hour - 14.5) / 24)

(warmest at 14:30, coldest at 02:30).  For house ``a``::

    T_set,a,t  = setpoint_c_a, less setback_k from 22:00 to 06:00
    heat       = heat_loss_kw_per_k_a * max(T_set,a,t - T_out,t, 0)          kW thermal
    COP        = max(1, 0.15405 T_out - 0.087567 T_flow + 7.04544)            hplib's generic
                 regulated air/water heat pump (group 1), flow temperature T_flow = flow_temp_c
    p_a,t      = min(rating_kw_a, heat / COP)                                 kW electrical

Heat above the rating is not delivered (``hp_unmet_kwh``).  Flexibility per
half-hour: the building's thermal mass lets the heat pump run
``flex_fraction`` below or above its demand (``p_lb = (1 - f) p``,
``p_ub = min(rating, (1 + f) p)``) without leaving the comfort band; a
steady-state simplification, not a thermal simulation.
"""

from __future__ import annotations

import numpy as np

from .baseload import ar1, half_hour_of_day

PER_AGENT = ("heat_loss_kw_per_k", "setpoint_c", "rating_kw")
#: hplib 1.9, "Generic" regulated outdoor-air/water heat pump: COP = (p1+p4) T_air + p2 T_flow + p3
COP_COEFFS = (0.15405, -0.087567, 7.04544)


def cop(t_out_c: np.ndarray, t_flow_c: float) -> np.ndarray:
    a, b, c = COP_COEFFS
    return np.maximum(1.0, a * np.asarray(t_out_c) + b * t_flow_c + c)


def normal_temperature(times: np.ndarray, t_min: float, t_max: float) -> np.ndarray:
    hour = half_hour_of_day(times) / 2 + 0.25  # middle of the half-hour
    return (t_min + t_max) / 2 + (t_max - t_min) / 2 * np.cos(2 * np.pi * (hour - 14.5) / 24)


def simulate(par: dict, extra: dict, times: np.ndarray, owners: np.ndarray,
             rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``p_kw, p_lb_kw, p_ub_kw (draw, time, agent)``, ``t_out_c (draw, time)``,
    ``unmet_kwh (draw, agent)``."""
    n = owners.shape[0]
    t_out = normal_temperature(times, extra["forecast_min_c"], extra["forecast_max_c"])[None] + \
        ar1(rng, par["temp_error_rho"], par["temp_error_sd"], (n, len(times)))
    night = np.isin(half_hour_of_day(times), np.r_[0:12, 44:48])  # 22:00-06:00
    t_set = par["setpoint_c"][:, None, :] - extra["setback_k"] * night[None, :, None]
    heat = par["heat_loss_kw_per_k"][:, None, :] * np.maximum(t_set - t_out[:, :, None], 0.0)
    demand = heat / cop(t_out, extra["flow_temp_c"])[:, :, None]
    rating = par["rating_kw"][:, None, :]
    p = np.minimum(rating, demand) * owners[:, None, :]
    f = extra["flex_fraction"]
    return {
        "p_kw": p,
        "p_lb_kw": (1 - f) * p,
        "p_ub_kw": np.minimum(rating, (1 + f) * p) * owners[:, None, :],
        "t_out_c": t_out,
        "unmet_kwh": (np.maximum(demand - rating, 0.0) * owners[:, None, :]).sum(axis=1) * 0.5,
    }
