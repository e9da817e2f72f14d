"""Feeders built from pandapower elements (source type ``pandapower_elements``): feeders/two_area.toml.

The physics check solves the same network with pandapower's ``runpp_3ph``.
The reference net is built by the same builder (it is pandapower's own
``create_*`` elements, solved by pandapower's own sequence-frame Newton
method, which shares no code with bayesflex's load flow).  As in
tests/test_loadflow_pandapower.py, ``net.sn_mva`` is set to 1 kVA so that
runpp_3ph converges far below the tolerance compared here, and a NaN in its
result counts as not converged.
"""

from __future__ import annotations

import tomllib

import numpy as np
import pytest

import bayesflex as bf
from bayesflex.core.checks import feeder_dir
from bayesflex.grid.heuristic import assess
from bayesflex.io.builder import net_from_elements
from bayesflex.io.pandapower import runpp_3ph_reference

V_ATOL = 1e-9  # pu (measured: 2e-11)
I_RTOL = 1e-5  # relative (measured: 3e-7)
TRAFO_RTOL = 1e-8  # relative (measured: 1.3e-10)
I_ATOL = 1e-4  # A, as tests/test_loadflow_pandapower.py


@pytest.fixture(scope="module")
def two_area() -> bf.Feeder:
    return bf.load_feeder("two_area")


def _toml_text() -> str:
    return (feeder_dir() / "two_area.toml").read_text()


def test_two_area_counts_and_names(two_area):
    f = two_area
    assert f.n_agent == 170 and len(f.trafos) == 2
    # 1 MV bus, 2 LV busbars, one joint and one house bus per house
    assert f.n_bus == 1 + 2 + 2 * 170
    # one main-cable span and one service cable per house
    assert f.n_line == 2 * 170
    assert f.buses[f.source.bus] == "mv busbar"
    assert all(t.hv_bus == f.source.bus for t in f.trafos)
    assert [f.buses[t.lv_bus] for t in f.trafos] == ["A lv busbar", "B lv busbar"]
    assert [(t.sn_kva, t.vn_hv_kv, t.vn_lv_kv, t.vector_group) for t in f.trafos] == [
        (250.0, 11.0, 0.416, "Dyn")] * 2
    assert f.agents[:2] == ("A1-01", "A1-02") and "B4-21" in f.agents
    a = f.agents.index("A1-07")
    assert f.buses[f.agent_bus[a]] == "A1-07 house"
    assert "A1 j07" in f.buses and "A1 main 07" in f.lines and "A1-07 service" in f.lines
    assert (f.agent_phases.sum(axis=1) == 1).all()  # every house single phase
    for area in "AB":
        mine = np.array([n.startswith(area) for n in f.agents])
        assert mine.sum() == 85
        per_phase = f.agent_phases[mine].sum(axis=0)
        assert per_phase.max() - per_phase.min() <= 1, per_phase  # phases rotate through the area
    # the as-shipped powers are the 1 kW, PF 0.95 placeholders on the house's phase
    np.testing.assert_allclose(f.agent_p_kw.sum(axis=1), 1.0)
    np.testing.assert_allclose(f.agent_q_kvar.sum(axis=1), np.tan(np.arccos(0.95)))
    assert f.bus_xy is not None and np.isfinite(f.bus_xy).all()
    assert len(np.unique(f.bus_xy.round(3), axis=0)) == f.n_bus  # no two buses on one spot
    assert (f.v_min_pu, f.v_max_pu) == (0.94, 1.10)


def test_two_area_voltages_plausible_at_2_kw_per_house(two_area):
    f = two_area
    p = np.where(f.agent_phases, 2.0, 0.0)
    q = p * np.tan(np.arccos(0.95))
    lf = bf.solve_loadflow(f, p[None], q[None])
    assert lf.converged[0]
    v = np.delete(lf.v_pu[0], f.source.bus, axis=0)
    assert 0.95 < v.min() < 0.99 and v.max() < 1.0
    assert 0.5 < lf.trafo_loading_pu[0] < 1.0  # 170 kW on 250 kVA per area
    assert lf.loading_pu[0].max() < 1.0


def test_two_area_matches_pandapower_runpp_3ph(two_area):
    """Seeded, strongly unbalanced scenarios (some houses exporting) against runpp_3ph."""
    f = two_area
    spec = tomllib.loads(_toml_text())["source"]
    net = net_from_elements(spec, origin="two_area.toml")
    net.sn_mva = 0.001
    rng = np.random.default_rng(2023)
    n = 4
    p = np.where(f.agent_phases, rng.uniform(-3.0, 7.0, size=(n, f.n_agent, 1)), 0.0)
    p[0] *= 1.8  # one heavy case: a transformer phase at ~1.8 times its rating
    q = p * np.tan(np.arccos(rng.uniform(0.9, 1.0, size=p.shape)))
    lf = bf.solve_loadflow(f, p, q)
    each = assess(f, p, q).trafo_loading_each_pu()  # what a study records per transformer
    worst = 0.0
    for k in range(n):
        ref = runpp_3ph_reference(net, f, p[k], q[k])
        assert ref["converged"], "pandapower did not converge on a case it should solve"
        assert lf.converged[k]
        np.testing.assert_allclose(lf.v_pu[k], ref["v_pu"], rtol=0, atol=V_ATOL)
        np.testing.assert_allclose(lf.i_line_a[k], ref["i_line_a"], rtol=I_RTOL, atol=I_ATOL)
        np.testing.assert_allclose(lf.trafo_loading_pu[k], ref["trafo_loading_pu"], rtol=TRAFO_RTOL)
        np.testing.assert_allclose(each[k], ref["trafo_loading_each_pu"], rtol=1e-6)  # study values are float32
        np.testing.assert_allclose(lf.p_source_kw[k].sum(), ref["p_source_kw"], rtol=1e-6)
        worst = max(worst, np.abs(lf.v_pu[k] - ref["v_pu"]).max())
    assert lf.trafo_loading_pu[0] > 1.5  # the heavy case is heavy
    print(f"largest voltage difference to runpp_3ph: {worst:.2e} pu")


@pytest.mark.parametrize(
    "old, new, words",
    [
        ('main_line_type = "cable_185"', 'main_line_type = "cable_300"',
         ["main_line_type", "'cable_300'", "allowed: cable_185, service"]),
        ("span_m = 10.0", "span_m = -10.0", ["'A' span_m", "-10.0", "allowed: >= 0.01"]),
        ("service_m = 15.0", "service_m = 15.0\nspann_m = 5.0", ["'spann_m'", "unknown key"]),
        ("houses_per_feeder = [30, 30, 25]", "houses_per_feeder = [30, 30]",
         ["houses_per_feeder", "2 entries", "feeders = 3"]),
        ("houses_per_feeder = [30, 30, 25]", "houses_per_feeder = [30, 30, 0]",
         ["houses_per_feeder[2]", "from 1 to"]),
        ("feeders = 3", "feeders = 2.5", ["feeders", "2.5", "integer"]),
        ("r_ohm_per_km = 0.166", "r_ohm_km = 0.166", ["[source.line_types.cable_185]", "'r_ohm_km'"]),
        ("max_i_ka = 0.33", "max_i_ka = 0.0", ["cable_185", "max_i_ka", ">= 0.001"]),
        ('vector_group = "Dyn"', 'vector_group = "YNyn"', ["vector_group", "'YNyn'", "allowed: Dyn"]),
        ("si0_hv_partial = 0.9", "si0_hv_partial = 1.5", ["si0_hv_partial", "<= 1"]),
        ("vkr_percent = 1.2", "vkr_percent = 4.5", ["vkr_percent", "below vk_percent"]),
        ("s_sc_max_mva = 57.2", "s_sc_max_mva = 'big'", ["[source.ext_grid] s_sc_max_mva", "number"]),
        ('name = "B"', 'name = "A"', ["name", "'A'", "unique"]),
    ],
)
def test_bad_elements_spec_gets_clear_errors(tmp_path, old, new, words):
    text = _toml_text()
    assert old in text, old
    _assert_named_error(tmp_path, text.replace(old, new, 1), words)


@pytest.mark.parametrize(
    "text, words",
    [
        ("[source]\ntype = 'pandapower_elements'\n", ["missing key(s)", "'area'", "'ext_grid'", "'line_types'"]),
        ("[source]\ntype = 'pandapower_elements'\next_grid = 11\nline_types = {}\narea = []\n",
         ["[source.ext_grid]", "must be a table"]),
        (("[source]\ntype = 'pandapower_elements'\n[source.ext_grid]\nvn_kv = 11.0\n"
          "[source.line_types]\n[[source.area]]\n"), ["[source.ext_grid]", "missing key(s)", "s_sc_max_mva"]),
    ],
)
def test_missing_tables_get_clear_errors(tmp_path, text, words):
    _assert_named_error(tmp_path, text, words)


def _assert_named_error(tmp_path, text: str, words) -> None:
    """Loading ``text`` as a feeder raises a ConfigError naming the file and every one of ``words``."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(bf.ConfigError) as e:
        bf.load_feeder(path)
    msg = str(e.value)
    assert "bad.toml" in msg, msg
    for w in words:
        assert w in msg, msg
