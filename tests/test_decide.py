"""The market decision against closed forms: the newsvendor, exclusive products, the chance constraint."""

import numpy as np
import pandas as pd
import pytest

from bayesflex.aggregator.decide import cvar, decide, evaluate, parse_objective
from bayesflex.aggregator.markets import parse_markets
from bayesflex.core.intervals import quantile_interval
from bayesflex.errors import ConfigError

TZ = "UTC"


@pytest.fixture(autouse=True)
def every_draw_in_the_programme(monkeypatch):
    """The closed forms hold for the programme's own draws: let it use all of them."""
    import bayesflex.aggregator.decide

    monkeypatch.setattr(bayesflex.aggregator.decide, "PROGRAMME_DRAWS", 10**6)


def _times(n):
    return pd.date_range("2026-01-14 17:00", periods=n, freq="30min").tz_localize(None)


def _markets(**products):
    """A market set without rebound, carbon or tariff: the products' own prices alone."""
    return parse_markets({"products": products}, origin="test")


def _avail(price, penalty, **kw):
    return {"direction": "down", "kind": "availability", "availability_gbp_per_mw_h": price,
            "penalty_gbp_per_mwh": penalty, **kw}


def _draws(down, up=None):
    down = np.asarray(down, float)
    return {"down": down, "up": np.zeros_like(down) if up is None else np.asarray(up, float)}


def test_newsvendor_commits_the_price_over_penalty_quantile():
    # availability fee a per kW committed, penalty p per kW short: E = a x - p E[(x - D)+], so the
    # best x has P(D < x) = a / p: the a/p quantile of the deliverable
    rng = np.random.default_rng(1)
    d = rng.gamma(3.0, 4.0, size=(2000, 1))
    a, p = 30.0, 100.0
    m = _markets(flex=_avail(a * 2, p))  # availability per MW per hour; penalty per MWh over half an hour
    dec = decide((_draws(d), _times(1), TZ), m, risk=None)
    x = dec.commitment_kw[0, 0]
    q = a * 2 * 1 / p  # GBP per kW for the half-hour: a*2*0.5 vs p*0.5 -> ratio a*2/p
    lo, hi = quantile_interval(d[:, 0], [q])
    assert lo[0] - 1e-6 <= x <= hi[0] + 1e-6, (x, lo, hi, np.quantile(d, q))


def test_energy_product_pays_on_delivery_so_the_ratio_is_price_over_price_plus_penalty():
    rng = np.random.default_rng(2)
    d = rng.uniform(0, 20, size=(3000, 1))
    e, p = 120.0, 240.0
    m = _markets(da={"direction": "down", "kind": "energy", "energy_gbp_per_mwh": e, "penalty_gbp_per_mwh": p})
    dec = decide((_draws(d), _times(1), TZ), m, risk=None)
    # revenue e (x - short), penalty p short: E = e x - (e + p) E[(x - D)+] -> P(D < x) = e / (e + p) = 1/3
    assert dec.commitment_kw[0, 0] == pytest.approx(20 / 3, abs=0.6)  # uniform: the 1/3 quantile, MC error ~0.2


def test_programme_value_equals_the_evaluation_of_its_commitments():
    rng = np.random.default_rng(3)
    d = rng.gamma(2.0, 3.0, size=(400, 4))
    m = _markets(a=_avail(40.0, 90.0), b={"direction": "down", "kind": "energy", "energy_gbp_per_mwh": 80.0,
                                         "penalty_gbp_per_mwh": 150.0})
    dec = decide((_draws(d), _times(4), TZ), m, risk=None)
    ev = evaluate(m, dec.commitment_kw, _draws(d), _times(4), TZ, seed=None)
    assert ev.value["profit"].mean() == pytest.approx(dec.solver["objective"], rel=1e-6)


def test_exclusive_products_give_the_kw_to_the_better_one():
    # same deliverable, same penalty; the kW cannot be sold twice: all of it goes to the higher fee
    d = np.full((50, 2), 10.0)
    m = _markets(cheap=_avail(20.0, 50.0), dear=_avail(30.0, 50.0))
    dec = decide((_draws(d), _times(2), TZ), m, risk=None)
    assert np.allclose(dec.commitment_kw[1], 10.0) and np.allclose(dec.commitment_kw[0], 0.0)


def test_exclusive_products_split_by_price_and_risk():
    # per MW over the half-hour, a pays f_a = 20 with penalty p_a = 100, b pays f_b = 12 with p_b = 25.
    # A shortfall s = (x_a + x_b - D)+ goes to b (the cheaper) first, so with C = x_a + x_b
    #   E = (f_a - f_b) x_a + f_b C - p_b E(C - D)+ - (p_a - p_b) E(x_a - D)+
    # and the optimum has F(C) = f_b / p_b = 12/25, F(x_a) = (f_a - f_b) / (p_a - p_b) = 8/75;
    # D uniform on [0, 10]: C = 4.8, x_a = 1.07 (both with Monte Carlo error ~0.1)
    rng = np.random.default_rng(4)
    d = rng.uniform(0, 10, size=(4000, 1))
    m = _markets(a=_avail(40.0, 200.0), b=_avail(24.0, 50.0))  # GBP/MW/h and GBP/MWh over half an hour
    dec = decide((_draws(d), _times(1), TZ), m, risk=None)
    xa, xb = dec.commitment_kw[:, 0]
    assert xa == pytest.approx(10 * 8 / 75, abs=0.3)
    assert xa + xb == pytest.approx(10 * 12 / 25, abs=0.3)


def test_stacked_products_sell_the_same_kw_twice():
    d = np.full((20, 1), 8.0)
    m = _markets(a=_avail(20.0, 50.0, stacks_with=["b"]), b=_avail(10.0, 50.0))
    dec = decide((_draws(d), _times(1), TZ), m, risk=None)
    assert np.allclose(dec.commitment_kw[:, 0], 8.0)
    assert dec.capacity_kw("down")[0] == pytest.approx(8.0)


def test_chance_constraint_never_commits_above_the_joint_quantile():
    # one product over a 4-half-hour block: delivered in every half-hour in at least 1 - risk of the draws
    rng = np.random.default_rng(5)
    d = rng.gamma(4.0, 2.0, size=(1000, 4))
    m = _markets(block=_avail(100.0, 1.0, block_hours=2.0, block_start="17:00"))  # a tiny penalty: risk binds
    for risk in (0.05, 0.2):
        dec = decide((_draws(d), _times(4), TZ), m, risk=risk, calibrate=False)
        # the joint quantile: the largest x that at least 1 - risk of the draws deliver in every half-hour
        joint = np.sort(d.min(axis=1))[int(risk * len(d))]
        assert (d.min(axis=1) >= joint).mean() >= 1 - risk
        x = dec.commitment_kw[0]
        assert np.allclose(x, x[0]) and x[0] <= joint + 1e-9
        assert x[0] == pytest.approx(joint, rel=0.02)  # the heuristic reaches the bound here
        assert dec.in_sample.short_any.mean() <= risk + 1e-9


def test_chance_constraint_is_joint_over_half_hours():
    # half-hourly products on independent draws: each half-hour alone could keep its 5 % quantile,
    # but all together they would fall short in ~1 - 0.95**4 of the draws
    rng = np.random.default_rng(6)
    d = rng.gamma(4.0, 2.0, size=(2000, 4))
    m = _markets(hh=_avail(100.0, 1.0))
    dec = decide((_draws(d), _times(4), TZ), m, risk=0.05, calibrate=False)
    short = (dec.commitment_kw[0][None, :] > d + 1e-9).any(axis=1).mean()
    assert short <= 0.05 + 1e-9
    assert (dec.commitment_kw[0] < np.quantile(d, 0.05, axis=0)).all()


def test_min_size_and_step():
    d = np.full((10, 1), 7.3)
    m = _markets(a=_avail(30.0, 500.0, min_kw=2.0, step_kw=1.5))
    dec = decide((_draws(d), _times(1), TZ), m, risk=None)
    assert dec.commitment_kw[0, 0] == pytest.approx(6.0)
    m = _markets(a=_avail(30.0, 500.0, min_kw=8.0))
    assert decide((_draws(d), _times(1), TZ), m, risk=None).commitment_kw[0, 0] == 0.0


def test_cvar_limit_holds_and_costs_revenue():
    rng = np.random.default_rng(7)
    d = rng.gamma(2.0, 3.0, size=(500, 2))
    m = _markets(a=_avail(60.0, 100.0))
    free = decide((_draws(d), _times(2), TZ), m, risk=None)
    tight = decide((_draws(d), _times(2), TZ), m, risk=None, cvar_limit_gbp=0.01)
    assert tight.in_sample.cvar(0.95) <= 0.01 + 1e-6 < free.in_sample.cvar(0.95)
    assert tight.solver["objective"] < free.solver["objective"]


def test_cvar_is_the_tail_mean():
    loss = np.arange(100.0)
    assert cvar(loss, 0.95) == pytest.approx(np.mean(loss[95:]))
    assert cvar(loss, 0.9) == pytest.approx(np.mean(loss[90:]))


def test_objective_and_risk_errors():
    assert parse_objective("profit=1,carbon=0.05") == {"profit": 1.0, "carbon": 0.05}
    with pytest.raises(ConfigError, match="allowed: profit, carbon, affordability"):
        parse_objective("money")
    m = _markets(a=_avail(60.0, 100.0))
    with pytest.raises(ConfigError, match=r"carbon objective needs a \[carbon\]"):
        decide((_draws(np.ones((5, 1))), _times(1), TZ), m, objective="carbon")
    with pytest.raises(ConfigError, match="risk 1.5"):
        decide((_draws(np.ones((5, 1))), _times(1), TZ), m, risk=1.5)
