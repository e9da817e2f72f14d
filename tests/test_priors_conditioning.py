"""Bayesian update of the baseload model with metered data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bayesflex.errors import ConfigError
from bayesflex.priors import condition, draw_parameters, load_priors, read_observations, sample_priors
from bayesflex.priors.baseload import day_index, level_log, simulate
from bayesflex.priors.conditioning import TARGET_ACCEPT, baseload_data, baseload_model

AGENTS = ("LOAD1", "LOAD2", "LOAD3", "LOAD4")


def _simulated(priors, n_agent, periods, seed, names=None):
    """Data drawn from the prior, every agent on the largest service (as the fit
    assumes: a meter does not say which fuse a house has): (true parameters, tidy readings)."""
    ss = np.random.SeedSequence(seed)
    par = draw_parameters(priors, n_agent, 1, ss.spawn(1)[0])
    rng = np.random.default_rng(ss.spawn(2)[1])
    b = {k.split(".", 1)[1]: v for k, v in par.items() if k.startswith("baseload.")}
    times = pd.date_range(priors.start, periods=periods, freq="30min")
    days = int(day_index(times.values)[-1]) + 1
    z = rng.standard_normal((1, n_agent))
    b["level_log"] = level_log(b, z, rng.standard_normal((1, n_agent, days)))
    cap = np.full((1, n_agent), max(priors["baseload"].extra["service_kw"]))
    p, _ = simulate(b, priors["baseload"].extra["shape_kw"], times.values, cap, rng)
    names = names or [f"A{i}" for i in range(n_agent)]
    df = pd.DataFrame({"time": np.repeat(times, n_agent), "agent": np.tile(names, periods), "p_kw": p[0].ravel()})
    truth = {k: float(np.ravel(v)[0]) for k, v in b.items() if np.size(v) == 1 or np.ndim(v) == 1}
    truth["z"] = z[0]
    return truth, df


def _tidy(rows):
    return pd.DataFrame(rows, columns=["agent", "time", "p_kw"])


@pytest.mark.parametrize(
    "rows, words",
    [
        ([("LOAD1", "2026-01-01 00:00", 0.2), ("LOAD99", "2026-01-01 00:00", 0.3)], ["'LOAD99' not on the feeder"]),
        ([("LOAD1", "2026-01-01 00:00", 0.2), ("LOAD1", "2026-01-01 01:00", 0.3)], ["'LOAD1' has a gap at 2026-01-01 00:30"]),
        ([("LOAD1", "2026-01-01 00:00", 0.2), ("LOAD1", "2026-01-01 00:00", 0.3)], ["two readings"]),
        ([("LOAD1", "2026-01-01 00:00", -0.2), ("LOAD1", "2026-01-01 00:30", 0.3)], ["negative", "row 2"]),
        ([("LOAD1", "2026-01-01 00:10", 0.2), ("LOAD1", "2026-01-01 00:40", 0.3)], ["half-hours"]),
        ([("LOAD1", "2026-01-01 00:00", "n/a"), ("LOAD1", "2026-01-01 00:30", 0.3)], ["not a finite number"]),
    ],
)
def test_bad_observations_get_clear_errors(tmp_path, ieee, rows, words):
    path = tmp_path / "meters.csv"
    _tidy(rows).to_csv(path, index=False)
    with pytest.raises(ConfigError) as e:
        read_observations(path, agents=ieee.agents)
    assert str(path) in str(e.value)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_missing_column(tmp_path):
    path = tmp_path / "m.csv"
    pd.DataFrame({"agent": ["A"], "time": ["2026-01-01"]}).to_csv(path, index=False)
    with pytest.raises(ConfigError, match=r"missing column\(s\) \['p_kw'\]"):
        read_observations(path)


@pytest.mark.slow
def test_fit_meets_diagnostics_and_feeds_the_posterior_predictive(ieee, tmp_path):
    """Ten days of four meters: R-hat <= 1.01 and bulk ESS >= 400 for every
    parameter; the observed agents' household levels are then far narrower
    than an unobserved agent's, and the draws say they are conditioned."""
    pri = load_priors("default")
    truth, df = _simulated(pri, 4, 10 * 48, seed=42, names=list(AGENTS))
    path = tmp_path / "meters.csv"
    df.to_csv(path, index=False)
    # 2 chains x (500 tuning + 800 draws), not the default 1000 + 1000: smallest bulk ESS 674, largest
    # R-hat 1.006 on these data (1000 + 1000: 830 and 1.003), in two thirds of the time
    post = condition(pri, path, agents=ieee.agents, seed=1, draws=800, tune=500)
    assert post.ok, post.diagnostics
    assert set(post.diagnostics) >= {"level_log_mean", "level_log_sd", "day_share", "z"}
    ds = sample_priors(ieee, post, draws=400, seed=3)
    assert ds.attrs["conditioned"] == 1 and ds.attrs["observed_agents"] == ",".join(AGENTS)
    sd = ds.baseload_household_z.std("draw").values.ravel()
    assert sd[:4].max() < 0.6 * sd[10]  # ten days pin a level only as far as its days vary
    # each observed agent's fitted household level covers its true value (99.7 % interval)
    d = post.draws()["z"]
    lo, hi = np.percentile(d, [0.15, 99.85], axis=0)
    assert ((lo <= truth["z"]) & (truth["z"] <= hi)).all()


SBC_REPS, SBC_TUNE, SBC_THIN, SBC_RANKS = 60, 200, 10, 19  # 60 fits, 200 tuning steps, 19 draws 10 apart


def _sbc_truths(priors, reps: int, n_agent: int, periods: int, seed: int):
    """``reps`` data sets drawn from the prior, each agent one day on the largest
    service: (true baseload parameters (rep,), household z (rep, agent), readings
    (rep, time, agent) kW, times).  One ``draw_parameters`` call draws every
    replication's parameters (its draws are independent)."""
    ss = np.random.SeedSequence(seed)
    par = draw_parameters(priors, n_agent, reps, ss.spawn(1)[0])
    rng = np.random.default_rng(ss.spawn(2)[1])
    b = {k.split(".", 1)[1]: v for k, v in par.items() if k.startswith("baseload.")}
    times = pd.date_range(priors.start, periods=periods, freq="30min")
    days = int(day_index(times.values)[-1]) + 1
    z = rng.standard_normal((reps, n_agent))
    b["level_log"] = level_log(b, z, rng.standard_normal((reps, n_agent, days)))
    cap = np.full((reps, n_agent), max(priors["baseload"].extra["service_kw"]))
    p, _ = simulate(b, priors["baseload"].extra["shape_kw"], times.values, cap, rng)
    return b, z, p, times


def _sbc_ranks(truth_shift_log: float = 0.0) -> dict[str, np.ndarray]:
    """Rank of each true value among ``SBC_RANKS`` thinned posterior draws, per
    replication.  The fit is :func:`baseload_model`, the model ``condition``
    samples, built and compiled once with its data in containers; each
    replication sets its readings and reruns NUTS with the same step, whose
    tuning PyMC resets at the start of every ``pm.sample``.  ``truth_shift_log``
    moves the true level_log_mean after the data are drawn (a mis-specified
    check)."""
    import logging
    import warnings

    import pymc as pm

    warnings.simplefilter("ignore")
    logging.getLogger("pymc").setLevel(logging.ERROR)
    pri = load_priors("default")
    agents = ("A0", "A1", "A2")
    b, z, p, times = _sbc_truths(pri, SBC_REPS, len(agents), 48, seed=2026)

    def data(rep):
        return baseload_data(pri, pd.DataFrame(p[rep], index=times, columns=list(agents)))

    model = baseload_model(pri, data(0), agents, containers=True)
    with model:
        step = pm.NUTS(target_accept=TARGET_ACCEPT)
    keys = ("level_log_mean", "level_log_sd", "day_share")
    ranks = {k: np.empty(SBC_REPS, int) for k in keys + ("z",)}
    for rep in range(SBC_REPS):
        pm.set_data(data(rep), model=model)
        tr = pm.sample(draws=SBC_RANKS * SBC_THIN, tune=SBC_TUNE, chains=1, step=step, random_seed=rep, model=model,
                       progressbar=False, compute_convergence_checks=False, return_inferencedata=False, quiet=True)
        truth = {k: b[k][rep] for k in keys} | {"z": z[rep, 0]}  # one household's level
        truth["level_log_mean"] += truth_shift_log
        for k in ranks:
            d = tr.get_values(k)[SBC_THIN - 1::SBC_THIN]
            ranks[k][rep] = int(((d if k != "z" else d[:, 0]) < truth[k]).sum())
    return ranks


def _sbc_pvalues(ranks: dict[str, np.ndarray]) -> dict[str, tuple[float, list[int]]]:
    """Chi-square p-value of each parameter's ranks 0..SBC_RANKS in 10 equal bins (2 ranks a bin)."""
    out = {}
    for key, r in ranks.items():
        counts = np.histogram(r, bins=10, range=(0, SBC_RANKS + 1))[0]
        out[key] = (stats.chisquare(counts).pvalue, counts.tolist())
    return out


@pytest.mark.slow
def test_simulation_based_calibration_of_the_baseload_fit():
    """SBC (Talts et al. 2018): 60 data sets drawn from the prior, each fitted
    (200 tuning steps, 190 draws); the rank of the true value among 19 draws
    10 apart (nearly independent) must be uniform on 0..19.  Chi-square test on
    10 equal bins (2 ranks, 6 replications expected a bin: the chi-square's
    minimum) per parameter at alpha = 0.001: with four parameters a correct
    model fails about once in 250 runs; a biased or over/under-confident fit
    fails it outright (a true level_log_mean shifted by 0.1, one prior sd, fails
    with p < 1e-6 for it).  Three meters, one day each (the household and day
    levels do not separate there: day_share keeps its prior, and a household's
    z is tested through the level the day's readings inform).  The fits run in
    one process on one compiled model (see :func:`_sbc_ranks`)."""
    for key, (p, counts) in _sbc_pvalues(_sbc_ranks()).items():
        assert p > 0.001, f"{key}: ranks not uniform (p = {p:.2g}, bin counts {counts})"
