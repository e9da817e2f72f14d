"""Heat pumps: COP against hplib, the house's heat balance against an independent
integration, known answers (steady state, cooling, an undersized pump, the call
chain's share), bounds, shared weather, and the data the priors were set from."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bayesflex.priors import load_priors, sample_priors
from bayesflex.priors.heat_pump import BURN_IN, DT_H, call_for_heat, cop, heat_houses, periodic_share

from .conftest import edited_priors, shared_path

# hplib 1.9, HeatPump(get_parameters("Generic", group_id=1, ...)).simulate(...): COP of its
# generic regulated air/water heat pump at outdoor -10..15 degC, flow 35 and 55 degC (run
# with hplib itself, which bayesflex does not depend on)
HPLIB_COP = {
    35: [2.440, 3.210, 3.981, 4.751, 5.521, 6.291],
    55: [1.000, 1.459, 2.229, 3.000, 3.770, 4.540],
}
TIMES = pd.date_range("2026-01-14", periods=96, freq="30min").values


@pytest.mark.parametrize("flow", [35, 55])
def test_cop_matches_hplib(flow):
    np.testing.assert_allclose(cop(np.array([-10, -5, 0, 5, 10, 15]), flow), HPLIB_COP[flow], atol=1.5e-3)


def _extra(t_out_c=5.0, *, start=0.0, stop=0.0, setback_k=10.0, band=1.0):
    """A constant outdoor temperature and a call chain that never switches."""
    return {"forecast_min_c": t_out_c, "forecast_max_c": t_out_c, "flow_temp_c": 45.0, "setback_k": setback_k,
            "comfort_band_k": band, "call_start": [start] * 48, "call_stop": [stop] * 48}


def _par(n=4, a=3, *, h=0.2, c=6.0, setpoint=20.0, rating=4.0, sd=0.0, rho=0.9):
    def full(v):
        return np.full((n, a), float(v))

    return {"heat_loss_kw_per_k": full(h), "heat_capacity_kwh_per_k": full(c), "setpoint_c": full(setpoint),
            "rating_kw": full(rating), "temp_error_sd": np.full(n, float(sd)), "temp_error_rho": np.full(n, rho)}


def _run(par, extra, seed=0):
    n, a = par["rating_kw"].shape
    return heat_houses(par, extra, TIMES, np.ones((n, a), bool), np.random.default_rng(seed))


def _euler(t_in, t_out, p, cp, h, c, minutes=30, steps=1800):
    """Indoor temperature after ``minutes`` of constant power: C dT/dt = COP p - H (T - T_out),
    explicit Euler in one-second steps (an integration independent of the model's exact solution)."""
    dt = minutes / 60 / steps
    for _ in range(steps):
        t_in = t_in + dt * (cp * p - h * (t_in - t_out)) / c
    return t_in


def test_steady_state_draws_what_the_house_loses():
    """Called for all day at its setpoint, in a constant 5 degC: p = H (T_set - T_out) / COP."""
    res = _run(_par(), _extra(start=1.0, stop=0.0))
    want = 0.2 * (20 - 5) / cop(5.0, 45.0)
    assert res["call"].all()
    np.testing.assert_allclose(res["p_kw"], want, rtol=1e-9)
    np.testing.assert_allclose(res["t_in_c"], 20.0, atol=1e-9)
    assert (res["unmet_kwh"] == 0).all()


def test_a_house_never_called_for_cools_exponentially():
    """No call and a setback below the outdoor air: the house falls from its setpoint towards
    T_out with time constant C / H, and the pump stays off."""
    res = _run(_par(h=0.2, c=6.0), _extra(t_out_c=2.0, start=0.0, stop=1.0, setback_k=30.0))
    tau = 6.0 / 0.2
    hours = (BURN_IN + np.arange(96)) * DT_H  # from the burn-in's start at the setpoint
    want = 2.0 + (20.0 - 2.0) * np.exp(-hours / tau)
    np.testing.assert_allclose(res["t_in_c"], want[None, :, None] * np.ones_like(res["t_in_c"]), rtol=1e-9)
    assert (res["p_kw"] == 0).all()


def test_an_undersized_pump_runs_at_its_rating_and_reports_the_rest():
    need = 0.3 * (21 - (-5)) / cop(-5.0, 45.0)  # electrical kW to hold 21 degC at -5 degC
    res = _run(_par(h=0.3, setpoint=21.0, rating=1.5), _extra(t_out_c=-5.0, start=1.0, stop=0.0))
    assert need > 1.5
    np.testing.assert_allclose(res["p_kw"], 1.5)
    np.testing.assert_allclose(res["unmet_kwh"], (need - 1.5) * 96 * DT_H, rtol=1e-9)


def test_recovery_at_the_rating_after_an_off_period():
    """A house left to cool overnight is brought back at its full rating when heat is first
    called for, then settles to what it loses; its heat balance closes over the horizon."""
    extra = _extra(t_out_c=0.0)
    extra["call_start"] = [0.0] * 14 + [1.0] + [0.0] * 33  # on from 07:00
    extra["call_stop"] = [0.0] * 40 + [1.0] + [0.0] * 7  # off from 20:00
    res = _run(_par(n=2, a=2), extra, seed=3)
    p, t_in, call = res["p_kw"][0, :, 0], res["t_in_c"][0, :, 0], res["call"][0, :, 0]
    assert call[14:40].all() and not call[40:62].any() and call[62:88].all()
    assert (p[:14] == 0).all() and (p[40:62] == 0).all()  # off overnight: the house stays above its setback
    assert p[14] == pytest.approx(4.0) and p[62] == pytest.approx(4.0)  # the mornings' recoveries
    np.testing.assert_allclose(p[30:40], 0.2 * 20 / cop(0.0, 45.0), rtol=1e-6)  # back to steady state
    # C (T_95 - T_0) = sum of COP p dt - the loss H (T - T_out) integrated (Euler) along each half-hour
    c, h, cp = 6.0, 0.2, cop(0.0, 45.0)
    loss = 0.0
    for i in range(95):
        t, steps = t_in[i], 1800
        for _ in range(steps):
            loss += h * t * DT_H / steps
            t += DT_H / steps * (cp * p[i] - h * t) / c
    assert c * (t_in[95] - t_in[0]) == pytest.approx(cp * p[:95].sum() * DT_H - loss, abs=1e-3 * loss)


@pytest.fixture(scope="module")
def hp_sim():
    """50 draws x 55 houses of the default winter priors, parameters drawn in numpy from its distributions."""
    pri = load_priors("default")["heat_pump"]
    rng = np.random.default_rng(11)
    n, a = 50, 55
    par = {"heat_loss_kw_per_k": rng.lognormal(-1.395, 0.268, (n, a)),
           "heat_capacity_kwh_per_k": rng.lognormal(1.833, 0.4, (n, a)),
           "setpoint_c": rng.normal(20.0, 1.0, (n, a)), "rating_kw": rng.lognormal(1.293, 0.183, (n, a)),
           "temp_error_sd": rng.lognormal(0.916, 0.3, n), "temp_error_rho": np.full(n, 0.98)}
    return par, pri.extra, heat_houses(par, pri.extra, TIMES, np.ones((n, a), bool), rng)


def _sample(mask, k, seed):
    idx = np.argwhere(mask)
    return idx[np.random.default_rng(seed).choice(len(idx), size=min(k, len(idx)), replace=False)].T


def test_indoor_temperature_follows_the_heat_balance(hp_sim):
    """500 random half-hours: the model's next indoor temperature against an independent
    Euler integration (one-second steps) of C dT/dt = COP p - H (T - T_out) with its own power."""
    par, extra, res = hp_sim
    d, i, a = _sample(np.ones(res["p_kw"][:, :95].shape, bool), 500, 5)
    got = _euler(res["t_in_c"][d, i, a], res["t_out_c"][d, i], res["p_kw"][d, i, a],
                 cop(res["t_out_c"][d, i], extra["flow_temp_c"]), par["heat_loss_kw_per_k"][d, a],
                 par["heat_capacity_kwh_per_k"][d, a])
    np.testing.assert_allclose(got, res["t_in_c"][d, i + 1, a], atol=1e-3)  # Euler's error: < 1e-4 K


def test_flexibility_bounds_end_the_half_hour_on_the_comfort_band(hp_sim):
    """Where a bound is not clipped at 0 or the rating, running it for one half-hour ends it at
    the band's edge by the independent integration: comfort_band_k below the path's end or the
    setpoint, whichever is lower (heat called for), comfort_band_k above the setpoint; every
    bound within [0, rating] and around the power."""
    par, extra, res = hp_sim
    band = extra["comfort_band_k"]
    rating = par["rating_kw"][:, None, :]
    assert (res["p_lb_kw"] >= 0).all() and (res["p_ub_kw"] <= rating + 1e-12).all()
    assert (res["p_lb_kw"] <= res["p_kw"]).all() and (res["p_kw"] <= res["p_ub_kw"]).all()
    t_set = par["setpoint_c"][:, None, :]
    edges = {"p_lb_kw": np.minimum(t_set, res["t_in_c"][:, 1:]) - band, "p_ub_kw": t_set + band}
    for key, edge in edges.items():
        q = res[key][:, :95]
        free = res["call"][:, :95] & (q > 1e-6) & (q < rating - 1e-6)
        assert free.sum() > 1000, key
        d, i, a = _sample(free, 300, 6)
        got = _euler(res["t_in_c"][d, i, a], res["t_out_c"][d, i], q[d, i, a],
                     cop(res["t_out_c"][d, i], extra["flow_temp_c"]), par["heat_loss_kw_per_k"][d, a],
                     par["heat_capacity_kwh_per_k"][d, a])
        np.testing.assert_allclose(got, np.broadcast_to(edge, q.shape)[d, i, a], atol=1e-3)


def test_a_recovery_can_be_slowed_and_heat_stored_ahead():
    """At the rating in a recovery the pump can still turn down (the house ends the half-hour
    at most comfort_band_k colder than planned); off, it can turn up (pre-heat)."""
    extra = _extra(t_out_c=0.0)
    extra["call_start"] = [0.0] * 14 + [1.0] + [0.0] * 33
    extra["call_stop"] = [0.0] * 40 + [1.0] + [0.0] * 7
    res = _run(_par(n=1, a=1), extra)
    p, lb, ub = res["p_kw"][0, :, 0], res["p_lb_kw"][0, :, 0], res["p_ub_kw"][0, :, 0]
    assert p[14] == pytest.approx(4.0) and lb[14] < 4.0 - 1.0  # 1 K of a 6 kWh/K house: about 2 kWh
    assert p[10] == 0 and ub[10] == pytest.approx(4.0)


def test_call_chain_reproduces_the_share_it_was_derived_from():
    """The periodic share of the default call chain is ENWL's share of heat pumps on (> 0.1 kW)
    by half-hour (to the arrays' rounding), and simulated chains give it within 4 binomial SE."""
    x = pd.read_csv(shared_path("enwl", "profiles", "Winter_EHP_Profiles.csv"), header=None,
                    encoding="utf-8-sig").to_numpy(float)
    data = (x.reshape(48, 6, -1).mean(axis=1) > 0.1).mean(axis=1)
    extra = load_priors("default")["heat_pump"].extra
    share = periodic_share(extra["call_start"], extra["call_stop"])
    np.testing.assert_allclose(share, data, atol=0.01)
    call = call_for_heat(extra["call_start"], extra["call_stop"], np.arange(96) % 48, (400, 55),
                         np.random.default_rng(2))
    got, want = call.mean(axis=(0, 2)), np.tile(share, 2)
    se = np.sqrt(want * (1 - want) / (400 * 55))  # houses independent
    assert (np.abs(got - want) < 4 * se + 1e-9).all()


@pytest.fixture(scope="module")
def hp(ieee, tmp_path_factory):
    path = edited_priors(tmp_path_factory.mktemp("hp"), [("penetration = 0.15", "penetration = 1.0")])
    return sample_priors(ieee, path, draws=200, seed=8)


def test_demand_is_within_rating_and_bounds(hp):
    p = hp.p_hp_kw.sum("phase").values[0]
    rating = hp.heat_pump_rating_kw.values[0][:, None, :]
    assert (p >= 0).all()
    assert (p <= rating + 1e-5).all()
    assert (hp.p_lb_kw <= hp.p_kw + 1e-5).all() and (hp.p_kw <= hp.p_ub_kw + 1e-5).all()
    # the pump runs at its rating in some half-hours (recoveries) and is off in most
    assert ((p > rating - 1e-4).mean(axis=1) > 0).mean() > 0.9
    assert 0.5 < (p < 0.1).mean() < 0.75


def test_one_weather_for_the_feeder_and_colder_means_more(hp):
    t = hp.hp_outdoor_temp_c.values[0]  # (draw, time): one series per draw for all houses
    assert t.shape == (200, 96)
    daily_t = t[:, :48].mean(axis=1)
    kwh = hp.p_hp_kw.sum(("phase", "agent")).values[0][:, :48].sum(axis=1) / 2
    assert np.corrcoef(daily_t, kwh)[0, 1] < -0.5
    # the January normal: mean of low 1.7 and high 7.3, within 4 SE of the draws' day means
    se = daily_t.std(ddof=1) / np.sqrt(len(daily_t))
    assert abs(daily_t.mean() - 4.5) < 4 * se


def test_heat_pump_energy_matches_enwl(hp):
    """Mean electricity per heat pump and day against ENWL's winter heat-pump
    profiles (19.8 kWh/day, sd 8.4 over 100): within 3 SE of both."""
    x = pd.read_csv(shared_path("enwl", "profiles", "Winter_EHP_Profiles.csv"), header=None,
                    encoding="utf-8-sig").to_numpy()
    data = x.sum(axis=0) / 12
    per_draw = (hp.p_hp_kw.sum("phase").values[0][:, :48].sum(axis=1) / 2).mean(axis=1)
    se = np.hypot(data.std(ddof=1) / np.sqrt(len(data)), per_draw.std(ddof=1) / np.sqrt(len(per_draw)))
    assert abs(per_draw.mean() - data.mean()) < 3 * se, (per_draw.mean(), data.mean(), se)
