"""Rooftop PV: clear-sky output from sun position, one sky for the feeder.

For agent ``a`` with PV and half-hour ``t``::

    cs_t      clear-sky plane-of-array irradiance / 1000 W/m2 (kW per kWp), half-hour
              mean, from pvlib (Ineichen clear sky, Perez-free isotropic transposition)
              for the site's latitude/longitude, the panel tilt and azimuth
    k_t       = 1 / (1 + exp(-x_t)),  x_t AR(1) with mean cloud_logit_mean, marginal sd
              cloud_logit_sd, lag-1 correlation cloud_rho: the clear-sky index,
              shared by every agent of the feeder (they see the same sky)
    g_a       = exp(agent_factor_sd * z_a - agent_factor_sd^2 / 2), z_a ~ N(0, 1):
              orientation and shading of this roof, fixed over the horizon
    p_a,t     = -min(capacity_kw_a, capacity_kw_a * performance_ratio_a * g_a * cs_t * k_t)

Generation is negative (load convention); zero whenever the sun is down; never
beyond the inverter's capacity.  Unity power factor (no reactive power).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayesflex.priors.baseload import ar1

PER_AGENT = ("capacity_kw", "performance_ratio")


def clear_sky_kw_per_kwp(times: pd.DatetimeIndex, latitude: float, longitude: float,
                         tilt_deg: float, azimuth_deg: float) -> np.ndarray:
    """Mean clear-sky plane-of-array output, kW per kWp, of each half-hour
    starting at ``times`` (UTC), from 5-minute samples."""
    import pvlib

    fine = pd.date_range(times[0], periods=len(times) * 6, freq="5min", tz="UTC") + pd.Timedelta("150s")
    loc = pvlib.location.Location(latitude, longitude)
    sky = loc.get_clearsky(fine, model="ineichen")
    sun = loc.get_solarposition(fine)
    poa = pvlib.irradiance.get_total_irradiance(
        tilt_deg, azimuth_deg, sun["apparent_zenith"], sun["azimuth"], sky["dni"], sky["ghi"], sky["dhi"]
    )["poa_global"].to_numpy()
    poa = np.where(sun["apparent_elevation"].to_numpy() > 0, np.nan_to_num(poa), 0.0)
    return np.clip(poa / 1000.0, 0, None).reshape(len(times), 6).mean(axis=1)


def simulate(par: dict[str, np.ndarray], cs: np.ndarray, owners: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """PV ``p_kw (draw, time, agent)`` (negative) and the clear-sky index ``k (draw, time)``.

    ``owners (draw, agent)`` says who has PV in each draw.
    """
    n, n_agent = owners.shape
    x = ar1(rng, par["cloud_rho"], par["cloud_logit_sd"], (n, len(cs))) + par["cloud_logit_mean"][:, None]
    k = 1.0 / (1.0 + np.exp(-x))
    sd = par["agent_factor_sd"][:, None]
    g = np.exp(sd * rng.standard_normal((n, n_agent)) - sd**2 / 2)
    cap = par["capacity_kw"]
    gen = (cap * par["performance_ratio"] * g)[:, None, :] * (cs[None, :] * k)[:, :, None]
    gen = np.minimum(gen, cap[:, None, :])
    return -gen * owners[:, None, :], k
