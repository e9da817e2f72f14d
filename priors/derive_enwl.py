"""Derive the data-based numbers of priors/*.toml from the ENWL profiles.

    python priors/derive_enwl.py [path/to/shared/data/enwl/profiles]

Reads the Electricity North West "Low Voltage Network Solutions" profiles
(100 households, one day each, 5-minute kW; see shared/data/enwl/README.md),
averages them to half-hours and prints, for winter and summer residential
demand, the mean daily shape (``shape_kw``, kW per half-hour from 00:00) and
descriptive figures (mean daily kWh, median evening peak); for PV, a
log-normal fit of the installed size (taken as each profile's 5-minute peak).
The baseload model's other numbers are fitted by priors/fit_baseload.py.
Nothing here is imported by bayesflex.
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
    return {
        "shape_kw": np.round(shape, 3).tolist(),
        "daily_kwh_mean": round(float(daily.mean()), 2),
        "daily_kwh_cv": round(float(daily.std(ddof=1) / daily.mean()), 3),
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
