"""Golden load-flow cases: every folder of tests/golden/ is one case, and one test runs them all.

A case folder holds (as power-grid-model's validation cases do):

* ``case.toml``: ``[feeder]`` (``name`` of a built-in feeder, ``path`` in the folder, or ``shared``:
  a path under ../shared/data, read there and never copied), ``[loads]`` (``profiles`` under
  ../shared/data at a ``minute`` with a ``power_factor``: load i draws Load_profile_i.csv; or
  ``from_feeder = true``: the loads the model gives) and ``[expected]`` (its ``format`` and where
  the expected output is: files in the folder or under ../shared/data);
* the expected output, or the pointer to it: an independent reference's solution (the official
  OpenDSS and GridLAB-D solutions of the IEEE European LV Test Feeder, OpenDSS's own solve of a
  small model), never bayesflex's;
* ``tolerances.toml``: per quantity (``v_pu`` (bus, phase), ``i_line_a`` (line, phase),
  ``trafo_loading_pu``), ``rtol`` and ``atol``: ``|ours - expected| <= atol + rtol * |expected|``,
  each with the reason for its size.

The quantities compared are exactly those the expected output gives and the tolerances name.
"""

from __future__ import annotations

import functools
import math
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bayesflex as bf
from bayesflex.errors import FeederWarning

from .conftest import shared_path

GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "case.toml").exists())
PHASES = "abc"


@functools.cache
def _feeder(kind: str, where: str) -> bf.Feeder:
    with warnings.catch_warnings():  # line ratings an OpenDSS model leaves out: no part of a load flow
        warnings.simplefilter("ignore", FeederWarning)
        if kind == "name":
            return bf.load_feeder(where)
        return bf.load_feeder(shared_path(where) if kind == "shared" else Path(where))


def _case_feeder(case: Path, spec: dict) -> bf.Feeder:
    (kind, where), = spec.items()
    return _feeder(kind, str(case / where) if kind == "path" else where)


@functools.cache
def _profiles(folder: str, minute: int) -> dict[int, float]:
    """kW of every load profile of ../shared/data/<folder> at ``minute`` (1..1440)."""
    out = {}
    for path in shared_path(folder).glob("Load_profile_*.csv"):
        out[int(path.stem.removeprefix("Load_profile_"))] = float(pd.read_csv(path)["mult"].iloc[minute - 1])
    return out


def _loads(feeder: bf.Feeder, spec: dict) -> tuple[np.ndarray, np.ndarray]:
    if spec.get("from_feeder"):
        return np.asarray(feeder.agent_p_kw), np.asarray(feeder.agent_q_kvar)
    kw = _profiles(spec["profiles"], int(spec["minute"]))
    per_agent = np.array([kw[int(a.lower().removeprefix("load"))] for a in feeder.agents])
    p = np.where(feeder.agent_phases, per_agent[:, None], 0.0)
    return p, p * math.tan(math.acos(spec["power_factor"]))


def _opendss_snapshot(spec: dict) -> dict[str, pd.DataFrame]:
    """OpenDSS's exported voltage and current tables (../shared/data/ieee_eu_lv/README.md)."""
    v = pd.read_csv(shared_path(spec["voltages"]))
    base_v = v.BasekV.to_numpy(float) * 1e3 / math.sqrt(3)
    rows = [pd.DataFrame({"element": v.Bus.astype(str), "phase": ph, "value": v[f"Magnitude{k}"] / base_v})
            for k, ph in enumerate(PHASES, 1)]
    out = {"v_pu": pd.concat(rows)}
    c = pd.read_csv(shared_path(spec["currents"]))
    lines = c[c.Element.str.startswith("Line.")]
    out["i_line_a"] = pd.concat([pd.DataFrame({"element": lines.Element.str.removeprefix("Line."), "phase": ph,
                                               "value": lines[f"I1_{k}"]}) for k, ph in enumerate(PHASES, 1)])
    if "transformer" in spec:  # its largest phase current on either side, over that side's rated current
        t = spec["transformer"]
        row = c[c.Element == t["element"]].iloc[0]
        hv = max(row[f"I1_{k}"] for k in (1, 2, 3)) / (t["sn_kva"] / (math.sqrt(3) * t["vn_hv_kv"]))
        lv = max(row[f"I2_{k}"] for k in (1, 2, 3)) / (t["sn_kva"] / (math.sqrt(3) * t["vn_lv_kv"]))
        out["trafo_loading_pu"] = pd.DataFrame({"element": [""], "phase": [""], "value": [max(hv, lv)]})
    return out


def _gridlabd_snapshot(spec: dict) -> dict[str, pd.DataFrame]:
    """GridLAB-D's exported tables: the LV buses ``Bus<k>`` (its swing node, the transformer's HV
    terminal and the load nodes are left out) in volts, and the lines ``LINE<k>`` in amperes."""
    v = pd.read_csv(shared_path(spec["voltages"]))
    v = v[v.node_name.str.fullmatch(r"Bus\d+")]
    base_v = spec["base_kv"] * 1e3 / math.sqrt(3)
    out = {"v_pu": pd.concat([pd.DataFrame({"element": v.node_name.str.removeprefix("Bus"), "phase": ph,
                                            "value": v[f"volt{ph.upper()}_mag"] / base_v}) for ph in PHASES])}
    c = pd.read_csv(shared_path(spec["currents"]))
    c = c[c.link_name.str.fullmatch(r"LINE\d+")]
    out["i_line_a"] = pd.concat([pd.DataFrame({"element": c.link_name, "phase": ph,
                                               "value": c[f"curr{ph.upper()}_mag"]}) for ph in PHASES])
    return out


def _table(case: Path, spec: dict) -> dict[str, pd.DataFrame]:
    t = pd.read_csv(case / spec["file"], dtype={"element": str, "phase": str}, keep_default_na=False)
    return {q: g.drop(columns="quantity") for q, g in t.groupby("quantity")}


READERS = {"opendss_snapshot": lambda case, spec: _opendss_snapshot(spec),
           "gridlabd_snapshot": lambda case, spec: _gridlabd_snapshot(spec), "table": _table}


def _ours(feeder: bf.Feeder, lf, quantity: str, expected: pd.DataFrame) -> np.ndarray:
    """Our values at the expected rows (names matched ignoring case)."""
    if quantity == "trafo_loading_pu":
        return np.full(len(expected), float(lf.trafo_loading_pu))
    names, values = {"v_pu": (feeder.buses, lf.v_pu), "i_line_a": (feeder.lines, lf.i_line_a)}[quantity]
    index = {n.lower(): i for i, n in enumerate(names)}
    rows = np.array([index[e.lower()] for e in expected.element])
    return values[rows, [PHASES.index(ph) for ph in expected.phase]]


@pytest.mark.parametrize("name", CASES)
def test_golden_case(name, request):
    case = GOLDEN / name
    spec = tomllib.loads((case / "case.toml").read_text())
    tolerances = tomllib.loads((case / "tolerances.toml").read_text())
    expected = READERS[spec["expected"]["format"]](case, spec["expected"])
    assert set(tolerances) == set(expected), f"{name}: tolerances.toml must name each expected quantity"
    if spec["feeder"] == {"name": "ieee_eu_lv"}:
        feeder = request.getfixturevalue("ieee")  # the session's, loaded once
    else:
        feeder = _case_feeder(case, spec["feeder"])
    p, q = _loads(feeder, spec["loads"])
    lf = bf.solve_loadflow(feeder, p, q)
    assert lf.converged, name
    for quantity, want in expected.items():
        tol = tolerances[quantity]
        np.testing.assert_allclose(_ours(feeder, lf, quantity, want), want.value.to_numpy(float),
                                   rtol=tol["rtol"], atol=tol["atol"], err_msg=f"{name}: {quantity}")


def test_every_case_is_complete():
    """Ten cases: three snapshots x (the OpenDSS model against OpenDSS and GridLAB-D, pandapower's copy
    against OpenDSS), and a small model against the OpenDSS engine; each with its three files."""
    assert len(CASES) == 10
    for name in CASES:
        assert {"case.toml", "tolerances.toml"} <= {p.name for p in (GOLDEN / name).iterdir()}, name
