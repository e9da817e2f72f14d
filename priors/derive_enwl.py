"""Derive the data-based numbers of priors/*.toml from the ENWL profiles.

    python priors/derive_enwl.py [path/to/shared/data/enwl/profiles]

Reads the Electricity North West "Low Voltage Network Solutions" profiles
(100 households, one day each, 5-minute kW; see shared/data/enwl/README.md),
averages them to half-hours and prints, for winter and summer residential
demand: the mean daily shape (kW per half-hour from 00:00), the mean and sd of
log daily kWh across households, and the sd and lag-1 autocorrelation of the
half-hourly log residuals; for PV, a log-normal fit of the installed size
(taken as each profile's 5-minute peak).  Method of the residuals:
ln(max(kW, 0.01)) - ln(household's mean kW) - ln(shape / mean(shape)),
lag-1 autocorrelation pooled over households after centring each one, within
the day.  Nothing here is imported by bayesflex.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "enwl" / "profiles"


def half_hourly(path: Path) -> np.ndarray:
    """(48, 100) half-hourly mean kW."""
    x = pd.read_csv(path, header=None, encoding="utf-8-sig").to_numpy(float)  # (288, 100)
    return x.reshape(48, 6, -1).mean(axis=1)


def demand(path: Path) -> dict:
    x = half_hourly(path)
    daily = x.sum(axis=0) / 2  # kWh
    shape = x.mean(axis=1)
    log_daily = np.log(daily)
    res = np.log(np.maximum(x, 0.01)) - np.log(x.mean(axis=0))[None] - np.log(shape / shape.mean())[:, None]
    c = res - res.mean(axis=0, keepdims=True)
    lag1 = (c[1:] * c[:-1]).sum() / (c**2).sum()
    return {
        "shape_kw": np.round(shape, 3).tolist(),
        "log_daily_kwh_mean": round(float(log_daily.mean()), 3),
        "log_daily_kwh_sd": round(float(log_daily.std(ddof=1)), 3),
        "se_of_mean": round(float(log_daily.std(ddof=1) / np.sqrt(len(daily))), 3),
        "noise_sd": round(float(res.std()), 3),
        "noise_rho": round(float(lag1), 3),
        "daily_kwh_mean": round(float(daily.mean()), 2),
        "evening_peak_kw_p50": round(float(np.median(x[32:40].max(axis=0))), 2),
    }


def pv_size(path: Path) -> dict:
    x = pd.read_csv(path, header=None, encoding="utf-8-sig").to_numpy(float)
    peak = x.max(axis=0)
    lp = np.log(peak[peak > 0])
    return {"capacity_log_mean": round(float(lp.mean()), 3), "capacity_log_sd": round(float(lp.std(ddof=1)), 3),
            "peak_kw_min_p50_max": [round(float(v), 2) for v in np.percentile(peak, [0, 50, 100])]}


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    if not root.exists():
        sys.exit(f"{root}: not found (give the path of shared/data/enwl/profiles)")
    for season in ("Winter", "Summer"):
        print(f"# {season} residential demand (ENWL, 100 households)")
        for k, v in demand(root / f"{season}_Load_Profiles.csv").items():
            print(f"{k} = {v}")
        print()
    print("# PV (ENWL summer, 100 systems)")
    for k, v in pv_size(root / "Summer_PV_Profiles.csv").items():
        print(f"{k} = {v}")


if __name__ == "__main__":
    main()
