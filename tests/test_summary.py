"""The summary of a study (bayesflex.analysis.summary) on a tree built by hand, whose every count is
known: 4 draws, 2 half-hours, 3 buses, 2 lines, 3 agents.  Fast (no study is run); the same checks
on a real study, against its per-draw variables, are in tests/test_report.py."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.stats import binomtest

from bayesflex.analysis.summary import Summary, summarise, worst_per
from bayesflex.cli.main import print_summary

N, PHASES = 4, ("a", "b", "c")
TIMES = pd.to_datetime(["2026-01-14 17:00", "2026-01-14 17:30"])  # UTC: GMT in January
AGENTS, BUSES, LINES = ("A1", "A2", "A3"), ("B1", "B2", "B3"), ("L1", "L2")


def wilson(k: int, n: int = N) -> tuple[float, float]:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return ci.low, ci.high


def _with_interval(name: str, counts: np.ndarray, dims: tuple[str, ...]) -> dict:
    lo, hi = np.vectorize(wilson)(counts)
    return {name: (dims, counts / N), f"{name}_lo": (dims, lo), f"{name}_hi": (dims, hi)}


@pytest.fixture(scope="module")
def tree() -> xr.DataTree:
    """Congestion (draw, half-hour, phases): draw 0 at 17:00 on a; draw 1 at 17:30 on a and b, not
    resolved there; draw 3 at 17:30 on b, without a load-flow solution.  A1 turns down 2 kW on
    phase a in both of draws 0 and 1's congested half-hours, ranked first; A2 turns up 1 kW in
    draw 1's.  Bus B1 phase a and B2 phase b are outside limits in 2 of 4 draws at 17:30 (a
    tie: B1 is nearer the source); line L2 overloads in 1 draw at 17:00."""
    congested = np.zeros((1, N, 2, 3), bool)
    congested[0, 0, 0, 0] = congested[0, 1, 1, 0] = congested[0, 1, 1, 1] = congested[0, 3, 1, 1] = True
    resolved = np.ones((1, N, 2), bool)
    resolved[0, 1, 1] = False
    converged = np.ones((1, N, 2), bool)
    converged[0, 3, 1] = False
    up, down = np.zeros((1, N, 2, 3, 3), np.float32), np.zeros((1, N, 2, 3, 3), np.float32)
    rank = np.zeros((1, N, 2, 3, 3), np.int16)
    down[0, 0, 0, 0, 0] = down[0, 1, 1, 0, 0] = 2.0
    rank[0, 0, 0, 0, 0] = rank[0, 1, 1, 0, 0] = 1
    up[0, 1, 1, 1, 1] = 1.0
    rank[0, 1, 1, 1, 1] = 2
    under = np.zeros((2, 3, 3), int)  # draws outside limits (time, bus, phase)
    under[1, 0, 0] = under[1, 1, 1] = 2
    under[0, 0, 0] = under[0, 2, 0] = 1
    overload = np.zeros((2, 2), int)
    overload[0, 1] = 1
    on_phase = congested.any(axis=2)[0]  # (draw, phase)
    any_time = congested.any(axis=3)[0]  # (draw, time)
    summary = xr.Dataset(
        {**_with_interval("p_congested_horizon", on_phase.sum(0), ("phase",)),
         **_with_interval("p_congested_any_horizon", np.array(on_phase.any(1).sum()), ()),
         **_with_interval("p_unresolved_horizon", np.array((any_time & ~resolved[0]).any(1).sum()), ()),
         "p_congested": (("time", "phase"), congested[0].mean(0)), "p_congested_any": (("time",), any_time.mean(0))},
        coords={"time": TIMES, "phase": list(PHASES)})
    network = xr.Dataset(
        {**_with_interval("p_undervoltage", under, ("time", "bus", "phase")),
         **_with_interval("p_overvoltage", np.zeros_like(under), ("time", "bus", "phase")),
         **_with_interval("p_overload", overload, ("time", "line")),
         **_with_interval("p_trafo_overload", np.zeros((2, 1), int), ("time", "trafo"))},
        coords={"time": TIMES, "bus": list(BUSES), "line": list(LINES), "phase": list(PHASES), "trafo": ["T1"]})
    dims = ("chain", "draw", "time", "agent", "phase")
    heuristic = xr.Dataset(
        {"congested": (("chain", "draw", "time", "phase"), congested), "resolved": (dims[:3], resolved),
         "adjust_up_kw": (dims, up), "adjust_down_kw": (dims, down), "sensitivity_rank": (dims, rank)},
        coords={"chain": [0], "draw": np.arange(N), "time": TIMES, "agent": list(AGENTS), "phase": list(PHASES)})
    return xr.DataTree.from_dict({
        "/": xr.Dataset(attrs={"bayesflex_version": "0.0", "feeder": "hand", "priors": "made", "seed": 7, "draws": N,
                               "v_min_pu": 0.94, "v_max_pu": 1.1, "loading_max_pu": 1.0,
                               "timezone": "Europe/London", "headroom_definition": "every agent together"}),
        "summary": summary, "network": network, "heuristic": heuristic,
        "sample_stats": xr.Dataset({"converged": (dims[:3], converged)}),
        "prior": xr.Dataset({"n_above_service": (("chain", "draw"), np.zeros((1, N), np.int64))})})


@pytest.fixture(scope="module")
def summary(tree) -> Summary:
    return summarise(tree)


def test_the_headline_is_the_share_of_draws_congested_with_its_wilson_interval(summary):
    for ph, k in (("a", 2), ("b", 2), ("c", 0)):
        e = summary.congested[ph]
        assert (e.p, e.draws) == (k / N, N)
        assert (e.lo, e.hi) == pytest.approx(wilson(k), abs=1e-12)
    assert (summary.congested_any.p, summary.unresolved.p) == (3 / N, 1 / N)
    assert summary.congested["c"].text.startswith("0 of 4 draws (< ")  # a zero is an upper bound


def test_the_checks_count_cases_by_hand(summary):
    c = summary.checks
    assert (c.cases, c.congested_cases, c.unresolved_cases, c.no_solution, c.above_service) == (8, 3, 1, 1, 0)
    assert c.widest_interval == pytest.approx(np.subtract(*wilson(2)[::-1]), abs=1e-12)  # p = 1/2 is the widest


def test_worst_half_hours_buses_lines_and_the_transformer(summary):
    assert [(r.time, r.probability.p) for r in summary.worst_half_hours] == [(TIMES[1], 0.5), (TIMES[0], 0.25)]
    assert [(r.element, r.phase, r.time, r.probability.p) for r in summary.buses] == [
        ("B1", "a", TIMES[1], 0.5), ("B2", "b", TIMES[1], 0.5), ("B3", "a", TIMES[0], 0.25)]
    assert [(r.element, r.time, r.probability.p) for r in summary.lines] == [("L2", TIMES[0], 0.25)]
    assert (summary.more_buses, summary.more_lines) == (0, 0)
    assert summary.trafo.p == 0 and summary.trafo.hi == pytest.approx(wilson(0)[1], abs=1e-12)


def test_agents_adjusted_with_their_kw_when_adjusted(summary):
    a1, a2 = summary.agents  # A3 is never moved: not listed
    assert (a1.agent, a1.adjusted.p, a1.down_kw_when_adjusted, a1.up_kw_when_adjusted) == ("A1", 0.5, 2.0, 0.0)
    assert (a2.agent, a2.adjusted.p, a2.down_kw_when_adjusted, a2.up_kw_when_adjusted) == ("A2", 0.25, 0.0, 1.0)
    assert a1.p_ranked_first == 2 / (N * 2) and a2.p_ranked_first == 0
    assert (a1.adjusted.lo, a1.adjusted.hi) == pytest.approx(wilson(2), abs=1e-12)


def test_what_the_study_does_not_hold_is_none_and_the_summary_is_frozen(summary):
    assert (summary.causes, summary.portfolio, summary.flexibility, summary.model_uncertainty) == (None,) * 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.checks = None


def test_the_printout_renders_the_summary(summary):
    buf = io.StringIO()
    print_summary(summary, buf)
    text = buf.getvalue()
    for line in (f"  phase a:   {summary.congested['a'].text}", "  phase c:   0 of 4 draws (< ",
                 f"  the agents' flexibility cannot resolve it, at least once: {summary.unresolved.text}",
                 "  load flows without a solution (counted as congested): 1 of 8 draw-half-hours",
                 f"  Wed 17:30 GMT  {summary.worst_half_hours[0].probability.text}",
                 f"  bus B1       phase a  {summary.buses[0].probability.text}  at Wed 17:30 GMT",
                 "  A1         ", "turn-down 2.00 kW, turn-up 0.00 kW"):
        assert line in text, line
    assert "what causes congestion" not in text and "portfolio" not in text


def test_worst_per_element_counts_the_ties_it_does_not_show():
    df = pd.DataFrame({"line": [f"L{i}" for i in range(8)] * 2, "time": [0] * 8 + [1] * 8,
                       "probability": [0.3] * 7 + [0.1] + [0.0] * 8})
    shown, more = worst_per(df, ["line"], [f"L{i}" for i in reversed(range(8))], k=5)
    assert list(shown.line) == ["L6", "L5", "L4", "L3", "L2"]  # ties in feeder order
    assert more == 2  # L1 and L0; L7 is less likely
