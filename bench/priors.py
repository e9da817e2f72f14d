"""Prior sampling speed: bayesflex.sample_priors against the baseload written wholly
in PyMC, in the same run.

bayesflex draws the parameters with PyMC and simulates the time series in
numpy.  The peer is what one would write directly: the baseload's margins
(the same household-and-day level, a Beta on [0, fuse] per half-hour with
the model's mean-variance relation, 96 half-hours) sampled with
pm.sample_prior_predictive.  The peer leaves out the persistence in time (PyMC
has no ready distribution for the Gamma chains; a scan would only be slower),
so its time is a lower bound.  Both are timed after a first call that compiles.

    python bench/priors.py [--draws 1000]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def peer_baseload(feeder, priors, draws):
    import pymc as pm

    from bayesflex.priors.baseload import beta_ab, log_level, shape_kw_at

    tech = priors["baseload"]
    times = np.array(np.arange(96) * np.timedelta64(30, "m") + np.datetime64(priors.start.isoformat()[:16]))
    shape = shape_kw_at(tech.extra["shape_kw"], times)
    day = (np.arange(96) // 48)
    val = {k: p.value for k, p in tech.params.items() if p.fixed}
    with pm.Model(coords={"agent": list(feeder.agents), "time": np.arange(96), "day": [0, 1]}) as model:
        rv = {k: getattr(pm, p.dist)(k, **p.kwargs()) for k, p in tech.params.items() if not p.fixed and
              k not in ("power_factor", "persistence")}
        rv |= {k: v for k, v in val.items() if k not in rv}
        sd, share = rv["level_log_sd"], rv["day_share"]
        z = pm.Normal("z", 0, 1, dims="agent")
        w = pm.Normal("w", 0, 1, dims=("agent", "day"))
        level = log_level(rv["level_log_mean"], sd, share, z[:, None], w, xp=pm.math)
        fuse = pm.Categorical("fuse", p=np.asarray(tech.extra["service_share"]), dims="agent")
        cap = pm.math.constant(np.asarray(tech.extra["service_kw"]))[fuse][:, None]
        mu = shape[None, :] * pm.math.exp(level[:, day])
        a, b = beta_ab(mu, cap, rv["appliance_kw"], rv["knee_kw"], rv["knee_power"], xp=pm.math)
        y = pm.Beta("y", alpha=a, beta=b, dims=("agent", "time"))
        pm.Deterministic("p_kw", cap * y, dims=("agent", "time"))
    pm.sample_prior_predictive(draws=5, model=model, random_seed=0)  # compile
    t = time.perf_counter()
    pm.sample_prior_predictive(draws=draws, model=model, random_seed=1, var_names=["p_kw"])
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draws", type=int, default=1000)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import bayesflex as bf
    from bayesflex.priors import load_priors

    feeder = bf.load_feeder("ieee_eu_lv")
    priors = load_priors("default")
    t = time.perf_counter()
    bf.sample_priors(feeder, priors, draws=5, seed=0)
    first = time.perf_counter() - t
    times = []
    for seed in (1, 2):
        t = time.perf_counter()
        ds = bf.sample_priors(feeder, priors, draws=args.draws, seed=seed)
        times.append(time.perf_counter() - t)
    ours = min(times)
    techs = ", ".join(priors.technologies)
    print(f"feeder {feeder.name}: {feeder.n_agent} agents, 96 half-hours; priors {priors.name} ({techs})")
    print(f"first call (PyMC compilation, pvlib): {first:.1f} s")
    print(f"bayesflex sample_priors, {args.draws} draws, all technologies: {ours:.2f} s "
          f"(target <= 15 s); dataset {ds.nbytes / 1e6:.0f} MB")
    peer = peer_baseload(feeder, priors, args.draws)
    t = time.perf_counter()
    bf.sample_priors(feeder, priors.__class__(**{**priors.__dict__, "technologies": {"baseload": priors["baseload"]}}),
                     draws=args.draws, seed=3)
    ours_base = time.perf_counter() - t
    print(f"baseload only: bayesflex {ours_base:.2f} s, the same model wholly in PyMC "
          f"(its margins only, sample_prior_predictive) {peer:.2f} s: ratio {peer / ours_base:.1f}x")


if __name__ == "__main__":
    main()
