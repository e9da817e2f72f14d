"""pandapower networks <-> Feeder, and pandapower's ``runpp_3ph`` as a reference.

The conversion keeps pandapower's element models: lines from positive and
zero sequence data, transformers with their zero-sequence parameters, and the
``ext_grid`` as an ideal positive-sequence slack behind negative/zero
sequence impedances ``c * vn^2 / s_sc_max`` with ``c = 1.1``, as
``runpp_3ph`` builds them.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bayesflex.errors import FeederError
from bayesflex.grid.feeder import Feeder, Source, Transformer
from bayesflex.grid.sequence import PHASE_TO_SEQ, SEQ_TO_PHASE, sequence_to_phase_matrix

#: pandapower's voltage factor for the ext_grid impedance in runpp_3ph
EXT_GRID_C = 1.1
_UNSUPPORTED = (
    "gen", "shunt", "switch", "trafo3w", "impedance", "ward", "xward", "dcline",
    "storage", "motor", "svc", "tcsc", "ssc", "vsc", "line_dc", "bus_dc",
)
_LOAD_TABLES = ("load", "asymmetric_load", "sgen", "asymmetric_sgen")


def feeder_from_pandapower_network(function: str, kwargs: dict, *, name: str, origin: str) -> Feeder:
    """Build a Feeder from a function of ``pandapower.networks``.

    pandapower takes seconds to build a network from the JSON it ships (about 4 s for the IEEE
    LV feeder, ten times the conversion) and its functions read only pandapower's own files, so
    a process builds each function's network once for each arguments (and converts a copy of it
    for each name and origin), and keeps the Feeder built for each function, arguments, name and
    origin (a Feeder is immutable).  Arguments JSON cannot hold (a TOML date) are not cached."""
    try:
        key = json.dumps(kwargs, sort_keys=True)
    except TypeError:
        return _feeder_from_network(function, kwargs, None, name=name, origin=origin)
    return _cached_feeder_from_network(function, key, name, origin)


@functools.lru_cache(maxsize=8)
def _cached_feeder_from_network(function: str, kwargs_json: str, name: str, origin: str) -> Feeder:
    return _feeder_from_network(function, json.loads(kwargs_json), kwargs_json, name=name, origin=origin)


@functools.lru_cache(maxsize=4)
def _cached_network(function: str, kwargs_json: str):
    """``pandapower.networks.<function>(**kwargs)``, built once a process; callers convert a copy."""
    import pandapower.networks as pn

    return getattr(pn, function)(**json.loads(kwargs_json))


def _feeder_from_network(function: str, kwargs: dict, kwargs_json: str | None, *, name: str, origin: str) -> Feeder:
    import pandapower.networks as pn

    fn = getattr(pn, function, None)
    if not callable(fn):
        raise FeederError(origin, f"[source] network: pandapower.networks has no function {function!r}")
    try:
        net = fn(**kwargs) if kwargs_json is None else copy.deepcopy(_cached_network(function, kwargs_json))
    except (TypeError, ValueError, KeyError) as e:  # a keyword or value the function does not take
        raise FeederError(origin, f"[source] kwargs {kwargs!r} not accepted by {function}: {e}") from e
    return feeder_from_pandapower(net, name=name, origin=f"{origin} (pandapower.networks.{function})")


def feeder_from_pandapower_json(path: Path, *, name: str) -> Feeder:
    """Build a Feeder from a pandapower network saved with ``pandapower.to_json``."""
    import pandapower as pp

    try:
        net = pp.from_json(str(path))
    except Exception as e:  # pandapower raises many kinds here
        raise FeederError(str(path), f"not a readable pandapower JSON network: {e}") from e
    return feeder_from_pandapower(net, name=name, origin=str(path))


def _col(df, key, default=np.nan):
    return df[key].to_numpy(dtype=float) if key in df.columns else np.full(len(df), default)


def feeder_from_pandapower(net, *, name: str, origin: str) -> Feeder:
    """Convert an in-memory pandapower network (only its in-service elements)."""
    problems: list[str] = []
    for table in _UNSUPPORTED:
        if table in net and len(net[table]) and net[table].get("in_service", np.ones(len(net[table]), bool)).any():
            problems.append(f"element table {table!r} has {len(net[table])} row(s); not supported")

    bus = net.bus[net.bus.in_service.astype(bool)]
    pos = {idx: i for i, idx in enumerate(bus.index)}
    names = [str(n) if n is not None and n == n else str(i) for i, n in zip(bus.index, bus["name"])]

    def bus_of(idx, where):
        if idx not in pos:
            problems.append(f"{where}: bus {idx} does not exist or is out of service")
            return -1
        return pos[idx]

    f_hz = float(net.f_hz)
    w = 2 * math.pi * f_hz
    line = net.line[net.line.in_service.astype(bool)]
    n_line = len(line)
    z = np.zeros((n_line, 3, 3), complex)
    y = np.zeros((n_line, 3, 3), complex)
    for key in ("r0_ohm_per_km", "x0_ohm_per_km", "c0_nf_per_km"):
        if key not in line.columns or line[key].isna().any():
            bad = line.index if key not in line.columns else line.index[line[key].isna()]
            problems += [f"line {line.name[i]!r}: zero-sequence data {key} is missing" for i in bad[:5]]
            if len(bad) > 5:
                problems.append(f"... and {len(bad) - 5} more lines without {key}")
    length, par = line.length_km.to_numpy(float), line.parallel.to_numpy(float)
    z1 = (line.r_ohm_per_km.to_numpy(float) + 1j * line.x_ohm_per_km.to_numpy(float)) * length / par
    z0 = (_col(line, "r0_ohm_per_km") + 1j * _col(line, "x0_ohm_per_km")) * length / par
    y1 = (_col(line, "g_us_per_km", 0.0) * 1e-6 + 1j * w * line.c_nf_per_km.to_numpy(float) * 1e-9) * length * par
    y0 = 1j * w * _col(line, "c0_nf_per_km") * 1e-9 * length * par
    for i in range(n_line):
        z[i] = sequence_to_phase_matrix(z0[i], z1[i])
        y[i] = sequence_to_phase_matrix(y0[i], y1[i])
    line_names = [str(n) for n in line["name"]]
    line_from = [bus_of(b, f"line {n!r}") for b, n in zip(line.from_bus, line_names)]
    line_to = [bus_of(b, f"line {n!r}") for b, n in zip(line.to_bus, line_names)]
    i_max_a = line.max_i_ka.to_numpy(float) * 1e3 * line.df.to_numpy(float) * par
    # a line's code: its standard type, when its rating is that of one cable of the type (no parallel, no derating)
    std = line["std_type"] if "std_type" in line.columns else [None] * n_line
    codes = [str(t) if isinstance(t, str) and p == 1 and d == 1 else "" for t, p, d in zip(std, par, line.df)]

    trafos = []
    for idx, t in net.trafo[net.trafo.in_service.astype(bool)].iterrows():
        get = lambda k, d=np.nan: float(t[k]) if k in t and t[k] == t[k] and t[k] is not None else d  # noqa: E731
        if get("parallel", 1.0) != 1.0:
            problems.append(f"transformer {t['name']!r}: parallel = {t['parallel']} not supported (allowed: 1)")
        if get("tap_step_degree", 0.0) != 0.0 and get("tap_pos", 0.0) != get("tap_neutral", 0.0):
            problems.append(f"transformer {t['name']!r}: phase-shifting tap changer not supported")
        trafos.append(Transformer(
            name=str(t["name"]), hv_bus=bus_of(t.hv_bus, f"transformer {t['name']!r}"),
            lv_bus=bus_of(t.lv_bus, f"transformer {t['name']!r}"),
            sn_kva=get("sn_mva") * 1e3, vn_hv_kv=get("vn_hv_kv"), vn_lv_kv=get("vn_lv_kv"),
            vk_percent=get("vk_percent"), vkr_percent=get("vkr_percent"),
            pfe_kw=get("pfe_kw", 0.0), i0_percent=get("i0_percent", 0.0),
            vector_group=str(t.get("vector_group", "?")), shift_degree=get("shift_degree", 0.0),
            vk0_percent=get("vk0_percent"), vkr0_percent=get("vkr0_percent"),
            mag0_percent=get("mag0_percent"), mag0_rx=get("mag0_rx"),
            si0_hv_partial=get("si0_hv_partial"),
            tap_side=str(t.get("tap_side", "hv") or "hv"), tap_pos=get("tap_pos", 0.0),
            tap_neutral=get("tap_neutral", 0.0), tap_step_percent=get("tap_step_percent", 0.0),
            leakage_ratio_hv=get("leakage_resistance_ratio_hv", 0.5),
        ))

    eg = net.ext_grid[net.ext_grid.in_service.astype(bool)]
    source = Source(bus=0, vm_pu=1.0, va_degree=0.0, z1_ohm=0j, z2_ohm=np.inf, z0_ohm=np.inf)
    if len(eg) != 1:
        problems.append(f"ext_grid: exactly one in service is supported, found {len(eg)}")
    else:
        e = eg.iloc[0]
        missing = [k for k in ("s_sc_max_mva", "rx_max", "x0x_max", "r0x0_max") if k not in e or e[k] != e[k]]
        if missing:
            problems.append(
                f"ext_grid {e['name']!r}: short-circuit data {missing} missing "
                "(needed for the negative and zero sequence)"
            )
        else:
            vn = float(net.bus.vn_kv[e.bus])
            z2 = EXT_GRID_C * vn**2 / float(e.s_sc_max_mva)
            x2 = z2 / math.sqrt(float(e.rx_max) ** 2 + 1)
            x0 = float(e.x0x_max) * x2
            source = Source(
                bus=bus_of(e.bus, "ext_grid"), vm_pu=float(e.vm_pu), va_degree=float(e.va_degree),
                z1_ohm=0j, z2_ohm=complex(float(e.rx_max) * x2, x2),
                z0_ohm=complex(float(e.r0x0_max) * x0, x0),
            )

    agents, a_bus, a_ph, a_p, a_q = [], [], [], [], []
    for table in _LOAD_TABLES:
        if table not in net:
            continue
        df = net[table][net[table].in_service.astype(bool)]
        sign = -1.0 if table.endswith("sgen") else 1.0
        for idx, r in df.iterrows():
            label = str(r["name"]) if r["name"] is not None and r["name"] == r["name"] else f"{table}{idx}"
            if "type" in r and r["type"] not in ("wye", None) and r["type"] == r["type"]:
                problems.append(f"{table} {label!r}: connection {r['type']!r} not supported (allowed: 'wye')")
            scale = float(r.get("scaling", 1.0))
            if table.startswith("asymmetric"):
                p = np.array([r[f"p_{ph}_mw"] for ph in "abc"], float)
                q = np.array([r[f"q_{ph}_mvar"] for ph in "abc"], float)
                phases = (p != 0) | (q != 0)
                if not phases.any():
                    phases[:] = True
            else:
                p = np.full(3, float(r.p_mw) / 3)
                q = np.full(3, float(r.q_mvar) / 3)
                phases = np.ones(3, bool)
            agents.append(label)
            a_bus.append(bus_of(r.bus, f"{table} {label!r}"))
            a_ph.append(phases)
            a_p.append(sign * scale * p * 1e3)
            a_q.append(sign * scale * q * 1e3)
    if len(set(agents)) != len(agents):
        problems.append("agents: load/sgen names are not unique")
    if problems:
        raise FeederError(origin, problems)

    xy = None
    if "geo" in bus.columns and bus.geo.notna().all():
        try:
            xy = np.array([json.loads(g)["coordinates"][:2] for g in bus.geo], float)
        except (ValueError, KeyError, TypeError):
            xy = None
    return Feeder.build(
        name=name, origin=origin, f_hz=f_hz, buses=names, bus_vn_kv=bus.vn_kv.to_numpy(float),
        lines=line_names, line_from=line_from, line_to=line_to, line_z_ohm=z, line_y_s=y,
        line_i_max_a=i_max_a, trafos=trafos, source=source, agents=agents,
        agent_bus=np.array(a_bus, np.int64).reshape(-1), agent_phases=np.array(a_ph, bool).reshape(-1, 3),
        agent_p_kw=np.array(a_p, float).reshape(-1, 3), agent_q_kvar=np.array(a_q, float).reshape(-1, 3),
        bus_xy=xy, line_code=codes,
    )


# ----------------------------------------------------------------------------
# Feeder -> pandapower, for cross-checks
# ----------------------------------------------------------------------------
def to_pandapower(feeder: Feeder, *, sn_mva: float = 0.001):
    """Build the same network in pandapower (for cross-checking with runpp_3ph).

    Lines must be symmetric (sequence-decoupled) and the source must be a
    positive-sequence slack (``z1_ohm == 0``), since pandapower's ``ext_grid``
    has no positive-sequence impedance.  Agents become wye ``asymmetric_load``
    elements carrying ``feeder.agent_p_kw``/``agent_q_kvar``.

    ``sn_mva`` changes no physics, only where runpp_3ph stops: its outer loop
    ends at a mismatch of 3e-8 pu of ``sn_mva``, so the 1 kVA default makes
    it converge to ~1e-11 pu.
    """
    import pandapower as pp

    problems = []
    if feeder.source.z1_ohm != 0:
        problems.append("source has a positive-sequence impedance; pandapower's ext_grid cannot hold it "
                        "(use feeder.replace(source=dataclasses.replace(feeder.source, z1_ohm=0)))")
    net = empty_network(feeder.f_hz, sn_mva)
    net.name = feeder.name
    pp.create_buses(net, feeder.n_bus, vn_kv=feeder.bus_vn_kv, name=list(feeder.buses),
                    index=np.arange(feeder.n_bus))
    w = 2 * math.pi * feeder.f_hz
    zs = np.einsum("ij,njk,kl->nil", PHASE_TO_SEQ, feeder.line_z_ohm, SEQ_TO_PHASE)
    ys = np.einsum("ij,njk,kl->nil", PHASE_TO_SEQ, feeder.line_y_s, SEQ_TO_PHASE)
    off = np.abs(zs - zs * np.eye(3)).max(axis=(1, 2)) + np.abs(zs[:, 1, 1] - zs[:, 2, 2])
    for i in np.flatnonzero(off > 1e-9 * np.abs(zs).max(axis=(1, 2))):
        problems.append(f"line {feeder.lines[i]!r} is not symmetric; pandapower lines need sequence data")
    if feeder.n_line:
        pp.create_lines_from_parameters(
            net, feeder.line_from, feeder.line_to, length_km=np.ones(feeder.n_line),
            r_ohm_per_km=zs[:, 1, 1].real, x_ohm_per_km=zs[:, 1, 1].imag,
            c_nf_per_km=ys[:, 1, 1].imag / w * 1e9, g_us_per_km=ys[:, 1, 1].real * 1e6,
            max_i_ka=feeder.line_i_max_a / 1e3, name=list(feeder.lines),
            r0_ohm_per_km=zs[:, 0, 0].real, x0_ohm_per_km=zs[:, 0, 0].imag,
            c0_nf_per_km=ys[:, 0, 0].imag / w * 1e9,
        )
    for t in feeder.trafos:
        pp.create_transformer_from_parameters(
            net, t.hv_bus, t.lv_bus, sn_mva=t.sn_kva / 1e3, vn_hv_kv=t.vn_hv_kv, vn_lv_kv=t.vn_lv_kv,
            vk_percent=t.vk_percent, vkr_percent=t.vkr_percent, pfe_kw=t.pfe_kw, i0_percent=t.i0_percent,
            shift_degree=t.shift_degree, vector_group=t.vector_group, vk0_percent=t.vk0_percent,
            vkr0_percent=t.vkr0_percent, mag0_percent=min(t.mag0_percent, 1e12), mag0_rx=t.mag0_rx,
            si0_hv_partial=t.si0_hv_partial, tap_side=t.tap_side, tap_pos=t.tap_pos,
            tap_neutral=t.tap_neutral, tap_step_percent=t.tap_step_percent, name=t.name,
            tap_changer_type="Ratio",
        )
    s = feeder.source
    vn = float(feeder.bus_vn_kv[s.bus])
    z2 = complex(s.z2_ohm)
    s_sc = EXT_GRID_C * vn**2 / abs(z2)
    pp.create_ext_grid(
        net, s.bus, vm_pu=s.vm_pu, va_degree=s.va_degree, s_sc_max_mva=s_sc, rx_max=z2.real / z2.imag,
        x0x_max=complex(s.z0_ohm).imag / z2.imag, r0x0_max=complex(s.z0_ohm).real / complex(s.z0_ohm).imag,
    )
    add_asymmetric_loads(net, feeder.agent_bus, feeder.agents, feeder.agent_p_kw / 1e3, feeder.agent_q_kvar / 1e3)
    if problems:
        raise FeederError(feeder.origin, problems)
    return net


@functools.cache
def _empty_template(f_hz: float, sn_mva: float):
    import pandapower as pp

    return pp.create_empty_network(f_hz=f_hz, sn_mva=sn_mva)


def empty_network(f_hz: float, sn_mva: float = 1.0):
    """``pandapower.create_empty_network(f_hz=..., sn_mva=...)``, copied from one built once
    per process: pandapower builds its ~80 empty tables in 0.35 s, a copy takes 0.03 s."""
    return copy.deepcopy(_empty_template(float(f_hz), float(sn_mva)))


def add_asymmetric_loads(net, bus, names, p_mw: np.ndarray, q_mvar: np.ndarray) -> None:
    """Wye ``asymmetric_load`` rows 0..n-1 at ``bus`` named ``names``, carrying ``p_mw`` and
    ``q_mvar`` (n, phase), into a network that has none yet: the rows
    ``pandapower.create_asymmetric_load`` writes (its defaults, the table's dtypes), in one
    table instead of one call a load (11 ms each)."""
    table = net.asymmetric_load
    if len(table):
        raise ValueError("add_asymmetric_loads expects an empty asymmetric_load table")
    rows = {"name": list(names), "bus": np.asarray(bus, np.int64), "scaling": 1.0,
            "sn_a_mva": np.nan, "sn_b_mva": np.nan, "sn_c_mva": np.nan, "sn_mva": np.nan,
            "in_service": True, "type": "wye"}
    for k, ph in enumerate("abc"):
        rows[f"p_{ph}_mw"], rows[f"q_{ph}_mvar"] = p_mw[:, k], q_mvar[:, k]
    frame = pd.DataFrame({c: rows[c] for c in table.columns}, index=pd.RangeIndex(len(rows["name"])))
    net.asymmetric_load = frame.astype(table.dtypes.to_dict())


# ----------------------------------------------------------------------------
# runpp_3ph as a reference solver
# ----------------------------------------------------------------------------
def pandapower_agent_tables(net, feeder: Feeder):
    """(table, index) of the pandapower element behind each agent, by name."""
    where = {}
    for table in _LOAD_TABLES:
        if table in net:
            for idx, name in zip(net[table].index, net[table]["name"]):
                where.setdefault(str(name) if name == name and name is not None else f"{table}{idx}", (table, idx))
    return [where[a] for a in feeder.agents]


def runpp_3ph_reference(net, feeder: Feeder, p_kw: np.ndarray, q_kvar: np.ndarray):
    """Solve one scenario with ``pandapower.runpp_3ph``.

    ``p_kw``, ``q_kvar``: (agent, phase).  Returns a dict with ``v_pu (bus,
    phase)``, ``i_line_a (line, phase)``, ``loading_pu (line,)``,
    ``trafo_loading_pu`` (the most loaded) and ``trafo_loading_each_pu (trafo,)``, ``p_source_kw``/``q_source_kvar`` (into the network
    at the ext_grid, summed over phases) and ``converged``.  ``converged`` is
    False when pandapower says so *or* when it returns any NaN (pandapower can
    report convergence with NaN voltages, its issue 3068).
    """
    import pandapower as pp

    where = pandapower_agent_tables(net, feeder)
    for (table, idx), p, q in zip(where, p_kw, q_kvar):
        mw = (-1e-3 if table.endswith("sgen") else 1e-3) * np.asarray(p)  # pandapower: sgen is generation
        mvar = (-1e-3 if table.endswith("sgen") else 1e-3) * np.asarray(q)
        if table.startswith("asymmetric"):
            for k, ph in enumerate("abc"):
                net[table].at[idx, f"p_{ph}_mw"] = mw[k]
                net[table].at[idx, f"q_{ph}_mvar"] = mvar[k]
        else:
            if not (np.allclose(p, p[0]) and np.allclose(q, q[0])):
                raise ValueError(f"agent of {table} {idx} is balanced in pandapower; got unbalanced powers")
            net[table].at[idx, "p_mw"] = mw.sum()
            net[table].at[idx, "q_mvar"] = mvar.sum()
        net[table].at[idx, "scaling"] = 1.0
    try:
        pp.runpp_3ph(net)
        ok = bool(net.converged)
    except pp.LoadflowNotConverged:
        ok = False
    nb = len(feeder.buses)
    if not ok:
        nan = np.full((nb, 3), np.nan)
        return {"v_pu": nan, "converged": False}
    rb = net.res_bus_3ph.loc[net.bus.index]
    v = rb[["vm_a_pu", "vm_b_pu", "vm_c_pu"]].to_numpy(float)
    rl = net.res_line_3ph.loc[net.line.index]
    i = rl[["i_a_ka", "i_b_ka", "i_c_ka"]].to_numpy(float) * 1e3
    eg = net.res_ext_grid_3ph
    p_src = float(eg[["p_a_mw", "p_b_mw", "p_c_mw"]].to_numpy().sum() * 1e3)
    q_src = float(eg[["q_a_mvar", "q_b_mvar", "q_c_mvar"]].to_numpy().sum() * 1e3)
    out = {
        "v_pu": v, "i_line_a": i, "loading_pu": rl.loading_percent.to_numpy(float) / 100,
        "trafo_loading_pu": float(net.res_trafo_3ph.loading_percent.max() / 100),
        "trafo_loading_each_pu": net.res_trafo_3ph.loc[net.trafo.index].loading_percent.to_numpy(float) / 100,
        "p_source_kw": p_src, "q_source_kvar": q_src,
    }
    out["converged"] = bool(np.isfinite(v).all() and np.isfinite(i).all())
    return out
