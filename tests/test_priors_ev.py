"""EV Markov chain: transition matrices, occupancy, charging (on arrival or on a timer), and the conjugate update."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from bayesflex.errors import ConfigError
from bayesflex.priors import condition, load_priors, read_ev_states, sample_priors
from bayesflex.priors.baseload import half_hour_of_day
from bayesflex.priors.ev import (
    DT_H,
    drive_and_charge,
    periodic_occupancy,
    prior_alpha,
    transition_counts,
    window_fraction,
)

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


def _ev_only(ds):
    """(draw, time, agent) EV kW, the charger (draw, 1, agent) and each time's local half-hour."""
    p = ds.p_ev_kw.sum("phase").values[0].astype(float)
    local = pd.DatetimeIndex(ds.time.values).tz_localize("UTC").tz_convert("Europe/London").tz_localize(None)
    return p, ds.ev_charger_kw.values[0][:, None, :], half_hour_of_day(local.values)


@pytest.mark.parametrize("priors", ["default", "summer"])
def test_timed_cars_charge_only_inside_their_window(all_ev, ieee, tmp_path, priors):
    """A timed car charges only inside its window (local clock: in summer 23:00 is 22:00 UTC),
    at most the charger times the part of the half-hour inside it; each of its sessions starts
    when the window opens or when the car comes home inside it.  Cars not on a timer start on
    arrival.  Both kinds exist in the draws."""
    ds = all_ev if priors == "default" else sample_priors(
        ieee, edited_priors(tmp_path, [("penetration = 0.2", "penetration = 1.0")], name=priors), draws=100, seed=3)
    p, charger, local = _ev_only(ds)
    timed = ds.ev_timed.values[0]
    assert 0.1 < timed.mean() < 0.6 and timed.any(axis=1).mean() > 0.5
    frac = window_fraction(ds.ev_timer_start_h.values[0], load_priors(priors)["ev"].extra["timer_end_h"])
    frac = np.moveaxis(frac[..., local], -1, 1)  # (draw, time, agent)
    cap_kw = np.where(timed[:, None, :], charger * frac, charger)
    assert (p <= cap_kw * (1 + 1e-6) + 1e-6).all()
    on = p > 1e-6
    begins = on[:, 1:] & ~on[:, :-1]  # a session starts at t (t >= 1)
    st = ds.ev_state.values[0]
    arrived = st[:, :-1] != 1  # not at home the half-hour before
    opened = (frac[:, 1:] > 0) & (frac[:, :-1] == 0)
    assert (begins & timed[:, None, :] & ~(opened | arrived)).sum() == 0
    assert (begins & ~timed[:, None, :] & ~arrived).sum() == 0
    # most timed sessions begin in the half-hours the windows open (22:00-00:30): a new peak
    b = begins & timed[:, None, :]
    counts = np.bincount(np.broadcast_to(local[None, 1:, None], b.shape)[b], minlength=48)
    assert counts[[44, 45, 46, 47, 0]].sum() > 0.5 * counts.sum()


def test_timed_share_is_the_share_of_owners_on_a_timer(all_ev):
    """Each owner is on a timer with the draw's ``timed_share``: the mean over draws of
    (share timed - timed_share) is zero within 4 standard errors."""
    timed = all_ev.ev_timed.values[0]
    share = all_ev.ev_timed_share.values[0]
    diff = timed.mean(axis=1) - share
    assert abs(diff.mean()) < 4 * diff.std(ddof=1) / np.sqrt(len(diff))
    assert share.std() > 0.05  # a prior, not a fixed number


def test_energy_balance(all_ev):
    """Per car without a shortfall: the battery's change over the horizon equals the energy
    charged into it minus what its moving half-hours used (float32 powers: 1e-4 kWh)."""
    p = all_ev.p_ev_kw.sum("phase").values[0].astype(float)
    soc = all_ev.ev_soc.values[0]
    moving = all_ev.ev_state.values[0] == 0
    cap = all_ev.ev_battery_kwh.values[0]
    use = all_ev.ev_kwh_per_halfhour_moving.values[0]
    eff = load_priors("default")["ev"].extra["charge_efficiency"]
    ok = all_ev.ev_shortfall_kwh.values[0] == 0
    stored = cap * (soc[:, -1] - soc[:, 0])
    balance = eff * DT_H * p[:, 1:].sum(axis=1) - use * moving[:, 1:].sum(axis=1)
    assert ok.mean() > 0.9
    np.testing.assert_allclose(stored[ok], balance[ok], atol=1e-3 * cap.max())


def test_timer_by_hand():
    """A timed car that drives 10:00-20:00 (20 half-hours at 1.375 kWh: 27.5 of its 55 kWh) and is
    home after, 7 kW charger, efficiency 0.9, window 23:15-08:00 local (= UTC here): no charge
    before 23:00, 3.5 kW in 23:00-23:30 (half of it inside), then 7 kW until 27.5 / 0.9 kWh are
    in, then nothing.  Upper bound 7 kW all the while it is home and not full (it may be started
    early), what it can still take in its last half-hour, 0 when full; lower bound 0."""
    P = np.zeros((1, 48, 3, 3))
    P[..., 1] = 1.0  # every state goes home ...
    P[:, 19:39] = [1.0, 0.0, 0.0]  # ... except that the car drives 10:00-20:00 (the move into slot s is P[s - 1])
    par = {"battery_kwh": np.full((1, 1), 55.0), "charger_kw": np.full((1, 1), 7.0),
           "kwh_per_halfhour_moving": np.full((1, 1), 1.375), "initial_soc": np.full((1, 1), 1.0),
           "timed_share": np.ones(1), "timer_start_h": np.full((1, 1), 23.25)}
    slots = np.arange(20, 20 + 48) % 48  # the horizon starts at 10:00
    res = drive_and_charge(par, P, slots, np.ones((1, 1), bool), np.random.default_rng(0), 0.9, local_slots=slots,
                           timer_end_h=8.0)
    p, ub, st = res["p_kw"][0, :, 0], res["p_ub_kw"][0, :, 0], res["state"][0, :, 0]
    assert (st[:20] == 0).all() and (st[20:] == 1).all()  # 10:00-20:00 moving, home after
    assert res["shortfall_kwh"][0, 0] == 0
    np.testing.assert_allclose(p[:26], 0.0)  # 10:00-23:00: waits for the window
    assert (ub[20:26] == 7.0).all()  # ... but could be started
    np.testing.assert_allclose(p[26], 3.5)  # 23:00-23:30: half inside the window
    kwh = 27.5 / 0.9 - 3.5 * DT_H
    full = int(kwh // (7.0 * DT_H))
    np.testing.assert_allclose(p[27:27 + full], 7.0)
    np.testing.assert_allclose(p[27 + full], (kwh - full * 7.0 * DT_H) / DT_H)
    np.testing.assert_allclose(p[28 + full:], 0.0)
    np.testing.assert_allclose(res["soc"][0, -1, 0], 1.0)
    np.testing.assert_allclose(ub[27 + full], p[27 + full])
    np.testing.assert_allclose(ub[28 + full:], 0.0, atol=1e-9)
    np.testing.assert_allclose(res["p_lb_kw"], 0.0)


def test_without_timer_keys_no_car_is_timed(ieee, tmp_path):
    """An [ev] table without timed_share / timer_start_h (older files) keeps its meaning: every car
    charges on arrival; one of the two keys alone is an error naming both."""
    text = load_priors("default").text
    cut = text[text.index("timed_share = {"):text.index("timer_end_h")]
    old = edited_priors(tmp_path, [("penetration = 0.2", "penetration = 1.0"), (cut, "")], filename="old.toml")
    ds = sample_priors(ieee, old, draws=20, seed=2)
    assert not ds.ev_timed.values.any() and "ev_timer_start_h" not in ds
    start_only = cut[cut.index("timer_start_h"):]
    half = edited_priors(tmp_path, [(start_only, "")], filename="half.toml")
    with pytest.raises(ConfigError, match="timed_share.*timer_start_h.*together"):
        load_priors(half)


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
    np.testing.assert_allclose(post.ev_alpha, prior_alpha(pri["ev"]) + counts)
    ds = sample_priors(ieee, post, draws=50, seed=1)
    assert ds.attrs["conditioned"] == 1


@pytest.mark.slow
def test_conjugate_update_agrees_with_numerical_integration():
    """One Dirichlet row (R at 07:00) after 40 observed half-hours at that slot
    (12 departures): the closed-form posterior's mean and sd against the posterior
    computed by quadrature of prior density x multinomial likelihood over the
    simplex (two states: a line), to 1e-7.  (NUTS on the same model agreed within
    4 Monte Carlo SE, at 45 s of C compilation on a fresh machine.)"""
    a = prior_alpha(load_priors("default")["ev"])[14, 1, :2]  # R row over (M, R)
    counts = np.array([12, 28])
    exact_mean = (a + counts) / (a + counts).sum()
    s = (a + counts).sum()
    exact_sd = np.sqrt(exact_mean * (1 - exact_mean) / (s + 1))

    def density(p):  # prior x likelihood at p = P(M), unnormalised
        return stats.dirichlet.pdf([p, 1 - p], a) * stats.multinomial.pmf(counts, counts.sum(), [p, 1 - p])

    eps = 1e-12
    moment = [integrate.quad(lambda p, k=k: p ** k * density(p), eps, 1 - eps, epsabs=0, epsrel=1e-11)[0]
              for k in range(3)]
    mean = moment[1] / moment[0]
    sd = np.sqrt(moment[2] / moment[0] - mean ** 2)
    np.testing.assert_allclose([mean, 1 - mean], exact_mean, rtol=1e-7)
    np.testing.assert_allclose(sd, exact_sd[0], rtol=1e-7)


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
