"""Priors: the file format and its errors, and the sampled draws' properties.

Statistical checks use tolerances from the Monte Carlo error of the same run
(4 standard errors: a false alarm about once in 16,000 runs per check).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import bayesflex as bf
from bayesflex.errors import ConfigError
from bayesflex.priors import draw_parameters, load_priors, sample_priors

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
level_log_mean = {{ dist = "Normal", mu = 0.0, sigma = 0.1 }}
level_log_sd = {{ dist = "HalfNormal", sigma = 0.4 }}
day_share = DAY_SHARE
appliance_kw = 1.8
knee_kw = 0.35
knee_power = 2.6
persistence = NOISE_RHO
service_kw = [13.8, 18.4, 23.0]
service_share = SERVICE_SHARE
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
    defaults = {"DAY_SHARE": "0.5", "SERVICE_SHARE": "[0.3, 0.5, 0.2]", "NOISE_RHO": "0.8", "PV_WHO": "penetration = 0.5",
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
        ({"NOISE_RHO": '{ dist = "Uniform", lower = 0.5, upper = 1.5 }'}, ["persistence", "outside [0, 1]"]),
        ({"PV_WHO": 'penetration = 0.3\nagents = ["LOAD1"]'}, ["exactly one of penetration"]),
        ({"DAY_SHARE": "0.3\ncolour = 2"}, ["[baseload]", "unknown key 'colour'"]),
        ({"DAY_SHARE": "0.3\nnoise_sd = 0.9"}, ["[baseload]", "log-normal baseload that bayesflex replaced"]),
        ({"SERVICE_SHARE": "[0.5, 0.6, 0.1]"}, ["service_share", "add up to 1"]),
        ({"SERVICE_SHARE": "[0.5, 0.5]"}, ["service_share", "3 probabilities"]),
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
    assert draws.sizes == {"chain": 1, "draw": 400, "time": 96, "agent": 55, "phase": 3, "day": 2}
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


def _beta_scores(ds, shape=SHAPE, appliance=1.8, knee=0.35, power=2.6):
    """Each house-half-hour's probability integral transform under its own Beta
    margin (draws' stored levels and capacities), and its normal score."""
    from scipy import special

    from bayesflex.priors.baseload import EDGE, beta_ab, day_index

    p = ds.p_base_kw.sum("phase").values[0].astype(float)  # (draw, time, agent)
    cap = ds.baseload_cap_kw.values[0][:, None, :]
    level = np.exp(ds.baseload_level_log.values[0])[:, :, day_index(ds.time.values)].transpose(0, 2, 1)
    mu = np.asarray(shape)[ds.time.dt.hour.values * 2 + ds.time.dt.minute.values // 30][None, :, None] * level
    a, b = beta_ab(mu, cap, appliance, knee, power)
    u = special.betainc(a, b, np.clip(p / cap, EDGE, 1 - EDGE))
    return p, mu, u, special.ndtri(np.clip(u, 1e-9, 1 - 1e-9))


def test_baseload_mean_is_the_shape_times_the_level(draws):
    """The margins keep the mean: E[p | level] = shape x level.  Per draw, the
    mean over agents and half-hours of p / (shape x level) - 1; 4 standard
    errors over draws."""
    p, mu, _, _ = _beta_scores(draws)
    rel = (p / mu - 1).mean(axis=(1, 2))
    se = rel.std(ddof=1) / np.sqrt(len(rel))
    assert abs(rel.mean()) < 4 * se


def test_baseload_margins_are_the_stated_beta(ieee, tmp_path):
    """Each half-hour's probability integral transform under its Beta margin
    is uniform: its mean 1/2 and variance 1/12 within 4 Monte Carlo SE, and no
    decile off by more than 4 SE (persistence 0.8: dependence in time must not
    bend the margins)."""
    ds = sample_priors(ieee, _write(tmp_path), draws=200, seed=11)
    _, _, u, _ = _beta_scores(ds)
    per_draw = u.mean(axis=(1, 2))
    assert abs(per_draw.mean() - 0.5) < 4 * per_draw.std(ddof=1) / np.sqrt(len(per_draw))
    var = ((u - 0.5) ** 2).mean(axis=(1, 2))
    assert abs(var.mean() - 1 / 12) < 4 * var.std(ddof=1) / np.sqrt(len(var))
    deciles = np.stack([((u >= k / 10) & (u < (k + 1) / 10)).mean(axis=(1, 2)) for k in range(10)], axis=1)
    se = deciles.std(axis=0, ddof=1) / np.sqrt(len(deciles))
    assert (abs(deciles.mean(axis=0) - 0.1) < 4 * se).all(), deciles.mean(axis=0)


@pytest.mark.parametrize("k0, k1", [(2.0, 2.0), (0.7, 3.0), (5.0, 1.5)])
def test_gamma_thinning_keeps_gamma_margins_and_its_correlation(k0, k1):
    """The chain's margins are Gamma(k) (mean k, variance k) and consecutive
    values correlate by rho min(k0, k1) / sqrt(k0 k1): 4 Monte Carlo SE, on
    200,000 independent pairs (alternating shapes k0, k1)."""
    from bayesflex.priors.baseload import gamma_thinning

    rho, n = 0.6, 200_000
    shape = np.tile([k0, k1], (n, 1))
    g = gamma_thinning(np.random.default_rng(3), shape, np.full(n, rho))
    for j, k in enumerate((k0, k1)):
        assert abs(g[:, j].mean() - k) < 4 * np.sqrt(k / n)
        assert abs(g[:, j].var() - k) < 4 * k * np.sqrt(2 * (1 + 3 / k) / n)  # var of a sample variance
    r = np.corrcoef(g[:, 0], g[:, 1])[0, 1]
    want = rho * min(k0, k1) / np.sqrt(k0 * k1)
    assert abs(r - want) < 4 * (1 - want**2) / np.sqrt(n - 3) * 1.5, (r, want)


def test_no_baseload_draw_exceeds_what_the_service_leaves(draws):
    """Every house-half-hour stays below its capacity; capacities are the
    stated fuses in their stated shares (4 SE of a proportion)."""
    p = draws.p_base_kw.sum("phase").values[0]
    cap = draws.baseload_cap_kw.values[0]
    assert (p <= cap[:, None, :]).all()
    service = draws.baseload_service_kw.values[0]
    n = service.size
    for kw, share in ((13.8, 0.3), (18.4, 0.5), (23.0, 0.2)):
        got = (service == kw).mean()
        assert abs(got - share) < 4 * np.sqrt(share * (1 - share) / n), (kw, got)


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


@pytest.mark.parametrize("key, tech", [("level_log_sd", "baseload"), ("charger_kw", "ev"), ("rating_kw", "heat_pump")])
def test_one_technology_s_priors_never_change_another_s_draws(tmp_path, key, tech):
    """Fixing one technology's parameter (one PyMC variable fewer) leaves every
    other technology's parameter draws bit-identical: each draws from its own seed."""
    import re

    from bayesflex.priors import draw_parameters, priors_dir

    text = (priors_dir() / "default.toml").read_text()
    fixed = re.sub(rf"(?m)^{key} = .*$", f"{key} = 3.5", text, count=1)
    assert fixed != text
    path = tmp_path / "fixed.toml"
    path.write_text(fixed)
    a = draw_parameters(load_priors("default"), 55, 20, np.random.SeedSequence(5))
    b = draw_parameters(load_priors(path), 55, 20, np.random.SeedSequence(5))
    others = [k for k in a if not k.startswith(f"{tech}.")]
    assert {"baseload.level_log_sd", "ev.charger_kw", "heat_pump.rating_kw", "pv.capacity_kw"} <= set(a)
    for k in others:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not np.array_equal(a[f"{tech}.{key}"], b[f"{tech}.{key}"])


def test_draws_in_threads_are_the_serial_draws_and_leave_pytensor_as_found():
    """Chunks of a study drawn in threads (the threading backend) compile PyTensor
    graphs at once.  Without a lock, PyTensor's process-wide configuration, which its
    compiler changes and restores around each rewrite, was left at the draws'
    FAST_COMPILE mode (and once with no C compiler), so the conditioning fit that
    followed in the same process ran in Python, 10-20 times slower (CI hung on it)."""
    import pytensor

    pri = load_priors("default")
    before = (pytensor.config.mode, pytensor.config.cxx, pytensor.config.linker)
    seeds = range(8)
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda s: draw_parameters(pri, 5, 3, np.random.SeedSequence(s)), seeds))
    assert (pytensor.config.mode, pytensor.config.cxx, pytensor.config.linker) == before
    for s, got in zip(seeds, threaded):
        want = draw_parameters(pri, 5, 3, np.random.SeedSequence(s))
        assert got.keys() == want.keys()
        assert all(np.array_equal(got[k], want[k]) for k in want)


def test_a_compiled_draw_is_reused_only_for_an_equal_graph_and_draws_what_pm_draw_draws(monkeypatch):
    """Every chunk of a study draws the same PyTensor graphs, so ``sampling._draw`` keeps the
    functions it compiled.  Each draw must be pm.draw's (compiled afresh, the reference), and a
    function is reused only for a graph of the same operations, constants and dimension lengths."""
    import pymc as pm
    import pymc.pytensorf

    from bayesflex.priors import sampling
    from bayesflex.priors.spec import DRAW_MODE

    compiled = []
    real = pymc.pytensorf.compile
    monkeypatch.setattr(pymc.pytensorf, "compile", lambda *a, **k: compiled.append(1) or real(*a, **k))
    monkeypatch.setattr(sampling, "_COMPILED", [])

    def graph(n_agent: int, mu: float):
        with pm.Model(coords={"agent": np.arange(n_agent)}):
            return [pm.Normal("x", mu, 1.0, dims="agent"), pm.Gamma("g", alpha=2.0, beta=1.0),
                    pm.Categorical("c", p=[0.2, 0.8], dims="agent")]

    def check(n_agent: int, mu: float, seed: int, compiles: int) -> list[np.ndarray]:
        before = len(compiled)
        got = sampling._draw(graph(n_agent, mu), 6, np.random.default_rng(seed))
        assert len(compiled) - before == compiles, (n_agent, mu, seed)
        monkeypatch.setattr(pymc.pytensorf, "compile", real)
        want = pm.draw(graph(n_agent, mu), draws=6, random_seed=np.random.default_rng(seed), mode=DRAW_MODE)
        monkeypatch.setattr(pymc.pytensorf, "compile", lambda *a, **k: compiled.append(1) or real(*a, **k))
        assert all(np.array_equal(g, w) and g.dtype == w.dtype for g, w in zip(got, want, strict=True))
        return got

    first = check(4, 0.0, seed=1, compiles=1)
    again = check(4, 0.0, seed=1, compiles=0)  # reused, reseeded as new
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    check(4, 0.0, seed=2, compiles=0)
    check(4, 3.0, seed=2, compiles=1)  # another mean: another graph
    check(7, 0.0, seed=2, compiles=1)  # another dimension length
    check(4, 0.0, seed=3, compiles=0)  # the first function is still kept
