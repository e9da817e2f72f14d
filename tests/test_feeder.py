"""Feeders: what is read, that it cannot be changed, and clear errors for bad input."""

from __future__ import annotations

import copy
import dataclasses
import functools
import pickle

import numpy as np
import pandapower as pp
import pandapower.networks as pn
import pytest

import bayesflex as bf
from bayesflex.io.pandapower import _cached_network, feeder_from_pandapower, feeder_from_pandapower_network

TINY_DSS = """\
Clear
Set DefaultBaseFrequency=50
New Circuit.tiny BasekV=11 pu=1.0 ISC3=3000 ISC1=2500
New Transformer.TR1 Buses=[SourceBus 1] Conns=[{conns}] kVs=[11 0.416] kVAs=[400 400] XHL=4 %loadloss=1
New LineCode.lc nphases=3 R1=0.3 X1=0.07 R0=1.2 X0=0.08 C1=0 C0=0 Units=km
New Line.L1 Bus1=1 Bus2=2 phases=3 Linecode=lc Length=100 Units=m
New Line.L2 Bus1=2 Bus2=3 phases=3 Linecode=lc Length=50 Units=m
New Load.HOUSE1 Phases=1 Bus1={load_bus} kV=0.23 kW=5 PF=0.95
{extra}
"""


def _tiny(tmp_path, conns="Delta Wye", load_bus="3.2", extra=""):
    (tmp_path / "Master.dss").write_text(TINY_DSS.format(conns=conns, load_bus=load_bus, extra=extra))
    return tmp_path


def test_ieee_default_feeder_as_documented(ieee):
    """Counts from the feeder's own documentation (shared/data/ieee_eu_lv/README.md)."""
    assert ieee.n_bus == 907 and ieee.n_line == 905 and ieee.n_agent == 55
    assert ieee.agent_phases.sum(axis=0).tolist() == [21, 19, 15]
    assert (ieee.agent_phases.sum(axis=1) == 1).all()
    assert ieee.buses[ieee.source.bus] == "SOURCEBUS"
    t = ieee.trafos[0]
    assert (t.sn_kva, t.vn_hv_kv, t.vn_lv_kv) == pytest.approx((800.0, 11.0, 0.416))  # stored as float32
    assert t.vector_group == "Dyn"
    assert (ieee.v_min_pu, ieee.v_max_pu) == (0.94, 1.10)
    assert "LINE1" in ieee.lines and "LOAD1" in ieee.agents
    assert len(ieee.sha256) == 64


def test_feeder_is_immutable_and_pickles(ieee):
    with pytest.raises(dataclasses.FrozenInstanceError):
        ieee.name = "other"
    with pytest.raises(ValueError):
        ieee.line_z_ohm[0, 0, 0] = 1.0
    again = pickle.loads(pickle.dumps(ieee))
    p, q = ieee.agent_p_kw[None], ieee.agent_q_kvar[None]
    np.testing.assert_array_equal(bf.solve_loadflow(again, p, q).v_pu, bf.solve_loadflow(ieee, p, q).v_pu)
    changed = ieee.replace(v_min_pu=0.9)
    assert changed.v_min_pu == 0.9 and ieee.v_min_pu == 0.94


def test_tiny_opendss_model(tmp_path):
    f = bf.load_feeder(_tiny(tmp_path))
    assert f.buses[f.source.bus] == "sourcebus"
    assert f.agents == ("house1",) and f.agent_phases.tolist() == [[False, True, False]]
    assert f.agent_p_kw[0, 1] == pytest.approx(5.0)
    t = f.trafos[0]
    assert t.vkr_percent == pytest.approx(1.0) and t.vk_percent == pytest.approx(np.hypot(4, 1))
    # a single load on phase b: phase b sags most, and the source sees kW + losses
    lf = bf.solve_loadflow(f, f.agent_p_kw, f.agent_q_kvar)
    assert lf.converged and lf.v_pu[-1].argmin() == 1
    assert 5.0 < lf.p_source_kw.sum() < 5.2


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"conns": "Wye Wye"}, ["Transformer.tr1", "allowed: [Delta Wye]"]),
        ({"load_bus": "nowhere.1"}, ["'nowhere'", "not connected to the source"]),
        ({"extra": "New Line.L9 Bus1=7 Bus2=8 phases=3 Linecode=lc Length=10 Units=m"},
         ["bus '7' is not connected", "bus '8' is not connected"]),
        ({"extra": "New Load.D1 Phases=3 Bus1=2 kV=0.416 kW=3 conn=delta"},
         ["Load.d1", "delta connection not supported"]),
        ({"extra": "New Line.BAD Bus1=2 Bus2=9 phases=3 Linecode=lc Length=10 Units=m normamps=0"},
         ["line 'bad'", "not positive"]),
        ({"extra": "New Line.X Bus1=2 Bus2=4 phases=3 Lincode=lc"}, ["Master.dss:9", "Lincode"]),
    ],
)
def test_bad_opendss_feeders_get_clear_errors(tmp_path, kwargs, words):
    with pytest.raises(bf.FeederError) as e:
        bf.load_feeder(_tiny(tmp_path, **kwargs))
    for w in words:
        assert w in str(e.value), str(e.value)


@functools.cache
def _ieee_net():
    """pandapower's IEEE European LV network, built once (~3 s from the JSON pandapower ships)."""
    return pn.ieee_european_lv_asymmetric("on_peak_566")


def _pp_json(tmp_path, change):
    net = copy.deepcopy(_ieee_net())
    change(net)
    path = tmp_path / "net.json"
    pp.to_json(net, str(path))
    return path


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda n: n.trafo.__setitem__("vk0_percent", np.nan), ["Trafo", "vk0_percent is missing"]),
        (lambda n: n.trafo.__setitem__("vector_group", "YNyn"), ["'YNyn' not supported", "allowed: Dyn"]),
        (lambda n: n.line.__setitem__("r0_ohm_per_km", np.nan), ["LINE1", "r0_ohm_per_km is missing"]),
        (lambda n: n.line.loc.__setitem__((5, "max_i_ka"), 0.0), ["line 'LINE6'", "0.0 A is not positive"]),
        (lambda n: n.asymmetric_load.loc.__setitem__((0, "bus"), 99999), ["LOAD1", "bus 99999 does not exist"]),
        (lambda n: n.trafo.__setitem__("sn_mva", -0.8), ["sn_kva = -800.0 is not positive"]),
        (lambda n: n.ext_grid.__setitem__("s_sc_max_mva", np.nan), ["ext_grid", "s_sc_max_mva"]),
    ],
)
def test_bad_pandapower_feeders_get_clear_errors(tmp_path, change, words):
    with pytest.raises(bf.FeederError) as e:
        bf.load_feeder(_pp_json(tmp_path, change))
    msg = str(e.value)
    assert "net.json" in msg
    for w in words:
        assert w in msg, msg


def test_pandapower_json_round_trip(tmp_path, ieee):
    f = bf.load_feeder(_pp_json(tmp_path, lambda n: None))
    np.testing.assert_array_equal(f.line_z_ohm, ieee.line_z_ohm)
    assert f.agents == ieee.agents


def test_a_pandapower_network_is_built_once_per_function_and_arguments(monkeypatch):
    """pandapower builds a shipped network from its JSON in seconds, so a process builds it once for
    each function and arguments, whatever file names it; other arguments build another network,
    and both are what a fresh build gives."""
    calls = []
    original = pn.ieee_european_lv_asymmetric

    def counted(**kwargs):
        calls.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(pn, "ieee_european_lv_asymmetric", counted)
    _cached_network.cache_clear()  # networks other tests of this process built
    kw = {"name": "cache-check", "origin": f"test {id(calls)}"}  # a key no other test uses
    load = feeder_from_pandapower_network
    on_peak = load("ieee_european_lv_asymmetric", {"scenario": "on_peak_566"}, **kw)
    again = load("ieee_european_lv_asymmetric", {"scenario": "on_peak_566"}, **kw)
    off_peak = load("ieee_european_lv_asymmetric", {"scenario": "off_peak_1"}, **kw)
    elsewhere = load("ieee_european_lv_asymmetric", {"scenario": "off_peak_1"}, name="moved",
                     origin=f"elsewhere {id(calls)}")  # another file naming the same network
    assert calls == [{"scenario": "on_peak_566"}, {"scenario": "off_peak_1"}]
    assert again is on_peak
    fresh = feeder_from_pandapower(original(scenario="off_peak_1"), name="cache-check",
                                   origin=off_peak.origin)
    np.testing.assert_array_equal(off_peak.agent_p_kw, fresh.agent_p_kw)
    assert not np.array_equal(off_peak.agent_p_kw, on_peak.agent_p_kw)
    assert (elsewhere.name, elsewhere.origin) == ("moved", f"elsewhere {id(calls)} (pandapower.networks."
                                                 "ieee_european_lv_asymmetric)")
    for field in dataclasses.fields(fresh):  # the same network but for its name and origin
        if field.name not in ("name", "origin"):
            np.testing.assert_array_equal(getattr(elsewhere, field.name), getattr(fresh, field.name), field.name)


def test_all_problems_are_listed_at_once(tmp_path):
    def two(n):
        n.line.loc[3, "max_i_ka"] = -1.0
        n.trafo["vector_group"] = "Yzn"

    with pytest.raises(bf.FeederError) as e:
        bf.load_feeder(_pp_json(tmp_path, two))
    assert len(e.value.problems) == 2


@pytest.mark.parametrize(
    "text, words",
    [
        ("[source\ntype = 'opendss'", ["bad.toml", "not valid TOML"]),
        ("[source]\ntype = 'cim'", ["bad.toml", "'cim' unknown", "pandapower, pandapower_json, opendss"]),
        ("[source]\ntype = 'opendss'\npath = 'nothere'", ["bad.toml", "does not exist"]),
        ("[sorce]\ntype = 'opendss'", ["bad.toml", "unknown table"]),
        ("[source]\ntype = 'pandapower'\nnetwork = 'no_such_net'", ["no_such_net"]),
        ("[source]\ntype = 'pandapower'\nnetwork = 'ieee_european_lv_asymmetric'\n"
         "[limits]\nv_min = 0.9", ["[limits]", "v_min", "allowed: v_min_pu, v_max_pu"]),
    ],
)
def test_bad_feeder_toml_gets_clear_errors(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(bf.BayesflexError) as e:
        bf.load_feeder(path)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_unknown_feeder_name_lists_the_built_in_ones():
    with pytest.raises(bf.ConfigError, match="built-in feeders: .*ieee_eu_lv"):
        bf.load_feeder("atlantis")


def test_feeder_toml_pointing_at_opendss(tmp_path):
    _tiny(tmp_path)
    (tmp_path / "tiny.toml").write_text("[source]\ntype = 'opendss'\npath = '.'\n[limits]\nv_min_pu = 0.9\n")
    f = bf.load_feeder(tmp_path / "tiny.toml")
    assert f.name == "tiny" and f.v_min_pu == 0.9 and f.n_agent == 1


def _opendss_solution(master, feeder):
    """OpenDSS's own solution of a model (test-only reference), pu per (bus, phase)."""
    import opendssdirect as dss

    dss.Text.Command("clear")
    dss.Text.Command(f'compile "{master}"')
    dss.Text.Command("set tolerance=1e-10")
    dss.Text.Command("set maxiterations=100")
    dss.Text.Command("solve")
    assert dss.Solution.Converged()
    v = np.full((feeder.n_bus, 3), np.nan)
    for i, b in enumerate(feeder.buses):
        dss.Circuit.SetActiveBus(b)
        nodes = dss.Bus.Nodes()
        mags = np.array(dss.Bus.VMagAngle()[::2]) / (feeder.bus_vn_kv[i] * 1e3 / np.sqrt(3))
        for node, mag in zip(nodes, mags):
            if 1 <= node <= 3:
                v[i, node - 1] = mag
    return v


MATRIX_CODE = ("New LineCode.lc nphases=3 units=km rmatrix=(0.35 | 0.12 0.33 | 0.11 0.13 0.36) "
               "xmatrix=(0.08 | 0.03 0.07 | 0.02 0.035 0.075) cmatrix=(0 | 0 0 | 0 0 0)")


@pytest.mark.parametrize(
    "variant",
    ["sequence codes", "matrix codes", "hv tap", "lv tap", "three-phase load"],
)
def test_small_models_match_the_opendss_engine(tmp_path, variant):
    """OpenDSS's own solve (constant-PQ loads stay above its 0.95 pu switch to
    constant impedance here) against ours, on the same model."""
    text = TINY_DSS.format(conns="Delta Wye", load_bus="3.2",
                           extra="New Load.HOUSE2 Phases=1 Bus1=2.3 kV=0.23 kW=8 PF=0.9")
    if variant == "matrix codes":
        text = "\n".join(MATRIX_CODE if ln.startswith("New LineCode") else ln for ln in text.splitlines())
    if variant == "hv tap":
        text = text.replace("%loadloss=1", "%loadloss=1 wdg=1 tap=1.025")
    if variant == "lv tap":
        text = text.replace("%loadloss=1", "%loadloss=1 wdg=2 tap=0.975")
    if variant == "three-phase load":
        text += "New Load.SHOP Phases=3 Bus1=3 kV=0.416 kW=30 PF=0.95\n"
    (tmp_path / "Master.dss").write_text(text)
    f = bf.load_feeder(tmp_path)
    if variant == "matrix codes":
        z = f.line_z_ohm[f.lines.index("l2")]
        assert z[1, 0] == pytest.approx(complex(0.12, 0.03) * 0.05) and z[2, 1] == pytest.approx(complex(0.13, 0.035) * 0.05)
    if variant.endswith("tap"):
        t = f.trafos[0]
        assert t.tap_side == ("hv" if variant == "hv tap" else "lv")
        assert t.tap_pos == pytest.approx(2.5 if variant == "hv tap" else -2.5)
    lf = bf.solve_loadflow(f, f.agent_p_kw, f.agent_q_kvar)
    assert lf.converged
    ref = _opendss_solution(tmp_path / "Master.dss", f)
    np.testing.assert_allclose(lf.v_pu, ref, rtol=0, atol=1e-6)


def test_a_pickled_feeder_carries_its_model(monkeypatch):
    """What a worker receives: the feeder with its network model and constraint table, not the
    instructions to build them again (which took up to 1.7 s per task on the large ENWL feeders)."""
    import bayesflex.grid.feeder as feeder_module
    from bayesflex.grid.heuristic import Limits, constraints

    fd = bf.load_feeder("ieee_eu_lv")
    table = constraints(fd.model, Limits())
    copy = pickle.loads(pickle.dumps(fd))

    def rebuilt(_):
        raise AssertionError("the worker built the network model again")

    monkeypatch.setattr(feeder_module, "build_model", rebuilt)
    np.testing.assert_array_equal(copy.model.z_ll, fd.model.z_ll)
    np.testing.assert_array_equal(constraints(copy.model, Limits()).c_t, table.c_t)
    assert copy.replace(name="other").name == "other"  # a changed feeder is a new one ...
    with pytest.raises(AssertionError, match="built the network model again"):
        copy.replace(name="other").model  # ... whose model is built for it
