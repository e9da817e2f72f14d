"""EV Markov chain: transition matrices, occupancy, charging, and the conjugate update."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bayesflex.errors import ConfigError
from bayesflex.priors import condition, load_priors, read_ev_states, sample_priors
from bayesflex.priors.ev import periodic_occupancy, transition_counts

from .conftest import edited_priors


@pytest.fixture(scope="module")
def all_ev(ieee, tmp_path_factory):
    """The default priors with an EV in every household, 200 draws."""
    path = edited_priors(tmp_path_factory.mktemp("ev"), [("penetration = 0.2", "penetration = 1.0")])
    return sample_priors(ieee, path, draws=200, seed=21)


def test_transition_rows_sum_to_one_and_forbid_teleporting(all_ev):
    P = all_ev.ev_transition.values[0]  # (draw, slot, from, to)
    np.testing.assert_allclose(P.sum(axis=-1), 1.0, atol=1e-12)
    assert (P >= 0).all()
    assert np.abs(P[..., 1, 2]).max() < 1e-6 and np.abs(P[..., 2, 1]).max() < 1e-6  # R->C, C->R


def test_occupancy_matches_the_periodic_stationary_distribution(all_ev):
    """Cars start in the chain's periodic stationary distribution, so at every
    half-hour the share of cars in each state equals it in expectation.  Per
    draw: simulated share minus the exact one; across 200 draws the mean must
    be within 4.5 standard errors for all 96 x 3 cells (Bonferroni: a false
    alarm about once in 500 runs)."""
    st = all_ev.ev_state.values[0]  # (draw, time, agent)
    P = all_ev.ev_transition.values[0]
    first = int((all_ev.time.values[0].astype("datetime64[m]").astype(int) // 30) % 48)
    exact = periodic_occupancy(P, first)  # (draw, 48, 3), relative to the first slot
    exact = np.concatenate([exact, exact], axis=1)[:, : st.shape[1]]
    for k in range(3):
        diff = (st == k).mean(axis=2) - exact[..., k]  # (draw, time)
        z = diff.mean(axis=0) / (diff.std(axis=0, ddof=1) / np.sqrt(diff.shape[0]) + 1e-12)
        assert np.abs(z).max() < 4.5, (k, np.abs(z).max())


def test_charging_soc_and_bounds(all_ev):
    soc = all_ev.ev_soc.values[0]
    assert np.nanmin(soc) >= -1e-12 and np.nanmax(soc) <= 1 + 1e-12
    p = all_ev.p_ev_kw.sum("phase").values[0]
    st = all_ev.ev_state.values[0]
    assert (st[p > 0] == 1).all()  # charging only while parked at home
    charger = all_ev.ev_charger_kw.values[0][:, None, :]
    assert (p <= charger * (1 + 1e-6)).all()  # float32 powers
    assert (all_ev.p_lb_kw <= all_ev.p_kw + 1e-5).all() and (all_ev.p_kw <= all_ev.p_ub_kw + 1e-5).all()


def test_ev_energy_matches_enwl(all_ev):
    """Mean charging energy per car-day against ENWL's winter EV profiles
    (8.32 kWh/day, sd 4.0 over 100 cars): within 3 standard errors of both."""
    from .conftest import shared_path

    x = pd.read_csv(shared_path("enwl", "profiles", "Winter_EV_Profiles.csv"), header=None,
                    encoding="utf-8-sig").to_numpy()
    data = x.sum(axis=0) / 12  # 5-minute kW -> kWh per day
    day2 = all_ev.p_ev_kw.sum("phase").values[0][:, 48:].sum(axis=1) / 2  # (draw, agent)
    per_draw = day2.mean(axis=1)
    se = np.hypot(data.std(ddof=1) / np.sqrt(len(data)), per_draw.std(ddof=1) / np.sqrt(len(per_draw)))
    assert abs(per_draw.mean() - data.mean()) < 3 * se, (per_draw.mean(), data.mean(), se)


def _logs(states, start="2026-01-05 00:00"):
    t = pd.date_range(start, periods=len(states), freq="30min")
    return pd.DataFrame({"agent": "LOAD1", "time": t, "state": list(states)})


@pytest.mark.parametrize(
    "states, words",
    [
        ("RRX", ["state(s) ['X'] unknown", "allowed: M, R, C"]),
        ("RRCC", ["goes from R to C", "without moving"]),
    ],
)
def test_bad_state_logs(ieee, states, words):
    with pytest.raises(ConfigError) as e:
        read_ev_states(_logs(states), agents=ieee.agents)
    for w in words:
        assert w in str(e.value)


def test_counts_and_conjugate_update(ieee):
    pri = load_priors("default")
    log = "R" * 14 + "MM" + "C" * 16 + "M" + "R" * 15  # a commuting day from 00:00
    states, slots = read_ev_states(_logs(log), agents=ieee.agents)
    counts = transition_counts(states, slots)
    assert counts.sum() == len(log) - 1
    assert counts[13, 1, 0] == 1 and counts[14, 0, 0] == 1 and counts[15, 0, 2] == 1
    post = condition(pri, ev_states=_logs(log), agents=ieee.agents)
    from bayesflex.priors.ev import prior_alpha

    np.testing.assert_allclose(post.ev_alpha, prior_alpha(pri["ev"]) + counts)
    ds = sample_priors(ieee, post, draws=50, seed=1)
    assert ds.attrs["conditioned"] == 1


@pytest.mark.slow
def test_conjugate_update_agrees_with_pymc():
    """One Dirichlet row (R at 07:00) after 40 observed half-hours at that slot
    (12 departures): the closed-form posterior mean and sd against NUTS on the
    same Dirichlet-multinomial model, within 4 Monte Carlo SE."""
    import pymc as pm

    from bayesflex.priors.ev import prior_alpha

    a = prior_alpha(load_priors("default")["ev"])[14, 1, :2]  # R row over (M, R)
    counts = np.array([12, 28])
    exact_mean = (a + counts) / (a + counts).sum()
    s = (a + counts).sum()
    exact_sd = np.sqrt(exact_mean * (1 - exact_mean) / (s + 1))
    with pm.Model():
        p = pm.Dirichlet("p", a=a)
        pm.Multinomial("n", n=int(counts.sum()), p=p, observed=counts)
        idata = pm.sample(2000, tune=1000, chains=2, cores=1, random_seed=3, progressbar=False)
    import arviz as az

    draws = idata.posterior["p"].values.reshape(-1, 2)
    ess = float(az.ess(idata, var_names=["p"]).p.values.min())
    mcse = draws.std(axis=0) / np.sqrt(ess)
    assert (np.abs(draws.mean(axis=0) - exact_mean) < 4 * mcse).all()
    np.testing.assert_allclose(draws.std(axis=0), exact_sd, rtol=0.1)


def test_charging_elsewhere_leaves_less_to_charge_at_home(ieee, tmp_path):
    all_ev = ("penetration = 0.2", "penetration = 1.0")
    a = edited_priors(tmp_path, [all_ev], filename="home.toml")
    b = edited_priors(tmp_path, [all_ev, ("charge_elsewhere = false", "charge_elsewhere = true")], filename="away.toml")
    home = sample_priors(ieee, a, draws=100, seed=5).p_ev_kw.sum().item()
    away = sample_priors(ieee, b, draws=100, seed=5).p_ev_kw.sum().item()
    assert away < 0.95 * home


def test_observations_from_netcdf(ieee, tmp_path):
    import xarray as xr

    from bayesflex.priors import read_observations

    t = pd.date_range("2026-01-05", periods=4, freq="30min")
    ds = xr.Dataset({"p_kw": (("agent", "time"), np.full((2, 4), 0.3))}, coords={"agent": ["LOAD1", "LOAD2"], "time": t})
    ds.to_netcdf(tmp_path / "m.nc")
    wide = read_observations(tmp_path / "m.nc", agents=ieee.agents)
    assert wide.shape == (4, 2) and (wide.to_numpy() == 0.3).all()
