"""Radial LV networks built from a compact description (feeder source type ``pandapower_elements``).

A feeder TOML of this type describes an MV source, cable types and one or
more *areas*, each an MV/LV transformer with radial cables of houses::

    [source]
    type = "pandapower_elements"
    [source.ext_grid]                 # the MV bus every transformer hangs from
    vn_kv = 11.0 ...
    [source.line_types.cable_185]     # per km, plus zero sequence
    r_ohm_per_km = 0.166 ...
    [[source.area]]
    name = "A"
    transformer = { sn_kva = 250.0, ... }
    feeders = 3
    houses_per_feeder = [30, 30, 25]  # or one integer for every feeder
    span_m = 10.0                     # cable between successive house joints
    main_line_type = "cable_185"
    service_m = 15.0                  # joint -> house
    service_line_type = "service"

:func:`net_from_elements` builds it with pandapower's own ``create_*``
functions, so the network can be handed to ``runpp_3ph`` unchanged and is
converted like any other pandapower network
(:func:`~bayesflex.io.pandapower.feeder_from_pandapower`).

What is built, per area ``A`` with feeders ``1..n``:

* bus ``"A lv busbar"`` (the transformer's LV terminal) and transformer
  ``"A transformer"`` from the common bus ``"mv busbar"`` (the ext_grid);
* along feeder ``k``: joints ``"Ak j01"``, ``"Ak j02"`` ... each ``span_m``
  further along the main cable (lines ``"Ak main 01"`` ...), and at each joint
  a service cable (``"Ak-01 service"``) to the house bus ``"Ak-01 house"``;
* one single-phase wye ``asymmetric_load`` per house, named ``"Ak-01"``,
  phases rotating a, b, c from house to house (continuing from one feeder to
  the next, so an area's phases stay balanced within one house).  Its
  as-shipped power is a placeholder, :data:`HOUSE_P_KW` at power factor
  :data:`HOUSE_PF` (the engine replaces it).

Bus coordinates are metres: the feeders of an area fan out downwards from its
busbar, houses alternate left and right of the main cable, the areas sit side
by side, and the MV bus above, between them.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from bayesflex.errors import ConfigError
from bayesflex.io.pandapower import add_asymmetric_loads, empty_network

__all__ = ["HOUSE_PF", "HOUSE_P_KW", "net_from_elements"]

#: placeholder as-shipped power of every house, kW, on its one phase
HOUSE_P_KW = 1.0
#: ... at this (lagging) power factor
HOUSE_PF = 0.95
F_HZ = 50.0

_TOP_KEYS = {"type", "ext_grid", "line_types", "area"}
# key -> (required, lower bound, lower inclusive, upper bound, upper inclusive); None = unbounded
_Range = tuple[bool, float | None, bool, float | None, bool]
# Bounds are generous physical ranges: a value outside is a typo (or a unit slip), not a network.
_EXT_GRID: dict[str, _Range] = {
    "vn_kv": (True, 0.1, True, 1000.0, True),
    "s_sc_max_mva": (True, 0.01, True, 1e6, True),
    "rx_max": (True, 0.0, True, 100.0, True),
    "x0x_max": (True, 0.001, True, 100.0, True),
    "r0x0_max": (True, 0.0, True, 100.0, True),
    "vm_pu": (False, 0.8, True, 1.2, True),
}
_LINE_TYPE: dict[str, _Range] = {
    "r_ohm_per_km": (True, 1e-4, True, 1000.0, True),
    "x_ohm_per_km": (True, 0.0, True, 1000.0, True),
    "c_nf_per_km": (True, 0.0, True, 1e6, True),
    "r0_ohm_per_km": (True, 1e-4, True, 1000.0, True),
    "x0_ohm_per_km": (True, 0.0, True, 1000.0, True),
    "c0_nf_per_km": (True, 0.0, True, 1e6, True),
    "max_i_ka": (True, 0.001, True, 100.0, True),
}
_TRAFO: dict[str, _Range] = {
    "sn_kva": (True, 1.0, True, 1e7, True),
    "vn_lv_kv": (True, 0.1, True, 1000.0, True),
    "vk_percent": (True, 0.0, False, 100.0, False),
    "vkr_percent": (True, 0.0, True, 100.0, False),
    "pfe_kw": (True, 0.0, True, 1e5, True),
    "i0_percent": (True, 0.0, True, 100.0, False),
    "shift_degree": (True, -360.0, True, 360.0, True),
    "vk0_percent": (True, 0.0, False, 100.0, False),
    "vkr0_percent": (True, 0.0, True, 100.0, False),
    "mag0_percent": (True, 0.0, False, 1e12, True),
    "mag0_rx": (True, 0.0, True, 1e6, True),
    "si0_hv_partial": (True, 0.0, True, 1.0, True),
}
_TRAFO_STR = {"vector_group": ("Dyn",)}
_AREA_NUM: dict[str, _Range] = {
    "span_m": (True, 0.01, True, 1e5, True),
    "service_m": (True, 0.01, True, 1e5, True),
}
_AREA_KEYS = {"name", "transformer", "feeders", "houses_per_feeder", "main_line_type",
              "service_line_type"} | set(_AREA_NUM)
_AREA_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_LINE_TYPE_NAME = re.compile(r"[A-Za-z0-9_.\-]+\Z")
MAX_FEEDERS = 99
MAX_HOUSES = 999


class _Checker:
    """Checks one value at a time; the first problem raises, naming the file and the key."""

    def __init__(self, origin: str):
        self.origin = origin

    def fail(self, where: str, msg: str):
        raise ConfigError(f"{self.origin}: {where} {msg}")

    def table(self, value: Any, where: str) -> dict:
        if not isinstance(value, dict):
            self.fail(where, f"must be a table, got {type(value).__name__}")
        return value

    def keys(self, d: dict, where: str, allowed: set[str], required: set[str]):
        unknown = sorted(set(d) - allowed)
        if unknown:
            self.fail(where, f"unknown key(s) {unknown} (allowed: {', '.join(sorted(allowed))})")
        missing = sorted(required - set(d))
        if missing:
            self.fail(where, f"missing key(s) {missing} (required: {', '.join(sorted(required))})")

    def numbers(self, d: dict, where: str, spec: dict[str, _Range]) -> dict[str, float]:
        out = {}
        for key, (_, lo, lo_inc, hi, hi_inc) in spec.items():
            if key not in d:
                continue
            v = d[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                self.fail(f"{where} {key}", f"= {v!r} must be a finite number ({_describe(lo, lo_inc, hi, hi_inc)})")
            bad_lo = lo is not None and (v < lo if lo_inc else v <= lo)
            bad_hi = hi is not None and (v > hi if hi_inc else v >= hi)
            if bad_lo or bad_hi:
                self.fail(f"{where} {key}", f"= {v!r} is out of range (allowed: {_describe(lo, lo_inc, hi, hi_inc)})")
            out[key] = float(v)
        return out

    def integer(self, v: Any, where: str, lo: int, hi: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            self.fail(where, f"= {v!r} must be an integer from {lo} to {hi}")
        return v


def _describe(lo, lo_inc, hi, hi_inc) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>=' if lo_inc else '>'} {lo:g}")
    if hi is not None:
        parts.append(f"{'<=' if hi_inc else '<'} {hi:g}")
    return " and ".join(parts) if parts else "any finite number"


def _required(spec: dict[str, _Range]) -> set[str]:
    return {k for k, r in spec.items() if r[0]}


def _validate(spec: Any, origin: str) -> tuple[dict, dict[str, dict], list[dict]]:
    """Check every key of the ``[source]`` table; return (ext_grid, line_types, areas)."""
    c = _Checker(origin)
    src = c.table(spec, "[source]")
    c.keys(src, "[source]", _TOP_KEYS, _TOP_KEYS)

    eg_raw = c.table(src["ext_grid"], "[source.ext_grid]")
    c.keys(eg_raw, "[source.ext_grid]", set(_EXT_GRID), _required(_EXT_GRID))
    ext_grid = c.numbers(eg_raw, "[source.ext_grid]", _EXT_GRID)

    lt_raw = c.table(src["line_types"], "[source.line_types]")
    if not lt_raw:
        c.fail("[source.line_types]", "is empty (define at least one line type)")
    line_types = {}
    for name, t in lt_raw.items():
        where = f"[source.line_types.{name}]"
        if not _LINE_TYPE_NAME.fullmatch(name):
            c.fail(where, "name may hold only letters, digits, '_', '.' and '-'")
        t = c.table(t, where)
        c.keys(t, where, set(_LINE_TYPE), _required(_LINE_TYPE))
        line_types[name] = c.numbers(t, where, _LINE_TYPE)

    areas_raw = src["area"]
    if not isinstance(areas_raw, list) or not areas_raw:
        c.fail("[[source.area]]", "must be an array of one or more tables ([[source.area]] blocks)")
    areas, names = [], set()
    for i, a in enumerate(areas_raw, 1):
        where = f"[[source.area]] #{i}"
        a = c.table(a, where)
        c.keys(a, where, _AREA_KEYS, _AREA_KEYS)
        name = a["name"]
        if not isinstance(name, str) or not _AREA_NAME.fullmatch(name):
            c.fail(f"{where} name", f"= {name!r} must be a letter followed by letters, digits or '_'")
        if name in names:
            c.fail(f"{where} name", f"= {name!r} is used by another area (names must be unique)")
        names.add(name)
        where = f"[[source.area]] {name!r}"
        area: dict[str, Any] = {"name": name}
        area.update(c.numbers(a, where, _AREA_NUM))
        n_feeders = c.integer(a["feeders"], f"{where} feeders", 1, MAX_FEEDERS)
        hpf = a["houses_per_feeder"]
        if isinstance(hpf, list):
            if len(hpf) != n_feeders:
                c.fail(f"{where} houses_per_feeder",
                       f"has {len(hpf)} entries but feeders = {n_feeders} (give one count per feeder, "
                       "or one integer for all)")
            houses = [c.integer(h, f"{where} houses_per_feeder[{k}]", 1, MAX_HOUSES) for k, h in enumerate(hpf)]
        else:
            houses = [c.integer(hpf, f"{where} houses_per_feeder", 1, MAX_HOUSES)] * n_feeders
        area["houses"] = houses
        for key in ("main_line_type", "service_line_type"):
            if not isinstance(a[key], str) or a[key] not in line_types:
                c.fail(f"{where} {key}", f"= {a[key]!r} is not a defined line type "
                       f"(allowed: {', '.join(sorted(line_types))})")
            area[key] = a[key]
        tw = f"{where} transformer"
        t = c.table(a["transformer"], tw)
        allowed = set(_TRAFO) | set(_TRAFO_STR)
        c.keys(t, tw, allowed, _required(_TRAFO) | set(_TRAFO_STR))
        trafo: dict[str, Any] = c.numbers(t, tw, _TRAFO)
        for key, options in _TRAFO_STR.items():
            if t[key] not in options:
                c.fail(f"{tw} {key}", f"= {t[key]!r} is not supported (allowed: {', '.join(options)})")
            trafo[key] = t[key]
        if not trafo["vkr_percent"] < trafo["vk_percent"]:
            c.fail(f"{tw} vkr_percent", f"= {trafo['vkr_percent']:g} must be below vk_percent "
                   f"= {trafo['vk_percent']:g}")
        if not trafo["vkr0_percent"] < trafo["vk0_percent"]:
            c.fail(f"{tw} vkr0_percent", f"= {trafo['vkr0_percent']:g} must be below vk0_percent "
                   f"= {trafo['vk0_percent']:g}")
        area["transformer"] = trafo
        areas.append(area)
    return ext_grid, line_types, areas


def net_from_elements(spec: dict, *, origin: str):
    """Build the pandapower network a ``pandapower_elements`` ``[source]`` table describes.

    ``spec`` is the whole ``[source]`` table (``type`` included); ``origin``
    names the file in error messages.  Every key is checked first; a
    malformed description raises :class:`~bayesflex.errors.ConfigError`
    naming the file, the key and what is allowed.
    """
    import pandapower as pp

    ext_grid, line_types, areas = _validate(spec, origin)
    net = empty_network(F_HZ)
    net.name = origin

    # layout: each area's feeders fan out downwards over 140 degrees from its busbar
    reach = max(max(a["houses"]) * a["span_m"] + a["service_m"] for a in areas)
    pitch = 2.0 * reach + 50.0
    mv_y = 0.25 * reach + 20.0
    # the buses and lines in rows, created at once (pandapower's one-element create functions take
    # ~10 ms each: ~5 s for the two-area feeder's 683); a bus's index is its row's position
    bus_rows: list[tuple[float, str, tuple[float, float]]] = []  # (vn_kv, name, geodata)
    line_rows: list[tuple[int, int, float, dict, str]] = []  # (from, to, length_km, line type, name)

    def bus(vn_kv: float, name: str, xy: tuple[float, float]) -> int:
        bus_rows.append((vn_kv, name, xy))
        return len(bus_rows) - 1

    def line(f: int, t: int, length_km: float, lt: dict[str, float], name: str) -> None:
        line_rows.append((f, t, length_km, lt, name))

    mv = bus(ext_grid["vn_kv"], "mv busbar", (0.5 * pitch * (len(areas) - 1), mv_y))
    q_per_p = math.tan(math.acos(HOUSE_PF))
    seen: set[str] = set()

    def unique(name: str) -> str:
        if name in seen:
            raise ConfigError(f"{origin}: [[source.area]] names make the element name {name!r} twice; "
                              "rename an area")
        seen.add(name)
        return name

    trafos, loads = [], []
    for ai, area in enumerate(areas):
        a, t = area["name"], area["transformer"]
        x0 = ai * pitch
        lv_kv = t["vn_lv_kv"]
        busbar = bus(lv_kv, unique(f"{a} lv busbar"), (x0, 0.0))
        trafos.append(dict(
            hv_bus=mv, lv_bus=busbar, sn_mva=t["sn_kva"] / 1e3, vn_hv_kv=ext_grid["vn_kv"], vn_lv_kv=lv_kv,
            vk_percent=t["vk_percent"], vkr_percent=t["vkr_percent"], pfe_kw=t["pfe_kw"],
            i0_percent=t["i0_percent"], shift_degree=t["shift_degree"], vector_group=t["vector_group"],
            vk0_percent=t["vk0_percent"], vkr0_percent=t["vkr0_percent"], mag0_percent=t["mag0_percent"],
            mag0_rx=t["mag0_rx"], si0_hv_partial=t["si0_hv_partial"], name=unique(f"{a} transformer"),
        ))
        main, service = line_types[area["main_line_type"]], line_types[area["service_line_type"]]
        n_feeders = len(area["houses"])
        span_km, service_km = area["span_m"] / 1e3, area["service_m"] / 1e3
        phase = 0  # rotates a, b, c through the whole area
        for k, n_houses in enumerate(area["houses"], 1):
            fdr = f"{a}{k}"
            angle = math.radians(-90.0 if n_feeders == 1 else -160.0 + 140.0 * (k - 1) / (n_feeders - 1))
            ux, uy = math.cos(angle), math.sin(angle)
            width = max(2, len(str(n_houses)))
            prev = busbar
            for h in range(1, n_houses + 1):
                num = f"{h:0{width}d}"
                d = h * area["span_m"]
                joint = bus(lv_kv, unique(f"{fdr} j{num}"), (x0 + d * ux, d * uy))
                line(prev, joint, span_km, main, unique(f"{fdr} main {num}"))
                side = 1.0 if h % 2 else -1.0  # houses on both sides of the street
                sx, sy = -uy * side * area["service_m"], ux * side * area["service_m"]
                house = bus(lv_kv, unique(f"{fdr}-{num} house"), (x0 + d * ux + sx, d * uy + sy))
                line(joint, house, service_km, service, unique(f"{fdr}-{num} service"))
                loads.append((house, unique(f"{fdr}-{num}"), phase % 3))
                phase += 1
                prev = joint
    vn_kv, names, geodata = zip(*bus_rows)
    pp.create_buses(net, len(bus_rows), list(vn_kv), name=list(names), geodata=list(geodata))
    pp.create_ext_grid(
        net, mv, vm_pu=ext_grid.get("vm_pu", 1.0), va_degree=0.0, name="mv source",
        s_sc_max_mva=ext_grid["s_sc_max_mva"], rx_max=ext_grid["rx_max"],
        x0x_max=ext_grid["x0x_max"], r0x0_max=ext_grid["r0x0_max"],
    )
    for trafo in trafos:
        pp.create_transformer_from_parameters(net, **trafo)
    from_bus, to_bus, length_km, types, line_names = zip(*line_rows)
    pp.create_lines_from_parameters(net, list(from_bus), list(to_bus), length_km=list(length_km),
                                    name=list(line_names), type="cs", g0_us_per_km=0.0,
                                    **{k: [lt[k] for lt in types] for k in _LINE_KEYS})
    houses, load_names, phases = zip(*loads)
    on = np.eye(3)[list(phases)]  # (house, phase): 1 on the house's phase
    add_asymmetric_loads(net, houses, load_names, on * (HOUSE_P_KW / 1e3), on * (HOUSE_P_KW * q_per_p / 1e3))
    return net


#: what a line takes from its line type
_LINE_KEYS = ("r_ohm_per_km", "x_ohm_per_km", "c_nf_per_km", "max_i_ka", "r0_ohm_per_km", "x0_ohm_per_km",
              "c0_nf_per_km")
