"""Why the heuristic moves an agent on a phase that is not congested (issue 15).

Known answer: two houses at the end of one four-wire cable, one on phase a, one on
phase b.  The cable's phases are coupled (a mutual impedance, as the neutral return
makes them), so load on phase b raises phase a's voltage there.  When only the house
on phase b can move, the heuristic turns it *up* to relieve phase a's under-voltage;
an independent load flow confirms that the turn-up raises phase a's voltage.
"""

from __future__ import annotations

import numpy as np
import pytest

import bayesflex as bf
from bayesflex.analysis.query import adjustment_reason
from bayesflex.grid.feeder import Source
from bayesflex.grid.heuristic import Limits, resolve_congestion


def _shared_cable(mutual: float) -> bf.Feeder:
    """An ideal source, one cable, a house on phase a ("heavy") and one on phase b ("flex")."""
    z_ohm = 0.5 + 0.15j
    z = np.full((3, 3), mutual * z_ohm)
    np.fill_diagonal(z, z_ohm)
    feeder = bf.Feeder.build(
        name="shared_cable", origin="tests/test_adjustment_reasons.py", f_hz=50.0, buses=("src", "end"),
        bus_vn_kv=[0.416, 0.416], lines=("cable",), line_from=[0], line_to=[1], line_z_ohm=[z],
        line_y_s=np.zeros((1, 3, 3)), line_i_max_a=[1e4], trafos=(),
        source=Source(bus=0, vm_pu=1.0, va_degree=0.0, z1_ohm=0j, z2_ohm=1e-6 + 0j, z0_ohm=1e-6 + 0j),
        agents=("heavy", "flex"), agent_bus=[1, 1], agent_phases=np.array([[1, 0, 0], [0, 1, 0]], bool),
        agent_p_kw=np.array([[1.0, 0, 0], [0, 1.0, 0]]), agent_q_kvar=np.zeros((2, 3)),
    )
    bf.validate_feeder(feeder)
    return feeder


def test_a_turn_up_on_a_calm_phase_relieves_the_congested_phase_through_the_neutral():
    fd = _shared_cable(mutual=0.3)
    p = np.zeros((2, 2, 3))
    p[:, 0, 0], p[:, 1, 1] = 10.0, 1.0
    q = 0.3 * p
    lb, ub = p.copy(), p.copy()
    ub[:, 1, 1] = 6.0  # the house on phase b may take 5 kW more
    lb[1, 0, 0] = 4.0  # in scenario 1 the house on phase a may also shed 6 kW
    adj = resolve_congestion(fd, p, q, lb, ub, limits=Limits(v_min_pu=0.9))
    assert adj.congested[:, 0].all() and not adj.congested[:, 1:].any()  # phase a only
    assert adj.resolved.all()

    # scenario 0: only the house on phase b can help; it turns up, for phase a
    assert adj.adjust_up_kw[0, 1, 1] > 0 and adj.adjust_down_kw[0].sum() == 0
    assert adj.target_phase[0, 1, 1] == 0
    assert (adj.target_phase[0][adj.adjust_up_kw[0] == 0] == -1).all()  # not moved: -1
    # the reason, as the load flow sees it: that turn-up alone raises phase a's voltage at the houses
    moved = p[:1].copy()
    moved[0, 1, 1] += adj.adjust_up_kw[0, 1, 1]
    v0 = bf.solve_loadflow(fd, p[:1], q[:1]).v_pu[0, 1]
    v1 = bf.solve_loadflow(fd, moved, q[:1]).v_pu[0, 1]
    assert v1[0] > v0[0] + 1e-4 and v1[1] < v0[1]  # phase a up (the neutral shift), phase b down
    # no coupling, no such reason to move (phase a's voltage does not see phase b's load)
    v_free = [bf.solve_loadflow(_shared_cable(0.0), x, q[:1]).v_pu[0, 1, 0] for x in (p[:1], moved)]
    assert v_free[1] == pytest.approx(v_free[0], abs=1e-6)

    # scenario 1: the house on the congested phase sheds load, for its own phase; phase b is left alone
    assert adj.adjust_down_kw[1, 0, 0] > 0 and adj.target_phase[1, 0, 0] == 0
    assert adj.adjust_up_kw[1].sum() == 0 and adj.target_phase[1, 1, 1] == -1


def test_the_reason_in_words():
    assert adjustment_reason("b", [4, 0, 0]) == "relief of phase a (neutral shift)"
    assert adjustment_reason("a", [4, 0, 0]) == "on the congested phase"
    assert adjustment_reason("c", [3, 12, 0]) == ("relief of phase b (neutral shift) in 12 of 15 draws; "
                                                  "relief of phase a (neutral shift) in 3")
    assert adjustment_reason("c", [0, 2, 2]) == ("relief of phase b (neutral shift) in 2 of 4 draws; "
                                                 "on the congested phase in 2")
    assert adjustment_reason("a", [0, 0, 0]) == ""
