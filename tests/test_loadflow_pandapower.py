"""bayesflex's load flow against pandapower.runpp_3ph on the IEEE European LV feeder.

The reference is pandapower's own model of the network as shipped
(``pandapower.networks.ieee_european_lv_asymmetric``), solved by its
sequence-frame Newton method, which shares no code with ours.

One change to the reference: ``net.sn_mva`` is set from the shipped 100 MVA to
0.001 MVA.  This does not change the network (every element is given in
physical units), but runpp_3ph stops its outer loop at a fixed mismatch of
3e-8 per unit of ``sn_mva``: 3 W per bus at 100 MVA, which leaves its voltages
about 6e-6 pu and its currents up to 2e-4 (relative) short of convergence; at
1 kVA the stop is at 3e-5 W, and pandapower's line currents then equal the sum
of the load currents downstream (checked by hand on LINE1: 4.411560 A).

pandapower can report convergence with NaN results (its issue 3068); the
reference helper treats any NaN as not converged, and the tests require
convergence of the reference.
"""

from __future__ import annotations

import numpy as np
import pandapower.networks as pn
import pytest

import bayesflex as bf
from bayesflex.io.pandapower import feeder_from_pandapower, pandapower_agent_tables, runpp_3ph_reference

V_ATOL = 1e-6  # pu, required by the issue
I_RTOL = 1e-4  # relative, required by the issue
# pandapower derives a line's current from the voltage difference across it,
# which is noise on lines that carry no current; 0.1 mA absolute covers it.
I_ATOL = 1e-4  # A


def _reference_net(scenario: str):
    net = pn.ieee_european_lv_asymmetric(scenario)
    net.sn_mva = 0.001
    return net


def _shipped_powers(net, feeder):
    p = np.zeros((feeder.n_agent, 3))
    q = np.zeros((feeder.n_agent, 3))
    for a, (table, idx) in enumerate(pandapower_agent_tables(net, feeder)):
        row = net[table].loc[idx]
        p[a] = [row[f"p_{ph}_mw"] * 1e3 for ph in "abc"]
        q[a] = [row[f"q_{ph}_mvar"] * 1e3 for ph in "abc"]
    return p, q


def _compare(lf, k, ref):
    assert ref["converged"], "pandapower did not converge on a case it should solve"
    assert lf.converged[k]
    np.testing.assert_allclose(lf.v_pu[k], ref["v_pu"], rtol=0, atol=V_ATOL)
    np.testing.assert_allclose(lf.i_line_a[k], ref["i_line_a"], rtol=I_RTOL, atol=I_ATOL)
    np.testing.assert_allclose(lf.trafo_loading_pu[k], ref["trafo_loading_pu"], rtol=I_RTOL)


@pytest.mark.parametrize("scenario", ["off_peak_1", "on_peak_566", "off_peak_1440"])
def test_shipped_snapshots(scenario):
    """Each snapshot on its own network: they differ in more than the loads
    (the off-peak ones ship the transformer with mag0_percent = 1, the on-peak
    one with 100)."""
    net = _reference_net(scenario)
    ieee = feeder_from_pandapower(net, name=scenario, origin=f"pandapower {scenario}")
    p, q = _shipped_powers(net, ieee)
    lf = bf.solve_loadflow(ieee, p[None], q[None])
    ref = runpp_3ph_reference(net, ieee, p, q)
    _compare(lf, 0, ref)
    # the source delivers what the loads draw plus the losses, phase by phase
    np.testing.assert_allclose(lf.p_source_kw[0].sum(), ref["p_source_kw"], rtol=1e-6)
    np.testing.assert_allclose(lf.q_source_kvar[0].sum(), ref["q_source_kvar"], rtol=1e-5, atol=1e-5)


def test_random_per_phase_scalings(ieee):
    """8 seeded scenarios of the on-peak loads: 4 with one factor per phase
    in [0, 3], 4 with an independent factor in [0, 3] for every agent and
    phase (strongly unbalanced); each needs a pandapower solve (~1 s)."""
    rng = np.random.default_rng(566)
    net = _reference_net("on_peak_566")
    p0, q0 = _shipped_powers(net, ieee)
    factor = np.empty((8, ieee.n_agent, 3))
    factor[:4] = rng.uniform(0, 3, size=(4, 1, 3))
    factor[4:] = rng.uniform(0, 3, size=(4, ieee.n_agent, 3))
    p, q = p0 * factor, q0 * factor
    lf = bf.solve_loadflow(ieee, p, q)
    for k in range(len(p)):
        _compare(lf, k, runpp_3ph_reference(net, ieee, p[k], q[k]))


def test_reductions_equal_full_results(ieee, rng):
    p = ieee.agent_p_kw * rng.uniform(0, 3, size=(50, ieee.n_agent, 3))
    q = ieee.agent_q_kvar * rng.uniform(0, 3, size=(50, ieee.n_agent, 3))
    full = bf.solve_loadflow(ieee, p, q)
    red = bf.solve_loadflow(ieee, p, q, full=False, precision="double")
    np.testing.assert_array_equal(red.converged, full.converged)
    mon = np.arange(ieee.n_bus) != ieee.source.bus
    np.testing.assert_allclose(red.v_min_pu, full.v_pu[:, mon].min(axis=1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(red.v_max_pu, full.v_pu[:, mon].max(axis=1), rtol=0, atol=1e-12)
    # the default for reductions expands voltage drops in float32: < 1e-7 pu
    mixed = bf.solve_loadflow(ieee, p, q, full=False)
    np.testing.assert_allclose(mixed.v_min_pu, red.v_min_pu, rtol=0, atol=1e-7)
    np.testing.assert_allclose(mixed.v_max_pu, red.v_max_pu, rtol=0, atol=1e-7)
    np.testing.assert_allclose(red.loading_max_pu, full.loading_pu.max(axis=1), rtol=1e-12)
    np.testing.assert_allclose(red.trafo_loading_pu, full.trafo_loading_pu, rtol=1e-12)


def test_batch_shape_and_chunking(ieee, rng):
    """Any leading dimensions.  The chunk size changes results only below the
    solver's tolerance (1e-10 pu): a scenario may take one more fixed-point
    step in one chunk than in another, and BLAS rounds differently for
    different sizes."""
    p = ieee.agent_p_kw * rng.uniform(0, 2, size=(2, 3, 4, ieee.n_agent, 3))
    q = ieee.agent_q_kvar * rng.uniform(0, 2, size=p.shape)
    a = bf.solve_loadflow(ieee, p, q, chunk_size=5)
    b = bf.solve_loadflow(ieee, p.reshape(-1, ieee.n_agent, 3), q.reshape(-1, ieee.n_agent, 3))
    assert a.v_pu.shape == (2, 3, 4, ieee.n_bus, 3)
    assert a.i_line_a.shape == (2, 3, 4, ieee.n_line, 3)
    assert a.converged.shape == (2, 3, 4)
    np.testing.assert_allclose(a.v_pu.reshape(b.v_pu.shape), b.v_pu, rtol=0, atol=1e-10)
    np.testing.assert_allclose(a.i_line_a.reshape(b.i_line_a.shape), b.i_line_a, rtol=1e-8, atol=1e-7)
    c = bf.solve_loadflow(ieee, p, q, chunk_size=5)
    np.testing.assert_array_equal(a.v_pu, c.v_pu)  # same inputs, same chunking: identical
