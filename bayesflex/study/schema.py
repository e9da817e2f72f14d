"""What a study's result holds: its groups, variables, dimensions and the names they use.

The result is an ``xarray.DataTree`` with ArviZ group names (built by
:func:`bayesflex.study.results.build_tree`, written to ``result.nc`` by
:mod:`bayesflex.study.files`).

Groups (dimensions in the order ``chain, draw, time, agent|bus|line, phase``):

``prior_predictive`` (``posterior_predictive`` when conditioned)
    agent powers: ``p_kw``, ``q_kvar``, ``p_lb_kw``, ``p_ub_kw`` and one
    component per technology present (``p_base_kw``, ``p_pv_kw``...).
``prior`` (``posterior``)
    the sampled parameters and technology states.
``observed_data``
    the meter readings conditioned on, when there were any.
``network``
    per draw: ``v_min_pu``/``v_max_pu`` per phase, ``loading_max_pu``,
    ``trafo_loading_pu``; probabilities with their Monte Carlo standard errors
    (``*_mcse``) and 95 % Wilson intervals (``*_lo``, ``*_hi``; over the root
    attribute ``effective_draws``: the draws, or a posterior's smallest bulk
    ESS): ``p_undervoltage``/``p_overvoltage (time, bus, phase)``,
    ``p_overload (time, line)``, ``p_trafo_overload (time, trafo)``; with
    ``full_voltages`` also ``v_pu``.
``heuristic``
    ``adjust_up_kw``, ``adjust_down_kw``, ``headroom_up_kw``,
    ``headroom_down_kw``, ``sensitivity_rank`` per agent and phase;
    ``congested`` per phase, ``resolved``, ``exceedance_pu``; portfolio sums
    per draw and half-hour (the portfolio is every agent, or the agents with
    positions): power ``portfolio_p_kw`` and bounds, the network's turn-up and
    turn-down, the joint headroom and what can be sold against the planned
    position (``portfolio_deliverable_up_kw``/``_down_kw``, :func:`bayesflex.study.results.deliverable`).
    The causes of congestion, per half-hour and phase, over the draws where
    the phase's worst violation was attributed (``cause_draws``: congested
    with a converged load flow; :func:`bayesflex.grid.heuristic.cause_shares`):
    ``cause_share (time, phase, technology)`` the mean share of each
    technology (summing to 1) with its Monte Carlo error, ``cause_relief_share``
    what technologies pushing the other way take back (<= 0, same scale),
    ``cause_agent_share (time, agent, phase)`` the mean share of each agent,
    ``cause_violation_draws (time, phase, violation)`` the kinds of violation.
``summary``
    probabilities of congestion per time and phase and over the horizon, of
    unresolved congestion (each with ``_mcse``, ``_lo``, ``_hi``), and the
    portfolio flexibility at confidence levels with 95 % order-statistic
    intervals: per half-hour (``flex_up_kw (confidence, time)``) and jointly,
    delivered in every half-hour of the horizon (``flex_up_joint_kw
    (confidence)``, a quantile of each draw's lowest half-hour); with
    positions, the portfolio position ``P_T`` and its bounds.  Model
    uncertainty beside the Monte Carlo error (:mod:`bayesflex.study.uncertainty`):
    ``p_congested_any_horizon_given_theta (spread_quantile)`` the spread of
    the headline over the priors' population-level parameters, and per
    ``parameter`` the headline at its 10 % and 90 % quantiles
    (``screen_p_low``/``_high``) and the move of the worst margin
    (``screen_margin_effect_pu``).
``positions``
    the aggregator's planned positions, when the study was given them.
``sample_stats``
    ``converged``, ``iterations`` of the load flow, heuristic ``rounds``.
``constant_data``
    the feeder's topology: agents' buses and phases, lines' ends, ratings,
    line codes and which ratings are defaults the model never gave
    (``line_rating_defaulted``); what the numbers rest on: the source's
    sequence impedances (``source_r_ohm``/``source_x_ohm``; its set-point and
    nominal kV are root attributes ``source_vm_pu``, ``source_vn_kv``), the
    transformers' ratings, impedance, taps and no-load LV voltage (``trafo_*``).

Times: ``time`` holds naive UTC half-hours; the root attribute ``timezone``
names the site's zone, in which every time is printed (:mod:`bayesflex.core.timefmt`).

A draw whose load flow did not converge is kept: ``converged=False``, counted
as congested on every phase and as violating every limit.
"""

from __future__ import annotations

from bayesflex.core.outdir import RESULT_FILE
from bayesflex.priors.registry import components

__all__ = ["CAUSE_DEFINITION", "CONFIDENCE", "COUNTS", "PER_DRAW", "PORTFOLIO",
           "PORTFOLIO_LONG", "PREDICTIVE", "RESULT_FILE", "SUMS", "VIOLATIONS", "causes", "is_big",
           "is_big_physics"]

#: confidence levels at which the portfolio flexibility is summarised
CONFIDENCE = (0.5, 0.9, 0.95)
#: agent power arrays that go into the predictive group (when the technology is present)
PREDICTIVE = ("p_kw", "q_kvar", "p_lb_kw", "p_ub_kw")
#: the kinds of worst violation counted in ``heuristic/cause_violation_draws``
VIOLATIONS = ("undervoltage", "overvoltage", "overload", "trafo_overload")

#: what a chunk returns per draw: name -> (dims after chain, draw; group; attrs)
PER_DRAW = {
    "v_min_pu": (("time", "phase"), "network",
                 {"units": "pu", "long_name": "lowest bus voltage (source bus excluded)"}),
    "v_max_pu": (("time", "phase"), "network",
                 {"units": "pu", "long_name": "highest bus voltage (source bus excluded)"}),
    "loading_max_pu": (("time",), "network", {"units": "pu", "long_name": "highest line current / rating"}),
    "trafo_loading_pu": (("time", "trafo"), "network",
                         {"units": "pu", "long_name": "transformer current / rated current (worst phase and side)"}),
    "v_pu": (("time", "bus", "phase"), "network", {"units": "pu", "long_name": "bus voltage, phase to neutral"}),
    "adjust_up_kw": (("time", "agent", "phase"), "heuristic",
                     {"units": "kW", "long_name": "turn-up the network asks of the agent"}),
    "adjust_down_kw": (("time", "agent", "phase"), "heuristic",
                       {"units": "kW", "long_name": "turn-down the network asks of the agent"}),
    "adjust_target_phase": (("time", "agent", "phase"), "heuristic",
                            {"units": "1", "flag_values": [-1, 0, 1, 2], "flag_meanings": "not_adjusted a b c",
                             "long_name": "phase whose violation the agent's adjustment on this phase relieved (in "
                                          "the heuristic's round that moved it most): its own phase, or another "
                                          "through the neutral; -1 = not adjusted"}),
    "headroom_up_kw": (("time", "agent", "phase"), "heuristic",
                       {"units": "kW", "long_name": "turn-up deliverable with the whole portfolio turning up"}),
    "headroom_down_kw": (("time", "agent", "phase"), "heuristic",
                         {"units": "kW", "long_name": "turn-down deliverable with the whole portfolio turning down"}),
    "sensitivity_rank": (("time", "agent", "phase"), "heuristic",
                         {"units": "1", "long_name": "agent's rank for the phase's worst violation (1 = most "
                                                     "effective, 0 = phase not congested)"}),
    "congested": (("time", "phase"), "heuristic", {"long_name": "a limit is broken on the phase, or no load flow"}),
    "exceedance_pu": (("time", "phase"), "heuristic",
                      {"units": "pu", "long_name": "worst exceedance of a limit before adjustment (<= 0: within)"}),
    "resolved": (("time",), "heuristic", {"long_name": "within limits after adjustment, confirmed by a load flow"}),
    "headroom_ok": (("time",), "heuristic", {"long_name": "both headroom products were made secure"}),
    "converged": (("time",), "sample_stats", {"long_name": "the load flow converged"}),
    "iterations": (("time",), "sample_stats", {"units": "1"}),
    "rounds": (("time",), "sample_stats", {"units": "1", "long_name": "heuristic adjust/re-solve rounds"}),
}
#: counts over a chunk's draws -> (the probability they give, its dims)
COUNTS = {
    "n_undervoltage": ("p_undervoltage", ("time", "bus", "phase")),
    "n_overvoltage": ("p_overvoltage", ("time", "bus", "phase")),
    "n_overload": ("p_overload", ("time", "line")),
    "n_trafo_overload": ("p_trafo_overload", ("time", "trafo")),
}

#: per-chunk sums over draws, added up chunk by chunk in chunk order (bayesflex.study.engine._causes)
SUMS = ("cause_share_sum", "cause_share_sq_sum", "cause_relief_sum", "cause_agent_share_sum", "cause_draws",
        "cause_violation_draws")
CAUSE_DEFINITION = (
    "per congested draw, half-hour and phase with a load flow: c = s * S_a * P_ka, with S_a = dq/dP_a the "
    "sensitivity of the phase's worst violated quantity q to agent a, P_ka the power of technology k of agent a "
    "(kW, load positive) and s = +1 above the upper limit, -1 below the lower; share = max(c, 0) / sum of all "
    "max(c, 0) (sums to 1), relief = min(c, 0) on the same scale; averaged over those draws (cause_draws)")

#: per-agent arrays summed over agents and phases into the portfolio's (draw, time) totals
PORTFOLIO = {"p_kw": "portfolio_p_kw", "p_lb_kw": "portfolio_p_lb_kw", "p_ub_kw": "portfolio_p_ub_kw",
             "adjust_up_kw": "portfolio_adjust_up_kw", "adjust_down_kw": "portfolio_adjust_down_kw",
             "headroom_up_kw": "portfolio_headroom_up_kw", "headroom_down_kw": "portfolio_headroom_down_kw"}
PORTFOLIO_LONG = {
    "portfolio_p_kw": "portfolio power P_T = sum of the portfolio agents' powers",
    "portfolio_p_lb_kw": "portfolio lower bound", "portfolio_p_ub_kw": "portfolio upper bound",
    "portfolio_adjust_up_kw": "turn-up the network asks of the portfolio",
    "portfolio_adjust_down_kw": "turn-down the network asks of the portfolio",
    "portfolio_headroom_up_kw": "portfolio turn-up deliverable from the secure positions (joint headroom)",
    "portfolio_headroom_down_kw": "portfolio turn-down deliverable from the secure positions (joint headroom)",
    "portfolio_deliverable_up_kw": "turn-up the portfolio can sell against its planned position: headroom less "
                                   "any net turn-down the network forced",
    "portfolio_deliverable_down_kw": "turn-down the portfolio can sell against its planned position: headroom "
                                     "less any net turn-up the network forced",
}


def is_big(dims: tuple[str, ...]) -> bool:
    """Per-draw arrays over agents or buses: streamed, never summed up in memory."""
    return "draw" in dims and ("agent" in dims or "bus" in dims) and "time" in dims


def is_big_physics(name: str) -> bool:
    """Whether a chunk's physics result ``name`` (a key of what a chunk returns, not its draws) is large."""
    return name in PER_DRAW and is_big(("draw",) + PER_DRAW[name][0])


def causes() -> tuple[str, ...]:
    """What congestion is attributed to (``heuristic/cause_share``'s ``technology``): every
    technology's power component (:func:`bayesflex.priors.registry.components`, in its order),
    and "position", the planned power of agents with positions (it replaces their flexible ones)."""
    return (*components(), "position")
