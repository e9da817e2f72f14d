"""Intervals on probabilities and quantiles (bayesflex.core.intervals): against scipy and by coverage."""

import numpy as np
import pytest
from scipy import stats

from bayesflex.core.intervals import format_probability, quantile_interval, wilson_interval


@pytest.mark.parametrize(("k", "n"), [(0, 1000), (1, 1000), (28, 1000), (1000, 1000), (5, 30), (199, 200)])
def test_wilson_matches_scipy_binomtest(k, n):
    lo, hi = wilson_interval(k / n, n)
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    np.testing.assert_allclose([lo, hi], [ci.low, ci.high], rtol=1e-9, atol=1e-15)


def test_wilson_broadcasts_and_zero_is_not_certain():
    lo, hi = wilson_interval(np.zeros((2, 3)), np.array([100, 1000, 10000]))
    assert lo.shape == (2, 3) and (lo == 0).all()
    np.testing.assert_allclose(hi[0], 1.96**2 / (np.array([100, 1000, 10000]) + 1.96**2), rtol=1e-3)
    assert format_probability(0.0, 0.0, float(hi[0, 1]), 1000) == "0 of 1000 draws (< 0.38 %, 95 %)"


@pytest.mark.parametrize(("n", "q"), [(200, 0.95), (200, 0.5), (1000, 0.05)])
def test_quantile_interval_covers_the_true_quantile(n, q):
    """Coverage over 2,000 seeded replications is at least 95 % within 3 Monte Carlo SE (the
    order-statistic interval is conservative: discrete ranks can only widen it)."""
    rng = np.random.default_rng(7)
    x = rng.exponential(size=(n, 2000))  # one replication per column; skewed, as flexibility is
    lo, hi = quantile_interval(x, q, axis=0)
    truth = stats.expon.ppf(q)
    cover = np.mean((lo <= truth) & (truth <= hi))
    assert cover >= 0.95 - 3 * np.sqrt(0.95 * 0.05 / 2000)
    assert cover <= 0.995  # and not vacuous


def test_quantile_interval_unbounded_when_draws_are_too_few():
    x = np.arange(20.0)
    lo, hi = quantile_interval(x, [0.05, 0.5, 0.95])
    assert np.isneginf(lo[0]) and np.isposinf(hi[2])  # 20 draws cannot bound the 5 % or 95 % quantile
    assert lo[1] <= np.quantile(x, 0.5) <= hi[1]
    assert lo[1] in x and hi[1] in x  # order statistics, not interpolations
