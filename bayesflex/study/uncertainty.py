"""How much the headline depends on the priors' uncertain parameters: a screening from the study's own draws.

Every draw of a study has its own population-level parameters ``theta`` (the
hierarchical parameters of the priors, e.g. ``baseload_level_log_mean``,
``baseload_persistence``, ``pv_cloud_logit_mean``: one value per draw), drawn
from their priors or posterior.  The headline -- P(the feeder is congested at
least once in the horizon) -- averages over them.  Monte Carlo error says how
well that average is known; it says nothing of how much the answer would move
if a parameter sat at one end of its plausible range.  This module estimates
that from the draws already made, without another load flow:

1. ``margin`` per draw: the worst exceedance of any limit over the horizon and
   the phases (pu, > 0: congested; the heuristic's ``exceedance_pu``).  It is
   continuous, so it shows how the draws approach the limits even when none
   crosses them.
2. A linear regression of ``margin`` on the standardised parameters (first
   order, additive): ``margin_d = b0 + sum_j b_j theta_jd + e_d``.
3. **Spread over the parameters**: for each draw's parameters, P(congested |
   theta_d) = the share of residuals ``e_k`` with ``fit(theta_d) + e_k > 0``;
   the 10 / 50 / 90 % quantiles of that over the draws say how far the
   headline moves over the priors' parameter uncertainty.
4. **One parameter at a time**: each draw's margin moved as if parameter j sat
   at its 10 % (90 %) quantile, ``margin_d + b_j (q - theta_jd)``; the headline
   is the share of moved margins above 0.  Parameters are ranked by how far
   the headline moves between the two ends.

The estimates are first order (a linear, additive, homoscedastic margin) and
carry their own Monte Carlo error; :func:`screen` gives 95 % bootstrap
intervals over draws.  A parameter the screening flags can be checked by
running the study again with it fixed (the README shows how).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Screening", "draw_margin", "screen"]

#: the quantiles of a parameter's distribution the one-at-a-time screening sets it to
ENDS = (0.1, 0.9)
#: the quantiles over draws of P(congested | theta) that summarise the spread
SPREAD = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class Screening:
    """The result of :func:`screen` (probabilities as fractions, margins in pu)."""

    parameters: tuple[str, ...]  # ranked: largest move of the headline first, then of the worst margin
    theta_low: np.ndarray  # (parameter,) the parameter's 10 % quantile over the draws
    theta_high: np.ndarray  # its 90 % quantile
    p_low: np.ndarray  # (parameter,) the headline with the parameter at theta_low
    p_high: np.ndarray
    margin_effect_pu: np.ndarray  # (parameter,) b_j (theta_high - theta_low): the margin's move, pu
    spread: np.ndarray  # (3,) 10 / 50 / 90 % quantiles over draws of P(congested | theta_d)
    spread_lo: np.ndarray  # (3,) 95 % bootstrap interval of each
    spread_hi: np.ndarray
    r2: float  # share of the margin's variance the parameters explain (first order)


def draw_margin(exceedance_pu: np.ndarray) -> np.ndarray:
    """Each draw's worst exceedance over every axis but the first (draw); a load flow without a
    solution (NaN) counts as congested: ``+inf``."""
    x = np.where(np.isnan(exceedance_pu), np.inf, exceedance_pu)
    return x.reshape(x.shape[0], -1).max(axis=1)


def screen(margin: np.ndarray, theta: dict[str, np.ndarray], *, reps: int = 200, seed: int = 0) -> Screening | None:
    """Screen the parameters ``theta`` (name -> values per draw) for their hold on P(margin > 0).

    Parameters that do not vary over the draws are left out.  Returns None when no parameter
    varies or there are too few draws (fewer than 10 per parameter) to fit.
    """
    names = [k for k, v in theta.items() if _varies(np.asarray(v, float))]
    n = margin.size
    if not names or n < 10 * (len(names) + 1):
        return None
    t = np.column_stack([np.asarray(theta[k], float) for k in names])
    low, high = np.quantile(t, ENDS[0], axis=0), np.quantile(t, ENDS[1], axis=0)
    coef, resid, r2 = _fit(margin, t)
    beta = coef[1:]
    p_low = np.array([np.mean(margin + beta[j] * (low[j] - t[:, j]) > 0) for j in range(len(names))])
    p_high = np.array([np.mean(margin + beta[j] * (high[j] - t[:, j]) > 0) for j in range(len(names))])
    spread = _spread(coef[0] + t @ beta, resid)
    rng = np.random.default_rng(seed)
    boot = np.empty((reps, len(SPREAD)))
    for r in range(reps):  # resample draws: the fit, the residuals and the parameters together
        i = rng.integers(0, n, n)
        c, e, _ = _fit(margin[i], t[i])
        boot[r] = _spread(c[0] + t[i] @ c[1:], e)
    effect = beta * (high - low)
    order = np.lexsort((-np.abs(effect), -np.abs(p_high - p_low)))  # ties (none congested): by the margin's move
    return Screening(parameters=tuple(names[j] for j in order), theta_low=low[order], theta_high=high[order],
                     p_low=p_low[order], p_high=p_high[order], margin_effect_pu=effect[order],
                     spread=spread, spread_lo=np.quantile(boot, 0.025, axis=0),
                     spread_hi=np.quantile(boot, 0.975, axis=0), r2=r2)


def _varies(v: np.ndarray) -> bool:
    """Whether a parameter varies over the draws (beyond rounding)."""
    return bool(np.isfinite(v).all() and np.ptp(v) > 1e-9 * max(1.0, float(np.abs(v).max())))


def _fit(margin: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Least squares of the finite margins on the parameters: intercept and slopes, residuals
    (``+inf`` where the margin is: no load-flow solution), and R^2."""
    ok = np.isfinite(margin)
    x = np.column_stack([np.ones(ok.sum()), t[ok]])
    coef = np.linalg.lstsq(x, margin[ok], rcond=None)[0]
    resid = np.full(margin.shape, np.inf)
    resid[ok] = margin[ok] - x @ coef
    var = np.var(margin[ok])
    r2 = float(1 - np.var(resid[ok]) / var) if var > 0 else 0.0
    return coef, resid, r2


def _spread(fitted: np.ndarray, resid: np.ndarray) -> np.ndarray:
    """Quantiles over draws of P(fitted_d + e > 0), e over the residuals."""
    e = np.sort(resid)
    p = 1 - np.searchsorted(e, -fitted, side="right") / e.size  # P(e > -f_d)
    return np.quantile(p, SPREAD)
