"""A deterministic half-hourly load-flow run over a horizon: the job that
``bayesflex run`` does until the probabilistic study engine exists.

Every agent follows the BDEW H0 standard household load profile (the
``demandlib`` package ships it), scaled to ``annual_kwh`` and then by a
seeded log-normal factor per agent (households differ), at power factor 0.95
lagging.  All half-hours go through :func:`bayesflex.solve_loadflow` as one
batch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from .feeder import PHASES, Feeder
from .loadflow import solve_loadflow

__all__ = ["h0_profile_kw", "profile_run"]

#: typical UK domestic electricity consumption (Ofgem TDCV, medium), kWh/year
UK_TDCV_KWH = 2700.0
TAN_PHI_095 = float(np.tan(np.arccos(0.95)))


def h0_profile_kw(start: pd.Timestamp, periods: int, annual_kwh: float = UK_TDCV_KWH) -> pd.Series:
    """BDEW H0 household profile, mean kW per half-hour from ``start``."""
    import demandlib.bdew as bdew

    end = start + pd.Timedelta(minutes=30 * periods)
    years = range(start.year, end.year + 1)
    parts = [bdew.ElecSlp(y).get_scaled_power_profiles({"h0": annual_kwh})["h0"] for y in years]
    kw = pd.concat(parts).resample("30min").mean()
    out = kw.loc[start : end - pd.Timedelta(minutes=30)]
    if len(out) != periods:  # pragma: no cover - demandlib covers whole years
        raise ValueError(f"profile has {len(out)} half-hours from {start}, wanted {periods}")
    return out


def profile_run(
    feeder: Feeder,
    *,
    start: str | pd.Timestamp = "2026-01-14",
    periods: int = 96,
    seed: int = 1,
    annual_kwh: float = UK_TDCV_KWH,
    spread: float = 0.4,
) -> xr.Dataset:
    """Solve the feeder for every half-hour of the horizon.

    Returns an ``xarray.Dataset`` with ``p_kw (time, agent, phase)``,
    ``v_min_pu``/``v_max_pu (time, phase)`` and the buses where they occur,
    ``loading_max_pu (time)`` and the line, ``trafo_loading_pu (time)`` and
    ``converged (time)``.
    """
    start = pd.Timestamp(start)
    shape = h0_profile_kw(start, periods, annual_kwh).to_numpy()
    rng = np.random.default_rng(seed)
    scale = rng.lognormal(-spread**2 / 2, spread, size=feeder.n_agent)  # mean 1
    per_phase = feeder.agent_phases / feeder.agent_phases.sum(axis=1, keepdims=True)
    p = shape[:, None, None] * scale[None, :, None] * per_phase[None]
    lf = solve_loadflow(feeder, p, p * TAN_PHI_095)
    mon = np.flatnonzero(np.arange(feeder.n_bus) != feeder.source.bus)
    v = lf.v_pu[:, mon]
    buses = np.array(feeder.buses, dtype=object)
    lines = np.array(feeder.lines, dtype=object)
    time = pd.date_range(start, periods=periods, freq="30min")
    worst_line = np.nanargmax(np.where(np.isnan(lf.loading_pu), -np.inf, lf.loading_pu), axis=1)
    ds = xr.Dataset(
        {
            "p_kw": (("time", "agent", "phase"), p, {"units": "kW"}),
            "v_min_pu": (("time", "phase"), v.min(axis=1), {"units": "pu"}),
            "v_max_pu": (("time", "phase"), v.max(axis=1), {"units": "pu"}),
            "v_min_bus": (("time", "phase"), buses[mon][np.argmin(np.nan_to_num(v, nan=np.inf), axis=1)].astype(str)),
            "v_max_bus": (("time", "phase"), buses[mon][np.argmax(np.nan_to_num(v, nan=-np.inf), axis=1)].astype(str)),
            "loading_max_pu": (("time",), lf.loading_pu.max(axis=1), {"units": "pu"}),
            "loading_max_line": (("time",), lines[worst_line].astype(str)),
            "trafo_loading_pu": (("time",), lf.trafo_loading_pu, {"units": "pu"}),
            "converged": (("time",), lf.converged),
        },
        coords={"time": time, "agent": list(feeder.agents), "phase": list(PHASES)},
        attrs={
            "feeder": feeder.name,
            "feeder_sha256": feeder.sha256,
            "profile": f"BDEW H0 (demandlib) scaled to {annual_kwh} kWh/year, log-normal spread {spread}",
            "seed": seed,
            "v_min_limit_pu": feeder.v_min_pu,
            "v_max_limit_pu": feeder.v_max_pu,
        },
    )
    return ds
