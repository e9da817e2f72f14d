"""A study's headline as data: built once from the result, rendered by the command line and the report.

:func:`summarise` reads a study's tree and returns a :class:`Summary`, a frozen
record of what a person reads first: the probability of congestion per phase and
on any phase with their intervals, the share the agents' flexibility cannot
resolve, the model uncertainty beside the Monte Carlo error, the worst half-hours,
buses, lines and transformer, the agents most often adjusted, the causes, the
portfolio and its flexibility at risk, and the checks the numbers rest on.
``bayesflex run`` prints it (:func:`bayesflex.cli.main.print_summary`) and
``report.html`` shows it (:func:`bayesflex.analysis.report.build_report`): every
number is computed here, once, and the two only lay it out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from bayesflex.analysis.query import (
    above_service,
    cause_text,
    causes,
    congestion_probability,
    flexibility_summary,
    n_draws,
    portfolio_position,
    top_agents,
)
from bayesflex.core.intervals import format_kw, format_probability
from bayesflex.core.timefmt import fmt_time, site_zone, zone_note
from bayesflex.study.results import study_effective_draws

__all__ = ["AgentRisk", "Cause", "Checks", "Estimate", "Flexibility", "Kw", "ModelUncertainty", "ParameterEffect",
           "Portfolio", "Risk", "Study", "Summary", "summarise", "worst_per"]

#: the words for a spread of P(congested | parameters) that stays at zero
NO_SPREAD = "no parameter value brings the worst margin past a limit"
#: rows kept of each table; the command line shows fewer (``print_summary``)
TOP_HALF_HOURS, TOP_ELEMENTS, TOP_AGENTS, TOP_CAUSES = 5, 5, 10, 5


@dataclass(frozen=True)
class Estimate:
    """A probability estimated from ``draws`` draws, with its 95 % Wilson interval ``[lo, hi]``."""

    p: float
    lo: float
    hi: float
    draws: int

    @property
    def text(self) -> str:
        """``"2.8 % [2.0, 3.9]"``; none of the draws: ``"0 of 1000 draws (< 0.38 %, 95 %)"``."""
        return format_probability(self.p, self.lo, self.hi, self.draws)


@dataclass(frozen=True)
class Kw:
    """A quantity in kW with its 95 % interval (an end the draws cannot bound is infinite)."""

    kw: float
    lo: float
    hi: float

    @property
    def text(self) -> str:
        return format_kw(self.kw, self.lo, self.hi)


@dataclass(frozen=True)
class Study:
    """What was run: the names, sizes, limits and time zone the headline rests on."""

    bayesflex_version: str
    feeder: str
    priors: str
    conditioned: bool
    draws: int
    effective_draws: float
    seed: int
    start: pd.Timestamp  # naive UTC, as stored
    half_hours: int
    zone: str
    zone_note: str
    v_min_pu: float
    v_max_pu: float
    loading_max_pu: float
    source_vm_pu: float | None
    source_vn_kv: float | None
    headroom_definition: str | None

    @property
    def kind(self) -> str:
        return "posterior" if self.conditioned else "prior"

    def when(self, t, fmt: str = "%a %H:%M") -> str:
        """A stored (UTC) time in the site's local time: ``"Wed 18:00 GMT"``."""
        return fmt_time(t, self.zone, fmt)


@dataclass(frozen=True)
class Risk:
    """The probability of congestion at a half-hour ``time``; for a bus or a line, ``element``
    (and ``phase``) at its worst half-hour."""

    time: pd.Timestamp
    probability: Estimate
    element: str = ""
    phase: str = ""


@dataclass(frozen=True)
class ParameterEffect:
    """One of the priors' parameters: its 10 % and 90 % quantiles over the draws, P(congested
    on any phase in the horizon) with it at each (first order), and the worst margin's move (pu)."""

    name: str
    theta_low: float
    theta_high: float
    p_low: float
    p_high: float
    margin_effect_pu: float


@dataclass(frozen=True)
class ModelUncertainty:
    """The headline's spread over the priors' parameter uncertainty (:mod:`bayesflex.study.uncertainty`):
    the 10, 50 and 90 % quantiles of P(congested | parameters) with 95 % bootstrap intervals, the
    share of the worst margin's variance the parameters explain, and the parameters, most
    influential first."""

    spread: tuple[float, ...]
    spread_lo: tuple[float, ...]
    spread_hi: tuple[float, ...]
    r2: float
    parameters: tuple[ParameterEffect, ...]

    @property
    def zero(self) -> bool:
        """No parameter value brings the probability above zero (:data:`NO_SPREAD`)."""
        return not self.spread[-1] > 0


@dataclass(frozen=True)
class AgentRisk:
    """An agent the heuristic moves: P(adjusted at least once in the horizon), its mean turn-down
    and turn-up (kW) in the half-hours it is adjusted, and P(ranked first), per half-hour."""

    agent: str
    adjusted: Estimate
    down_kw_when_adjusted: float
    up_kw_when_adjusted: float
    p_ranked_first: float


@dataclass(frozen=True)
class Cause:
    """What causes the congestion of one half-hour and phase (:func:`bayesflex.analysis.query.causes`):
    the probability of congestion there, the congested draws attributed, the kinds of worst
    violation, the technologies' shares in words and the agents causing most."""

    time: pd.Timestamp
    phase: str
    probability: Estimate
    draws: int
    violation: str
    text: str
    agents: str


@dataclass(frozen=True)
class Portfolio:
    """The planned positions: agents, lowest and highest P_T over the horizon, widest bounds (kW)."""

    agents: int
    p_min_kw: float
    p_max_kw: float
    lb_min_kw: float
    ub_max_kw: float


@dataclass(frozen=True)
class Flexibility:
    """Portfolio turn-up and turn-down sellable at ``confidence``: in every half-hour at once
    (joint, with its interval), and each half-hour on its own (lowest and median)."""

    confidence: float
    up_joint: Kw
    down_joint: Kw
    up_lowest_half_hour_kw: float
    up_median_half_hour_kw: float
    down_lowest_half_hour_kw: float
    down_median_half_hour_kw: float


@dataclass(frozen=True)
class Checks:
    """What the numbers rest on: ``cases`` (draws x half-hours), agent-half-hours drawn above the
    service capacity (None: not recorded), load flows without a solution, congested cases and
    those the agents cannot resolve, and the widest interval of a bus, line or transformer
    probability."""

    cases: int
    above_service: int | None
    no_solution: int
    congested_cases: int
    unresolved_cases: int
    widest_interval: float


@dataclass(frozen=True)
class Summary:
    """A study's headline (:func:`summarise`).  ``congested``: per phase; ``congested_any``,
    ``unresolved``, ``model_uncertainty``, ``trafo``, ``causes``, ``portfolio`` and
    ``flexibility`` are None for a study that does not hold them.  ``more_buses`` and
    ``more_lines``: how many more tie with the last one shown."""

    study: Study
    congested: dict[str, Estimate]
    congested_any: Estimate | None
    unresolved: Estimate | None
    model_uncertainty: ModelUncertainty | None
    checks: Checks
    worst_half_hours: tuple[Risk, ...]
    buses: tuple[Risk, ...]
    more_buses: int
    lines: tuple[Risk, ...]
    more_lines: int
    trafo: Estimate | None
    agents: tuple[AgentRisk, ...]
    causes: tuple[Cause, ...] | None
    portfolio: Portfolio | None
    flexibility: tuple[Flexibility, ...] | None


def summarise(tree: xr.DataTree) -> Summary:
    """The headline of a study (its tree from :func:`bayesflex.run_study` or
    :func:`bayesflex.study.results.open_study`), every number computed once."""
    s = tree["summary"]
    n = n_draws(tree)
    buses, more_buses = worst_per(congestion_probability(tree, "bus"), ["bus", "phase"], tree["network"].bus.values)
    lines, more_lines = worst_per(congestion_probability(tree, "line"), ["line"], tree["network"].line.values)
    trafo = congestion_probability(tree, "trafo", top=1)
    return Summary(
        study=_study(tree),
        congested={str(ph): _estimate(s, "p_congested_horizon", n, phase=ph) for ph in s.phase.values},
        congested_any=_estimate(s, "p_congested_any_horizon", n) if "p_congested_any_horizon" in s else None,
        unresolved=_estimate(s, "p_unresolved_horizon", n) if "p_unresolved_horizon" in s else None,
        model_uncertainty=_model_uncertainty(s),
        checks=_checks(tree),
        worst_half_hours=tuple(Risk(r.time, _row(r, n)) for _, r in _positive(
            congestion_probability(tree, "time", top=TOP_HALF_HOURS)).iterrows()),
        buses=tuple(Risk(r.time, _row(r, n), str(r.bus), str(r.phase)) for _, r in buses.iterrows()),
        more_buses=more_buses,
        lines=tuple(Risk(r.time, _row(r, n), str(r.line)) for _, r in lines.iterrows()),
        more_lines=more_lines,
        trafo=_row(trafo.iloc[0], n) if len(trafo) else None,
        agents=_agents(tree, n),
        causes=_causes(tree, n),
        portfolio=_portfolio(tree),
        flexibility=_flexibility(tree) if "flex_up_kw" in s else None,
    )


def _study(tree: xr.DataTree) -> Study:
    a = tree.attrs
    times = tree["summary"].time.values
    source = "source_vm_pu" in a
    return Study(
        bayesflex_version=str(a["bayesflex_version"]), feeder=str(a["feeder"]), priors=str(a["priors"]),
        conditioned=bool(a.get("conditioned")), draws=n_draws(tree), effective_draws=study_effective_draws(tree),
        seed=int(a["seed"]), start=pd.Timestamp(times[0]), half_hours=len(times), zone=site_zone(tree),
        zone_note=zone_note(tree), v_min_pu=float(a["v_min_pu"]), v_max_pu=float(a["v_max_pu"]),
        loading_max_pu=float(a["loading_max_pu"]),
        source_vm_pu=float(a["source_vm_pu"]) if source else None,
        source_vn_kv=float(a["source_vn_kv"]) if source else None,
        headroom_definition=str(a["headroom_definition"]) if a.get("headroom_definition") else None)


def _estimate(s: xr.Dataset, name: str, n: int, **sel) -> Estimate:
    return Estimate(float(s[name].sel(sel)), float(s[f"{name}_lo"].sel(sel)), float(s[f"{name}_hi"].sel(sel)), n)


def _row(r, n: int, column: str = "probability") -> Estimate:
    """The probability in a row of :mod:`~bayesflex.analysis.query`'s tables (``column``, with
    ``lo``/``hi`` or ``column_lo``/``column_hi``)."""
    lo, hi = ("lo", "hi") if column == "probability" else (f"{column}_lo", f"{column}_hi")
    return Estimate(float(r[column]), float(r[lo]), float(r[hi]), n)


def _positive(df: pd.DataFrame, column: str = "probability") -> pd.DataFrame:
    return df[df[column] > 0]


def worst_per(df: pd.DataFrame, keys: list[str], order, k: int = TOP_ELEMENTS) -> tuple[pd.DataFrame, int]:
    """Each element's worst half-hour (rows of :func:`~bayesflex.analysis.query.congestion_probability`
    grouped by ``keys``), the ``k`` most likely first (ties in ``order``, the feeder's: nearest the
    source first), and how many more tie with the last shown."""
    worst = _positive(df.loc[df.groupby(keys).probability.idxmax()])
    pos = {str(v): i for i, v in enumerate(order)}
    worst = worst.assign(_pos=worst[keys[0]].astype(str).map(pos)).sort_values(
        ["probability", "_pos"], ascending=[False, True], kind="stable")
    shown = worst.head(k)
    more = int((worst.probability.iloc[k:] == shown.probability.iloc[-1]).sum()) if len(worst) > k else 0
    return shown, more


def _model_uncertainty(s: xr.Dataset) -> ModelUncertainty | None:
    if "p_congested_any_horizon_given_theta" not in s:
        return None
    v = s["p_congested_any_horizon_given_theta"]
    params = tuple(ParameterEffect(str(p.parameter.item()), float(p.screen_theta_low), float(p.screen_theta_high),
                                   float(p.screen_p_low), float(p.screen_p_high), float(p.screen_margin_effect_pu))
                   for p in (s.isel(parameter=i) for i in range(s.sizes["parameter"])))
    return ModelUncertainty(spread=tuple(map(float, v.values)),
                            spread_lo=tuple(map(float, s["p_congested_any_horizon_given_theta_lo"].values)),
                            spread_hi=tuple(map(float, s["p_congested_any_horizon_given_theta_hi"].values)),
                            r2=float(v.attrs.get("r2", np.nan)), parameters=params)


def _checks(tree: xr.DataTree) -> Checks:
    h, net = tree["heuristic"], tree["network"]
    converged = tree["sample_stats"]["converged"].values
    congested = h["congested"].values.any(axis=-1)  # (chain, draw, time): on any phase
    widest = [float((net[f"{k}_hi"] - net[f"{k}_lo"]).max()) if net[k].size and f"{k}_hi" in net else 0.0
              for k in ("p_undervoltage", "p_overvoltage", "p_overload", "p_trafo_overload")]
    return Checks(cases=n_draws(tree) * tree["summary"].sizes["time"], above_service=above_service(tree),
                  no_solution=int((~converged).sum()), congested_cases=int(congested.sum()),
                  unresolved_cases=int((congested & ~h["resolved"].values).sum()), widest_interval=max(widest))


def _agents(tree: xr.DataTree, n: int) -> tuple[AgentRisk, ...]:
    df = _positive(top_agents(tree, TOP_AGENTS), "p_adjusted_in_horizon")
    return tuple(AgentRisk(str(r.agent), _row(r, n, "p_adjusted_in_horizon"), float(r.down_kw_when_adjusted),
                           float(r.up_kw_when_adjusted), float(r.p_ranked_first)) for _, r in df.iterrows())


def _causes(tree: xr.DataTree, n: int) -> tuple[Cause, ...] | None:
    if "cause_share" not in tree["heuristic"]:
        return None  # a study from before causes were recorded
    return tuple(Cause(r.time, str(r.phase), _row(r, n, "p_congested"), int(r.draws), str(r.violation), cause_text(r),
                       str(r.agents)) for _, r in causes(tree, top=TOP_CAUSES).iterrows())


def _portfolio(tree: xr.DataTree) -> Portfolio | None:
    pos = portfolio_position(tree)
    return None if pos is None else Portfolio(**pos)


def _flexibility(tree: xr.DataTree) -> tuple[Flexibility, ...]:
    def joint(r, side: str) -> Kw:
        return Kw(float(r[f"{side}_joint_kw"]), float(r[f"{side}_joint_kw_lo"]), float(r[f"{side}_joint_kw_hi"]))

    return tuple(Flexibility(float(r.confidence), joint(r, "up"), joint(r, "down"), float(r.up_lowest_half_hour_kw),
                             float(r.up_median_half_hour_kw), float(r.down_lowest_half_hour_kw),
                             float(r.down_median_half_hour_kw)) for _, r in flexibility_summary(tree).iterrows())
