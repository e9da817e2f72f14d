"""Voltage sensitivity dV/dP: the analytic linearisation against re-solving the load flow.

The aggregator paper measures sensitivity by turning an agent's active power
up by 10 % and re-running the load flow, S = dV/dP.  That one-sided difference
carries the second-order term of |V|(P): its relative error is about
(dP / 2) * |d2V/dP2| / |dV/dP|.  For a constant-power load the slope changes
by about |dV/dP| / |V| per kW (below 0.004 /kW here), and dP = 10 % of at most
~7 kW, so the error stays below ~1.5e-3: the two must agree to 5e-3 (relative,
on the buses that move by more than 1e-6 pu/kW).  A central difference of
1e-3 kW removes that term and must agree to 1e-5.
"""

from __future__ import annotations

import numpy as np

import bayesflex as bf
from bayesflex.grid.loadflow import voltage_sensitivity


def _v(feeder, p, q):
    return bf.solve_loadflow(feeder, p[None], q[None]).v_pu[0]


def test_analytic_sensitivity_matches_resolving(ieee):
    p, q = ieee.agent_p_kw * 2.5, ieee.agent_q_kvar * 2.5  # a loaded feeder
    agents = [0, 17, 40]  # LOAD1, LOAD18, LOAD41: different phases and places
    dv, v = voltage_sensitivity(ieee, p, q, agents=agents)
    np.testing.assert_allclose(v, _v(ieee, p, q), atol=1e-12)
    for j, a in enumerate(agents):
        step = np.zeros_like(p)
        step[a] = ieee.agent_phases[a] / ieee.agent_phases[a].sum()  # 1 kW spread like the agent
        h = 1e-3
        central = (_v(ieee, p + h * step, q) - _v(ieee, p - h * step, q)) / (2 * h)
        moving = np.abs(central) > 1e-6
        np.testing.assert_allclose(dv[..., j][moving], central[moving], rtol=1e-5)
        # the paper's method: +10 % of the agent's power
        dp = 0.1 * p[a].sum()
        paper = (_v(ieee, p + dp * step, q) - _v(ieee, p, q)) / dp
        np.testing.assert_allclose(dv[..., j][moving], paper[moving], rtol=5e-3)
        # more load lowers the voltage on the agent's own phase at its bus
        ph = int(np.flatnonzero(ieee.agent_phases[a])[0])
        assert dv[ieee.agent_bus[a], ph, j] < 0
