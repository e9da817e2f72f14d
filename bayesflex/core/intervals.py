"""Intervals for the numbers a study reports: probabilities and quantiles estimated from draws.

Pure numpy/scipy, no labels.  Every probability the package prints carries a
95 % Wilson score interval (:func:`wilson_interval`); every quantile of a
sampled quantity an order-statistic interval (:func:`quantile_interval`),
which needs no assumption about the quantity's distribution.  With ``n``
effective draws (a posterior resampled from correlated MCMC draws) the
interval is as wide as that many independent draws would give.

Why Wilson: a count of 0 out of ``n`` gives ``[0, z^2 / (n + z^2)]`` (0.38 % at
1,000 draws) instead of the Wald interval's certain zero, and a count of 1 gives
``[0.02, 0.56] %`` instead of ``0.1 % +/- 0.1``.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["LEVEL", "format_kw", "format_percent", "format_probability", "quantile_interval", "wilson_interval"]

#: the confidence level of every interval the package reports
LEVEL = 0.95


def wilson_interval(p, n, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a probability ``p`` estimated from ``n`` draws.

    Parameters
    ----------
    p : array_like
        Estimated probabilities (fraction of draws), in [0, 1].
    n : array_like
        Number of (effective) draws behind each estimate, > 0; broadcast with ``p``.
    level : float
        Two-sided confidence level.

    Returns
    -------
    lo, hi : ndarray
        Bounds in [0, 1], the shape of ``p`` and ``n`` broadcast; NaN where ``p`` is NaN.
    """
    p, n = np.broadcast_arrays(np.asarray(p, float), np.asarray(n, float))
    z2 = stats.norm.ppf(0.5 + level / 2) ** 2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = np.sqrt(z2) / (1 + z2 / n) * np.sqrt(np.maximum(p * (1 - p), 0) / n + z2 / (4 * n**2))
    lo, hi = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
    lo = np.where(p <= 0, 0.0, lo)  # exact ends: rounding must not move a bound off an observed 0 or 1
    hi = np.where(p >= 1, 1.0, hi)
    return lo, hi


def quantile_interval(x, q, *, axis: int = 0, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Distribution-free interval of the ``q`` quantile of the population ``x`` is drawn from.

    The order statistics ``x_(l) <= x_(u)``, with ranks ``l, u`` from the
    Binomial(n, q) distribution of the number of draws below the quantile,
    so that ``[x_(l), x_(u)]`` covers it with at least ``level`` probability
    (Conover, *Practical Nonparametric Statistics*, 1999, section 3.2).
    Where the draws are too few for such a bound that end is ``-inf`` or
    ``+inf``: the data cannot bound it.

    Parameters
    ----------
    x : array_like
        Draws along ``axis``.
    q : float or sequence of float
        Quantile level(s) in (0, 1).
    axis : int
        The draw axis.

    Returns
    -------
    lo, hi : ndarray
        Shape ``q``'s shape followed by ``x``'s shape without ``axis`` (as ``np.quantile``).
    """
    xs = np.sort(np.moveaxis(np.asarray(x, float), axis, 0), axis=0)
    n = xs.shape[0]
    qa = np.asarray(q, float)
    alpha = (1 - level) / 2
    # 1-based ranks: coverage is P(l <= B <= u - 1) with B ~ Binomial(n, q) the draws below the quantile;
    # l the largest rank with P(B <= l - 1) <= alpha, u the smallest with P(B >= u) <= alpha
    k = stats.binom.ppf(alpha, n, qa)
    lo_rank = np.where(stats.binom.cdf(k, n, qa) <= alpha, k + 1, k).astype(int)
    hi_rank = stats.binom.ppf(1 - alpha, n, qa).astype(int) + 1
    expand = qa.shape + (1,) * (xs.ndim - 1)
    lo = np.where(np.reshape(lo_rank >= 1, expand), np.take(xs, np.clip(lo_rank - 1, 0, n - 1), axis=0), -np.inf)
    hi = np.where(np.reshape(hi_rank <= n, expand), np.take(xs, np.clip(hi_rank - 1, 0, n - 1), axis=0), np.inf)
    return lo, hi


def format_probability(p: float, lo: float, hi: float, n: float | None = None) -> str:
    """One probability as the package prints it everywhere: ``"2.8 % [2.0, 3.9]"``;
    a zero reads ``"0 of 1000 draws (< 0.38 %, 95 %)"`` (``n`` given) or ``"0 (< 0.38 %, 95 %)"``.
    Takes Python or numpy scalars and 0-d arrays alike."""
    p, lo, hi = float(p), float(lo), float(hi)
    if p == 0:
        of = f"0 of {n:.0f} draws" if n else "0"
        return f"{of} (< {format_percent(hi)} %, 95 %)"
    return f"{format_percent(p)} % [{format_percent(lo)}, {format_percent(hi)}]"


def format_kw(x: float, lo: float, hi: float) -> str:
    """A quantity in kW with its 95 % interval, ``"18.5 [16.9, 20.3]"``; an end the draws cannot
    bound (infinite) shows as ``?``."""
    if not np.isfinite(x):
        return "n/a"
    ends = [f"{v:.1f}" if np.isfinite(v) else "?" for v in (lo, hi)]
    return f"{x:.1f} [{ends[0]}, {ends[1]}]"


def format_percent(x: float) -> str:
    """A fraction in %: two significant figures below 1 %, one decimal up to 100 % (0.38, 2.8, 12.0, 100)."""
    v = 100 * x
    if v >= 99.95 or v == 0:
        return f"{v:.0f}"
    return f"{v:.2g}" if v < 1 else f"{v:.1f}"
