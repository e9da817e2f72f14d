"""Hostile input, as property tests (issue 7, item 5).

Every reader of user files gets malformed variants of a good file: a key or
table deleted, a value of the wrong type, negative, NaN, infinite, out of
range, huge or empty, an unknown key or distribution, broken syntax, random
bytes, text that is not UTF-8; for OpenDSS and CSV files also deleted or
garbled lines and cells.  The property, for every variant:

* the reader raises :class:`ConfigError` or :class:`FeederError` whose
  message names the file and, where there is one, the offending key, column
  or row; never another exception type; or
* it loads, and then what it loaded is what the file says: each value is
  compared with an independent reading of the mutated file (``tomllib``, or
  our own parse of the OpenDSS/CSV text), and no NaN, infinite or
  out-of-domain value got through.

Runs are deterministic (``derandomize=True``, no example database).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import shutil
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bayesflex.errors import ConfigError, FeederError
from bayesflex.priors import load_priors, priors_dir

from .conftest import fifo_nobody_opens, shared_path

REPO = Path(__file__).resolve().parents[1]


def _settings(n: int):
    return settings(derandomize=True, database=None, deadline=None, max_examples=n,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ----------------------------------------------------------------------------
# a small TOML writer (the test must not depend on the loader to write files)
# ----------------------------------------------------------------------------
_BARE = re.compile(r"[A-Za-z0-9_-]+\Z")


def _key(k: str) -> str:
    return k if _BARE.fullmatch(k) else json.dumps(k)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    return v.isoformat()  # TOML date-times


def dump_toml(cfg: dict) -> str:
    """Top-level scalars first, then one ``[table]`` per dict; deeper dicts inline."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in cfg.items() if not isinstance(v, dict)]
    for name, tab in cfg.items():
        if isinstance(tab, dict):
            lines.append(f"\n[{_key(name)}]")
            lines += [f"{_key(k)} = {_value(v)}" for k, v in tab.items()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------
# mutations of a parsed TOML document
# ----------------------------------------------------------------------------
NAN, INF = float("nan"), float("inf")
#: wrong types, non-finite, negative, out of [0, 1], huge, zero, empty
BAD_VALUES = ["abc", "", True, [1.0, 2.0], {"a": 1}, NAN, INF, -INF, -1.0, -0.5, 1.5, 0, 0.0, 1e308, 10**18,
              -(10**18), 1e-320, 2.5]
#: values no numeric key may accept
ALWAYS_BAD = ("abc", "", True, NAN, INF, -INF)


def _paths(node, prefix=(), *, list_items=(0, -1)):
    """Every path (tuple of keys and list indices) into ``node``, tables and leaves alike."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,), list_items=list_items)
    elif isinstance(node, list) and node:
        for i in sorted({i % len(node) for i in list_items}):
            out.append(prefix + (i,))
            out += _paths(node[i], prefix + (i,), list_items=list_items)
    return out


def _deepcopy(v):
    if isinstance(v, dict):
        return {k: _deepcopy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_deepcopy(x) for x in v]
    return v


def _parent(cfg, path):
    node = cfg
    for p in path[:-1]:
        node = node[p]
    return node


@st.composite
def toml_mutation(draw, base: dict, paths: list):
    """(mutated document, path, kind, new value or key)."""
    cfg = _deepcopy(base)
    kind = draw(st.sampled_from(["delete", "replace", "unknown_key"]))
    path = draw(st.sampled_from(paths))
    parent = _parent(cfg, path)
    if kind == "delete":
        del parent[path[-1]]
        return cfg, path, kind, None
    if kind == "replace":
        new = draw(st.sampled_from(BAD_VALUES))
        parent[path[-1]] = new
        return cfg, path, kind, new
    # an unknown key in the innermost table on the path
    node = _parent(cfg, path + (None,))
    while not isinstance(node, dict):
        path = path[:-1]
        node = _parent(cfg, path + (None,))
    new_key = draw(st.sampled_from(["colour", "sigma_typo", "Penetration", "shape-kw"]))
    assume(new_key not in node)
    node[new_key] = draw(st.sampled_from([1.0, "x", True]))
    return cfg, path + (new_key,), kind, new_key


@st.composite
def text_mutation(draw, text: str):
    """Bytes of ``text`` broken at the syntax or encoding level."""
    kind = draw(st.sampled_from(["truncate", "insert", "drop_line", "random_bytes", "not_utf8", "duplicate_line"]))
    raw = text.encode()
    if kind == "random_bytes":
        return draw(st.binary(min_size=0, max_size=200)), kind
    lines = text.splitlines(keepends=True)
    if kind in ("drop_line", "duplicate_line"):
        content = [i for i, s in enumerate(lines) if s.strip() and not s.lstrip().startswith("#")]
        i = draw(st.sampled_from(content))
        lines[i:i + 1] = [] if kind == "drop_line" else [lines[i], lines[i]]
        return "".join(lines).encode(), kind
    pos = draw(st.integers(0, len(raw)))
    if kind == "truncate":
        return raw[:pos], kind
    if kind == "not_utf8":
        return raw[:pos] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\x80abc"])) + raw[pos:], kind
    return raw[:pos] + draw(st.sampled_from([b"[", b"]", b"=", b'"', b"{", b"\n", b"\x00", b"x"])) + raw[pos:], kind


def _parse(raw: bytes):
    """What the file says, read independently; None if it is not UTF-8 TOML."""
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None


def _names_in(path) -> list[str]:
    return [p for p in path if isinstance(p, str)]


# ----------------------------------------------------------------------------
# (a) priors TOML
# ----------------------------------------------------------------------------
DEFAULT_PRIORS_TEXT = (priors_dir() / "default.toml").read_text()
DEFAULT_PRIORS = tomllib.loads(DEFAULT_PRIORS_TEXT)
PRIOR_PATHS = _paths(DEFAULT_PRIORS)

#: domains, from the priors README and the model docstrings (not from the loader)
PROBABILITY = {"penetration", "keep_moving", "charge_efficiency", "soc_min", "soc_max", "suction_flex", "persistence",
               "day_share", "power_factor", "performance_ratio", "cloud_rho", "initial_soc", "temp_error_rho", "duty",
               "timed_share"}
POSITIVE = {"level_log_sd", "appliance_kw", "knee_kw", "knee_power", "electrified_service_kw", "capacity_kw",
            "cloud_logit_sd", "agent_factor_sd", "battery_kwh", "charger_kw", "kwh_per_halfhour_moving",
            "heat_loss_kw_per_k", "heat_capacity_kwh_per_k", "rating_kw", "temp_error_sd", "capacity_kwh", "power_kw",
            "concentration", "setback_k", "flow_temp_c", "comfort_band_k", "timer_start_h", "timer_end_h"}
PROBABILITY_LISTS = {"leave_home", "leave_other", "home_share", "service_share", "call_start", "call_stop"}


def _check_number(where: str, key: str, got: float, want) -> None:
    assert isinstance(want, (int, float)) and not isinstance(want, bool), f"{where} {key}: accepted {want!r}"
    assert math.isfinite(got), f"{where} {key}: accepted {got}"
    assert got == float(want), f"{where} {key}: loaded {got}, file says {want!r}"
    if key in PROBABILITY:
        assert 0 <= got <= 1, f"{where} {key}: probability {got} accepted"
    if key in POSITIVE:
        assert got >= 0, f"{where} {key}: negative {got} accepted"


def assert_priors_match(pri, cfg: dict) -> None:
    """What ``load_priors`` returned is what the file ``cfg`` says (values it gives, domains of all)."""
    hz = cfg.get("horizon", {})
    if "start" in hz:
        assert isinstance(hz["start"], str) or hasattr(hz["start"], "isoformat"), f"start {hz['start']!r}"
        assert pri.start == pd.Timestamp(hz["start"])
    assert pri.start is not pd.NaT and pri.start.tz is None
    if "periods" in hz:
        assert pri.periods == hz["periods"] and not isinstance(hz["periods"], bool)
    assert isinstance(pri.periods, int) and 1 <= pri.periods
    site = cfg.get("site", {})
    for key, got in (("latitude", pri.latitude), ("longitude", pri.longitude)):
        if key in site:
            _check_number("[site]", key, got, site[key])
    assert -90 <= pri.latitude <= 90 and -180 <= pri.longitude <= 180
    if "name" in site:
        assert isinstance(site["name"], str), f"[site] name = {site['name']!r} accepted"
    assert set(pri.technologies) == set(cfg) - {"horizon", "site"}
    for tech, t in pri.technologies.items():
        tab, where = cfg[tech], f"[{tech}]"
        assert isinstance(tab, dict)
        for key, par in t.params.items():
            want = tab[key]
            if par.fixed:
                _check_number(where, key, par.value, want)
            else:
                assert isinstance(want, dict) and par.dist == want["dist"], f"{where} {key}: {par} vs {want!r}"
                args = {k: v for k, v in want.items() if k != "dist"}
                assert dict(par.args) == args, f"{where} {key}: {par} vs {want!r}"
                assert all(math.isfinite(v) for v in dict(par.args).values())
        if "penetration" in tab:
            _check_number(where, "penetration", t.penetration, tab["penetration"])
        if "agents" in tab:
            assert t.agents == tuple(tab["agents"])
        for key, got in t.extra.items():
            if key in tab:
                want = tab[key]
                if isinstance(got, tuple):
                    assert isinstance(want, list) and len(got) == len(want)
                    for g, w in zip(got, want):
                        _check_number(where, key, g, w)
                        assert key not in PROBABILITY_LISTS or 0 <= g <= 1
                        assert key not in ("shape_kw", "service_kw") or g >= 0
                elif isinstance(got, bool):
                    assert got is want
                else:
                    _check_number(where, key, got, want)
            else:  # a default: still in its domain
                vals = got if isinstance(got, tuple) else (got,)
                assert all(isinstance(v, bool) or math.isfinite(v) for v in vals), f"{where} {key} default {got}"
        unknown = set(tab) - set(t.params) - set(t.extra) - {"penetration", "agents"}
        assert not unknown, f"{where}: unknown key(s) {unknown} accepted"
    if "baseload" in pri:
        extra = pri["baseload"].extra
        assert len(extra["shape_kw"]) == 48 and sum(extra["shape_kw"]) > 0
        assert len(extra["service_share"]) == len(extra["service_kw"]) > 0
        assert abs(sum(extra["service_share"]) - 1) < 1e-6


def _load_or_error(load, path: Path, raw: bytes | None):
    """Run ``load(path)``; return the error (ConfigError/FeederError) or the loaded value.
    Any other exception type fails the test."""
    try:
        return load(path)
    except (ConfigError, FeederError) as e:
        msg = str(e)
        assert str(path) in msg or path.name in msg, f"error does not name the file {path}: {msg}"
        return e


@_settings(50)
@given(mutation=toml_mutation(DEFAULT_PRIORS, PRIOR_PATHS))
def test_mutated_priors_load_right_or_fail_clearly(tmp_path_factory, mutation):
    cfg, path, kind, new = mutation
    file = tmp_path_factory.mktemp("priors") / "mutated.toml"
    file.write_text(dump_toml(cfg))
    got = _load_or_error(load_priors, file, None)
    if isinstance(got, Exception):
        msg = str(got)
        for name in _names_in(path):
            if name != "dist" or kind == "unknown_key":
                assert name in msg, f"{kind} at {path}: message does not name {name!r}: {msg}"
        return
    assert kind != "unknown_key", f"unknown key {new!r} at {path} accepted"
    if kind == "replace" and not isinstance(_parent(DEFAULT_PRIORS, path)[path[-1]], (bool, str)):
        assert not any(new is bad for bad in ALWAYS_BAD), f"{path} = {new!r} accepted"
    assert_priors_match(got, tomllib.loads(file.read_text()))


@_settings(40)
@given(mutation=text_mutation(DEFAULT_PRIORS_TEXT))
def test_broken_priors_text_fails_clearly(tmp_path_factory, mutation):
    raw, kind = mutation
    file = tmp_path_factory.mktemp("priors") / "broken.toml"
    file.write_bytes(raw)
    got = _load_or_error(load_priors, file, raw)
    cfg = _parse(raw)
    if isinstance(got, Exception):
        return
    assert cfg is not None, f"{kind}: not UTF-8 TOML, yet loaded"
    assert_priors_match(got, cfg)


# ----------------------------------------------------------------------------
# (b) feeder TOML
# ----------------------------------------------------------------------------
IEEE_TEXT = (REPO / "feeders" / "ieee_eu_lv.toml").read_text()
IEEE_CFG = tomllib.loads(IEEE_TEXT)
IEEE_AGENTS = 55  # the file's own comment: 55 single-phase residential loads
# the two-area file with fewer houses (every key kept), so that a harmless mutation builds in a blink
TWO_AREA_TEXT = (REPO / "feeders" / "two_area.toml").read_text() \
    .replace("houses_per_feeder = [30, 30, 25]", "houses_per_feeder = [3, 2, 2]") \
    .replace("houses_per_feeder = [22, 21, 21, 21]", "houses_per_feeder = [2, 1, 1, 1]")
TWO_AREA_CFG = tomllib.loads(TWO_AREA_TEXT)
assert TWO_AREA_CFG["source"]["area"][1]["houses_per_feeder"] == [2, 1, 1, 1]


def _load_feeder(path):
    from bayesflex.io.feeders import load_feeder

    return load_feeder(path)


def _check_limits(feeder, cfg: dict) -> None:
    lim = cfg.get("limits", {})
    for key, got in (("v_min_pu", feeder.v_min_pu), ("v_max_pu", feeder.v_max_pu)):
        if key in lim:
            _check_number("[limits]", key, got, lim[key])
    assert 0 < feeder.v_min_pu < feeder.v_max_pu < 2, (feeder.v_min_pu, feeder.v_max_pu)
    name = cfg.get("feeder", {}).get("name")
    assert feeder.name == name if name is not None else isinstance(feeder.name, str)
    assert isinstance(feeder.name, str) and feeder.name


def assert_ieee_matches(feeder, cfg: dict) -> None:
    _check_limits(feeder, cfg)
    assert cfg["source"]["type"] == "pandapower" and cfg["source"]["network"] == "ieee_european_lv_asymmetric"
    assert feeder.n_agent == IEEE_AGENTS and feeder.n_line == 905


def _z1(z_abc: np.ndarray) -> complex:
    from bayesflex.grid.sequence import phase_to_sequence_matrix

    return phase_to_sequence_matrix(z_abc)[1, 1]


def assert_two_area_matches(feeder, cfg: dict) -> None:
    """The built network is the one the file describes: counts, cables, transformers, source."""
    _check_limits(feeder, cfg)
    src = cfg["source"]
    eg, types, areas = src["ext_grid"], src["line_types"], src["area"]
    houses = [a["houses_per_feeder"] if isinstance(a["houses_per_feeder"], list)
              else [a["houses_per_feeder"]] * a["feeders"] for a in areas]
    for a, h in zip(areas, houses):
        assert len(h) == a["feeders"] and all(isinstance(n, int) and n >= 1 for n in h)
    assert feeder.n_agent == sum(map(sum, houses))
    assert feeder.n_line == 2 * feeder.n_agent
    assert len(feeder.trafos) == len(areas)
    assert feeder.source.vm_pu == eg.get("vm_pu", 1.0)
    z2 = 1.1 * eg["vn_kv"] ** 2 / eg["s_sc_max_mva"]  # runpp_3ph's ext_grid: c vn^2 / s_sc
    assert abs(feeder.source.z2_ohm) == pytest.approx(z2, rel=1e-9)
    for t, a in zip(feeder.trafos, areas):
        for key in ("sn_kva", "vn_lv_kv", "vk_percent", "vkr_percent", "vk0_percent", "si0_hv_partial"):
            _check_number(f"area {a['name']} transformer", key, getattr(t, key), a["transformer"][key])
        assert t.vn_hv_kv == eg["vn_kv"] and t.vector_group == a["transformer"]["vector_group"]
    lines = dict(zip(feeder.lines, range(feeder.n_line)))
    for a in areas:
        for key, lt, length_m in (("main", a["main_line_type"], a["span_m"]),
                                  ("service", a["service_line_type"], a["service_m"])):
            spec = types[lt]
            want = complex(spec["r_ohm_per_km"], spec["x_ohm_per_km"]) * length_m / 1e3
            name = f"{a['name']}1 main 01" if key == "main" else f"{a['name']}1-01 service"
            i = lines[name]
            assert _z1(feeder.line_z_ohm[i]) == pytest.approx(want, rel=1e-9), name
            assert feeder.line_i_max_a[i] == pytest.approx(spec["max_i_ka"] * 1e3, rel=1e-12), name
    assert np.isfinite(feeder.line_z_ohm).all() and (np.diagonal(feeder.line_z_ohm, axis1=1, axis2=2).real > 0).all()


FEEDER_BASES = {
    "ieee_eu_lv": (IEEE_CFG, assert_ieee_matches),
    "two_area": (TWO_AREA_CFG, assert_two_area_matches),
}


def _feeder_mutations():
    return st.sampled_from(sorted(FEEDER_BASES)).flatmap(
        lambda name: st.tuples(st.just(name), toml_mutation(FEEDER_BASES[name][0], _paths(FEEDER_BASES[name][0]))))


@_settings(35)
@given(case=_feeder_mutations())
def test_mutated_feeder_toml_loads_right_or_fails_clearly(tmp_path_factory, case):
    name, (cfg, path, kind, new) = case
    base, matches = FEEDER_BASES[name]
    file = tmp_path_factory.mktemp("feeder") / f"{name}.toml"
    file.write_text(dump_toml(cfg))
    got = _load_or_error(_load_feeder, file, None)
    if isinstance(got, Exception):
        msg = str(got)
        names = _names_in(path)
        if path[:2] == ("source", "area") and len(path) > 3:  # the area is named by its name, not "area"
            names = names[1:]
        if kind == "delete":  # what is missing may be noticed where it is used: name it, not its table
            names = names[-1:]
        for n in names:
            assert n in msg, f"{kind} at {path}: message does not name {n!r}: {msg}"
        return
    assert kind != "unknown_key", f"unknown key {new!r} at {path} accepted"
    original = _parent(base, path)[path[-1]]
    if kind == "replace" and not isinstance(original, (bool, str)):
        assert not any(new is bad for bad in ALWAYS_BAD), f"{path} = {new!r} accepted"
    matches(got, tomllib.loads(file.read_text()))


@_settings(25)
@given(name=st.sampled_from(sorted(FEEDER_BASES)), data=st.data())
def test_broken_feeder_text_fails_clearly(tmp_path_factory, name, data):
    text = IEEE_TEXT if name == "ieee_eu_lv" else TWO_AREA_TEXT
    raw, kind = data.draw(text_mutation(text))
    file = tmp_path_factory.mktemp("feeder") / f"{name}.toml"
    file.write_bytes(raw)
    got = _load_or_error(_load_feeder, file, raw)
    if isinstance(got, Exception):
        return
    cfg = _parse(raw)
    assert cfg is not None, f"{kind}: not UTF-8 TOML, yet loaded"
    FEEDER_BASES[name][1](got, cfg)


# ----------------------------------------------------------------------------
# (c) OpenDSS feeder folders
# ----------------------------------------------------------------------------
ENWL_SMALLEST = ("enwl", "networks", "network_5", "Feeder_1")  # 129 lines, 4 loads
DSS_FILES = ("Master.dss", "LineCode.txt", "Lines.txt", "Transformers.txt", "Loads.dss")
#: (file, property) pairs a mutation may set or delete
DSS_PROPERTIES = {
    "Lines.txt": ("Length", "Bus1", "Bus2", "Linecode", "Units"),
    "LineCode.txt": ("R1", "X1", "R0", "X0", "Units"),
    "Loads.dss": ("kW", "Bus1", "PF"),
    "Transformers.txt": ("XHL", "kVs", "kVAs", "Conns"),
}
DSS_VALUES = ("abc", "-0.5", "0", "nan", "inf", "1e308", "", "1e-320", "2.5", "island", "999.1", "[11 0]",
              "[Wye Wye]", "km", "m", "parsec")
_KM = {"km": 1.0, "m": 1e-3, "mi": 1.609344, "kft": 0.3048, "ft": 0.3048e-3, "cm": 1e-5, "mm": 1e-6}


#: properties a mutation may add to an element; "{fifo}" is a FIFO outside the folder nobody may open
DSS_ADDED = ("enabled=no", "ena=false", "Enabled=n", "enabled=yes", "seasons=2 ratings=[400 500]", "rat=[1 2]",
             "ratings=(s={fifo})", "Ratings=(d={fifo})", "ratings=[sngf={fifo}]", "rmatrix=(dblf={fifo})",
             "normamps=(sngfilex={fifo})", "ratings={{db={fifo}}}", "ratings='sn={fifo}'", "ratings=(file={fifo})",
             "ratings=(1 2 dbl={fifo})")


def _disables(added: str) -> bool:
    return bool(re.fullmatch(r"(?i)ena\w*=(no|n|false)", added))


@st.composite
def dss_mutation(draw):
    """(file, kind, line index or property, new text): one change to one file of the folder."""
    kind = draw(st.sampled_from(["delete_file", "delete_line", "garble_line", "set", "drop", "not_utf8",
                                 "bare_transformer", "add"]))
    if kind == "add":
        file = draw(st.sampled_from(["Lines.txt", "Loads.dss", "Transformers.txt"]))
        return file, kind, draw(st.integers(0, 200)), draw(st.sampled_from(DSS_ADDED))
        return draw(st.sampled_from(DSS_FILES)), kind, None, None
    if kind == "bare_transformer":
        return "Transformers.txt", kind, 0, "New Transformer.TR1"
    file = draw(st.sampled_from(sorted(DSS_PROPERTIES) if kind in ("set", "drop") else DSS_FILES))
    row = draw(st.integers(0, 200))  # taken modulo the file's line count
    if kind in ("set", "drop"):
        prop = draw(st.sampled_from(DSS_PROPERTIES[file]))
        return file, kind, (row, prop), draw(st.sampled_from(DSS_VALUES)) if kind == "set" else None
    if kind == "garble_line":
        return file, kind, row, (draw(st.integers(0, 200)), draw(st.sampled_from("x=[]!.0 -\"")))
    return file, kind, row, draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\x80"])) if kind == "not_utf8" else None


def _apply_dss(folder: Path, mutation) -> tuple[str | None, int | None]:
    """Change the copied folder; return the object name and line number the change touched."""
    file, kind, where, new = mutation
    path = folder / file
    if kind == "delete_file":
        path.unlink()
        return None, None
    raw = path.read_bytes()
    lines = raw.decode().splitlines()
    if kind == "not_utf8":
        i = where % len(lines)
        lines_b = raw.splitlines()
        lines_b[i] = new + lines_b[i]
        path.write_bytes(b"\n".join(lines_b) + b"\n")
        return None, i + 1
    i = (where[0] if isinstance(where, tuple) else where) % len(lines)
    m = re.match(r"\s*new\s+\w+\.(\S+)", lines[i], re.IGNORECASE)
    name = m.group(1) if m else None
    if kind == "delete_line":
        del lines[i]
    elif kind == "bare_transformer":
        lines[i] = new
    elif kind == "garble_line":
        pos, ch = new
        pos %= len(lines[i]) + 1
        lines[i] = lines[i][:pos] + ch + lines[i][pos:]
    elif kind == "add":
        if not name:
            assume(False)
        lines[i] = f"{lines[i]} {new.format(fifo=folder.parent.parent / 'outside' / 'fifo')}"
    else:
        prop = where[1]
        pattern = re.compile(rf"\s{prop}=(\[[^\]]*\]|\S*)", re.IGNORECASE)
        if not pattern.search(lines[i]):
            assume(False)
        lines[i] = pattern.sub("" if kind == "drop" else f" {prop}={new}", lines[i])
    path.write_text("\n".join(lines) + "\n")
    return name, i + 1


def _dss_objects(text: str) -> dict[str, dict[str, str]]:
    """``New Class.name key=value ...`` lines -> {name (lower case): {key (lower case): value}}."""
    out = {}
    for line in text.splitlines():
        line = re.split(r"!|//", line, maxsplit=1)[0]  # DSS comments
        m = re.match(r"\s*new\s+\w+\.(\S+)\s*(.*)", line, re.IGNORECASE)
        if m:
            out[m.group(1).lower()] = {k.lower(): v for k, v in
                                       re.findall(r"(\w+)\s*=\s*(\[[^\]]*\]|\S+)", m.group(2))}
    return out


def assert_dss_matches(feeder, folder: Path) -> None:
    """Each line's sequence impedance and ends, and each load's bus and power, as the files say."""
    codes = _dss_objects((folder / "LineCode.txt").read_text())
    lines = _dss_objects((folder / "Lines.txt").read_text())
    loads = _dss_objects((folder / "Loads.dss").read_text())
    assert sorted(feeder.lines) == sorted(lines)
    seq = np.array([phase_to_sequence(z) for z in feeder.line_z_ohm])
    for i, name in enumerate(feeder.lines):
        ln = lines[name]
        code = codes[ln["linecode"].lower()]
        # OpenDSS: a line without a unit is in its line code's; a line code without one is per
        # unit of the line's own length
        unit = ln.get("units", code.get("units", "none")).lower()
        km = float(ln["length"]) * (_KM[unit] / _KM[code["units"].lower()] if "units" in code else 1.0)
        for k, (r, x) in ((1, ("r1", "x1")), (0, ("r0", "x0"))):
            want = complex(float(code[r]), float(code[x])) * km
            assert seq[i, k, k] == pytest.approx(want, rel=1e-6, abs=1e-12), (name, k)
        assert (feeder.buses[feeder.line_from[i]], feeder.buses[feeder.line_to[i]]) == \
            (ln["bus1"].split(".")[0].lower(), ln["bus2"].split(".")[0].lower())
        assert float(ln["length"]) > 0
    assert sorted(feeder.agents) == sorted(loads)
    for i, name in enumerate(feeder.agents):
        assert feeder.buses[feeder.agent_bus[i]] == loads[name]["bus1"].split(".")[0].lower()
        assert feeder.agent_p_kw[i].sum() == pytest.approx(float(loads[name]["kw"]), rel=1e-9)
    assert np.isfinite(feeder.line_z_ohm).all() and np.isfinite(feeder.agent_p_kw).all()
    assert 0.5 <= feeder.source.vm_pu <= 1.5 and feeder.f_hz > 0


def phase_to_sequence(z):
    from bayesflex.grid.sequence import phase_to_sequence_matrix

    return phase_to_sequence_matrix(z)


@pytest.fixture(scope="module")
def enwl_feeder() -> Path:
    return shared_path(*ENWL_SMALLEST)


@pytest.fixture
def engine_timeout(monkeypatch):
    """The engine's child process gets 60 s: a regression that opens a FIFO or hangs fails, not blocks."""
    from bayesflex.io import opendss as _opendss

    monkeypatch.setattr(_opendss, "_TIMEOUT_S", 60.0)


@_settings(60)
@given(mutation=dss_mutation())
def test_mutated_opendss_feeder_loads_right_or_fails_clearly(tmp_path_factory, enwl_feeder, engine_timeout, mutation):
    root = tmp_path_factory.mktemp("dss")
    folder = root / "model" / "Feeder_1"
    shutil.copytree(enwl_feeder, folder)
    (root / "outside").mkdir()
    name, row = _apply_dss(folder, mutation)
    with fifo_nobody_opens(root / "outside" / "fifo"):
        got = _load_or_error(_load_feeder, folder, None)
    file, kind, _, new = mutation
    if kind == "add" and (_disables(new) or re.search(r"[(\[{'\"][^)\]}'\"]*=", new)):
        # a disabled element, or a file named inside a value: never a feeder
        assert isinstance(got, Exception), (mutation, "loaded")
        msg = str(got).lower()
        assert "disabled" in msg if _disables(new) else f"{file}:{row}".lower() in msg, (mutation, msg)
        return
    if isinstance(got, Exception):
        msg = str(got).lower()
        if kind == "delete_file" or kind == "not_utf8":
            assert file.lower() in msg, msg
        elif kind in ("set", "drop") and file != "LineCode.txt" and name:
            # the element is named, or the file and line that define it; a bus moved can cut
            # off others, and the loader can name only what is cut off
            assert name.lower() in msg or f"{file}:{row}".lower() in msg or \
                (mutation[2][1].startswith("Bus") and "not connected to the source" in msg), msg
        return
    assert_dss_matches(got, folder)


# OpenDSS command mutations: a model from a third party is a program.  Random commands,
# abbreviated as the engine allows, drawn from the engine's own lists (commands, Set options,
# element classes), with arguments that name files inside and outside the model, are appended
# to or inserted into the model.  The outcome is a FeederError naming the file (and, for any
# command that is not a network description, the line), or a feeder; for a command that is not
# a network description, the feeder equals the unmutated one.  Never another exception, never
# a file created, never a moved working directory.
DSS_ARGS = ("/etc/passwd", "../../outside/x.csv", "{outside}/out.csv", "/dev/zero", "Lines.txt", "Loads.dss",
            "LineCode.txt", "Line.LINE1", "Capacitor.C1", "LoadShape.S1", "voltages", "circuit", "all",
            "editor=/bin/true", "dir={outside}", "rmatrix=(file=/etc/passwd)", "mult=(file=../x)", "kw=3",
            "length=2", "bus1=1", "\"/bin/sh -c 'touch {outside}/pwned'\"", "[1 2 3]", "1", "..", "{outside}",
            # the engine reads any prefix of sngfile/dblfile inside brackets or quotes as a file
            "ratings=(s={outside}/fifo)", "rmatrix=(d={outside}/fifo)", "xmatrix=[sngf={outside}/fifo]",
            "\"dblfile={outside}/fifo\"", "normamps={{dbl={outside}/fifo}}", "ratings='sn={outside}/fifo'",
            "mult=(sngfilex={outside}/fifo)", "kvs=(db={outside}/fifo)", "enabled=no", "ena=false",
            "seasons=2 ratings=[400 500]", "wire=foo", "h=10", "nconds=3", "bus1=47.2.3")
DSS_SET_VALUES = ("/bin/true", "{outside}", "yes", "50", "[11 .416]", "(file=/etc/passwd)", "carson", "daily",
                  "\"/bin/sh -c 'touch {outside}/pwned'\"", "{outside}/log.txt", "(d={outside}/fifo)",
                  "[s={outside}/fifo]")
#: what a network description is made of: its outcome may change the feeder
DSS_DATA_VERBS = {"new", "edit", "more", "m", "~", "set", "clear", "redirect", "compile", "buscoords",
                  "latlongcoords", "batchedit"}


@functools.cache
def _engine_words() -> tuple[list[str], list[str], list[str]]:
    import opendssdirect as dss

    ex = dss.Executive
    return ([ex.Command(i) for i in range(1, ex.NumCommands() + 1)],
            [ex.Option(i) for i in range(1, ex.NumOptions() + 1)], [*dss.Basic.Classes(), "Circuit"])


def _engine_verb(word: str) -> str | None:
    """The engine's rule, written out again: the command equal to the word, else the first that
    starts with it."""
    names = [c.lower() for c in _engine_words()[0]]
    w = word.lower().strip("\"'")
    return w if w in names else next((n for n in names if n.startswith(w)), None)


@st.composite
def dss_command(draw):
    """(command text, file, row): one command and where it goes (row taken modulo the file's lines)."""
    commands, options, classes = _engine_words()
    kind = draw(st.sampled_from(["command", "command", "set", "element"]))
    args = draw(st.lists(st.sampled_from(DSS_ARGS), max_size=3))
    if kind == "command":
        full = draw(st.sampled_from(commands))
        text = " ".join([full[:draw(st.integers(1, len(full)))], *args])
    elif kind == "set":
        pairs = draw(st.lists(st.tuples(st.sampled_from(options), st.integers(1, 20), st.sampled_from(DSS_SET_VALUES)),
                              min_size=1, max_size=3))
        text = "Set " + " ".join(f"{o[:c]}={v}" for o, c, v in pairs)
    else:
        verb = draw(st.sampled_from(["New ", "Edit ", "New object=", "more "]))
        text = f"{verb}{draw(st.sampled_from(classes))}.mut1 " + " ".join(args)
    where = draw(st.sampled_from(["Master.dss", "Master.dss", "Lines.txt", "Loads.dss"]))
    return text, where, draw(st.one_of(st.just(-1), st.integers(0, 300)))


@pytest.fixture(scope="module")
def enwl_reference(enwl_feeder):
    return _load_feeder(enwl_feeder)


@_settings(150)
@given(mutation=dss_command())
def test_opendss_commands_run_only_what_a_network_needs(tmp_path_factory, enwl_feeder, enwl_reference,
                                                        engine_timeout, mutation):
    root = tmp_path_factory.mktemp("dsscmd")
    folder, outside, cwd = root / "model" / "Feeder_1", root / "outside", root / "cwd"
    shutil.copytree(enwl_feeder, folder)
    outside.mkdir()
    cwd.mkdir()
    os.mkfifo(outside / "fifo")
    text, file, row = mutation
    text = text.format(outside=outside)
    lines = (folder / file).read_text().splitlines()
    at = len(lines) if row < 0 else row % (len(lines) + 1)
    lines.insert(at, text)
    (folder / file).write_text("\n".join(lines) + "\n")
    before = sorted(root.rglob("*"))
    home = os.getcwd()
    os.chdir(cwd)
    try:
        with warnings.catch_warnings(), fifo_nobody_opens(outside / "fifo"):
            warnings.simplefilter("ignore")  # a missing coordinates or shape file is only a warning
            got = _load_or_error(_load_feeder, folder, None)
        assert os.getcwd() == str(cwd), "the working directory moved"
    finally:
        os.chdir(home)
    assert sorted(root.rglob("*")) == before, "a file was created"
    verb = _engine_verb(text.split()[0].split("=")[0]) if not text.lower().startswith("new object=") else "new"
    if isinstance(got, Exception):
        if verb not in DSS_DATA_VERBS:
            assert f"{file}:{at + 1}" in str(got), (text, str(got))
        return
    if verb in DSS_DATA_VERBS:
        assert np.isfinite(got.line_z_ohm).all() and np.isfinite(got.agent_p_kw).all()
        return
    for f in dataclasses.fields(got):
        if f.name not in ("sha256", "origin"):
            a, b = getattr(got, f.name), getattr(enwl_reference, f.name)
            assert np.array_equal(a, b, equal_nan=True) if isinstance(a, np.ndarray) else a == b, (text, f.name)
    assert_dss_matches(got, enwl_feeder)


# ----------------------------------------------------------------------------
# (d) meter readings and EV state logs, (e) aggregator positions: long-form CSV files
# ----------------------------------------------------------------------------
CSV_AGENTS = ("A1", "A2", "A3")
CSV_TIMES = [f"2026-01-14T{h:02d}:{m:02d}" for h in range(17, 19) for m in (0, 30)]
CELL_VALUES = ("", "abc", "nan", "inf", "-inf", "-1", "-0.5", "1e308", "0", "2026-01-14T17:15", "2026-13-40",
               "M", "R", "C", "Z", "A9", " ", "1,5")


def _rows(kind: str) -> tuple[list[str], list[list[str]]]:
    """A good file: header and rows, as text cells."""
    rows = []
    for k, (a, t) in enumerate((a, t) for a in CSV_AGENTS for t in CSV_TIMES):
        if kind == "observations":
            rows.append([a, t, f"{0.2 + 0.1 * k:.3f}"])
        elif kind == "ev_states":
            rows.append([a, t, "RRMC"[k % 4] if a == "A1" else "R"])
        else:
            p = 1.0 + 0.5 * k
            rows.append([a, t, f"{p:g}", f"{p - 1:g}", f"{p + 2:g}", f"{40 + k:g}"])
    header = {"observations": ["agent", "time", "p_kw"], "ev_states": ["agent", "time", "state"],
              "positions": ["agent", "time", "p_kw", "p_lb_kw", "p_ub_kw", "offer_price"]}[kind]
    return header, rows


@st.composite
def csv_mutation(draw, kind: str):
    header, rows = _rows(kind)
    op = draw(st.sampled_from(["cell", "cell", "drop_column", "rename_column", "drop_row", "duplicate_row",
                               "header_only", "random_bytes", "not_utf8", "truncate", "extra_column"]))
    r = draw(st.integers(0, len(rows) - 1))
    c = draw(st.integers(0, len(header) - 1))
    focus = {"row": r, "column": header[c], "agent": rows[r][0]}
    if op == "cell":
        rows[r][c] = draw(st.sampled_from(CELL_VALUES))
    elif op == "drop_column":
        del header[c]
        for row in rows:
            del row[c]
    elif op == "rename_column":
        header[c] = header[c].upper()
    elif op == "drop_row":
        del rows[r]
    elif op == "duplicate_row":
        rows.insert(r, list(rows[r]))
    elif op == "header_only":
        rows = []
    elif op == "extra_column":
        header.append("comment")
        for row in rows:
            row.append("x")
    text = "\n".join(",".join(x) for x in [header, *rows]) + "\n"
    raw = text.encode()
    if op == "random_bytes":
        raw = draw(st.binary(max_size=120))
    elif op == "not_utf8":
        pos = draw(st.integers(0, len(raw)))
        raw = raw[:pos] + b"\xff\xfe" + raw[pos:]
    elif op == "truncate":
        raw = raw[:draw(st.integers(0, len(raw)))]
    return raw, op, focus


def _csv_table(raw: bytes) -> tuple[list[str], list[list[str]]]:
    """The file read independently (csv module): header and rows."""
    import csv
    import io

    rows = list(csv.reader(io.StringIO(raw.decode("utf-8"))))
    return rows[0], rows[1:]


def _half_hour(t: str) -> pd.Timestamp:
    ts = pd.Timestamp(t)
    assert ts == ts.floor("30min")
    return ts


def _check_csv_error(err: Exception, op: str, focus: dict) -> None:
    if op == "cell":  # the column, the row or the agent of the bad cell
        msg = str(err)
        row = focus["row"] + 2  # the file's line number
        assert focus["column"] in msg or f"row {row}" in msg or f"line {row}" in msg or repr(focus["agent"]) in msg, \
            msg


def _assert_observations_match(wide: pd.DataFrame, raw: bytes) -> None:
    header, rows = _csv_table(raw)
    col = {h: i for i, h in enumerate(header)}
    assert len(wide) >= 2 and wide.shape[0] * wide.shape[1] == len(rows)
    for row in rows:
        p = float(row[col["p_kw"]])
        assert math.isfinite(p) and p >= 0
        assert wide.loc[_half_hour(row[col["time"]]), row[col["agent"]]] == p
    assert np.isfinite(wide.to_numpy(float)).all() and (wide.to_numpy(float) >= 0).all()


def _assert_ev_match(post, raw: bytes) -> None:
    from bayesflex.priors.ev import STATES

    header, rows = _csv_table(raw)
    col = {h: i for i, h in enumerate(header)}
    assert all(r[col["state"]] in STATES for r in rows)
    n_cars = len({r[col["agent"]] for r in rows})
    n_times = len({_half_hour(r[col["time"]]) for r in rows})
    assert n_cars * n_times == len(rows)
    assert post.ev_counts.sum() == n_cars * (n_times - 1)  # one transition per car and step


def _assert_positions_match(pos, raw: bytes) -> None:
    header, rows = _csv_table(raw)
    col = {h: i for i, h in enumerate(header)}
    assert pos.p_kw.size == len(rows)
    for row in rows:
        i, j = pos.times.get_loc(_half_hour(row[col["time"]])), pos.agents.index(row[col["agent"]])
        for key, arr in (("p_kw", pos.p_kw), ("p_lb_kw", pos.p_lb_kw), ("p_ub_kw", pos.p_ub_kw)):
            v = float(row[col[key]])
            assert math.isfinite(v) and arr[i, j] == v, (key, row)
        if "offer_price" in col and row[col["offer_price"]].strip():
            assert pos.offer_price[i, j] == float(row[col["offer_price"]])
        assert pos.p_lb_kw[i, j] <= pos.p_kw[i, j] + 1e-6 and pos.p_kw[i, j] <= pos.p_ub_kw[i, j] + 1e-6
    assert all(a.strip() and a.lower() != "nan" for a in pos.agents)


@pytest.fixture(scope="module")
def default_priors():
    return load_priors("default")


def _read(kind: str, path: Path, priors):
    from bayesflex.priors import condition, read_observations
    from bayesflex.study.positions import read_positions

    if kind == "observations":
        return read_observations(path, agents=CSV_AGENTS)
    if kind == "ev_states":
        return condition(priors, ev_states=path, agents=CSV_AGENTS)
    return read_positions(path, agents=CSV_AGENTS)


_MATCHES = {"observations": _assert_observations_match, "ev_states": _assert_ev_match,
            "positions": _assert_positions_match}


@_settings(150)
@given(kind=st.sampled_from(sorted(_MATCHES)), data=st.data())
def test_mutated_csv_inputs_load_right_or_fail_clearly(tmp_path_factory, default_priors, kind, data):
    raw, op, focus = data.draw(csv_mutation(kind))
    path = tmp_path_factory.mktemp(kind) / f"{kind}.csv"
    path.write_bytes(raw)
    got = _load_or_error(lambda p: _read(kind, p, default_priors), path, raw)
    if isinstance(got, Exception):
        _check_csv_error(got, op, focus)
        return
    _MATCHES[kind](got, raw)
