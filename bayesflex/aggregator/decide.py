"""The multi-market decision: what to offer in which market, at what risk.

:func:`decide` chooses the commitments ``x[k, t]`` (kW of product ``k`` in
half-hour ``t``, one value per block of the product) that maximise the
expected objective over the study's draws of what the portfolio can deliver
(``portfolio_deliverable_{up,down}_kw (draw, time)``: joint draws, so a draw
is one possible 48 hours), a scenario-based stochastic programme solved with
HiGHS (``scipy.optimize.milp``):

* per draw ``s``, direction ``d`` and half-hour ``t`` the products deliver
  ``sum_k (x[k, t] - short[s, k, t]) <= D[s, d, t]`` (products that stack
  share their kW: the group delivers ``Y[s, g, t]`` and each member
  ``x[k, t] - short[s, k, t] <= Y``), ``0 <= short <= x``;
* the objective, per kW committed and per kW short (GBP, or kg CO2 for
  ``carbon``), from :class:`bayesflex.aggregator.markets.Markets` (``profit``: the
  availability fee, the energy price on the share called, less buying the
  energy back at the rebound price, less the penalty on what is short;
  ``carbon``: the emissions avoided, intensity now less at the rebound;
  ``affordability``: the households' share of the revenue and their tariff
  saving; or weights of the three), averaged over the draws;
* the risk limit: a chance constraint, at most ``risk`` of the draws fall
  short anywhere in the horizon (a binary per draw; the capacity in each
  half-hour is bounded by the order statistic that leaves that many draws
  out, which also keeps the programme small), and/or the CVaR at level
  ``alpha`` of the draws' shortfall cost below a limit;
* the markets' sizes: a block's commitment is 0 or at least ``min_kw``, in
  steps of ``step_kw``.

The commitments are then evaluated on the tuning draws and, out of sample,
on fresh draws (another study of the same inputs with another seed):
P(shortfall in any half-hour) with its 95 % Wilson interval, the expected
objective with its Monte Carlo error (prices drawn from their forecasts'
scenarios independently of the draws), the shortfall's expected kWh and cost
and its CVaR.  A commitment tuned on the same draws it is judged on looks
safer than it is: the fresh figure is the one to trust.

Not modelled (said so in the report): prices that move with the weather
(and so with demand), the rebound's own network effect (the energy drawn
back is not scheduled or load-flowed), gate closures and sequential
clearing (all products are decided at once, with the forecasts given).
"""

from __future__ import annotations

import math
import time as _time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from bayesflex.aggregator.markets import DIRECTIONS, Markets, blocks, load_markets, local_clock
from bayesflex.core.intervals import wilson_interval
from bayesflex.core.timefmt import site_zone
from bayesflex.errors import ConfigError, SolverError

__all__ = ["Decision", "decide", "deliverable_draws", "parse_objective", "verdict_text"]

DT_H = 0.5
OBJECTIVES = ("profit", "carbon", "affordability")
UNITS = {"profit": "GBP", "carbon": "kg CO2", "affordability": "GBP"}
_TOL_KW = 1e-6
#: above this many columns the market sizes (min_kw, step_kw) are met by rounding the linear
#: relaxation down instead of branch and bound (which takes minutes over 1,000 draws)
EXACT_COLUMNS = 20_000
#: without a chance constraint, the programme runs over at most this many of the draws
PROGRAMME_DRAWS = 400


def parse_objective(objective) -> dict[str, float]:
    """``"profit"`` | ``"carbon"`` | ``"affordability"`` | weights ``{"profit": 1, "carbon": 0.05}``
    (or the text ``"profit=1,carbon=0.05"``) -> weights; weights in objective units per unit of each term
    (e.g. GBP per kg CO2)."""
    if isinstance(objective, str) and "=" in objective:
        try:
            objective = {k.strip(): float(v) for k, v in (part.split("=") for part in objective.split(","))}
        except ValueError:
            raise ConfigError(f"objective {objective!r}: give a name ({', '.join(OBJECTIVES)}) or weights such "
                              "as profit=1,carbon=0.05") from None
    if isinstance(objective, str):
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective {objective!r} unknown (allowed: {', '.join(OBJECTIVES)}, or weights such "
                              "as profit=1,carbon=0.05)")
        return {objective: 1.0}
    if not isinstance(objective, dict) or not objective:
        raise ConfigError(f"objective {objective!r}: a name ({', '.join(OBJECTIVES)}) or a dict of weights")
    for k, w in objective.items():
        if k not in OBJECTIVES:
            raise ConfigError(f"objective weight {k!r} unknown (allowed: {', '.join(OBJECTIVES)})")
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise ConfigError(f"objective weight {k} = {w!r}: a non-negative number")
    if not any(objective.values()):
        raise ConfigError("objective: every weight is 0")
    return {k: float(w) for k, w in objective.items()}


def deliverable_draws(tree) -> tuple[dict[str, np.ndarray], pd.DatetimeIndex]:
    """What the portfolio can sell against its planned position, per draw and half-hour:
    ``{"up": (draw, time), "down": (draw, time)}`` in kW, and the half-hours (naive UTC)."""
    h = tree.get("heuristic")
    if h is None or "portfolio_deliverable_up_kw" not in h:
        raise ConfigError("this study has no deliverable flexibility (it was run without headroom); run it again "
                          "with headroom")
    out = {}
    for d in DIRECTIONS:
        v = h[f"portfolio_deliverable_{d}_kw"].values
        out[d] = np.asarray(v, float).reshape(-1, v.shape[-1])
    return out, pd.DatetimeIndex(h["time"].values)


# ----------------------------------------------------------------------------
# coefficients
# ----------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class _Terms:
    """Per product and half-hour (K, T): the value of a kW committed (``commit``) and the loss
    of a kW short (``short``) for each objective term, at the forecasts' means."""

    commit: dict[str, np.ndarray]
    short: dict[str, np.ndarray]
    penalty_gbp: np.ndarray  # GBP per kW short (the cost a shortfall is charged)


def _terms(markets: Markets, slot: np.ndarray) -> _Terms:
    """The objective terms at the forecasts' means, on the half-hours of the day ``slot``."""
    K, T = len(markets.products), len(slot)
    z = np.zeros((K, T))
    avail, energy, pen = z.copy(), z.copy(), z.copy()
    called = np.array([p.called for p in markets.products])[:, None]
    sign = np.array([p.sign for p in markets.products])[:, None]
    tested = np.array([1.0 if p.tested == "always" else p.called for p in markets.products])[:, None]
    for k, p in enumerate(markets.products):
        avail[k] = p.availability.mean()[slot] if p.availability is not None else 0.0
        energy[k] = p.energy.mean()[slot] if p.energy is not None else 0.0
        pen[k] = p.penalty.mean()[slot]
    per_kw = DT_H / 1000  # kW over a half-hour, in MWh
    f = markets.rebound_fraction
    a = avail * per_kw  # GBP per kW committed
    e = called * energy * per_kw  # GBP per kW delivered (the share called)
    reb = called * f * sign * markets.rebound_price_gbp_per_mwh * per_kw  # buying it back (down) / saving (up)
    penalty = pen * per_kw * tested
    commit = {"profit": a + e - reb}
    short = {"profit": e - reb + penalty}
    ci = markets.carbon.mean()[slot] if markets.carbon is not None else None
    if ci is not None:
        c = called * f * sign * (ci - markets.rebound_carbon_g_per_kwh) * DT_H / 1000  # kg per kW delivered
        commit["carbon"], short["carbon"] = c, c
    share = markets.revenue_share
    saving = 0.0
    if markets.tariff is not None:
        saving = called * f * sign * (markets.tariff.mean()[slot] - markets.rebound_tariff_gbp_per_kwh) * DT_H
    commit["affordability"] = share * (a + e) + saving
    short["affordability"] = share * (e + penalty) + saving
    return _Terms(commit, short, penalty)


# ----------------------------------------------------------------------------
# the decision
# ----------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Evaluation:
    """The commitments judged on one set of draws (per-draw arrays and their summaries)."""

    draws: int
    short_any: np.ndarray  # (draw,) bool: short in some half-hour
    short_kwh: np.ndarray  # (draw,)
    short_cost_gbp: np.ndarray  # (draw,) penalties
    value: dict[str, np.ndarray]  # objective term -> (draw,)
    seed: int | None = None
    short_kw: np.ndarray | None = None  # (draw, product, time): what each product fell short

    def p_shortfall(self) -> tuple[float, float, float]:
        p = float(self.short_any.mean())
        lo, hi = wilson_interval(p, self.draws)
        return p, float(lo), float(hi)

    def mean(self, term: str) -> tuple[float, float]:
        v = self.value[term]
        return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan

    def cvar(self, alpha: float) -> float:
        return cvar(self.short_cost_gbp, alpha)

    def summary(self, alpha: float) -> dict:
        p, lo, hi = self.p_shortfall()
        out = {"draws": self.draws, "p_shortfall": p, "p_shortfall_lo": lo, "p_shortfall_hi": hi,
               "shortfall_kwh_mean": float(self.short_kwh.mean()),
               "shortfall_cost_gbp_mean": float(self.short_cost_gbp.mean()),
               f"shortfall_cost_cvar{round(100 * alpha)}_gbp": self.cvar(alpha)}
        for term in self.value:
            m, se = self.mean(term)
            out[f"{term}_mean"], out[f"{term}_mcse"] = m, se
            out[f"{term}_q05"], out[f"{term}_q50"], out[f"{term}_q95"] = (
                float(x) for x in np.quantile(self.value[term], [0.05, 0.5, 0.95]))
        if self.seed is not None:
            out["seed"] = self.seed
        return out


def verdict_text(fresh: dict, risk: float) -> str:
    """What the fresh draws say of the risk limit (``fresh``: :meth:`Evaluation.summary`)."""
    if fresh["p_shortfall_hi"] < risk:
        return "holds (the 95 % interval lies below it)"
    if fresh["p_shortfall"] > risk:
        return "is broken (the estimate is above it)"
    return ("is not confirmed: the estimate is below it but the 95 % interval reaches above it "
            "(more fresh draws would settle it)")


def cvar(loss: np.ndarray, alpha: float) -> float:
    """The mean of the worst (1 - alpha) share of ``loss`` (Rockafellar-Uryasev, on equally likely draws)."""
    x = np.sort(np.asarray(loss, float))[::-1]
    n = len(x)
    tail = (1 - alpha) * n
    k = math.floor(tail)
    total = x[:k].sum() + (tail - k) * (x[k] if k < n else 0.0)
    return float(total / tail) if tail > 0 else float(x[0])


@dataclass(frozen=True, eq=False)
class Decision:
    """What :func:`decide` returns: the commitments ``commitment_kw (product, time)`` and how they fare."""

    markets: Markets
    times: pd.DatetimeIndex
    timezone: str
    commitment_kw: np.ndarray  # (product, time)
    weights: dict[str, float]
    risk: float | None
    cvar_alpha: float
    cvar_limit_gbp: float | None
    in_sample: Evaluation
    fresh: Evaluation | None
    solver: dict = field(default_factory=dict)

    @property
    def products(self) -> list[str]:
        return [p.name for p in self.markets.products]

    def capacity_kw(self, direction: str) -> np.ndarray:
        """kW committed per half-hour in ``direction``, stacked products counted once."""
        return _capacity(self.markets, self.commitment_kw, direction)

    def table(self) -> pd.DataFrame:
        """One row per product and block with a commitment: its start and end (naive UTC), kW, the
        forecasts' mean prices in the block, its value if delivered at those prices (GBP), and the
        probability that it falls short in some half-hour of the block, with its 95 % Wilson interval,
        on the fresh draws (``p_short``; on the tuning draws when there are no fresh ones)."""
        slot, _, _ = local_clock(self.times, self.timezone)
        terms = _terms(self.markets, slot)
        judged = self.fresh if self.fresh is not None else self.in_sample
        rows = []
        for k, p in enumerate(self.markets.products):
            ids = blocks(p, self.times, self.timezone)
            for b in np.unique(ids[ids >= 0]):
                t = np.flatnonzero(ids == b)
                kw = float(self.commitment_kw[k, t[0]])
                if kw <= _TOL_KW:
                    continue
                short = float((judged.short_kw[:, k, t] > _TOL_KW).any(axis=1).mean())
                lo, hi = wilson_interval(short, judged.draws)
                rows.append({"product": p.name, "direction": p.direction, "kind": p.kind,
                             "start": self.times[t[0]], "end": self.times[t[-1]] + pd.Timedelta(minutes=30),
                             "half_hours": len(t), "kw": kw,
                             "availability_gbp_per_mw_h": float(p.availability.mean()[slot[t]].mean())
                             if p.availability is not None else 0.0,
                             "energy_gbp_per_mwh": float(p.energy.mean()[slot[t]].mean()) if p.energy is not None
                             else 0.0,
                             "value_if_delivered_gbp": float((terms.commit["profit"][k, t] * kw).sum()),
                             "p_short": short, "p_short_lo": float(lo), "p_short_hi": float(hi)})
        cols = ["product", "direction", "kind", "start", "end", "half_hours", "kw", "availability_gbp_per_mw_h",
                "energy_gbp_per_mwh", "value_if_delivered_gbp", "p_short", "p_short_lo", "p_short_hi"]
        return pd.DataFrame(rows, columns=cols)

    def summary(self) -> dict:
        out = {"markets": self.markets.name, "markets_origin": self.markets.origin,
               "markets_sha256": self.markets.sha256, "objective": self.weights,
               "risk": self.risk, "cvar_alpha": self.cvar_alpha, "cvar_limit_gbp": self.cvar_limit_gbp,
               "in_sample": self.in_sample.summary(self.cvar_alpha),
               "fresh": self.fresh.summary(self.cvar_alpha) if self.fresh is not None else None,
               "solver": self.solver}
        return out


def _capacity(markets: Markets, x: np.ndarray, direction: str) -> np.ndarray:
    out = np.zeros(x.shape[1])
    for g in markets.stack_groups():
        if markets.products[g[0]].direction == direction:
            out += x[list(g)].max(axis=0)
    return out


def decide(tree, markets: Markets | str, *, objective="profit", risk: float | None = 0.05,
           cvar_alpha: float = 0.95, cvar_limit_gbp: float | None = None, fresh=None, seed: int = 0,
           calibrate: bool = True, refine_s: float = 0.0, time_limit_s: float = 120.0,
           mip_rel_gap: float = 1e-4) -> Decision:
    """The commitments per product and half-hour that maximise the expected ``objective`` over the
    study's joint draws of deliverable flexibility, within the risk limit (module docstring).

    Parameters
    ----------
    tree : a study (:func:`bayesflex.run_study`), or ``{"up": (draw, time), "down": (draw, time)}`` kW
        arrays with ``times=`` given through a tuple ``(arrays, times, timezone)``.
    markets : a :class:`~bayesflex.aggregator.markets.Markets` or the name/path of a markets TOML.
    objective : "profit", "carbon", "affordability" or weights of them (:func:`parse_objective`).
    risk : the largest share of draws allowed to fall short in some half-hour (a chance
        constraint: deliver in every half-hour in at least 1 - risk of the draws); None: no limit.
    cvar_alpha, cvar_limit_gbp : with a limit, the CVaR at ``cvar_alpha`` of the draws' shortfall
        cost (GBP) may not exceed it.
    fresh : another study of the same inputs (another seed), or its arrays like ``tree``: the
        commitments are judged on it out of sample.
    seed : the seed of the price scenarios drawn in the evaluation.
    calibrate : tune the chance constraint at the in-sample risk that holds ``risk`` on held-out
        draws (:func:`_calibrate`); False: tune at ``risk`` itself.
    refine_s : seconds for the exact programme on a shortlist of draws after the scenario discarding
        (:func:`_discard`), in each of its runs; 0: none.  On small programmes (bench/market_decision.py)
        5 s bring the heuristic from a median 92 % of the exact optimum to 100 %; on the default study
        the expected profit rose 4 % at 11 times the time and the fresh P(shortfall) from 3.5 % to 4.1 %.
    """
    if not isinstance(markets, Markets):
        markets = load_markets(markets)
    weights = parse_objective(objective)
    if "carbon" in weights and markets.carbon is None:
        raise ConfigError(f"{markets.origin}: the carbon objective needs a [carbon] intensity_g_per_kwh forecast")
    if risk is not None and not (isinstance(risk, (int, float)) and 0 <= risk < 1):
        raise ConfigError(f"risk {risk!r}: a share of draws in [0, 1) (e.g. 0.05), or None for no limit")
    if not 0 < cvar_alpha < 1:
        raise ConfigError(f"cvar_alpha {cvar_alpha!r}: a level strictly between 0 and 1 (e.g. 0.95)")
    if cvar_limit_gbp is not None and not cvar_limit_gbp >= 0:
        raise ConfigError(f"cvar_limit_gbp {cvar_limit_gbp!r}: a non-negative amount")
    D, times, tz = _draws(tree, markets)
    slot, _, _ = local_clock(times, tz)
    terms = _terms(markets, slot)
    t0 = _time.perf_counter()
    tuned, tried = risk, []
    if risk is not None and calibrate and risk * D["up"].shape[0] >= 2:
        tuned, tried = _calibrate(markets, D, times, tz, terms, weights, risk, cvar_alpha, cvar_limit_gbp,
                                  time_limit_s, mip_rel_gap, refine_s)
    x, info = _solve(markets, D, times, tz, terms, weights, tuned, cvar_alpha, cvar_limit_gbp, time_limit_s,
                     mip_rel_gap, refine_s)
    info["in_sample_risk"], info["calibration"] = tuned, tried
    info["calibration_held"] = bool(tried) and tried[-1]["held_out_p_shortfall"] <= risk
    info["seconds"] = round(_time.perf_counter() - t0, 2)
    ins = evaluate(markets, x, D, times, tz, seed=seed)
    out = None
    if fresh is not None:
        Df, tf, _ = _draws(fresh, markets)
        if not tf.equals(times):
            raise ConfigError("fresh draws: their half-hours differ from the study's (run the same inputs with "
                              "another seed)")
        out = evaluate(markets, x, Df, times, tz, seed=seed + 1)
    return Decision(markets, times, tz, x, weights, risk, cvar_alpha, cvar_limit_gbp, ins, out, info)


def _draws(tree, markets: Markets):
    if isinstance(tree, tuple):
        D, times, tz = tree
        return {d: np.asarray(D[d], float) for d in DIRECTIONS}, pd.DatetimeIndex(times), tz

    D, times = deliverable_draws(tree)
    return D, times, markets.timezone or site_zone(tree)


def _solve(markets, D, times, tz, terms: _Terms, weights, risk, alpha, cvar_limit, time_limit, gap, refine_s=0.0):
    """The commitments (K, T) and solver facts.  Without a chance constraint one programme over every
    draw; with one, iterated scenario discarding (:func:`_discard`)."""
    S = D["up"].shape[0]
    if risk is None:
        # every draw may fall short, so every draw carries shortfall columns: over PROGRAMME_DRAWS,
        # an evenly spaced subset keeps the programme to seconds (the evaluation uses every draw)
        sub = np.unique(np.linspace(0, S - 1, min(S, PROGRAMME_DRAWS)).round().astype(int))
        Ds = {d: D[d][sub] for d in DIRECTIONS}
        x, info = _program(markets, Ds, times, tz, terms, weights, np.zeros(len(sub), bool), alpha, cvar_limit,
                           time_limit, gap)
        info.update({"draws": S, "programme_draws": len(sub),
                     "method": "one programme over every draw" if len(sub) == S else
                     f"one programme over {len(sub)} evenly spaced draws of {S}"})
        return x, info
    return _discard(markets, D, times, tz, terms, weights, risk, alpha, cvar_limit, time_limit, gap,
                    refine_s=refine_s)


#: the in-sample risks tried, as shares of the risk asked, by :func:`_calibrate`
CALIBRATION = (1.0, 0.7, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05, 0.0)


def _calibrate(markets, D, times, tz, terms, weights, risk, alpha, cvar_limit, time_limit, gap, refine_s=0.0):
    """The in-sample risk to tune at so that the commitments hold ``risk`` on draws they were not
    tuned on.  Commitments tuned to fall short in at most ``risk`` of their own draws fall short more
    often on others (the discarding picks the draws to give up; on the default study at 5 %: 3.6 % in
    sample, 8.1 % [6.6, 9.96] on fresh draws).  Two-fold cross-validation over the study's draws
    (even and odd): the largest share of ``risk`` in :data:`CALIBRATION` whose commitments, tuned on
    one half, fall short in at most ``risk`` of the other half (both ways, pooled).  Tuned on half the
    draws the commitments overfit more than on all of them, so the choice errs on the safe side."""
    S = D["up"].shape[0]
    halves = (np.arange(S) % 2 == 0, np.arange(S) % 2 == 1)
    tried = []
    for share in CALIBRATION:
        r = risk * share
        short = 0
        for a, b in (halves, halves[::-1]):
            Da = {d: D[d][a] for d in DIRECTIONS}
            x, _ = _discard(markets, Da, times, tz, terms, weights, r, alpha, cvar_limit, time_limit, gap,
                            refine_s=refine_s)
            short += int(evaluate(markets, x, {d: D[d][b] for d in DIRECTIONS}, times, tz).short_any.sum())
        tried.append({"in_sample_risk": r, "held_out_p_shortfall": short / S})
        if short / S <= risk:
            return r, tried
    return tried[-1]["in_sample_risk"], tried


def _discard(markets, D, times, tz, terms, weights, risk, alpha, cvar_limit, time_limit, gap, rounds: int = 5,
             refine_s: float = 0.0):
    """The chance constraint by iterated scenario discarding: at most ``m = floor(risk * S)`` draws may
    fall short.  Start from the commitments that ignore the coupling between half-hours (each
    half-hour may lose its own ``m`` lowest draws).  Each round, from the best commitments so far,
    rank the draws by what keeping them whole would cost -- their missing kW valued at each
    half-hour's marginal product, summed over the horizon and, a second ranking, at its worst
    half-hour -- let the ``m`` costliest of each ranking fall short (penalised), require every other
    draw to deliver in full, and solve again; stop when no new set comes up.  The best commitments
    found are kept.  A heuristic: every answer satisfies the chance constraint on the draws, but it
    is not proven optimal; the first programme, in which each half-hour alone may lose ``m`` draws,
    is a relaxation of the joint constraint, so its objective bounds the optimum from above
    (``upper_bound``, ``gap_to_bound`` in the solver's facts).  The exact programme needs a binary
    per draw, which HiGHS does not close in minutes at 1,000 draws; with ``refine_s`` it is solved on
    a shortlist of the 3m draws costliest to keep under the first commitments, all others kept whole."""
    S = D["up"].shape[0]
    m = math.floor(risk * S + 1e-9)
    cap = {d: np.sort(D[d], axis=0)[m] for d in DIRECTIONS}  # each half-hour alone: its (m+1)-th smallest draw
    x, relaxed = _program(markets, D, times, tz, terms, weights, np.zeros(S, bool), alpha, cvar_limit, time_limit,
                          gap, cap=cap)
    best, best_obj, best_info, seen, history = None, -np.inf, {}, set(), []
    cx = sum(w * terms.commit[n] for n, w in weights.items())  # objective per kW committed (K, T)
    for _ in range(rounds):
        new = False
        for lost in _keeping_cost(markets, x if best is None else best, D, cx):
            dropped = np.argsort(-lost, kind="stable")[:m] if m else np.zeros(0, int)
            dropped = dropped[lost[dropped] > 0]  # draws that deliver in full need no slack
            key = tuple(sorted(dropped.tolist()))
            if key in seen:
                continue
            seen.add(key)
            new = True
            keep = np.ones(S, bool)
            keep[dropped] = False
            xk, info = _program(markets, D, times, tz, terms, weights, keep, alpha, cvar_limit, time_limit, gap)
            history.append(round(info["objective"], 6))
            if info["objective"] > best_obj + 1e-12:
                best, best_obj, best_info = xk, info["objective"], info
        if not new:
            break
    refined = False
    if refine_s > 0 and m > 0:
        # the exact programme on a shortlist: binaries for the 3m draws costliest to keep whole under the
        # first (relaxed) commitments, every other draw delivers in full; taken if HiGHS finds a better
        # answer in time
        total, worst = _keeping_cost(markets, x, D, cx)
        short = np.union1d(np.argsort(-total, kind="stable")[:3 * m], np.argsort(-worst, kind="stable")[:3 * m])
        short = short[(total[short] > 0) | (worst[short] > 0)]
        keep = np.ones(S, bool)
        keep[short] = False
        xr, info = _program(markets, D, times, tz, terms, weights, keep, alpha, cvar_limit, refine_s, gap,
                            binaries=m)
        history.append(round(info["objective"], 6))
        if info["objective"] > best_obj + 1e-12 and (info["optimal"] or "Time limit" in info["status"]):
            best, best_obj, best_info, refined = xr, info["objective"], info, True
    best_info = dict(best_info)
    bound = relaxed["objective"]  # each half-hour alone may lose m draws: a relaxation of the joint constraint
    best_info.update({"draws": S, "chance_constraint_draws": m, "programmes": len(history),
                      "upper_bound": bound,
                      "gap_to_bound": (bound - best_obj) / abs(bound) if bound and relaxed["optimal"] else None,
                      "objective_by_programme": history,
                      "refined": refined,
                      "method": "iterated scenario discarding (a heuristic: feasible, not proven optimal)"})
    return best, best_info


def _keeping_cost(markets, x, D, cx) -> tuple[np.ndarray, np.ndarray]:
    """Per draw, what requiring it to deliver ``x`` in full would cost: its missing kW valued at
    each half-hour's marginal product, summed over the half-hours, and at the worst half-hour."""
    S = D["up"].shape[0]
    total, worst = np.zeros(S), np.zeros(S)
    for d in DIRECTIONS:
        mine = np.array([p.direction == d for p in markets.products])
        if not mine.any():
            continue
        c = _capacity(markets, x, d)
        value = np.where(x[mine] > _TOL_KW, cx[mine], 0.0).max(axis=0)  # per kW at the margin (T,)
        lost = np.maximum(c[None, :] - D[d], 0.0) * value[None, :]
        total += lost.sum(axis=1)
        worst = np.maximum(worst, lost.max(axis=1))
    return total, worst


def _program(markets, D, times, tz, terms: _Terms, weights, keep, alpha, cvar_limit, time_limit, gap, cap=None,
             binaries: int | None = None):
    """Solve the programme in which the draws ``keep`` deliver in full and the others may fall short
    (penalised in the objective); ``cap``: per direction, the most that can be committed in each
    half-hour (default: the smallest kept draw, or the largest draw if none is kept).  ``binaries``:
    the exact chance constraint instead, a binary per draw of which at most this many may be 1
    (a draw falls short only if its binary is 1; for small programmes: ``bench/market_decision.py``)."""
    prods = markets.products
    K, T = len(prods), len(times)
    S = D["up"].shape[0]
    bid = np.array([blocks(p, times, tz) for p in prods])  # (K, T)
    cx = sum(w * terms.commit[n] for n, w in weights.items())  # objective per kW committed (K, T)
    cs = sum(w * terms.short[n] for n, w in weights.items())  # objective lost per kW short (K, T)
    if cap is None:
        cap = {d: (D[d][keep].min(axis=0) if keep.any() else D[d].max(axis=0)) for d in DIRECTIONS}
    col = _Columns()
    # commitments: one variable per product and block (kW, or steps of step_kw)
    y_of = {}
    for k, p in enumerate(prods):
        for b in np.unique(bid[k][bid[k] >= 0]):
            t = np.flatnonzero(bid[k] == b)
            ub = min(p.max_kw, float(cap[p.direction][t].min()))
            if ub < max(p.min_kw, p.step_kw, _TOL_KW):
                continue  # nothing can be sold in this block
            scale = p.step_kw if p.step_kw > 0 else 1.0
            j = col.add(1, lb=0, ub=math.floor(ub / scale + 1e-9) if p.step_kw > 0 else ub,
                        cost=-scale * cx[k, t].sum(), integer=p.step_kw > 0)
            y_of[k, b] = (j, scale, t)
            if p.min_kw > 0:
                on = col.add(1, lb=0, ub=1, integer=True)
                col.row({j: scale, on: -p.min_kw}, lo=0)  # y >= min_kw * on
                col.row({j: scale, on: -ub}, hi=0)  # y <= ub * on
    x_cols = [[None] * T for _ in range(K)]  # (column, scale) per (k, t)
    for (k, _b), (j, scale, t) in y_of.items():
        for tt in t:
            x_cols[k][tt] = (j, scale)
    groups = markets.stack_groups()
    z_of = {}  # stacked group's capacity column per (g, t)
    for gi, g in enumerate(groups):
        if len(g) < 2:
            continue
        for t in range(T):
            members = [k for k in g if x_cols[k][t] is not None]
            if len(members) < 2:
                continue
            z = col.add(1, lb=0)
            for k in members:
                j, sc = x_cols[k][t]
                col.row({z: 1.0, j: -sc}, lo=0)  # z >= x_k
            z_of[gi, t] = z
    short_cost = {}  # draw -> {column: GBP per kW} for the CVaR rows
    n_short = 0
    wcol = None
    if binaries is not None:
        wcol = col.add(S, lb=0, ub=1, integer=True)
        col.row(dict.fromkeys(range(wcol, wcol + S), 1.0), hi=binaries)
    for d in DIRECTIONS:
        for t in range(T):
            units = []
            for gi, g in enumerate(groups):
                members = [k for k in g if prods[k].direction == d and x_cols[k][t] is not None]
                if members:
                    units.append((members, z_of.get((gi, t))))
            if not units:
                continue
            capacity = {}
            for members, z in units:
                if z is not None:
                    capacity[z] = 1.0
                else:
                    j, sc = x_cols[members[0]][t]
                    capacity[j] = capacity.get(j, 0.0) + sc
            col.row(capacity, hi=float(cap[d][t]))
            for s in np.flatnonzero(~keep & (D[d][:, t] < cap[d][t] - _TOL_KW)):  # draws that may fall short
                deliver, shorts = {}, []
                for members, z in units:
                    yv = None
                    if z is not None:
                        yv = col.add(1, lb=0)
                        deliver[yv] = 1.0
                    for k in members:
                        j, sc = x_cols[k][t]
                        sh = col.add(1, lb=0, cost=cs[k, t] / S)
                        col.row({sh: 1.0, j: -sc}, hi=0)  # short <= x
                        if yv is None:
                            deliver[j] = deliver.get(j, 0.0) + sc
                            deliver[sh] = -1.0
                        else:
                            col.row({j: sc, sh: -1.0, yv: -1.0}, hi=0)  # x_k - short_k <= Y
                        shorts.append((sh, k))
                col.row(deliver, hi=float(D[d][s, t]))
                n_short += len(shorts)
                if wcol is not None:  # short only if the draw's binary is 1 (each short <= its product's cap)
                    col.row({**{sh: 1.0 for sh, _ in shorts}, wcol + s: -float(cap[d][t]) * len(shorts)}, hi=0)
                if cvar_limit is not None:
                    short_cost.setdefault(s, {}).update({sh: terms.penalty_gbp[k, t] for sh, k in shorts})
    if cvar_limit is not None:
        eta = col.add(1, lb=-np.inf)
        v = col.add(S, lb=0)
        for s in range(S):
            col.row({v + s: 1.0, eta: 1.0, **{c: -w for c, w in short_cost.get(s, {}).items()}}, lo=0)
        col.row({eta: 1.0, **dict.fromkeys(range(v, v + S), 1.0 / ((1 - alpha) * S))}, hi=cvar_limit)
    relax = len(col.lb) > EXACT_COLUMNS and binaries is None
    res, info = col.solve(time_limit, gap, relax=relax)
    x = np.zeros((K, T))
    for (k, _b), (j, scale, t) in y_of.items():
        kw = max(res[j] * scale, 0.0)
        if relax:  # round down onto the product's sizes: less committed never falls short more
            p = prods[k]
            kw = math.floor(kw / p.step_kw + 1e-9) * p.step_kw if p.step_kw > 0 else kw
            kw = 0.0 if kw < p.min_kw - 1e-9 else kw
        x[k, t] = kw
    x[x < _TOL_KW] = 0.0
    if relax:
        info["method_sizes"] = "linear relaxation, commitments rounded down onto min_kw/step_kw"
    info.update({"blocks": len(y_of), "shortfall_columns": n_short})
    return x, info


class _Columns:
    """A sparse programme built column by column and row by row (minimise ``cost @ x``)."""

    def __init__(self):
        self.lb, self.ub, self.cost, self.integer = [], [], [], []
        self.rows, self.cols, self.vals, self.rlo, self.rhi = [], [], [], [], []

    def add(self, n: int, *, lb=0.0, ub=np.inf, cost=0.0, integer=False) -> int:
        j = len(self.lb)
        self.lb += [lb] * n
        self.ub += [ub] * n
        self.cost += [cost] * n
        self.integer += [int(integer)] * n
        return j

    def row(self, coef: dict, *, lo=-np.inf, hi=np.inf) -> None:
        r = len(self.rlo)
        for c, v in coef.items():
            self.rows.append(r)
            self.cols.append(c)
            self.vals.append(v)
        self.rlo.append(lo)
        self.rhi.append(hi)

    def solve(self, time_limit: float, gap: float, relax: bool = False) -> tuple[np.ndarray, dict]:
        n = len(self.lb)
        if n == 0:  # nothing can be sold
            return np.zeros(0), {"status": "nothing to decide: no product can be sold in any block", "variables": 0,
                                 "rows": 0, "integer_variables": 0, "objective": 0.0, "mip_gap": 0.0,
                                 "optimal": True}
        integer = np.zeros(n) if relax else np.asarray(self.integer)
        A = sp.csr_array((self.vals, (self.rows, self.cols)), shape=(len(self.rlo), n))
        res = milp(np.asarray(self.cost), integrality=integer,
                   bounds=Bounds(np.asarray(self.lb, float), np.asarray(self.ub, float)),
                   constraints=LinearConstraint(A, np.asarray(self.rlo, float), np.asarray(self.rhi, float)),
                   options={"time_limit": time_limit, "mip_rel_gap": gap, "disp": False})
        if res.x is None:
            raise SolverError(f"the market decision found no solution ({res.message})")
        info = {"status": res.message, "variables": n, "rows": len(self.rlo),
                "integer_variables": int(np.sum(integer)), "objective": float(-res.fun),
                "mip_gap": float(getattr(res, "mip_gap", 0.0) or 0.0),
                "optimal": bool(res.status == 0)}
        return res.x, info


# ----------------------------------------------------------------------------
# evaluation on draws
# ----------------------------------------------------------------------------

def evaluate(markets: Markets, x: np.ndarray, D: dict, times, tz: str, *, seed: int | None = 0) -> Evaluation:
    """Judge commitments ``x (product, time)`` on draws ``D``: per draw, what falls short (each
    half-hour's shortfall goes to the products whose shortfall costs least first; a group of
    stacked products counts as one, at its members' summed cost), and each objective term
    with the prices drawn from their forecasts' scenarios (one per draw, independently)."""
    slot, _, _ = local_clock(times, tz)
    S, T = D["up"].shape
    rng = np.random.default_rng(seed)
    pick = []
    for p in markets.products:
        row = {}
        for name, fc in (("availability", p.availability), ("energy", p.energy), ("penalty", p.penalty)):
            if fc is None:
                row[name] = np.zeros((S, T))
            else:
                row[name] = fc.values[rng.integers(0, len(fc.values), S)][:, slot]
        pick.append(row)
    mean_terms = _terms(markets, slot)
    groups = markets.stack_groups()
    short = np.zeros((S, len(markets.products), T))
    short_any = np.zeros(S, bool)
    short_kwh = np.zeros(S)
    for d in DIRECTIONS:
        units = [g for g in groups if markets.products[g[0]].direction == d]
        for t in range(T):
            caps = np.array([x[list(g), t].max() for g in units]) if units else np.zeros(0)
            need = np.maximum(caps.sum() - D[d][:, t], 0.0)  # (S,)
            need[need < _TOL_KW] = 0.0
            if not need.any():
                continue
            short_any |= need > 0
            short_kwh += need * DT_H
            rate = np.array([mean_terms.short["profit"][list(g), t].sum() for g in units])
            left = need.copy()
            for u in np.argsort(rate, kind="stable"):
                take = np.minimum(left, caps[u])
                for k in units[u]:  # the group delivers caps[u] - take; a member short of what it sold above that
                    short[:, k, t] = np.maximum(x[k, t] - (caps[u] - take), 0.0)
                left -= take
    per_kw = DT_H / 1000
    value = {}
    cost = np.zeros(S)
    sign = np.array([p.sign for p in markets.products])
    f = markets.rebound_fraction
    profit = np.zeros(S)
    for k, p in enumerate(markets.products):
        delivered = x[k][None, :] - short[:, k, :]
        tested = 1.0 if p.tested == "always" else p.called
        pen = pick[k]["penalty"] * per_kw * tested * short[:, k, :]
        cost += pen.sum(axis=1)
        profit += (pick[k]["availability"] * per_kw * x[k][None, :]).sum(axis=1)
        profit += (p.called * (pick[k]["energy"] - f * sign[k] * markets.rebound_price_gbp_per_mwh) * per_kw
                   * delivered).sum(axis=1)
    value["profit"] = profit - cost
    delivered_all = x[None] - short  # (S, K, T)
    if markets.carbon is not None:
        value["carbon"] = (mean_terms.commit["carbon"][None] * delivered_all).sum(axis=(1, 2))
    # affordability: the households' share of the market revenue less penalties, and their tariff saving
    saving = 0.0
    if markets.tariff is not None:
        called = np.array([p.called for p in markets.products])[:, None]
        tariff = called * f * sign[:, None] * (markets.tariff.mean()[slot] - markets.rebound_tariff_gbp_per_kwh) * DT_H
        saving = (tariff[None] * delivered_all).sum(axis=(1, 2))
    reb_profit = sum((p.called * f * sign[k] * markets.rebound_price_gbp_per_mwh * per_kw
                      * delivered_all[:, k, :]).sum(axis=1) for k, p in enumerate(markets.products))
    value["affordability"] = markets.revenue_share * (value["profit"] + reb_profit) + saving
    return Evaluation(S, short_any, short_kwh, cost, value, seed, short)
