"""Priors: the file format and its errors, and the sampled draws' properties.

Statistical checks use tolerances from the Monte Carlo error of the same run
(4 standard errors: a false alarm about once in 16,000 runs per check).
"""

from __future__ import annotations

import numpy as np
import pytest

import bayesflex as bf
from bayesflex.errors import ConfigError
from bayesflex.priors import load_priors, sample_priors

SHAPE = [0.3] * 12 + [0.5] * 20 + [0.9] * 8 + [0.4] * 8
BASE = f"""
[horizon]
start = "2026-07-15T00:00"
periods = 96
[site]
latitude = 53.48
longitude = -2.24
[baseload]
shape_kw = {SHAPE}
log_daily_kwh_mean = {{ dist = "Normal", mu = 2.1, sigma = 0.1 }}
log_daily_kwh_sd = {{ dist = "HalfNormal", sigma = 0.4 }}
noise_sd = NOISE_SD
noise_rho = NOISE_RHO
power_factor = {{ dist = "Uniform", lower = 0.9, upper = 0.99 }}
[pv]
PV_WHO
capacity_kw = CAPACITY
performance_ratio = {{ dist = "Beta", alpha = 40, beta = 8 }}
cloud_logit_mean = {{ dist = "Normal", mu = 0.5, sigma = 1.0 }}
cloud_logit_sd = {{ dist = "HalfNormal", sigma = 1.0 }}
cloud_rho = {{ dist = "Beta", alpha = 9, beta = 1 }}
agent_factor_sd = 0.1
"""


def _write(tmp_path, name="p.toml", **subs):
    text = BASE
    defaults = {"NOISE_SD": "0.3", "NOISE_RHO": "0.8", "PV_WHO": "penetration = 0.5",
                "CAPACITY": '{ dist = "LogNormal", mu = 1.2, sigma = 0.35 }'}
    for k, v in {**defaults, **subs}.items():
        text = text.replace(k, v)
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def draws(ieee, tmp_path_factory):
    path = _write(tmp_path_factory.mktemp("priors"))
    return sample_priors(ieee, path, draws=400, seed=7)


@pytest.mark.parametrize(
    "subs, words",
    [
        ({"CAPACITY": '{ dist = "Gaussian", mu = 1 }'}, ["capacity_kw", "unknown distribution 'Gaussian'", "LogNormal"]),
        ({"CAPACITY": '{ dist = "LogNormal", mean = 1 }'}, ["capacity_kw", "no argument 'mean'", "allowed: mu, sigma"]),
        ({"CAPACITY": "-4.0"}, ["[pv] capacity_kw = -4", "must not be negative"]),
        ({"CAPACITY": '{ dist = "Normal", mu = 4, sigma = 1 }'}, ["capacity_kw", "can be negative"]),
        ({"CAPACITY": '{ dist = "LogNormal", mu = 1, sigma = -1 }'}, ["capacity_kw", "not a valid distribution"]),
        ({"PV_WHO": "penetration = 1.2"}, ["[pv] penetration = 1.2", "[0, 1]"]),
        ({"NOISE_RHO": '{ dist = "Uniform", lower = 0.5, upper = 1.5 }'}, ["noise_rho", "outside [0, 1]"]),
        ({"PV_WHO": 'penetration = 0.3\nagents = ["LOAD1"]'}, ["exactly one of penetration"]),
        ({"NOISE_SD": "0.3\ncolour = 2"}, ["[baseload]", "unknown key 'colour'"]),
    ],
)
def test_bad_priors_get_clear_errors(tmp_path, subs, words):
    path = _write(tmp_path, **subs)
    with pytest.raises(ConfigError) as e:
        load_priors(path)
    msg = str(e.value)
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda t: t + "\n[battery]\npenetration = 0.2\n", ["[battery]: missing capacity_kwh, power_kw"]),
        (lambda t: t + "\n[wind]\n", ["unknown table [wind]"]),
        (lambda t: t.replace('start = "2026-07-15T00:00"', 'start = "2026-07-15T00:10"'), ["half-hour"]),
        (lambda t: t.replace("shape_kw = [0.3,", "shape_kw = ["), ["shape_kw", "48 non-negative"]),
        (lambda t: t.replace("[pv]", "[pv\n"), ["not valid TOML"]),
    ],
)
def test_bad_priors_files(tmp_path, edit, words):
    path = _write(tmp_path)
    path.write_text(edit(path.read_text()))
    with pytest.raises(ConfigError) as e:
        load_priors(path)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_agent_not_on_feeder(ieee, tmp_path):
    path = _write(tmp_path, PV_WHO='agents = ["LOAD1", "LOAD99"]')
    with pytest.raises(ConfigError, match=r"\[pv\] agents: 'LOAD99' not on the feeder"):
        sample_priors(ieee, path, draws=2, seed=1)


def test_unknown_prior_set_lists_the_built_in_ones():
    with pytest.raises(ConfigError, match="no prior set named 'nope'"):
        load_priors("nope")


def test_same_seed_same_numbers_other_seed_other_numbers(ieee, tmp_path):
    path = _write(tmp_path)
    a = sample_priors(ieee, path, draws=5, seed=3)
    b = sample_priors(ieee, path, draws=5, seed=3)
    c = sample_priors(ieee, path, draws=5, seed=4)
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert not np.array_equal(a.p_kw.values, c.p_kw.values)


def test_shapes_phases_and_net_power(draws, ieee):
    assert draws.p_kw.dims == ("chain", "draw", "time", "agent", "phase")
    assert draws.sizes == {"chain": 1, "draw": 400, "time": 96, "agent": 55, "phase": 3}
    off = ~ieee.agent_phases  # nothing on phases an agent is not connected to
    assert (draws.p_kw.values[..., off] == 0).all()
    # power arrays are float32: sums agree to float32 rounding
    np.testing.assert_allclose(draws.p_kw, draws.p_base_kw + draws.p_pv_kw, rtol=1e-6, atol=1e-6)
    assert (draws.p_lb_kw <= draws.p_kw + 1e-6).all() and (draws.p_kw <= draws.p_ub_kw + 1e-6).all()
    # the draws go straight into the load flow
    lf = bf.solve_loadflow(ieee, draws.p_kw.values[0, :3], draws.q_kvar.values[0, :3], full=False)
    assert lf.converged.all()


def test_pv_zero_at_night_and_bounded_by_capacity(draws):
    pvkw = -draws.p_pv_kw.sum("phase")  # generation, positive
    night = draws.pv_clear_sky_kw_per_kwp == 0
    assert night.sum() >= 20  # mid-July at 53.5 N still has a night
    assert (pvkw.where(night, 0) == 0).all()
    cap = draws.pv_capacity_kw * draws.pv_has
    assert (pvkw <= cap * (1 + 1e-6)).all() and (pvkw >= 0).all()  # float32 powers
    assert ((pvkw > 0).any("time") == draws.pv_has).all()  # owners generate, others do not


def test_shared_sky_makes_pv_of_two_agents_strongly_correlated(draws):
    """Within a draw two PV owners see the same sky: their output is nearly
    proportional (correlation > 0.95); across draws the sky differs."""
    pvkw = -draws.p_pv_kw.sum("phase").values[0]  # (draw, time, agent)
    has = draws.pv_has.values[0]
    day = draws.pv_clear_sky_kw_per_kwp.values > 0
    within, across = [], []
    for d in range(pvkw.shape[0] - 1):
        owners = np.flatnonzero(has[d] & has[d + 1])
        if len(owners) >= 2:
            a, b = owners[:2]
            within.append(np.corrcoef(pvkw[d, day, a], pvkw[d, day, b])[0, 1])
            across.append(np.corrcoef(pvkw[d, day, a], pvkw[d + 1, day, b])[0, 1])
    assert np.median(within) > 0.95
    assert np.median(within) > np.median(across) + 0.05


def test_baseload_keeps_the_daily_energy_of_its_scale(draws):
    """The noise is mean-preserving: E[daily kWh | D_a] = D_a.  Per draw, the
    mean over agents of (simulated kWh / day - D_a); 4 standard errors over draws."""
    kwh = draws.p_base_kw.sum(("time", "phase")).values[0] / 2 / 2  # 96 half-hours = 2 days
    d = np.exp(draws.baseload_log_daily_kwh.values[0])
    rel = (kwh / d - 1).mean(axis=1)  # per draw
    se = rel.std(ddof=1) / np.sqrt(len(rel))
    assert abs(rel.mean()) < 4 * se + 1e-12


def test_baseload_noise_has_the_stated_autocorrelation(ieee, tmp_path):
    """With fixed noise_rho = 0.8 and noise_sd = 0.3 the log residuals are an
    AR(1): lag-1 autocorrelation 0.8 and sd 0.3, within 4 Monte Carlo SE."""
    ds = sample_priors(ieee, _write(tmp_path), draws=200, seed=11)
    p = ds.p_base_kw.sum("phase").values[0]  # (draw, time, agent)
    from bayesflex.priors.baseload import shape_factor

    s = shape_factor(tuple(SHAPE), ds.time.values)[None, :, None]
    level = np.exp(ds.baseload_log_daily_kwh.values[0])[:, None, :] / 24
    e = np.log(p / (level * s)) + 0.3**2 / 2
    r1 = (e[:, 1:] * e[:, :-1]).mean(axis=1) / (e**2).mean(axis=1)  # (draw, agent)
    per_draw = r1.mean(axis=1)
    se = per_draw.std(ddof=1) / np.sqrt(len(per_draw))
    # the lag-1 estimator is biased by O(1/T): allow it on top of the MC error
    assert abs(per_draw.mean() - 0.8) < 4 * se + 2 / 96
    sd = np.sqrt((e**2).mean(axis=1)).mean(axis=1)
    assert abs(sd.mean() - 0.3) < 4 * sd.std(ddof=1) / np.sqrt(len(sd)) + 0.3 / 96


def test_explicit_pv_agents(ieee, tmp_path):
    ds = sample_priors(ieee, _write(tmp_path, PV_WHO='agents = ["LOAD3", "LOAD7"]'), draws=3, seed=1)
    has = ds.pv_has.values[0]
    assert has[:, [2, 6]].all() and has.sum() == 6


def test_default_prior_predictive_matches_the_data_it_was_set_from(ieee):
    """Winter household daily kWh: the prior predictive mean equals ENWL's
    within 3 standard errors of ENWL's mean (100 households) plus 3 Monte
    Carlo SE; winter PV yield within 10 % of PVGIS's 1.06 kWh/kWp/day.
    (The evening peak's upper tail is heavier in the prior than in ENWL:
    p90 4.3 kW against 3.2 kW; see priors/default.toml.)"""
    import pandas as pd

    from .conftest import shared_path

    x = pd.read_csv(shared_path("enwl", "profiles", "Winter_Load_Profiles.csv"), header=None,
                    encoding="utf-8-sig").to_numpy().reshape(48, 6, -1).mean(axis=1)
    data_daily = x.sum(axis=0) / 2
    ds = sample_priors(ieee, "default", draws=300, seed=5)
    daily = ds.p_base_kw.sum("phase").values[0][:, :48].sum(axis=1) / 2  # (draw, agent), first day
    per_draw = daily.mean(axis=1)
    se = np.hypot(data_daily.std(ddof=1) / np.sqrt(len(data_daily)), per_draw.std(ddof=1) / np.sqrt(len(per_draw)))
    assert abs(per_draw.mean() - data_daily.mean()) < 3 * se
    has, cap = ds.pv_has.values[0], ds.pv_capacity_kw.values[0]
    yield_kwh = (-ds.p_pv_kw.sum("phase").values[0][:, :48].sum(axis=1) / 2)[has] / cap[has]
    assert abs(yield_kwh.mean() / 1.06 - 1) < 0.10


def test_battery_soc_limits_hold_and_bounds_keep_them(ieee, tmp_path):
    """SoC stays in [soc_min, soc_max] at every step; moving any one half-hour
    to its bound (the rest unchanged) keeps every later SoC within limits."""
    from .conftest import edited_priors

    path = edited_priors(tmp_path, [("penetration = 0.1            #", "penetration = 1.0 #")], name="summer")
    ds = sample_priors(ieee, path, draws=40, seed=2)
    soc = ds.battery_soc.values[0]  # (draw, time, agent)
    assert np.nanmin(soc) >= 0.1 - 1e-9 and np.nanmax(soc) <= 0.95 + 1e-9
    b = ds.p_battery_kw.sum("phase").values[0].astype(float)
    lb, ub = ds.battery_p_lb_kw.values[0].astype(float), ds.battery_p_ub_kw.values[0].astype(float)
    cap = ds.battery_capacity_kwh.values[0][:, None, :]
    rng = np.random.default_rng(0)
    for _ in range(50):
        d, t, a = rng.integers(40), rng.integers(96), rng.integers(ieee.n_agent)
        for bound in (lb[d, t, a], ub[d, t, a]):
            moved = soc[d, t:, a] + (bound - b[d, t, a]) * 0.5 / cap[d, 0, a]
            assert moved.min() >= 0.1 - 1e-4 and moved.max() <= 0.95 + 1e-4
    # with PV in summer the battery charges by day and discharges in the evening
    day, evening = b[:, 22:30].mean(), b[:, 38:44].mean()
    assert day > 0 > evening
