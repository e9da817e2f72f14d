"""Fit the bounded baseload model to ENWL's households and print its [baseload] numbers.

    python priors/fit_baseload.py [--season winter|summer] [--profiles DIR] [--draws 1000]

The model is bayesflex/priors/baseload.py.  Data: ENWL's 100 households of a
season (one weekday each, 5-minute kW averaged to half-hours).  ``shape_kw``
is the data's mean kW per half-hour.  The level spread, its mean and the
variance function (appliance_kw, knee_kw, knee_power) are fitted jointly with
NUTS (PyMC), every household's level a latent variable, the half-hours of a
household given its level independent Beta margins (their dependence in
time does not change the margins); ``persistence`` is then set so that the
draws' lag-1 autocorrelation of kW equals the data's (simulated method of
moments), its sd from the data's bootstrap sd of that autocorrelation.  Capacity during the fit: 18.4 kW (80 A, the
middle of the fuse prior; the Beta is nearly a Gamma there, so the choice
moves the fit little: see --cap).  Prints posterior mean, sd and a 94 % interval
of each parameter, then the TOML lines.  Takes a few minutes.  Nothing here is
imported by bayesflex.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

SERVICE_KW, SERVICE_SHARE = [13.8, 18.4, 23.0], [0.3, 0.5, 0.2]  # as in priors/default.toml
DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "enwl" / "profiles"


def half_hourly(path: Path) -> np.ndarray:
    """(house, 48) half-hourly mean kW of an ENWL profile file (288 x 100)."""
    x = pd.read_csv(path, header=None, encoding="utf-8-sig").to_numpy(float)
    return x.reshape(48, 6, -1).mean(axis=1).T


def fit(x: np.ndarray, cap_kw: float, draws: int, seed: int):
    import pymc as pm
    import pytensor.tensor as pt

    from bayesflex.priors.baseload import EDGE, beta_ab

    shape = x.mean(axis=0)
    y = np.clip(x / cap_kw, EDGE, 1 - EDGE)
    with pm.Model():
        mean = pm.Normal("level_log_mean", 0.0, 0.5)
        sd = pm.HalfNormal("level_log_sd", 1.0)
        z = pm.Normal("z", 0.0, 1.0, shape=x.shape[0])
        appliance = pm.LogNormal("appliance_kw", 0.0, 1.0)
        knee = pm.LogNormal("knee_kw", np.log(0.3), 1.0)
        power = pm.HalfNormal("knee_power", 5.0)
        mu = shape[None, :] * pt.exp(mean - sd**2 / 2 + sd * z[:, None])
        a, b = beta_ab(mu, cap_kw, appliance, knee, power, xp=pt)
        pm.Beta("y", alpha=a, beta=b, observed=y)
        idata = pm.sample(draws, tune=draws, chains=2, cores=1, random_seed=seed, progressbar=False,
                          target_accept=0.9)
    return idata


def lag1(x: np.ndarray) -> float:
    """Lag-1 autocorrelation of half-hourly kW, pooled over house-days after centring each."""
    c = x - x.mean(axis=-1, keepdims=True)
    return float((c[..., 1:] * c[..., :-1]).sum() / (c**2).sum())


def simulated_lag1(x: np.ndarray, post, persistence: float, houses: int = 20_000, seed: int = 0) -> float:
    """Lag-1 autocorrelation of kW of model house-days (posterior-mean margins, the fuse
    prior's capacities) at this persistence: the moment persistence is matched on."""
    import pandas as pd

    from bayesflex.priors import baseload

    rng = np.random.default_rng(seed)
    m = {k: float(post[k].mean()) for k in ("level_log_mean", "level_log_sd", "appliance_kw", "knee_kw",
                                              "knee_power")}
    par = {k: np.full(houses, v) for k, v in m.items()} | {"persistence": np.full(houses, persistence),
                                                            "day_share": np.full(houses, 0.5),
                                                            "power_factor": np.ones((houses, 1))}
    par["level_log"] = baseload.level_log(par, rng.standard_normal((houses, 1)), rng.standard_normal((houses, 1, 1)))
    cap = rng.choice(SERVICE_KW, p=SERVICE_SHARE, size=(houses, 1))
    times = pd.date_range("2026-01-14", periods=48, freq="30min").values
    p, _ = baseload.simulate(par, x.mean(axis=0), times, cap, rng)
    return lag1(p[:, :, 0])


def match_persistence(x: np.ndarray, post, seed: int) -> tuple[float, float]:
    """Persistence whose draws have the data's lag-1 autocorrelation (simulated method of
    moments, linear interpolation on a grid), and its sd from the data's bootstrap sd of lag-1
    through the slope."""
    grid = np.linspace(0.2, 0.5, 7)
    got = np.array([simulated_lag1(x, post, r, seed=seed) for r in grid])
    target = lag1(x)
    rho = float(np.interp(target, got, grid))
    rng = np.random.default_rng(seed)
    boot_sd = float(np.std([lag1(x[rng.integers(0, len(x), len(x))]) for _ in range(1000)]))
    slope = float(np.polyfit(grid, got, 1)[0])
    return rho, boot_sd / slope


def main() -> None:
    import arviz as az

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--season", choices=("winter", "summer"), default="winter")
    ap.add_argument("--profiles", type=Path, default=DEFAULT)
    ap.add_argument("--cap", type=float, default=18.4, help="capacity kW during the fit")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    x = half_hourly(args.profiles / f"{args.season.title()}_Load_Profiles.csv")
    warnings.simplefilter("ignore")
    t0 = time.time()
    idata = fit(x, args.cap, args.draws, args.seed)
    names = ["level_log_mean", "level_log_sd", "appliance_kw", "knee_kw", "knee_power"]
    print(f"# {args.season}: NUTS {time.time() - t0:.0f} s")
    print(az.summary(idata, var_names=names, round_to=3).to_string())
    rho, rho_sd = match_persistence(x, idata.posterior, args.seed)
    print(f"persistence {rho:.3f} (sd {rho_sd:.3f}): draws' lag-1 autocorrelation = the data's {lag1(x):.3f}")
    post = idata.posterior
    r = {k: (float(post[k].mean()), float(post[k].std())) for k in names}
    k = rho * (1 - rho) / rho_sd**2 - 1
    print("\n# TOML")
    print("shape_kw =", np.round(x.mean(axis=0), 3).tolist())
    for key in names:
        print(f"{key} = {r[key][0]:.3f}   # posterior sd {r[key][1]:.3f}")
    print(f"persistence = {{ dist = \"Beta\", alpha = {rho * k:.1f}, beta = {(1 - rho) * k:.1f} }}")


if __name__ == "__main__":
    main()
