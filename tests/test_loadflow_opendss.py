"""OpenDSS models: the official IEEE LV model, and every ENWL feeder.

The official IEEE LV snapshot solutions (OpenDSS and GridLAB-D, ../shared/data/ieee_eu_lv/Solutions)
are golden cases: tests/golden/ieee_lv_*, run by tests/test_golden.py, each with its tolerances
and why.  Why the feeder read from the OpenDSS model and pandapower's copy of it differ:

* OpenDSS switches a load to constant impedance below ``Vminpu = 0.95``; we
  keep constant power.  No load in these snapshots falls below 1.02 pu, so
  the switch never acts.
* The source: OpenDSS's ``Vsource`` is 1.05 pu behind Z1 = Z2 from ISC3 =
  3000 A and Z0 from ISC1 = 5 A; our OpenDSS reader keeps exactly that.  The
  pandapower version of the feeder instead holds the HV bus at 1.05 pu (an
  ideal slack), which moves LV voltages by up to ~1e-3 pu at the on-peak
  snapshot; it is compared at the issue's 0.01 pu.
* The transformer: OpenDSS builds it from three single-phase units (zero
  sequence leakage equal to the positive one, no zero-sequence magnetising
  path); pandapower's version has ``mag0_percent = 100``, ``si0_hv_partial =
  0.9``.
* OpenDSS stops at its default tolerance of 1e-4 pu and exports magnitudes to
  6 significant digits (4e-6 pu at 240 V), so for the model read from OpenDSS
  we require agreement to 1e-4 pu.

ENWL feeders (../shared/data/enwl/networks): each converted feeder solves, and
agrees to 1e-6 pu with pandapower's runpp_3ph on the same network built in
pandapower (``to_pandapower``), with the source made an ideal slack there since
pandapower's ext_grid has no positive-sequence impedance.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import bayesflex as bf
from bayesflex.io.pandapower import runpp_3ph_reference, to_pandapower

from .conftest import shared_path

TAN_PHI = np.tan(np.arccos(0.95))


@pytest.fixture(scope="module")
def ieee_dss():
    return bf.load_feeder(shared_path("ieee_eu_lv", "opendss"))


def test_opendss_reader_matches_pandapower_definition(ieee_dss, ieee):
    """The same feeder from two sources: identical topology and line data."""
    assert ieee_dss.n_bus == ieee.n_bus and ieee_dss.n_line == ieee.n_line
    assert [b.lower() for b in ieee.buses] == list(ieee_dss.buses)
    # pandapower's copy of the feeder rounds the segment lengths (relative
    # differences up to 1.4e-6 on the shortest segments)
    np.testing.assert_allclose(ieee_dss.line_z_ohm, ieee.line_z_ohm, rtol=1e-5, atol=1e-15)
    assert sorted(a.lower() for a in ieee.agents) == sorted(ieee_dss.agents)
    t1, t2 = ieee_dss.trafos[0], ieee.trafos[0]
    assert (t1.vk_percent, t1.vkr_percent, t1.vector_group) == pytest.approx(
        (t2.vk_percent, t2.vkr_percent, t2.vector_group))


def _enwl_feeders():
    root = shared_path("enwl", "networks")
    return sorted(root.glob("network_*/Feeder_*"))


@pytest.mark.slow
def test_all_enwl_feeders_match_pandapower():
    feeders = _enwl_feeders()
    assert len(feeders) == 29
    rng = np.random.default_rng(29)
    worst = 0.0
    for folder in feeders:
        f = bf.load_feeder(folder)
        assert f.n_agent > 0 and f.trafos
        f = f.replace(source=dataclasses.replace(f.source, z1_ohm=0j))
        # 0.1-1.5 kW per household (after-diversity demand), PF 0.95; some of
        # these feeders are weak: network 2 feeder 4 is at 0.90 pu with 1 kW
        # in every house and has no solution at 4 kW.
        p = np.where(f.agent_phases, rng.uniform(0.1, 1.5, size=(f.n_agent, 1)), 0.0)
        q = p * TAN_PHI
        lf = bf.solve_loadflow(f, p, q)
        assert lf.converged, folder
        ref = runpp_3ph_reference(to_pandapower(f), f, p, q)
        assert ref["converged"], folder
        err = np.abs(lf.v_pu - ref["v_pu"]).max()
        worst = max(worst, err)
        assert err <= 1e-6, f"{folder}: max |dV| = {err:.2e} pu"
        np.testing.assert_allclose(lf.i_line_a, ref["i_line_a"], rtol=1e-4, atol=1e-4, err_msg=str(folder))
    print(f"worst |dV| over 29 ENWL feeders: {worst:.2e} pu")
