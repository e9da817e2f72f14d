"""Stage 2 of the two-stage coordination: the DSO makes the aggregators' schedules secure.

The loop (after the second source paper, made probabilistic):

1. each aggregator schedules its contracted devices for cost
   (:func:`bayesflex.portfolio.schedule`, stage 1); its portfolio power is
   its market commitment;
2. the DSO runs the risk engine on the aggregated schedules as positions
   (:func:`bayesflex.run_study`): the uncontrollable demand and PV are drawn
   from the priors, the devices follow their schedules;
3. in every half-hour where the probability that a limit is broken exceeds the
   DSO's accepted ``risk``, the heuristic's adjustments of the agents it ranked
   become per-agent limits: the portfolio cuts the total turn-down (turn-up)
   asked of its agents at the quantile, over the congested draws, that would
   leave at most ``risk`` of all draws congested (to first order), shared
   among the agents the heuristic moved in proportion to what each was asked;
   an agent may then not exceed its scheduled power less its share (nor fall
   below its power plus a turn-up share);
4. the aggregators re-optimise within those limits, paying
   ``imbalance_price_per_kwh`` for every kWh off their commitment; limits
   only ever tighten, and the loop repeats from 2 until every half-hour is
   within ``risk`` (secure), no feasible schedule exists (the device and the
   half-hour are named), the remaining congestion is not the portfolio's to
   resolve, or ``max_rounds`` is reached -- each reported in
   :attr:`Coordination.outcome`.

Each agent holds one controllable device (a battery with its PV, a heat pump
or an EV charger), so a limit on the agent is a limit on its device.  The
positions' bounds let the heuristic move each device towards idle
(:func:`power_range`): it may ask a heat pump to stop for a half-hour, and
the aggregator re-plans the rest of its day to keep the comfort band.  (A
bound that held the rest of the schedule fixed would be zero wherever the
cost-optimal schedule rides its state-of-charge or comfort limits -- which is
nearly everywhere.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .errors import ConfigError, SolverError
from .feeder import Feeder, load_feeder
from .portfolio import Schedule, check_device, schedule
from .positions import Positions, positions_from_schedule

__all__ = ["Aggregator", "Coordination", "Round", "coordinate", "power_range"]

_CUT_KW = 1e-3  # cuts below this are not limits
_MARGIN = 1.05  # cut 5 % more than the linearised heuristic asks: its first-order cuts fall a little short


@dataclass(frozen=True)
class Aggregator:
    """An aggregator and the devices it has under contract (one per agent)."""

    name: str
    devices: tuple


@dataclass(frozen=True)
class Round:
    """One pass of the DSO's check, on the schedules of that round."""

    index: int
    p_congested: np.ndarray  # (time,) P(a limit broken on any phase)
    p_congested_mcse: np.ndarray
    p_trafo_overload: np.ndarray  # (time, trafo)
    trafo_peak_pu: np.ndarray  # (trafo,) mean over draws of the horizon's highest loading
    trafo_peak_p95_pu: np.ndarray  # (trafo,) its 95 % quantile
    cost: dict  # aggregator -> energy cost of its devices (currency of the price)
    imbalance_cost: dict  # aggregator -> cost of deviating from its commitment
    shortfall_kwh: dict  # aggregator -> sum over steps of |P_T - commitment| * dt
    limits: int  # (device, step) limits in force for this round's schedules


@dataclass
class Coordination:
    """Result of :func:`coordinate`: ``secure`` and why the loop stopped, each round's
    figures (:meth:`table`), the first (stage 1) and final schedules per
    aggregator, the limits the DSO set, and the last round's study."""

    secure: bool
    outcome: str
    risk: float
    rounds: list[Round]
    first: dict[str, Schedule]
    final: dict[str, Schedule]
    cap_kw: dict[str, np.ndarray]
    floor_kw: dict[str, np.ndarray]
    positions: Positions
    tree: object = field(repr=False)
    trafos: tuple[str, ...] = ()
    uncontrolled_cost: float = 0.0  # expected cost of the contracted customers' own demand and PV

    def table(self) -> pd.DataFrame:
        """One row per round: the highest P(congestion) over the horizon with its MC
        error, each transformer's peak loading, and the cost and shortfall."""
        rows = []
        for r in self.rounds:
            k = int(np.argmax(r.p_congested))
            row = {"round": r.index, "p_congested_max": float(r.p_congested[k]),
                   "p_congested_max_mcse": float(r.p_congested_mcse[k]),
                   "half_hours_over_risk": int((r.p_congested > self.risk).sum()),
                   "limits": r.limits}
            for i, t in enumerate(self.trafos):
                row[f"peak_pu[{t}]"] = float(r.trafo_peak_pu[i])
                row[f"peak_p95_pu[{t}]"] = float(r.trafo_peak_p95_pu[i])
            row["device_cost"] = sum(r.cost.values())
            row["imbalance_cost"] = sum(r.imbalance_cost.values())
            row["shortfall_kwh"] = sum(r.shortfall_kwh.values())
            rows.append(row)
        return pd.DataFrame(rows)

    def customer_cost_increase(self) -> float:
        """Relative increase of the contracted customers' electricity cost (devices plus
        their expected own demand and PV), final round against stage 1."""
        before = self.uncontrolled_cost + sum(s.cost for s in self.first.values())
        after = self.uncontrolled_cost + sum(s.cost for s in self.final.values())
        return (after - before) / abs(before)

    def peak_reduction(self) -> np.ndarray:
        """Per transformer, 1 - final / first expected peak loading."""
        return 1 - self.rounds[-1].trafo_peak_pu / self.rounds[0].trafo_peak_pu


def _check(feeder: Feeder, aggregators) -> None:
    if not aggregators:
        raise ConfigError("coordinate needs at least one aggregator")
    seen: dict[str, str] = {}
    for agg in aggregators:
        if not isinstance(agg, Aggregator) or not agg.devices:
            raise ConfigError(f"{agg!r}: give Aggregator(name, devices) with at least one device")
        for d in agg.devices:
            if d.agent not in feeder.agents:
                raise ConfigError(f"aggregator {agg.name!r}: agent {d.agent!r} is not on feeder {feeder.name!r}")
            if d.agent in seen:
                raise ConfigError(f"agent {d.agent!r} has more than one device (aggregators {seen[d.agent]!r} and "
                                  f"{agg.name!r}); coordinate supports one controllable device per agent")
            seen[d.agent] = agg.name


def power_range(device, p_kw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The range (kW per step) within which the DSO may move a device scheduled at
    ``p_kw``: towards idle only -- less charging or discharging, less heat-pump
    or EV power -- the aggregator re-planning the rest of the device's day
    around it.  The DSO curtails, it never forces: a heat pump made to run
    where the house is already warm, or a battery made to discharge in several
    half-hours, can leave no schedule that keeps the comfort band or the state
    of charge."""
    check_device(device)
    p = np.asarray(p_kw, float)
    return np.minimum(p, 0.0), np.maximum(p, 0.0)


def _positions(aggs, sched: dict, times, price, cap, floor) -> Positions:
    """The schedules as positions; bounds: each device's range (:func:`power_range`) within the DSO's limits."""
    lb, ub = np.array([power_range(d, p) for a in aggs for d, p in zip(a.devices, sched[a.name].p_kw)]
                      ).transpose(1, 0, 2)
    lb = np.maximum(lb, np.concatenate([floor[a.name] for a in aggs]))
    ub = np.minimum(ub, np.concatenate([cap[a.name] for a in aggs]))
    return positions_from_schedule([sched[a.name] for a in aggs], times, lb_kw=lb, ub_kw=ub,
                                   offer_price=1000 * np.asarray(price), origin="coordination")


def coordinate(feeder: Feeder | str, priors, aggregators, price_per_kwh, *, risk: float = 0.05,
               draws: int = 200, seed: int = 1, max_rounds: int = 10, method: str = "central",
               imbalance_price_per_kwh=None, dt_h: float = 0.5, start=None, jobs: int = 1,
               progress=None) -> Coordination:
    """Run the two-stage coordination (module docstring) over the horizon of ``price_per_kwh``
    (one price per half-hour, currency per kWh, from ``start`` or the priors' start).

    ``risk``: the probability of a broken limit the DSO accepts per half-hour.
    ``draws``, ``seed``: of each round's study (the same seed every round, so
    that rounds differ only by the schedules).  ``method``: the aggregators'
    optimisation, "central" or "distributed".
    """
    from .engine import run_study
    from .priors import load_priors
    from .query import predictive

    fd = feeder if isinstance(feeder, Feeder) else load_feeder(feeder)
    aggs = tuple(aggregators)
    _check(fd, aggs)
    if not 0 < risk < 1:
        raise ConfigError(f"risk {risk!r} must lie strictly between 0 and 1")
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 0:
        raise ConfigError(f"max_rounds {max_rounds!r} must be a whole number >= 0")
    pr = load_priors(priors) if isinstance(priors, str) else priors
    price = np.asarray(price_per_kwh, float)
    t0 = pd.Timestamp(start) if start is not None else getattr(pr, "priors", pr).start
    times = pd.date_range(t0, periods=len(price), freq="30min")
    n = len(price)

    sched = {a.name: schedule(a.devices, price, dt_h=dt_h, method=method) for a in aggs}  # stage 1
    first = dict(sched)
    commit = {a.name: sched[a.name].portfolio_kw for a in aggs}
    cap = {a.name: np.full((len(a.devices), n), np.inf) for a in aggs}
    floor = {a.name: np.full((len(a.devices), n), -np.inf) for a in aggs}
    where = {d.agent: (a.name, i) for a in aggs for i, d in enumerate(a.devices)}
    rounds: list[Round] = []
    uncontrolled = 0.0
    for r in range(max_rounds + 1):
        pos = _positions(aggs, sched, times, price, cap, floor)
        tree = run_study(fd, pr, draws=draws, seed=seed, positions=pos, headroom=False, jobs=jobs,
                         progress=progress)
        s, net, h = tree["summary"], tree["network"], tree["heuristic"]
        p = s["p_congested_any"].values
        load = net["trafo_loading_pu"].values[0]  # (draw, time, trafo)
        peak = load.max(axis=1)
        rounds.append(Round(
            r, p, s["p_congested_any_mcse"].values, net["p_trafo_overload"].values, peak.mean(axis=0),
            np.quantile(peak, 0.95, axis=0), {k: v.cost for k, v in sched.items()},
            {k: v.imbalance_cost for k, v in sched.items()},
            {k: float(np.abs(v.shortfall_kw).sum() * dt_h) for k, v in sched.items()},
            int(sum(np.isfinite(cap[k]).sum() + np.isfinite(floor[k]).sum() for k in cap))))
        if r == 0:
            pred = predictive(tree)
            own = (pred["p_base_kw"] + (pred["p_pv_kw"] if "p_pv_kw" in pred else 0)).sel(agent=list(pos.agents))
            uncontrolled = float(dt_h * (price * own.sum(("agent", "phase")).mean(("chain", "draw")).values).sum())
        bad = np.flatnonzero(p > risk)
        if not len(bad):
            outcome = f"secure: P(congestion) <= {risk:g} in every half-hour"
            break
        if r == max_rounds:
            outcome = f"not secure after {max_rounds} rounds: {len(bad)} half-hour(s) above the accepted risk"
            break
        changed = _limit(h, bad, p, risk, pos, sched, cap, floor, where)
        if not changed:
            outcome = ("not secure: the congestion left is not the portfolio's to resolve (the heuristic asks "
                       f"nothing more of the contracted agents) in {len(bad)} half-hour(s)")
            break
        try:
            sched = {a.name: schedule(a.devices, price, dt_h=dt_h, method=method, cap_kw=cap[a.name],
                                      floor_kw=floor[a.name], commitment_kw=commit[a.name],
                                      imbalance_price_per_kwh=imbalance_price_per_kwh) for a in aggs}
        except SolverError as err:
            outcome = f"not secure: no feasible schedule within the DSO's limits ({err})"
            break
    return Coordination(secure=outcome.startswith("secure"), outcome=outcome, risk=risk, rounds=rounds,
                        first=first, final=sched, cap_kw=cap, floor_kw=floor, positions=pos, tree=tree,
                        trafos=tuple(str(t) for t in net.trafo.values), uncontrolled_cost=uncontrolled)


def _limit(h, bad, p, risk, pos: Positions, sched, cap, floor, where) -> bool:
    """Tighten the device limits at the half-hours ``bad`` from the heuristic's adjustments.

    At half-hour t the portfolio cuts, over the congested draws, the total
    turn-down (turn-up) the heuristic asked of the contracted agents at the
    quantile that leaves only the accepted ``risk`` of all draws uncured (the
    upper value, plus 5 %), shared among the agents in proportion to what
    each was asked on average (the heuristic's most effective agents carry
    most of it), never past an agent's own range."""
    agents = list(pos.agents)
    cong = h["congested"].values[0].any(axis=-1)  # (draw, time)
    allowed = int(np.floor(risk * len(cong)))  # congested draws the DSO accepts
    changed = False
    for side, sign in (("down", -1.0), ("up", 1.0)):
        adj = h[f"adjust_{side}_kw"].sel(agent=agents).sum("phase").values[0]  # (draw, time, agent)
        for t in bad:
            rows = adj[cong[:, t], t]  # (congested draws, agent)
            total = _MARGIN * np.quantile(rows.sum(axis=1), 1 - allowed / len(rows), method="higher")
            share = rows.mean(axis=0)
            if total <= _CUT_KW or share.sum() <= 0:
                continue
            room = (pos.p_kw[t] - pos.p_lb_kw[t]) if sign < 0 else (pos.p_ub_kw[t] - pos.p_kw[t])
            cut = np.minimum(total * share / share.sum(), room)  # never past the agent's own range
            for j in np.flatnonzero(cut > _CUT_KW):
                name, i = where[agents[j]]
                kw = sched[name].p_kw[i, t] + sign * cut[j]
                if sign < 0 and kw < cap[name][i, t] - _CUT_KW:
                    cap[name][i, t] = kw
                    floor[name][i, t] = min(floor[name][i, t], kw)  # the latest request wins
                    changed = True
                elif sign > 0 and kw > floor[name][i, t] + _CUT_KW:
                    floor[name][i, t] = kw
                    cap[name][i, t] = max(cap[name][i, t], kw)
                    changed = True
    return changed
