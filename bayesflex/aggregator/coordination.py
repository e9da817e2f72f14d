"""Stage 2 of the two-stage coordination: the DSO makes the aggregators' schedules secure.

The loop (after the second source paper, made probabilistic):

1. each aggregator schedules its contracted devices for cost
   (:func:`bayesflex.aggregator.portfolio.schedule`, stage 1); its portfolio power is
   its market commitment;
2. the DSO runs the risk engine on the aggregated schedules as positions
   (:func:`bayesflex.run_study`): the uncontrollable demand and PV are drawn
   from the priors, the devices follow their schedules;
3. in every half-hour where the 95 % upper bound of the probability that a
   limit is broken is not below the DSO's accepted ``risk``, the heuristic's
   adjustments of the agents it ranked become limits: in each transformer's
   zone the portfolio cuts the total turn-down (turn-up) asked of its agents
   there at the quantile, over the congested draws, that would leave fewer
   congested draws than that bound tolerates (to first order), shared in
   proportion to what each agent was asked.  Where only transformers are
   overloaded (every congested draw's voltages and line currents within
   limits), a transformer's loading is the sum of what is under it: each
   aggregator's devices on each of its phases may then together draw at
   most their scheduled power less their share (:attr:`Coordination.group_limits`),
   and the aggregator chooses which of them moves.  Elsewhere (a voltage or
   a cable, where it matters which agent moves) an agent may not exceed its
   scheduled power less its share (nor fall below its power plus a turn-up
   share);
4. the aggregators re-optimise within those limits, keeping their
   commitment wherever their devices can -- moving energy between devices and
   half-hours, in any zone -- and paying ``imbalance_price_per_kwh`` for
   every kWh off it (:meth:`Coordination.commitments` says where); limits
   only ever tighten, and the loop repeats from 2 until every half-hour is
   within ``risk`` on the tuning draws, no feasible schedule exists (the
   device and the half-hour are named), the remaining congestion is not the
   portfolio's to resolve, or ``max_rounds`` is reached;
5. the final schedules are checked once more on fresh draws (another seed,
   derived from ``seed``): they are *secure* only if the 95 % upper bound
   (Wilson) of the worst half-hour's P(congestion) on those draws is below
   ``risk``.  Otherwise they are *not secure* (the estimate is at or above
   the risk) or *not confirmed* (below it, but too few draws to bound it;
   the outcome says how many would do).  Each is reported in
   :attr:`Coordination.outcome`.

Why fresh draws: the limits are cut to just clear the congested draws of the
tuning study, so on those draws the final P(congestion) is biased low -- the
loop selected the schedule that looks best on them.  In the test
configuration (24 heat pumps on 100 kVA, tests/test_coordination.py, seed 3)
with 10 draws a round, the loop ends with no congested draw in any
half-hour (< 27.8 %), and 1,000 fresh draws put the worst half-hour at
7.2 % [5.8, 9.0]: not secure (with 30 draws a round: 2.9 % [2.0, 4.1],
secure).

Why an upper bound in the loop as well (steps 3-4): a half-hour counts as
within ``risk`` on the tuning draws only while the Wilson 95 % upper bound
of its P(congestion) is below ``risk`` -- at most 3 of 200 congested draws
for a risk of 5 %, not 10 (:func:`tolerated_draws`); with fewer than about
``3.84 / risk`` tuning draws no count is bounded so low, and the loop asks
for none.  Tuned to the point estimate, the schedules sit at the risk on
their own draws and above it on fresh ones, where no confirmation can bound
them below it (the test configuration with 200 draws a round, per-agent
limits: 5.5 % in sample after 12 rounds, 5.4 % [4.2, 7.0] on fresh draws).
Tuned to the upper bound they are cut a little deeper and pass (with the
transformer limits on the pumps' sums: 1.5 % [0.5, 4.3] in sample after 9
rounds, 2.8 % [1.9, 4.0] on 1,000 fresh draws, the customers' cost up
15.3 %).  The loop runs the same studies, plus the confirmation's.

Why commitments break in the two-area case (bench/two_area.py): stage 1
sends every heat pump and battery, in both areas, to the same cheapest
half-hours, and there both transformers overload at once.  Lowering a
transformer's load in such a half-hour lowers the aggregator's power there,
whatever it moves: its devices in the other area are as full at that price
(each device with room at the cheapest half-hour already uses it).  So the
commitment is short there, and the energy its devices still need (heat,
state of charge) is bought back in other half-hours -- long.  A re-plan that
knew the transformers' capacity in every half-hour at once (a per-phase
limit on both aggregators' devices, the uncontrolled demand at its 99 %
quantile; bench/two_area.py's bound) still leaves about 650 kWh short and
460 kWh long; the loop, which finds the limits round by round, leaves more
(bench/README.md).  Only half-hours where one area has room while the other
is limited, or devices with spare room at the limited half-hour, let a
commitment be kept; the tests build both cases by hand.

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

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bayesflex.aggregator.portfolio import Schedule, check_device, schedule
from bayesflex.analysis.query import n_draws, predictive
from bayesflex.core.checks import check_on_feeder
from bayesflex.core.intervals import format_probability, wilson_interval
from bayesflex.errors import ConfigError, SolverError
from bayesflex.grid.feeder import Feeder
from bayesflex.io.feeders import load_feeder
from bayesflex.priors import load_priors
from bayesflex.study.engine import run_study
from bayesflex.study.positions import Positions, positions_from_schedule, uncontrolled_kw

__all__ = ["Aggregator", "Coordination", "Round", "confirmation_seed", "coordinate", "draws_to_confirm", "power_range",
           "tolerated_draws"]

_CUT_KW = 1e-3  # cuts below this are not limits
_KEPT_KW = 1e-3  # a half-hour's portfolio power within this of its commitment keeps it
_MARGIN = 1.05  # cut 5 % more than the linearised heuristic asks: its first-order cuts fall a little short
_Z2 = 3.8414588206941254  # (97.5 % normal quantile)^2, of the 95 % Wilson interval
_CONFIRM_STREAM = 2**32 - 1  # spawn key of the confirmation seed; the engine's chunks take the first keys


@dataclass(frozen=True)
class Aggregator:
    """An aggregator and the devices it has under contract (one per agent)."""

    name: str
    devices: tuple


@dataclass(frozen=True)
class Round:
    """One study of the DSO's check: a round's schedules on the tuning draws, or
    (:attr:`Coordination.confirmation`) the final schedules on fresh draws."""

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
    draws: int  # draws of the study behind the probabilities
    seed: int  # its seed
    trafo_loading_q_pu: np.ndarray | None = None  # (3, time, trafo): 5, 50 and 95 % quantiles over the draws
    short_kwh: dict = field(default_factory=dict)  # aggregator -> energy below its commitment
    long_kwh: dict = field(default_factory=dict)  # aggregator -> energy above it

    def interval(self) -> tuple[np.ndarray, np.ndarray]:
        """95 % Wilson interval of :attr:`p_congested`, (time,) each."""
        return wilson_interval(self.p_congested, self.draws)

    def worst(self) -> str:
        """The highest P(congestion) over the horizon as the package prints a probability."""
        k = int(np.argmax(self.p_congested))
        lo, hi = self.interval()
        return format_probability(float(self.p_congested[k]), float(lo[k]), float(hi[k]))

    def over_risk(self, risk: float) -> np.ndarray:
        """Half-hours with more congested draws than :func:`tolerated_draws` allows."""
        return np.flatnonzero(np.rint(self.p_congested * self.draws) > tolerated_draws(self.draws, risk))


@dataclass
class Coordination:
    """Result of :func:`coordinate`: ``secure`` (confirmed on fresh draws) and why the
    loop stopped, each round's figures and the confirmation's (:meth:`table`), the
    first (stage 1) and final schedules per aggregator, the limits the DSO set, the
    last round's study (``tree``) and the confirmation study (``confirm_tree``)."""

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
    secure_in_sample: bool = False  # every half-hour within the risk on the tuning draws
    confirmation: Round | None = None  # the final schedules on fresh draws
    confirm_tree: object = field(default=None, repr=False)
    commitment_kw: dict[str, np.ndarray] = field(default_factory=dict)  # aggregator -> its market position
    times: pd.DatetimeIndex | None = None  # the half-hours of the schedules
    dt_h: float = 0.5
    #: aggregator -> {(transformer, phases): (device indices, limit_kw (time,), floor_kw (time,))}: the DSO's
    #: limits on the summed power of its devices under a transformer phase (inf/-inf: none)
    group_limits: dict = field(default_factory=dict)

    def commitments(self) -> pd.DataFrame:
        """Per aggregator, how its final schedule follows its market commitment: the half-hours
        on it (within 1 W), the energy below it (``short_kwh``) -- split into what falls in
        half-hours where the DSO limited its devices (``short_limited_kwh``: what the limits
        take away there) and elsewhere -- the energy above it (``long_kwh``: what its devices
        still need, bought in other half-hours) and the imbalance cost of both."""
        rows = []
        for name, s in self.final.items():
            dev = s.portfolio_kw - self.commitment_kw[name]
            on = np.isfinite(self.commitment_kw[name])
            limited = (np.isfinite(self.cap_kw[name]) | np.isfinite(self.floor_kw[name])).any(axis=0)
            for _idx, lim, flo in self.group_limits.get(name, {}).values():
                limited |= np.isfinite(lim) | np.isfinite(flo)
            short = np.where(on, np.maximum(-dev, 0.0), 0.0) * self.dt_h
            rows.append({"aggregator": name, "half_hours": int(on.sum()),
                         "half_hours_kept": int((on & (np.abs(np.nan_to_num(dev)) < _KEPT_KW)).sum()),
                         "half_hours_limited": int(limited.sum()),
                         "short_kwh": float(short.sum()), "short_limited_kwh": float(short[limited].sum()),
                         "long_kwh": float((np.where(on, np.maximum(dev, 0.0), 0.0) * self.dt_h).sum()),
                         "imbalance_cost": float(s.imbalance_cost)})
        return pd.DataFrame(rows)

    def table(self) -> pd.DataFrame:
        """One row per study: each round on the tuning draws (``sample`` "tuning"), then the
        final schedules on fresh draws ("fresh", the last round's index).  The highest
        P(congestion) over the horizon with its MC error and 95 % Wilson interval and the
        draws behind it, the half-hours over the risk (:meth:`Round.over_risk`), each
        transformer's peak loading, and the cost and shortfall."""
        rows = []
        tagged = [("tuning", r) for r in self.rounds] + [("fresh", self.confirmation)] * (self.confirmation is not None)
        for sample, r in tagged:
            k = int(np.argmax(r.p_congested))
            lo, hi = r.interval()
            row = {"round": r.index, "sample": sample, "draws": r.draws, "p_congested_max": float(r.p_congested[k]),
                   "p_congested_max_mcse": float(r.p_congested_mcse[k]),
                   "p_congested_max_lo": float(lo[k]), "p_congested_max_hi": float(hi[k]),
                   "half_hours_over_risk": len(r.over_risk(self.risk)),
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


def tolerated_draws(n: int, risk: float) -> int:
    """The most congested draws out of ``n`` whose 95 % Wilson upper bound of
    P(congestion) is still below ``risk``; 0 where even none is not (``n`` below
    about ``3.84 (1 - risk) / risk``): the loop then asks for none."""
    k = np.arange(n + 1)
    return max(int((wilson_interval(k / n, n)[1] < risk).sum()) - 1, 0)


def draws_to_confirm(p: float, risk: float) -> float:
    """Draws that would put the 95 % Wilson upper bound of a probability estimated
    at ``p`` just below ``risk``: ``n > z^2 risk (1 - risk) / (risk - p)^2``, from
    the interval's definition (``(p - u)^2 = z^2 u (1 - u) / n`` at ``u = risk``);
    e.g. about 73 for ``p = 0``, ``risk = 0.05``.  ``inf`` when ``p >= risk``."""
    if p >= risk:
        return np.inf
    return float(np.floor(_Z2 * risk * (1 - risk) / (risk - p) ** 2) + 1)


def confirmation_seed(seed: int) -> int:
    """The seed of the confirmation study: a child of ``SeedSequence(seed)`` (63 bits, so
    that NetCDF can store it), reproducible from ``seed`` and unrelated to its draws."""
    child = np.random.SeedSequence(seed, spawn_key=(_CONFIRM_STREAM,))
    return int(child.generate_state(1, np.uint64)[0] >> np.uint64(1))


def _check(feeder: Feeder, aggregators) -> None:
    if not aggregators:
        raise ConfigError("coordinate needs at least one aggregator")
    seen: dict[str, str] = {}
    for agg in aggregators:
        if not isinstance(agg, Aggregator) or not agg.devices:
            raise ConfigError(f"{agg!r}: give Aggregator(name, devices) with at least one device")
        check_on_feeder([d.agent for d in agg.devices], feeder.agents, f"aggregator {agg.name!r} agent",
                        feeder=feeder.name)
        for d in agg.devices:
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
               progress=None, confirm_draws: int | None = None, commitment_kw: dict | None = None,
               on_round=None) -> Coordination:
    """Run the two-stage coordination (module docstring) over the horizon of ``price_per_kwh``
    (one price per half-hour, currency per kWh, from ``start`` or the priors' start).

    ``risk``: the probability of a broken limit the DSO accepts per half-hour.
    ``draws``, ``seed``: of each round's study, the tuning draws (the same
    seed every round, so that rounds differ only by the schedules; a
    half-hour needs limits while the 95 % upper bound of its P(congestion)
    is not below ``risk``, :func:`tolerated_draws`).  ``method``: the
    aggregators' optimisation, "central" or "distributed".

    ``confirm_draws``: draws of the confirmation study on fresh draws (seed
    :func:`confirmation_seed` of ``seed``).  Default ``ceil(50 / risk)``, 1,000
    at a risk of 5 %: 50 congested draws expected at the risk itself, so that
    an estimate up to about 70 % of the risk is confirmed (3.6 % at 5 %; on
    200 draws only up to 1.5 %), at the cost of at most five rounds of 200
    draws.  Fewer draws confirm only schedules well within the risk, and
    none below ``3.84 (1 - risk) / risk`` (73 at 5 %); the outcome then says
    how many would do.

    ``commitment_kw``: aggregator name -> its market position, kW per
    half-hour (NaN: none there); stage 1 then schedules its devices to
    follow it (paying ``imbalance_price_per_kwh`` off it).  An aggregator not
    named commits to its stage-1 schedule.  In every re-plan the aggregator
    keeps its commitment wherever its devices can -- moving energy between
    them and between half-hours, in any transformer's area -- and pays
    imbalance for the rest (:meth:`Coordination.commitments` says where).
    ``on_round``: called with each :class:`Round` as its study finishes
    (the confirmation last).
    """
    fd = feeder if isinstance(feeder, Feeder) else load_feeder(feeder)
    aggs = tuple(aggregators)
    _check(fd, aggs)
    given = _commitments(commitment_kw, aggs, len(price_per_kwh))
    if not 0 < risk < 1:
        raise ConfigError(f"risk {risk!r} must lie strictly between 0 and 1")
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 0:
        raise ConfigError(f"max_rounds {max_rounds!r} must be a whole number >= 0")
    confirm_draws = int(np.ceil(50 / risk)) if confirm_draws is None else confirm_draws
    if isinstance(confirm_draws, bool) or not isinstance(confirm_draws, (int, np.integer)) or confirm_draws < 1:
        raise ConfigError(f"confirm_draws {confirm_draws!r} must be a whole number >= 1 (or None: ceil(50 / risk))")
    pr = load_priors(priors) if isinstance(priors, str) else priors
    price = np.asarray(price_per_kwh, float)
    t0 = pd.Timestamp(start) if start is not None else getattr(pr, "priors", pr).start
    times = pd.date_range(t0, periods=len(price), freq="30min")
    n = len(price)

    def study(pos, n_draws_, seed_):
        tree = run_study(fd, pr, draws=n_draws_, seed=seed_, positions=pos, headroom=False, jobs=jobs,
                         progress=progress)
        limits = int(sum(np.isfinite(cap[k]).sum() + np.isfinite(floor[k]).sum() for k in cap)) + sum(
            int(np.isfinite(lim).sum() + np.isfinite(flo).sum()) for g in grouped.values() for _i, lim, flo in g.values())
        return tree, _round(len(rounds), tree, sched, dt_h, limits, n_draws(tree), seed_)

    sched = {a.name: schedule(a.devices, price, dt_h=dt_h, method=method, commitment_kw=given.get(a.name),
                              imbalance_price_per_kwh=imbalance_price_per_kwh) for a in aggs}  # stage 1
    first = dict(sched)
    commit = {a.name: given.get(a.name, sched[a.name].portfolio_kw) for a in aggs}
    cap = {a.name: np.full((len(a.devices), n), np.inf) for a in aggs}
    floor = {a.name: np.full((len(a.devices), n), -np.inf) for a in aggs}
    where = {d.agent: (a.name, i) for a in aggs for i, d in enumerate(a.devices)}
    zones = _zones(fd, [d.agent for a in aggs for d in a.devices])  # in the positions' agent order
    keys = [(int(z), _phases(fd, d.agent)) for z, d in zip(zones, (d for a in aggs for d in a.devices))]
    grouped = _transformer_groups(aggs, keys, n)
    rounds: list[Round] = []
    uncontrolled = 0.0
    for r in range(max_rounds + 1):
        pos = _positions(aggs, sched, times, price, cap, floor)
        tree, this = study(pos, draws, seed)
        rounds.append(this)
        if on_round is not None:
            on_round(this)
        if r == 0:
            pred = predictive(tree)
            own = uncontrolled_kw(pred).sel(agent=list(pos.agents))
            uncontrolled = float(dt_h * (price * own.sum(("agent", "phase")).mean(("chain", "draw")).values).sum())
        bad = this.over_risk(risk)
        if not len(bad):
            outcome = (f"within the accepted risk {risk:g} in every half-hour on the {this.draws} tuning draws "
                       f"(at most {tolerated_draws(this.draws, risk)} congested)")
            break
        if r == max_rounds:
            outcome = f"not secure after {max_rounds} rounds: {len(bad)} half-hour(s) above the accepted risk"
            break
        trafo_only = _transformer_only(tree)
        changed = _limit(tree["heuristic"], [t for t in bad if not trafo_only[t]], risk, pos, sched, cap, floor,
                         where, zones)
        changed |= _limit_groups(tree["heuristic"], [t for t in bad if trafo_only[t]], risk, pos, sched, grouped,
                                 where, keys)
        if not changed:
            outcome = ("not secure: the congestion left is not the portfolio's to resolve (the heuristic asks "
                       f"nothing more of the contracted agents) in {len(bad)} half-hour(s)")
            break
        try:
            sched = {a.name: schedule(a.devices, price, dt_h=dt_h, method=method, cap_kw=cap[a.name],
                                      floor_kw=floor[a.name], commitment_kw=commit[a.name],
                                      imbalance_price_per_kwh=imbalance_price_per_kwh,
                                      groups=_in_force(grouped[a.name])) for a in aggs}
        except SolverError as err:
            outcome = f"not secure: no feasible schedule within the DSO's limits ({err})"
            break
    in_sample = not len(bad)
    confirm_tree, fresh = study(pos, confirm_draws, confirmation_seed(seed))
    fresh = dataclasses.replace(fresh, index=rounds[-1].index, limits=rounds[-1].limits)  # the last round's schedules
    if on_round is not None:
        on_round(fresh)
    secure, outcome = _verdict(outcome, in_sample, rounds[-1], fresh, risk)
    return Coordination(secure=secure, outcome=outcome, risk=risk, rounds=rounds,
                        first=first, final=sched, cap_kw=cap, floor_kw=floor, positions=pos, tree=tree,
                        trafos=tuple(str(t) for t in tree["network"].trafo.values), uncontrolled_cost=uncontrolled,
                        secure_in_sample=in_sample, confirmation=fresh, confirm_tree=confirm_tree,
                        commitment_kw=commit, times=times, dt_h=dt_h,
                        group_limits={k: {(_trafo_name(fd, z), ph): v for (z, ph), v in g.items() if _any(v)}
                                      for k, g in grouped.items()})


def _trafo_name(feeder: Feeder, zone: int) -> str:
    """The name of the transformer of ``zone`` (an index into ``feeder.trafos``; -1: none)."""
    return feeder.trafos[zone].name if zone >= 0 else "none"


def _any(group) -> bool:
    return bool(np.isfinite(group[1]).any() or np.isfinite(group[2]).any())


def _in_force(groups: dict) -> list:
    """The group limits of one aggregator that bind anywhere, as ``schedule(groups=...)`` takes them."""
    return [g for g in groups.values() if _any(g)]


def _phases(feeder: Feeder, agent: str) -> str:
    return "".join("abc"[k] for k in np.flatnonzero(feeder.agent_phases[feeder.agents.index(agent)]))


def _transformer_groups(aggs, keys: list, n: int) -> dict:
    """Per aggregator, its devices under each transformer and phase(s) (``keys``: (zone, phases) per
    device, the aggregators' devices in order): {(zone, phases): (device indices, limit (n,) inf,
    floor (n,) -inf)}."""
    out, j = {}, 0
    for a in aggs:
        found: dict = {}
        for i in range(len(a.devices)):
            found.setdefault(keys[j], []).append(i)
            j += 1
        out[a.name] = {k: (np.array(v), np.full(n, np.inf), np.full(n, -np.inf)) for k, v in found.items()}
    return out


def _transformer_only(tree) -> np.ndarray:
    """(time,): every congested tuning draw of the half-hour breaks a transformer's rating and nothing
    else (every bus voltage and line current within limits, a load-flow solution found)."""
    net, a = tree["network"], tree.attrs
    cong = tree["heuristic"]["congested"].values[0].any(axis=-1)  # (draw, time)
    other = ((net["v_min_pu"].values[0] < a["v_min_pu"]).any(axis=-1)
             | (net["v_max_pu"].values[0] > a["v_max_pu"]).any(axis=-1)
             | (net["loading_max_pu"].values[0] > a["loading_max_pu"]) | ~tree["sample_stats"]["converged"].values[0])
    return ~(cong & other).any(axis=0) & cong.any(axis=0)


def _commitments(given, aggs, n: int) -> dict[str, np.ndarray]:
    """The explicit commitments, checked: aggregators by name, one value per half-hour."""
    if given is None:
        return {}
    names = [a.name for a in aggs]
    out = {}
    for name, v in dict(given).items():
        if name not in names:
            raise ConfigError(f"commitment_kw: no aggregator named {name!r} (aggregators: {', '.join(names)})")
        a = np.asarray(v, float)
        if a.shape != (n,):
            raise ConfigError(f"commitment_kw[{name!r}]: needs one value per half-hour ({n}), got shape {a.shape}")
        out[name] = a
    return out


def _round(index: int, tree, sched: dict, dt_h: float, limits: int, draws: int, seed: int) -> Round:
    """A study's figures on the schedules ``sched``."""
    s, net = tree["summary"], tree["network"]
    loading = net["trafo_loading_pu"].values[0]  # (draw, time, trafo)
    peak = loading.max(axis=1)  # (draw, trafo): the horizon's highest loading
    return Round(index, s["p_congested_any"].values, s["p_congested_any_mcse"].values, net["p_trafo_overload"].values,
                 peak.mean(axis=0), np.quantile(peak, 0.95, axis=0), {k: v.cost for k, v in sched.items()},
                 {k: v.imbalance_cost for k, v in sched.items()},
                 {k: float(np.abs(v.shortfall_kw).sum() * dt_h) for k, v in sched.items()}, limits, draws, seed,
                 np.quantile(loading, [0.05, 0.5, 0.95], axis=0),
                 {k: float(np.maximum(-v.shortfall_kw, 0).sum() * dt_h) for k, v in sched.items()},
                 {k: float(np.maximum(v.shortfall_kw, 0).sum() * dt_h) for k, v in sched.items()})


def _verdict(outcome: str, in_sample: bool, tuned: Round, fresh: Round, risk: float) -> tuple[bool, str]:
    """``secure`` and the outcome: the in-sample verdict confirmed, or not, by the 95 % upper
    bound of the worst half-hour's P(congestion) on the fresh draws."""
    k = int(np.argmax(fresh.p_congested))
    p, hi = float(fresh.p_congested[k]), float(fresh.interval()[1][k])
    seen = (f"worst half-hour's P(congestion) on {fresh.draws} fresh draws (seed {fresh.seed}) {fresh.worst()}, "
            f"on the {tuned.draws} tuning draws {tuned.worst()}")
    if not in_sample:
        return False, f"{outcome}; {seen}"
    if hi < risk:
        return True, f"secure: {seen}; its 95 % upper bound is below the accepted risk {risk:g}"
    if p >= risk:
        return False, (f"not secure out of sample: {outcome}, but the {seen}; at or above the accepted risk "
                       f"{risk:g}")
    return False, (f"not confirmed: {outcome}, but the {seen}; its 95 % upper bound is not below the accepted "
                   f"risk {risk:g}: about {draws_to_confirm(p, risk):.0f} fresh draws would bound it (confirm_draws), "
                   "if P(congestion) stays as estimated")


def _zones(feeder: Feeder, agents) -> np.ndarray:
    """Per agent of ``agents``, the transformer whose LV network feeds it (index into
    ``feeder.trafos``; -1 where none does): the parts of the network its lines connect, the
    transformers taken out."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nb = len(feeder.buses)
    lines = coo_matrix((np.ones(len(feeder.line_from)), (feeder.line_from, feeder.line_to)), shape=(nb, nb))
    part = connected_components(lines, directed=False)[1]
    zone = {part[t.lv_bus]: k for k, t in enumerate(feeder.trafos)}
    index = {a: i for i, a in enumerate(feeder.agents)}
    return np.array([zone.get(part[feeder.agent_bus[index[a]]], -1) for a in agents], dtype=np.int64)


def _zone_totals(rows: np.ndarray, zones: np.ndarray, allowed: int) -> dict[int, float]:
    """Per zone asked anything, the total move the portfolio makes there: over the congested draws
    ``rows`` (draw, agent) of one half-hour, the order statistic of the zone's own sum that leaves
    uncured no more than its part of the ``allowed - 1`` draws the half-hour may keep (shared
    equally among the zones asked), plus 5 %.

    Sized zone by zone: one total over the whole feeder, shared by the agents' mean moves, would
    cut a zone congested in every draw by the mean of one congested only in some of them (too
    much where the zone's own need is lower, too little where it is higher)."""
    asked = [z for z in np.unique(zones) if rows[:, zones == z].sum() > 0]
    spare = (max(allowed, 1) - 1) // max(len(asked), 1)
    out = {}
    for z in asked:
        need = np.sort(rows[:, zones == z].sum(axis=1))
        out[int(z)] = _MARGIN * need[len(need) - 1 - spare]
    return out


def _limit(h, bad, risk, pos: Positions, sched, cap, floor, where, zones: np.ndarray) -> bool:
    """Tighten the device limits at the half-hours ``bad`` from the heuristic's adjustments.

    At half-hour t the portfolio cuts, in each transformer's zone (``zones``, per agent of
    ``pos``) and over the congested draws, the total turn-down (turn-up) the heuristic asked of
    the contracted agents there at the order statistic that leaves uncured one draw fewer than
    :func:`tolerated_draws` allows at ``risk`` (none if it allows none; shared among the zones),
    plus 5 % -- margins: the first-order cuts fall a little short, and the loop would creep up to
    the count over many rounds (:func:`_zone_totals`) -- shared among the zone's agents in
    proportion to what each was asked on average (the heuristic's most effective agents carry
    most of it), never past an agent's own range."""
    agents = list(pos.agents)
    cong = h["congested"].values[0].any(axis=-1)  # (draw, time)
    allowed = tolerated_draws(len(cong), risk)  # congested draws whose upper bound stays below the risk
    changed = False
    for side, sign in (("down", -1.0), ("up", 1.0)):
        adj = h[f"adjust_{side}_kw"].sel(agent=agents).sum("phase").values[0]  # (draw, time, agent)
        for t in bad:
            rows = adj[cong[:, t], t]  # (congested draws, agent)
            if len(rows) <= allowed:
                continue
            room = (pos.p_kw[t] - pos.p_lb_kw[t]) if sign < 0 else (pos.p_ub_kw[t] - pos.p_kw[t])
            cut = np.zeros(len(agents))
            for z, total in _zone_totals(rows, zones, allowed).items():
                share = np.where(zones == z, rows.mean(axis=0), 0.0)
                if total > _CUT_KW and share.sum() > 0:
                    cut += total * share / share.sum()
            cut = np.minimum(cut, room)  # never past the agent's own range
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


def _limit_groups(h, bad, risk, pos: Positions, sched, grouped, where, keys: list) -> bool:
    """Tighten the group limits at the half-hours ``bad``, where only transformers are overloaded.

    A transformer's loading is the sum of what is under it: the DSO limits what each aggregator's
    devices under a transformer phase draw together, and leaves the aggregator to choose which of
    them moves -- a heat pump, a battery (which may then discharge), a device it had idle.  The
    cut per transformer is sized as :func:`_limit` sizes a zone's (:func:`_zone_totals`: the same
    totals), shared among the aggregators' groups -- their devices on each phase -- by what the
    heuristic asked of their agents there, never past those agents' range towards idle; an
    aggregator's group may then draw at most its scheduled power less its share (at least plus a
    turn-up share)."""
    agents = list(pos.agents)
    cong = h["congested"].values[0].any(axis=-1)
    allowed = tolerated_draws(len(cong), risk)
    zones = np.array([z for z, _ph in keys])
    group = np.array([f"{where[a][0]}|{ph}" for a, (_z, ph) in zip(agents, keys)])  # aggregator and phases
    changed = False
    for side, sign in (("down", -1.0), ("up", 1.0)):
        adj = h[f"adjust_{side}_kw"].sel(agent=agents).sum("phase").values[0]
        for t in bad:
            rows = adj[cong[:, t], t]
            if len(rows) <= allowed:
                continue
            room = (pos.p_kw[t] - pos.p_lb_kw[t]) if sign < 0 else (pos.p_ub_kw[t] - pos.p_kw[t])
            mean = rows.mean(axis=0)
            for z, total in _zone_totals(rows, zones, allowed).items():
                members = zones == z
                for label in np.unique(group[members]):
                    mine = members & (group == label)
                    cut = min(total * mean[mine].sum() / mean[members].sum(), room[mine].sum())
                    if cut <= _CUT_KW:
                        continue
                    j = int(np.flatnonzero(mine)[0])
                    idx, lim, flo = grouped[where[agents[j]][0]][keys[j]]
                    kw = sched[where[agents[j]][0]].p_kw[idx, t].sum() + sign * cut
                    if sign < 0 and kw < lim[t] - _CUT_KW:
                        lim[t] = kw
                        flo[t] = min(flo[t], kw)
                        changed = True
                    elif sign > 0 and kw > flo[t] + _CUT_KW:
                        flo[t] = kw
                        lim[t] = max(lim[t], kw)
                        changed = True
    return changed

