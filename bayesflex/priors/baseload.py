"""Household baseload: a daily shape, a household scale, correlated noise.

For household ``a`` and half-hour ``t`` (``h(t)`` its half-hour of the day)::

    log D_a  ~ Normal(log_daily_kwh_mean, log_daily_kwh_sd)   daily energy, kWh
    p_a,t    = D_a / 24 * s_h(t) * exp(e_a,t - noise_sd^2 / 2)   kW
    e_a,t    = noise_rho * e_a,t-1 + sqrt(1 - noise_rho^2) * noise_sd * xi,  xi ~ N(0, 1)

``s`` is ``shape_kw`` normalised to mean 1, so ``E[p]`` integrates to ``D_a``
per day; ``e`` is a stationary AR(1) with marginal sd ``noise_sd``.  Reactive
power ``q = p tan(arccos(power_factor_a))`` (lagging).
"""

from __future__ import annotations

import numpy as np

PER_AGENT = ("power_factor",)
#: readings below this are taken as this, before logs (meters read 0 W at times)
FLOOR_KW = 0.001


def half_hour_of_day(times: np.ndarray) -> np.ndarray:
    t = times.astype("datetime64[m]").astype(np.int64)
    return (t // 30) % 48


def shape_factor(shape_kw: tuple[float, ...], times: np.ndarray) -> np.ndarray:
    s = np.asarray(shape_kw, float)
    return (s / s.mean())[half_hour_of_day(times)]


def ar1(rng: np.random.Generator, rho: np.ndarray, sd: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Stationary AR(1) along axis 1 of ``shape = (draw, time, ...)``, with
    per-draw ``rho (draw,)`` and marginal ``sd (draw,)``."""
    extra = (1,) * (len(shape) - 2)
    rho = np.asarray(rho, float).reshape((shape[0],) + extra)
    sd = np.asarray(sd, float).reshape((shape[0],) + extra)
    xi = rng.standard_normal(shape)
    e = np.empty(shape)
    e[:, 0] = sd * xi[:, 0]
    innov = np.sqrt(1 - rho**2) * sd
    for t in range(1, shape[1]):
        e[:, t] = rho * e[:, t - 1] + innov * xi[:, t]
    return e


def simulate(par: dict[str, np.ndarray], shape_kw, times: np.ndarray, n_agent: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Baseload ``p_kw``, ``q_kvar`` of shape (draw, time, agent).

    ``par`` holds per-draw arrays: ``log_daily_kwh (draw, agent)``,
    ``noise_sd (draw,)``, ``noise_rho (draw,)``, ``power_factor (draw, agent)``.
    """
    n = par["log_daily_kwh"].shape[0]
    e = ar1(rng, par["noise_rho"], par["noise_sd"], (n, len(times), n_agent))
    sd = np.asarray(par["noise_sd"]).reshape(n, 1, 1)
    level = np.exp(par["log_daily_kwh"])[:, None, :] / 24.0
    p = level * shape_factor(shape_kw, times)[None, :, None] * np.exp(e - sd**2 / 2)
    pf = np.clip(par["power_factor"], 1e-6, 1.0)[:, None, :]
    q = p * np.tan(np.arccos(pf))
    return p, q
