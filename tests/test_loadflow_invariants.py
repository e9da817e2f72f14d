"""Invariants of the load flow that need no reference solver.

Precision: branch currents are products of the branch admittance and the
voltage difference across it.  The IEEE feeder has segments of 0.1 m
(9e-5 ohm); float64 voltages of ~250 V differ by multiples of ~5e-14 V there,
and the factorised solve leaves ~1e-11 pu, so currents carry an absolute floor
of ~1e-8 A.  The current checks below allow 1e-7 A absolute and 1e-8
relative.

* zero load: no current flows, so every bus sits at the source voltage;
* Kirchhoff's current law: on a radial feeder without line charging, the
  current in a line equals the sum of the load currents downstream of it;
* power balance: what the source delivers equals the loads plus the losses,
  the losses computed here from the voltages and the element data alone;
* near voltage collapse: the Newton fallback finds the same solution as the
  fixed point; beyond collapse, a scenario is ``converged=False`` with NaN
  values, and its neighbours in the batch are unaffected.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order

import bayesflex as bf
from bayesflex.grid.sequence import PHASE_TO_SEQ


def _on_peak(feeder, factor=1.0):
    return feeder.agent_p_kw * factor, feeder.agent_q_kvar * factor


def test_zero_load_gives_source_voltage_everywhere(ieee):
    z = np.zeros((1, ieee.n_agent, 3))
    lf = bf.solve_loadflow(ieee, z, z)
    # lossless at no load: no shunts, no magnetising current in this feeder
    # LU round-off along ~900 series segments: ~1e-11
    np.testing.assert_allclose(lf.v_pu, ieee.source.vm_pu, rtol=0, atol=1e-10)
    np.testing.assert_allclose(lf.i_line_a, 0, atol=1e-7)
    np.testing.assert_allclose(lf.trafo_loading_pu, 0, atol=1e-9)
    np.testing.assert_allclose(lf.p_source_kw, 0, atol=1e-6)


def _downstream_agents(feeder):
    """For each line: boolean mask of agents downstream of it (radial feeder)."""
    nb = feeder.n_bus
    f = np.concatenate([feeder.line_from, [t.hv_bus for t in feeder.trafos]])
    t = np.concatenate([feeder.line_to, [t.lv_bus for t in feeder.trafos]])
    g = coo_matrix((np.ones(len(f)), (f, t)), shape=(nb, nb)).tocsr()
    order, pred = breadth_first_order(g, feeder.source.bus, directed=False)
    below = np.zeros((nb, feeder.n_agent), bool)
    below[feeder.agent_bus, np.arange(feeder.n_agent)] = True
    for b in order[::-1]:  # leaves first
        if pred[b] >= 0:
            below[pred[b]] |= below[b]
    child = np.where(pred[feeder.line_to] == feeder.line_from, feeder.line_to, feeder.line_from)
    return below[child]


def test_line_currents_obey_kirchhoff(ieee, rng):
    p, q = _on_peak(ieee, rng.uniform(0, 3, size=(3, ieee.n_agent, 3)))
    lf = bf.solve_loadflow(ieee, p, q, return_complex=True)
    down = _downstream_agents(ieee)  # (line, agent)
    v_base = ieee.bus_vn_kv * 1e3 / np.sqrt(3)
    for k in range(len(p)):
        v = lf.v_complex_pu[k, ieee.agent_bus] * v_base[ieee.agent_bus, None]  # V at each agent
        i_agent = np.conj((p[k] + 1j * q[k]) * 1e3 / v)  # (agent, phase) A
        i_line = np.abs(down.astype(float) @ i_agent)
        np.testing.assert_allclose(lf.i_line_a[k], i_line, rtol=1e-8, atol=1e-7)


def test_power_balance(ieee, rng):
    """P_source = sum(P_load) + line losses + transformer losses, each loss
    from first principles: a line loses Re(dV^T conj(I)) with I = Z^-1 dV;
    the Dyn transformer 3 R_k (|I1|^2 + |I2|^2) + 3 Re(Z0_eff) |I0|^2 with
    the sequence currents of its LV terminal."""
    p, q = _on_peak(ieee, rng.uniform(0.5, 3, size=(4, ieee.n_agent, 3)))
    lf = bf.solve_loadflow(ieee, p, q, return_complex=True)
    t = ieee.trafos[0]
    v_base = ieee.bus_vn_kv * 1e3 / np.sqrt(3)
    zbase_lv = (t.vn_lv_kv * 1e3) ** 2 / (t.sn_kva * 1e3)
    r_k = t.vkr_percent / 100 * zbase_lv
    z0k = complex(t.vkr0_percent, np.sqrt(t.vk0_percent**2 - t.vkr0_percent**2)) / 100 * zbase_lv
    zm_abs = abs(t.vk0_percent) / 100 * zbase_lv * t.mag0_percent / 100
    zm = complex(zm_abs * t.mag0_rx, zm_abs) / np.sqrt(t.mag0_rx**2 + 1)
    z_hv, z_lv = t.si0_hv_partial * z0k, (1 - t.si0_hv_partial) * z0k
    z0_eff = z_lv + z_hv * zm / (z_hv + zm)
    for k in range(len(p)):
        v = lf.v_complex_pu[k] * v_base[:, None]  # V
        dv = v[ieee.line_from] - v[ieee.line_to]
        i = np.linalg.solve(ieee.line_z_ohm, dv[..., None])[..., 0]
        p_line_kw = np.sum((dv * np.conj(i)).real) / 1e3
        # current leaving the transformer's LV terminal into the feeder
        out = ieee.line_from == t.lv_bus
        i_lv = i[out].sum(axis=0) - i[ieee.line_to == t.lv_bus].sum(axis=0)
        i012 = PHASE_TO_SEQ @ i_lv
        p_trafo_kw = 3 * (r_k * (abs(i012[1]) ** 2 + abs(i012[2]) ** 2) + z0_eff.real * abs(i012[0]) ** 2) / 1e3
        balance = lf.p_source_kw[k].sum() - p[k].sum() - p_line_kw - p_trafo_kw
        assert abs(balance) <= 1e-6 * lf.p_source_kw[k].sum(), (k, balance)


# The on-peak loads of the IEEE feeder can be scaled up to between 5.5 and 5.6
# times before the load flow has no solution (the nose of the PV curve):
# found by continuation, warm-starting Newton from the previous solution in
# steps of 0.1; pandapower's runpp_3ph already fails at 5x.
NOSE_BELOW, NOSE_ABOVE = 5.5, 6.0


def test_newton_fallback_finds_the_fixed_point_solution(ieee):
    p, q = _on_peak(ieee, np.array([1.0, 4.0, NOSE_BELOW])[:, None, None])
    fp = bf.solve_loadflow(ieee, p, q)
    nt = bf.solve_loadflow(ieee, p, q, max_iter=1)  # forces every scenario into Newton
    assert fp.converged.all() and nt.converged.all()
    np.testing.assert_allclose(nt.v_pu, fp.v_pu, rtol=0, atol=1e-9)
    assert (nt.iterations > 1).all()


def test_collapse_is_flagged_not_hidden(ieee):
    """A batch with a scenario far beyond the feeder's loadability between
    two ordinary ones: the bad one is flagged with NaN values; pandapower has
    no solution there either; the others are solved as if alone."""
    import pandapower.networks as pn

    from bayesflex.io.pandapower import runpp_3ph_reference

    factors = np.array([1.0, NOSE_ABOVE, 2.0, 400.0])[:, None, None]
    p, q = _on_peak(ieee, factors)
    lf = bf.solve_loadflow(ieee, p, q)
    assert lf.converged.tolist() == [True, False, True, False]
    for k in (1, 3):
        assert np.isnan(lf.v_pu[k]).all() and np.isnan(lf.i_line_a[k]).all()
        assert np.isnan(lf.trafo_loading_pu[k])
    summary = bf.solve_loadflow(ieee, p, q, full=False)
    assert np.isnan(summary.v_min_pu[[1, 3]]).all() and not summary.converged[[1, 3]].any()
    alone = bf.solve_loadflow(ieee, p[[0, 2]], q[[0, 2]])
    np.testing.assert_allclose(lf.v_pu[[0, 2]], alone.v_pu, rtol=0, atol=1e-13)
    net = pn.ieee_european_lv_asymmetric("on_peak_566")
    net.sn_mva = 0.001
    assert not runpp_3ph_reference(net, ieee, p[1], q[1])["converged"]


def test_rejects_power_on_unconnected_phase(ieee):
    p = np.zeros((ieee.n_agent, 3))
    a = int(np.flatnonzero(~ieee.agent_phases[0])[0])
    p[0, a] = 1.0
    with pytest.raises(bf.SolverError, match=ieee.agents[0]):
        bf.solve_loadflow(ieee, p, p)
    with pytest.raises(bf.SolverError, match="shape"):
        bf.solve_loadflow(ieee, np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(bf.SolverError, match="NaN"):
        bf.solve_loadflow(ieee, np.full((ieee.n_agent, 3), np.nan) * ieee.agent_phases,
                          np.zeros((ieee.n_agent, 3)))
