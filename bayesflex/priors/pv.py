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

from bayesflex.core.checks import toml_number
from bayesflex.priors.baseload import ar1
from bayesflex.priors.technology import Context, Model, Output, Simulation


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


def generation(par: dict[str, np.ndarray], cs: np.ndarray, owners: np.ndarray,
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


def simulate(params: dict, extra: dict, owners: np.ndarray, context: Context,
             rng: np.random.Generator) -> Simulation:
    """PV of the owners under the site's sky; curtailable down to nothing."""
    cs = clear_sky_kw_per_kwp(context.times, context.latitude, context.longitude, extra["tilt_deg"],
                              extra["azimuth_deg"])
    p, k = generation(params, cs, owners, rng)
    return Simulation(p, p, np.zeros_like(p), variables={
        "pv_clear_sky_index": (("draw", "time"), k, {"units": "1"}),
        "pv_clear_sky_kw_per_kwp": (("time",), cs, {"units": "kW/kWp"}),
    })


def parse(tab: dict, where: str) -> dict:
    return {"tilt_deg": toml_number(tab, "tilt_deg", where, lo=0, hi=90, default=35.0),
            "azimuth_deg": toml_number(tab, "azimuth_deg", where, lo=0, hi=360, default=180.0)}


MODEL = Model(
    name="pv",
    schema={"capacity_kw": "positive", "performance_ratio": "unit", "cloud_logit_mean": "real",
            "cloud_logit_sd": "positive", "cloud_rho": "unit", "agent_factor_sd": "positive"},
    per_agent=("capacity_kw", "performance_ratio"),
    keys=frozenset({"tilt_deg", "azimuth_deg"}), parse=parse,
    output=Output("p_pv_kw", "PV generation (negative)", "PV"),
    simulate=simulate, random=True, controllable=False,  # a position leaves PV as drawn
)
