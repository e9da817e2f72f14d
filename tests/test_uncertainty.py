"""The model-uncertainty screening (bayesflex.study.uncertainty) against a model whose answer is known."""

import numpy as np
import pytest
from scipy import stats

from bayesflex.study.uncertainty import draw_margin, screen


def _synthetic(n=4000, seed=3):
    """margin = -1 + 0.5 theta_1 + e, e ~ N(0, 0.5): P(margin > 0 | theta_1) = Phi((-1 + 0.5 theta_1) / 0.5);
    theta_2 does nothing; theta_3 is fixed."""
    rng = np.random.default_rng(seed)
    t1, t2 = rng.normal(size=n), rng.normal(size=n)
    margin = -1 + 0.5 * t1 + rng.normal(0, 0.5, n)
    return margin, {"t1": t1, "t2": t2, "t3": np.full(n, 0.3)}


def _p_given(theta_1):
    return stats.norm.cdf((-1 + 0.5 * theta_1) / 0.5)


def test_screening_recovers_the_known_dependence():
    margin, theta = _synthetic()
    res = screen(margin, theta, reps=50)
    assert res.parameters == ("t1", "t2")  # ranked; the fixed parameter is left out
    z10, z90 = stats.norm.ppf([0.1, 0.9])
    se = np.sqrt(0.25 * 0.75 / margin.size)
    assert res.p_high[0] == pytest.approx(_p_given(z90), abs=5 * se + 0.01)  # 0.236
    assert res.p_low[0] == pytest.approx(_p_given(z10), abs=0.005)  # 0.0005
    assert res.margin_effect_pu[0] == pytest.approx(0.5 * (z90 - z10), rel=0.05)
    headline = np.mean(margin > 0)
    assert abs(res.p_high[1] - headline) < 0.01 and abs(res.p_low[1] - headline) < 0.01  # t2 moves nothing
    # the spread over theta: P(congested | theta) at theta_1's 10 / 50 / 90 % quantiles
    np.testing.assert_allclose(res.spread, _p_given(np.array([z10, 0.0, z90])), atol=0.02)
    assert (res.spread_lo <= res.spread + 1e-12).all() and (res.spread <= res.spread_hi + 1e-12).all()
    assert res.r2 == pytest.approx(0.5, abs=0.05)  # var(0.5 theta_1) = var(e) = 0.25


def test_draws_without_a_load_flow_are_congested_whatever_the_parameters():
    margin, theta = _synthetic()
    margin[:200] = np.inf  # 5 % of draws: no solution
    res = screen(margin, theta, reps=20)
    assert res.spread[0] >= 0.05 - 1e-12 and res.p_low[0] >= 0.05 - 1e-12
    ex = np.array([[[-0.1, np.nan], [-0.2, -0.3]], [[0.01, -0.5], [-0.2, -0.1]]])
    np.testing.assert_array_equal(draw_margin(ex), [np.inf, 0.01])


def test_too_few_draws_or_nothing_varying_is_not_screened():
    margin, theta = _synthetic(n=25)
    assert screen(margin, theta) is None
    assert screen(np.zeros(1000), {"fixed": np.ones(1000)}) is None
