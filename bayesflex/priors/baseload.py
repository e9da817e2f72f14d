"""Household baseload: bounded by the service fuse, right in its tails.

For agent ``a``, day ``d`` and half-hour ``t`` (``h(t)`` its half-hour of the day)::

    C_a        service capacity, kW: a fuse rating drawn from service_kw / service_share
               (single phase at 230 V; three-phase agents have it on each phase), less the
               rated power of the agent's EV charger, heat pump and refrigeration
    L_a,d      = exp(level_log_mean - level_log_sd^2 / 2 + s_H z_a + s_D w_a,d),  z, w ~ N(0, 1)
               s_H = level_log_sd sqrt(1 - day_share), s_D = level_log_sd sqrt(day_share)
    mu_a,d,t   = min(shape_kw[h(t)] L_a,d, C_a / 2)            mean kW
    var_a,d,t  = appliance_kw mu (mu / (mu + knee_kw))^knee_power
    p_a,t      = C_a B_a,t,  B_a,t ~ Beta with mean mu / C_a and variance var / C_a^2
    B_a,t      = G_a,t / (G_a,t + H_a,t),  G, H Gamma chains in time (beta-gamma thinning,
               :func:`gamma_thinning`, ``persistence``): every margin exactly that Beta

Why this structure.  Real household demand is a sum of appliances behind a
fuse: it cannot exceed the fuse, and at high demand it varies like a sum of
appliances switching (compound-Poisson: variance proportional to the mean,
``appliance_kw`` the size-weighted appliance power), while at low demand
(standby, fridge) it varies less (the ``knee``).  A Beta on ``[0, C]`` with
that mean-variance relation has the right skew at every level and, unlike
the log-normal it replaces, no tail beyond the fuse: for ``C`` far above the
mean it is close to a Gamma with the same two moments.  ``shape_kw`` is the
measured mean profile, so the model's mean kW at every half-hour is the
data's (before the rarely binding ``C/2`` cap on the mean).  The level ``L``
is the household (``z``) and its day (``w``); time dependence within a
household comes from building each Beta as a ratio of two Gamma chains that
carry a share ``persistence`` of themselves from one half-hour to the next,
so the margins stay exactly Beta and drawing takes only Gamma variates
(an inverse Beta CDF for every house-half-hour, as a copula needs, costs
about 5 us each: 25 s for a default study's draws).

The level spread and the variance function are fitted jointly to ENWL's 100
households by ``priors/fit_baseload.py`` (PyMC, NUTS), ``persistence`` then
so that the draws' lag-1 autocorrelation of kW is the data's; the
split of the level between households and days (``day_share``) cannot be
estimated from ENWL (one day per household) and is an ASSUMPTION in the
prior files; :func:`bayesflex.condition` estimates it from multi-day
readings.  Reactive power ``q = p tan(arccos(power_factor_a))`` (lagging).
"""

from __future__ import annotations

import numpy as np

from bayesflex.core.checks import HALF_HOURS_PER_DAY, toml_number, toml_numbers
from bayesflex.errors import ConfigError
from bayesflex.priors.technology import Model, Output

#: readings are taken as at least this share of the capacity, and at most 1 minus it, in the Beta likelihood
EDGE = 1e-6
#: the mean of a half-hour is at most this share of the capacity (a Beta needs mean < 1; a
#: household whose mean sits at its fuse is not a household)
MAX_MEAN_SHARE = 0.5
#: smallest capacity left for baseload, kW (an agent whose appliances' ratings take more of its
#: service than this leaves is drawn with this much, and counted in the study's plausibility check)
MIN_CAP_KW = 1.0
#: smallest Beta precision (mean-variance pairs a Beta cannot have are made the nearest it can)
PHI_MIN = 1e-2


def half_hour_of_day(times: np.ndarray) -> np.ndarray:
    t = times.astype("datetime64[m]").astype(np.int64)
    return (t // 30) % 48


def day_index(times: np.ndarray) -> np.ndarray:
    """0 for the horizon's first calendar day (UTC), 1 for the next..."""
    d = times.astype("datetime64[D]").astype(np.int64)
    return d - d[0]


def shape_kw_at(shape_kw, times: np.ndarray) -> np.ndarray:
    return np.asarray(shape_kw, float)[half_hour_of_day(times)]


def variance_kw2(mu, appliance_kw, knee_kw, knee_power):
    """Variance of a half-hour's kW at mean ``mu`` (numpy or pytensor)."""
    return appliance_kw * mu * (mu / (mu + knee_kw)) ** knee_power


def beta_ab(mu, cap_kw, appliance_kw, knee_kw, knee_power, xp=np):
    """Beta parameters ``(a, b)`` of ``p / cap_kw`` for mean ``mu`` kW (capped at
    ``MAX_MEAN_SHARE cap_kw``).  ``xp`` is numpy or ``pytensor.tensor``."""
    mu = xp.minimum(mu, MAX_MEAN_SHARE * cap_kw)
    m = mu / cap_kw
    phi = xp.maximum(m * (1 - m) / (variance_kw2(mu, appliance_kw, knee_kw, knee_power) / cap_kw**2) - 1,
                     PHI_MIN)
    return m * phi, (1 - m) * phi


def ar1(rng: np.random.Generator, rho: np.ndarray, sd: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Stationary AR(1) along axis 1 of ``shape = (draw, time, ...)``, with
    per-draw ``rho (draw,)`` and marginal ``sd (draw,)`` (used by the heat pump's
    temperature error)."""
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


def gamma_thinning(rng: np.random.Generator, shape: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """Gamma variates of unit scale and shapes ``shape (draw, time, ...)``, a
    Markov chain along axis 1 whose every margin is exactly ``Gamma(shape)``:
    the beta-gamma thinning of Lewis, McKenzie and Hugus (1989, "Gamma
    processes", Stochastic Models 5(1))::

        c_t = rho min(k_t-1, k_t)
        G_t = B_t G_t-1 + Gamma(k_t - c_t),  B_t ~ Beta(c_t, k_t-1 - c_t)

    (``B G ~ Gamma(c)`` when ``G ~ Gamma(k)`` and ``B ~ Beta(c, k - c)``);
    consecutive values correlate by ``c_t / sqrt(k_t-1 k_t)``, ``rho`` when the
    shape is steady.  ``rho (draw,)`` in [0, 1)."""
    rho = np.asarray(rho, float).reshape((shape.shape[0],) + (1,) * (shape.ndim - 2))
    g = np.empty(shape.shape)
    g[:, 0] = rng.standard_gamma(shape[:, 0])
    for t in range(1, shape.shape[1]):
        k0, k1 = shape[:, t - 1], shape[:, t]
        c = rho * np.minimum(k0, k1)
        keep = np.where(c > 0, rng.beta(np.maximum(c, 1e-300), np.maximum(k0 - c, 1e-300)), 0.0)
        g[:, t] = keep * g[:, t - 1] + rng.standard_gamma(k1 - c)
    return g


def simulate(par: dict[str, np.ndarray], shape_kw, times: np.ndarray, cap_kw: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Baseload ``p_kw``, ``q_kvar`` of shape (draw, time, agent), each below its ``cap_kw``.

    ``par`` holds per-draw arrays ``level_log (draw, agent, day)`` (the
    household-and-day log level, its mean correction included),
    ``appliance_kw``, ``knee_kw``, ``knee_power``, ``persistence`` (draw,) and
    ``power_factor (draw, agent)``; ``cap_kw (draw, agent)`` is the capacity
    left for baseload.
    """
    n = cap_kw.shape[0]
    days = day_index(times)
    level = np.exp(par["level_log"])[:, :, days].transpose(0, 2, 1)  # (draw, time, agent)
    mu = shape_kw_at(shape_kw, times)[None, :, None] * level
    cap = cap_kw[:, None, :]

    def per_draw(key):
        return np.asarray(par[key], float).reshape(n, 1, 1)

    a, b = beta_ab(mu, cap, per_draw("appliance_kw"), per_draw("knee_kw"), per_draw("knee_power"))
    ga = gamma_thinning(rng, a, par["persistence"])
    gb = gamma_thinning(rng, b, par["persistence"])
    total = ga + gb
    p = cap * np.divide(ga, total, out=np.zeros_like(ga), where=total > 0)
    pf = np.clip(par["power_factor"], 1e-6, 1.0)[:, None, :]
    q = p * np.tan(np.arccos(pf))
    return p, q


def log_level(mean, sd, share, z, w, xp=np):
    """ln of the household-and-day level, its mean correction included: ``z`` the
    household's standard normal (broadcast against ``w``, the day's), the rest the
    population's ``level_log_mean``, ``level_log_sd``, ``day_share``.  ``xp`` is numpy
    or ``pytensor.tensor`` (the sampler and the conditioning fit share it)."""
    return mean - sd**2 / 2 + sd * (xp.sqrt(1 - share) * z + xp.sqrt(share) * w)


def level_log(par: dict[str, np.ndarray], z: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``level_log (draw, agent, day)`` from the population parameters (draw,)
    and standard normals ``z (draw, agent)`` (household), ``w (draw, agent, day)`` (day)."""
    def per_draw(key):
        return np.asarray(par[key], float)[:, None, None]

    return log_level(per_draw("level_log_mean"), per_draw("level_log_sd"), per_draw("day_share"), z[:, :, None], w)


def service_rvs(pm, tech, n_agent: int, posterior=None) -> dict:
    """Each agent's service (an index into ``service_kw``)."""
    rv = pm.Categorical("baseload.service", p=np.asarray(tech.extra["service_share"]), dims="agent")
    return {"baseload.service": (rv, (n_agent,))}


def parse(tab: dict, where: str) -> dict:
    what = f"{HALF_HOURS_PER_DAY} non-negative numbers (mean kW per half-hour from 00:00), not all zero"
    extra = {"shape_kw": toml_numbers(tab, "shape_kw", where, lo=0, hi=float("inf"), n=HALF_HOURS_PER_DAY, what=what)}
    if sum(extra["shape_kw"]) <= 0:
        raise ConfigError(f"{where} shape_kw: must be {what}")
    extra["service_kw"] = toml_numbers(tab, "service_kw", where, lo=1, hi=1000, n=None,
                                       what="a list of service capacities per phase in kW, each in [1, 1000] "
                                            "(fuse rating x 230 V, e.g. [13.8, 18.4, 23.0])")
    n = len(extra["service_kw"])
    extra["service_share"] = toml_numbers(tab, "service_share", where, lo=0, hi=1, n=n,
                                          what=f"{n} probabilities (one per service_kw) that add up to 1")
    if not extra["service_kw"] or abs(sum(extra["service_share"]) - 1) > 1e-6:
        raise ConfigError(f"{where} service_share: must be {n} probabilities (one per service_kw) that add up to 1")
    extra["electrified_service_kw"] = toml_number(tab, "electrified_service_kw", where, lo=1, hi=1000,
                                                  default=max(extra["service_kw"]))
    top = max(extra["shape_kw"])
    if top > MAX_MEAN_SHARE * min(extra["service_kw"]):
        raise ConfigError(f"{where} shape_kw: a mean of {top:g} kW does not fit a service of "
                          f"{min(extra['service_kw']):g} kW (service_kw; at most {MAX_MEAN_SHARE:g} of it)")
    return extra


_RETIRED = ("log_daily_kwh_mean, log_daily_kwh_sd, noise_sd and noise_rho belong to the log-normal baseload that "
            "bayesflex replaced (its tail drew houses beyond any fuse); copy the [baseload] table of "
            "priors/default.toml and keep your shape_kw")

#: every agent has a baseload; sampling runs it itself (it is capped by what the agent's service
#: leaves after the other technologies' ratings, and conditioned on meter readings)
MODEL = Model(
    name="baseload",
    schema={"level_log_mean": "real", "level_log_sd": "positive", "day_share": "unit", "appliance_kw": "positive",
            "knee_kw": "positive", "knee_power": "positive", "persistence": "unit", "power_factor": "unit"},
    per_agent=("power_factor",),
    keys=frozenset({"shape_kw", "service_kw", "service_share", "electrified_service_kw"}), parse=parse,
    retired={"log_daily_kwh_mean": _RETIRED, "noise_sd": _RETIRED},
    output=Output("p_base_kw", "household baseload", "baseload"),
    simulate=None, owned=False, random=True, controllable=False, rvs=service_rvs, prefix="baseload",
)
