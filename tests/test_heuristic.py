"""The network heuristic: violations, sensitivities, ranking, adjustments, headroom.

Every state the heuristic calls secure is checked with an independent full
load flow in double precision (``bf.solve_loadflow``), which agrees with
pandapower to 1e-10 pu (test_loadflow_pandapower).  The heuristic's own
constraint values are computed in single precision (1e-7 relative), so the
checks allow 1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest

import bayesflex as bf
from bayesflex.grid import heuristic as h
from bayesflex.grid.heuristic import LINE, VOLTAGE, Limits
from bayesflex.grid.loadflow import solve_load_nodes

from .known_answers import p_at_voltage_kw, series_feeder

TOL = 1e-6


def _stressed(feeder, rng, n, lo=0.5, hi=4.5):
    """Scenarios: the shipped snapshot scaled per agent, bounds around it."""
    scale = rng.uniform(lo, hi, (n, 1, 1)) * rng.uniform(0.7, 1.3, (n, feeder.n_agent, 1))
    p = feeder.agent_p_kw[None] * scale
    q = feeder.agent_q_kvar[None] * scale
    lb = p * rng.uniform(0.0, 1.0, p.shape)
    ub = p * rng.uniform(1.0, 2.0, p.shape)
    return p, q, lb, ub


def _within_limits(feeder, p, q, limits=Limits()):
    lf = bf.solve_loadflow(feeder, p, q)
    v = np.delete(lf.v_pu, feeder.source.bus, axis=-2)
    return (lf.converged
            & (v.min(axis=(-2, -1)) >= limits.v_min_pu - TOL) & (v.max(axis=(-2, -1)) <= limits.v_max_pu + TOL)
            & (lf.loading_pu.max(axis=-1) <= limits.loading_max_pu + TOL)
            & (lf.trafo_loading_pu <= limits.loading_max_pu + TOL))


def test_assessment_matches_the_full_loadflow(ieee, rng):
    p, q, _, _ = _stressed(ieee, rng, 40)
    st = h.assess(ieee, p, q)
    lf = bf.solve_loadflow(ieee, p, q)
    buses, v = st.bus_v_pu()
    np.testing.assert_allclose(v, lf.v_pu[:, buses], atol=1e-6)
    np.testing.assert_allclose(st.line_loading_pu(), lf.loading_pu, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(st.loading_max_pu(), lf.loading_max_pu, rtol=1e-6)
    np.testing.assert_allclose(st.trafo_loading_pu(), lf.trafo_loading_pu, rtol=1e-6)
    v_min, v_max = st.v_extremes_pu()
    np.testing.assert_allclose(v_min, lf.v_min_pu, atol=1e-6)
    np.testing.assert_allclose(v_max, lf.v_max_pu, atol=1e-6)
    under, over = st.bus_voltage_counts(0.94, 1.04)
    vv = lf.v_pu.copy()
    vv[:, ieee.source.bus] = 1.0  # the source bus never counts
    near = (np.abs(vv - 0.94) < 1e-5).any(axis=0) | (np.abs(vv - 1.04) < 1e-5).any(axis=0)
    assert under.sum() > 0 and over.sum() > 0 and not near.all()
    np.testing.assert_array_equal(under[~near], (vv < 0.94).sum(axis=0)[~near])
    np.testing.assert_array_equal(over[~near], (vv > 1.04).sum(axis=0)[~near])
    clear = np.abs(lf.loading_pu - 1) > 1e-5
    over = st.line_overloaded(1.0)
    assert over.any() and (~over).any()
    np.testing.assert_array_equal(over[clear], (lf.loading_pu > 1)[clear])


def _exact_quantity(feeder, p, q, k, limits=Limits()):
    """The constraint ``k``'s value in double precision, one scenario."""
    model = feeder.model
    cons = h.constraints(model, limits)
    m = model.agent_to_load / model.s_base_kva
    pu, qu = p.reshape(1, -1)[:, model.agent_cols], q.reshape(1, -1)[:, model.agent_cols]
    s_l = pu @ m + 1j * (qu @ m)
    v_l, conv, _ = solve_load_nodes(model, s_l)
    assert conv.all()
    i_l = -np.conj(s_l / v_l)
    return float(np.abs(cons.c0[k] + i_l @ cons.c_t[:, k])[0] / cons.scale[k])


def test_each_row_of_the_adjoint_is_the_direct_solution(ieee):
    """The adjoint's fixed point stops row by row (a lightly loaded state converges in a few
    steps, a heavily loaded one takes many or stalls and is solved densely): every row equals
    the adjoint system solved directly for that row alone, at loads from 0.5 to 5 times the
    feeder's, with the fixed point given its full 200 steps and with 4 (most rows then dense)."""
    model = ieee.model
    cons = h.constraints(model, Limits())
    m = model.agent_to_load / model.s_base_kva
    scale = np.array([0.5, 1, 2, 3, 4, 5])  # x5: 0.67 pu at the far end; x6: no solution
    p = ieee.agent_p_kw.reshape(1, -1)[:, model.agent_cols] * scale[:, None]
    q = ieee.agent_q_kvar.reshape(1, -1)[:, model.agent_cols] * scale[:, None]
    s_l = p @ m + 1j * (q @ m)
    v_l, conv, _ = solve_load_nodes(model, s_l)
    assert conv.all() and np.abs(v_l).min() < 0.7  # the heaviest state is far from no load
    i_l = -np.conj(s_l / v_l)
    k = np.argmax(np.abs(cons.c0 + i_l @ cons.c_t) / cons.scale - cons.hi, axis=1)  # each row's worst
    z, nl = model.z_ll, model.z_ll.shape[0]
    w = h._gradient_rows(cons, s_l, v_l, k)
    a = w * np.conj(s_l) / np.conj(v_l) ** 2
    direct = np.empty_like(a)
    for r in range(len(a)):  # lam = a + D conj(Z^T lam), as one real linear system per row
        d = np.conj(s_l[r]) / np.conj(v_l[r]) ** 2
        big = np.block([[np.eye(nl) - (d[:, None] * z.T).real, -(d[:, None] * z.T).imag],
                        [-(d[:, None] * z.T).imag, np.eye(nl) + (d[:, None] * z.T).real]])
        x = np.linalg.solve(big, np.concatenate([a[r].real, a[r].imag]))
        direct[r] = x[:nl] + 1j * x[nl:]
    expect = -(np.real(w / np.conj(v_l)) + np.real((direct @ np.conj(z)) / v_l)) / model.s_base_kva
    for steps in (200, 4):
        got = h._sens_analytic(model, cons, s_l, v_l, k, max_iter=steps)
        error = np.abs(got - expect).max(axis=1) / np.abs(expect).max(axis=1)  # relative to the row's largest
        assert error.max() < 1e-10, (steps, error)


@pytest.mark.parametrize("limits, kind", [(Limits(loading_max_pu=10.0), VOLTAGE), (Limits(), LINE)])
def test_analytic_and_paper_sensitivities_agree(ieee, limits, kind):
    """The analytic sensitivity (adjoint at the solved state) against a central
    difference (1e-3 kW: truncation ~1e-6 relative, so 1e-5) and against the
    paper's +10 % re-solve.  The paper's one-sided step carries the second-order
    term (dP/2) q''/q': with dP = 10 % of at most ~11 kW and q'' / q' below
    ~0.02 /kW on this loaded feeder, that is below ~1 %, so 2e-2 relative to the
    largest sensitivity."""
    p, q = ieee.agent_p_kw * 3.0, ieee.agent_q_kvar * 3.0
    s_an, k_kind, phase = h.violation_sensitivity(ieee, p, q, limits=limits, method="analytic")
    s_pa, _, _ = h.violation_sensitivity(ieee, p, q, limits=limits, method="perturb")
    assert k_kind == kind
    cons = h.constraints(ieee.model, limits)
    st = h._solve(ieee.model, cons, p.reshape(1, -1)[:, ieee.model.agent_cols],
                  q.reshape(1, -1)[:, ieee.model.agent_cols])
    k = int(np.argmax(st.ex[0]))
    central = np.empty(ieee.n_agent)
    for a in range(ieee.n_agent):
        step = np.zeros_like(p)
        step[a] = ieee.agent_phases[a] / ieee.agent_phases[a].sum()
        dh = 1e-3
        central[a] = (_exact_quantity(ieee, p + dh * step, q, k, limits)
                      - _exact_quantity(ieee, p - dh * step, q, k, limits)) / (2 * dh)
    scale = np.abs(central).max()
    np.testing.assert_allclose(s_an, central, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(s_pa, s_an, rtol=0, atol=2e-2 * scale)
    # and the two methods agree on the most effective agent (downstream of an
    # overloaded line many agents are within 1e-3 of each other, so no more)
    top = lambda s: list(np.argsort(-np.abs(s), kind="stable")[:5])
    assert top(s_an)[0] == top(s_pa)[0]
    # more load lowers a voltage, raises a current: the most effective agent says so
    best = top(s_an)[0]
    assert (s_an[best] < 0) if kind == VOLTAGE else (s_an[best] > 0)


@pytest.mark.parametrize("method", ["analytic", "perturb"])
def test_adjustments_resolve_within_bounds_and_never_make_things_worse(ieee, rng, method):
    n = 60 if method == "analytic" else 12
    p, q, lb, ub = _stressed(ieee, rng, n)
    adj = h.resolve_congestion(ieee, p, q, lb, ub, method=method)
    congested = adj.congested.any(axis=-1)
    assert congested.sum() >= n // 3 and (~congested).any()
    # within bounds, and untouched where nothing was wrong
    assert np.all(adj.p_kw >= np.minimum(lb, p) - 1e-9) and np.all(adj.p_kw <= np.maximum(ub, p) + 1e-9)
    np.testing.assert_array_equal(adj.p_kw[~congested], p[~congested])
    assert np.all(adj.adjust_up_kw >= 0) and np.all(adj.adjust_down_kw >= 0)
    assert not ((adj.adjust_up_kw > 0) & (adj.adjust_down_kw > 0)).any()  # an agent-phase moves one way
    # the worst exceedance never grows
    assert np.all(adj.exceedance_after_pu.max(axis=-1) <= adj.exceedance_pu.max(axis=-1) + 1e-9)
    # what is called resolved is within limits by an independent load flow of the positions
    # given moved by the turn-up and turn-down reported (not of the heuristic's own final state)
    moved = p + adj.adjust_up_kw - adj.adjust_down_kw
    ok = _within_limits(ieee, moved, q)
    assert np.all(ok[adj.resolved])
    # and where it was congested and not resolved, the reported moves leave a limit broken
    assert not ok[congested & ~adj.resolved].any()
    # wherever every agent at its lower bound is within limits, a solution exists,
    # and the heuristic must find one (it may also find one where that corner is not)
    feasible = _within_limits(ieee, np.minimum(lb, p), q)
    assert feasible[congested].any() and (~adj.resolved[congested]).any()
    assert np.all(adj.resolved[congested & feasible])
    # a congested phase has a full ranking 1..n_agent; an uncongested one none
    for i, ph in zip(*np.nonzero(adj.congested & adj.converged[:, None])):
        assert sorted(adj.rank[i, :, ph]) == list(range(1, ieee.n_agent + 1))
    assert np.all(adj.rank[~adj.congested[:, None, :].repeat(ieee.n_agent, 1)] == 0)


def test_each_phase_of_a_three_phase_agent_is_turned_down_to_its_limit():
    """A known answer (tests/known_answers.py): a three-phase agent at the end of a cable whose
    phases do not couple, so that each phase's voltage follows from its own power.  A phase
    drawing more than the power that puts it at v_min is turned down to that power (the heuristic
    aims 1e-4 pu inside the limit: between the powers at v_min + 5e-4 and at v_min); a phase
    within limits is not moved; nothing is turned up."""
    z = np.array([0.05 + 0.015j, 0.10 + 0.03j, 0.12 + 0.04j])  # ohm, phases a, b, c
    v_min = 0.97
    p = np.array([[[20.0, 20.0, 20.0]], [[40.0, 12.0, 16.0]], [[10.0, 10.0, 10.0]]])  # (scenario, agent, phase)
    q = np.array([[[3.0, 1.0, 0.5]], [[0.0, 2.0, 4.0]], [[1.0, 1.0, 1.0]]])
    adj = h.resolve_congestion(series_feeder(z), p, q, np.zeros_like(p), p, limits=Limits(v_min_pu=v_min))
    at_limit, inside = p_at_voltage_kw(z, v_min, q), p_at_voltage_kw(z, v_min + 5e-4, q)  # about 33, 17, 14 kW
    over = p > at_limit
    assert over[:, 0].tolist() == [[False, True, True], [True, False, True], [False, False, False]]
    assert adj.resolved.all() and adj.congested[:, 1:].any()
    np.testing.assert_array_equal(adj.adjust_up_kw, 0.0)
    np.testing.assert_array_equal(adj.adjust_down_kw[~over], 0.0)
    final = p - adj.adjust_down_kw
    assert np.all(final[over] <= at_limit[over]) and np.all(final[over] >= inside[over]), (final, at_limit)


def test_no_flexibility_means_unresolved_and_flagged(ieee):
    p, q = ieee.agent_p_kw[None] * 4.0, ieee.agent_q_kvar[None] * 4.0
    adj = h.resolve_congestion(ieee, p, q, p, p)
    assert adj.congested.any() and not adj.resolved.any()
    assert np.all(adj.adjust_up_kw == 0) and np.all(adj.adjust_down_kw == 0)


def test_a_load_flow_without_solution_is_congested_everywhere(ieee):
    p, q = ieee.agent_p_kw[None] * 8.0, ieee.agent_q_kvar[None] * 8.0  # beyond the nose (5.5-5.6x)
    adj = h.resolve_congestion(ieee, p, q, 0 * p, p)
    assert not adj.converged[0] and adj.congested[0].all() and not adj.resolved[0]
    assert np.isinf(adj.exceedance_pu[0]).all()


def test_headroom_is_secure_and_takes_back_only_what_breaks_a_limit(ieee, rng):
    p, q, lb, ub = _stressed(ieee, rng, 30, lo=0.3, hi=2.5)
    adj = h.resolve_congestion(ieee, p, q, lb, ub)
    up, down, ok_up, ok_dn = h.headroom(ieee, adj.p_kw, q, lb, ub, secure=adj.resolved)
    assert ok_up.mean() > 0.8 and ok_dn.mean() > 0.8
    base = adj.p_kw
    # every agent turning up (down) by its headroom, all at once, is within limits
    assert np.all(_within_limits(ieee, base + up, q)[ok_up])
    assert np.all(_within_limits(ieee, base - down, q)[ok_dn])
    assert np.all(up <= np.maximum(ub - base, 0) + 1e-9) and np.all(down <= np.maximum(base - lb, 0) + 1e-9)
    # where the whole product is secure, nothing is taken back
    full_up_ok = _within_limits(ieee, np.maximum(ub, base), q) & ok_up
    assert full_up_ok.any() and (~full_up_ok).any()
    np.testing.assert_allclose(up[full_up_ok], np.maximum(ub - base, 0)[full_up_ok], atol=1e-12)
    # where it is not, something was taken back, and the result sits at a limit (within 1e-3 pu)
    cut = ok_up & ~full_up_ok
    assert np.all((up < np.maximum(ub - base, 0) - 1e-9).any(axis=(-2, -1))[cut])
    st = h.assess(ieee, base + up, q)
    worst = st.state.ex.max(axis=1)
    assert np.all(worst[cut] > -1e-3)


def test_bad_input_is_named(ieee):
    p = ieee.agent_p_kw[None]
    with pytest.raises(bf.ConfigError, match="p_lb_kw must have shape"):
        h.resolve_congestion(ieee, p, p, p[:, :3], p)
    with pytest.raises(bf.ConfigError, match="allowed: 'analytic', 'perturb'"):
        h.resolve_congestion(ieee, p * 4, p * 0, p * 0, p * 4, method="guess")
    with pytest.raises(bf.ConfigError, match="v_min_pu < v_max_pu"):
        Limits(v_min_pu=1.2)
