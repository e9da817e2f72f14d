"""OpenDSS text models -> Feeder, through the DSS C-API engine (opendssdirect.py).

The engine parses the full DSS syntax and computes derived data (line
matrices from sequence line codes, the source's sequence impedances from
ISC3/ISC1).  We run the model's script ourselves so that what a network
description does not need (load shapes, monitors, energy meters, solve, plot
and export commands) is skipped: a missing load-shape file must not stop a
feeder from loading.  A failing command is reported with its file and line.

Mapping to bayesflex:
* ``Vsource``: an ideal voltage behind its ``Z1``, ``Z2``, ``Z0``.
* ``Transformer``: 2 windings, Delta (HV) - grounded Wye (LV) only, i.e. Dyn.
  OpenDSS builds a three-phase transformer from three single-phase units, so
  its zero-sequence leakage equals the positive one (``vk0 = vk``) and it has
  no zero-sequence magnetising path of its own (``mag0_percent = inf``)
  unless ``%imag``/``%noloadloss`` give one.  ``leadlag=lag`` (the ANSI
  default) is a 30 degree shift (Dyn1), ``lead`` -30 degrees (Dyn11).
* ``Line``: three-phase, the engine's R/X/C matrices times length; rating
  ``NormAmps``.
* ``Load``: one agent per load, wye, constant power (model 1).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from .errors import FeederError
from .feeder import Feeder, Source, Transformer

_SKIP = re.compile(
    r"^\s*(new\s+(object\s*=\s*)?(loadshape|monitor|energymeter|tshape|priceshape)\b|"
    r"(edit|batchedit|more|~)\s+(loadshape|monitor|energymeter)|batchedit\s+loadshape|"
    r"solve|plot|show|export|closedi|sample|reset|set\s+(mode|number|stepsize|year|demand|"
    r"diverbose|overloadreport|voltexcept|casename|markercode|nodewidth|maxiter)\b)",
    re.IGNORECASE,
)
_SHAPE_REF = re.compile(r"\b(yearly|daily|duty|growth|cvrcurve|spectrum)\s*=\s*(\([^)]*\)|\S+)", re.IGNORECASE)


def _commands(path: Path, seen: set[Path]):
    """Yield (file, line number, command) of a DSS script, following Redirect/Compile."""
    path = path.resolve()
    if path in seen:
        raise FeederError(str(path), "Redirect loop")
    seen.add(path)
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as e:
        raise FeederError(str(path), f"cannot read: {e}") from e
    in_block_comment = False
    for no, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if in_block_comment:
            if "*/" in s:
                in_block_comment = False
            continue
        if s.startswith("/*"):
            in_block_comment = "*/" not in s
            continue
        s = re.split(r"!|//", s, maxsplit=1)[0].strip()
        if not s or _SKIP.match(s):
            continue
        m = re.match(r"^(redirect|compile)\s+(.+)$", s, re.IGNORECASE)
        if m:
            target = m.group(2).strip().strip('"').strip("'")
            yield from _commands(path.parent / target, seen)
            continue
        if re.match(r"^clear\b", s, re.IGNORECASE):
            continue
        m = re.match(r"^(buscoords|latlongcoords)\s+(.+)$", s, re.IGNORECASE)
        if m:  # a file relative to the script, as OpenDSS itself would resolve it
            s = f'{m.group(1)} "{path.parent / m.group(2).strip().strip(chr(34)).strip(chr(39))}"'
        yield path, no, _SHAPE_REF.sub("", s)


_NEW = re.compile(r"^(?:new|edit)\s+(?:object\s*=\s*)?(line|linecode|transformer|load)\.(\S+)(.*)$", re.IGNORECASE)
#: a command must start with a word (or ~); a value holds no "=" (unless quoted or bracketed)
_MALFORMED = re.compile(r"^[^A-Za-z~?]|=\s*[^\s\[\](){}\"']*=")
_MORE = re.compile(r"^(?:~|more)\s+(.*)$", re.IGNORECASE)
_KEY = re.compile(r"([A-Za-z%][\w%]*)\s*=")
_UNITS = ("none", "mi", "kft", "km", "m", "ft", "in", "cm", "mm")
#: properties a script must give (any one of each set), else the engine silently fills in its default
_NEEDS = {
    "line": ({"bus1"}, {"bus2"}),
    "linecode": ({"r1", "rmatrix"},),
    "load": ({"bus1"}, {"kw", "kva"}),
    "transformer": ({"xhl", "x12"}, {"kvs", "kv"}, {"kvas", "kva"}, {"buses", "bus"}),
}
_MAX_OHM_PER_KM = 1e3
#: km per length unit, by the engine's unit code (0: none)
_KM_PER_UNIT = (math.nan, 1.609344, 0.3048, 1.0, 1e-3, 0.3048e-3, 0.0254e-3, 1e-5, 1e-6)


def _run_script(dss, master: Path) -> dict[str, tuple[str, set[str]]]:
    """Run the script; return, per line, line code and transformer ("line.name"), where it is
    defined and the properties the script gives it (the engine fills the others with defaults)."""
    dss.Text.Command("clear")
    given: dict[str, tuple[str, set[str]]] = {}
    last = None
    for file, no, cmd in _commands(master, set()):
        bad = _MALFORMED.search(cmd)
        if bad:  # the engine would take some of these without a word
            raise FeederError(f"{file}:{no}", f"not a well-formed DSS command {cmd[:80]!r} (at {bad.group(0)!r})")
        try:
            dss.Text.Command(cmd)
        except Exception as e:  # DSSException and friends
            if re.match(r"^buscoords\b", cmd, re.IGNORECASE):
                continue  # coordinates are optional
            msg = str(e).split("\n")[0]
            raise FeederError(f"{file}:{no}", f"OpenDSS rejected {cmd[:80]!r}: {msg}") from e
        m, more = _NEW.match(cmd), _MORE.match(cmd)
        if m:
            last = f"{m.group(1)}.{m.group(2)}".lower()
            where, keys = given.get(last, (f"{file}:{no}", set()))
            given[last] = (where, keys | {k.lower() for k in _KEY.findall(m.group(3))})
            args = re.sub(r"\s*=\s*", "=", re.sub(r"\[[^\]]*\]|\([^)]*\)|\"[^\"]*\"|'[^']*'", "x", m.group(3)))
            bare = [t for t in args.split() if "=" not in t]
            if bare:  # the engine would give it to whatever property comes next in its list
                raise FeederError(f"{file}:{no}", f"{m.group(1)}.{m.group(2)}: value {bare[0]!r} without a "
                                                  "property name (write name=value)")
            units = re.search(r"\bunits\s*=\s*(\S+)", m.group(3), re.IGNORECASE)
            if units and units.group(1).lower() not in _UNITS:
                raise FeederError(f"{file}:{no}", f"{m.group(1)}.{m.group(2)}: units={units.group(1)} unknown "
                                                  f"(allowed: {', '.join(_UNITS)})")
        elif more and last is not None:
            given[last][1].update(k.lower() for k in _KEY.findall(more.group(1)))
        else:
            last = None
    return given


def _missing_data(given: dict[str, tuple[str, set[str]]]) -> list[str]:
    """Data the script leaves to the engine's defaults (a line without impedance, a line code
    without zero sequence, a transformer without its ratings or reactance)."""
    problems = []
    for obj, (where, keys) in given.items():
        kind, name = obj.split(".", 1)
        if kind == "line" and not keys & {"linecode", "r1", "rmatrix", "geometry", "spacing", "z1"}:
            problems.append(f"{where}: Line.{name} has no impedance (give linecode=, r1/x1/r0/x0 or rmatrix/xmatrix)")
        if kind == "line" and "linecode" in keys and "length" not in keys:
            problems.append(f"{where}: Line.{name} has no length (the engine would make it 1 unit of its line code)")
        seq = {"r1", "x1", "r0", "x0"}
        if kind in ("line", "linecode") and keys & seq and not seq <= keys:
            problems.append(f"{where}: {kind.title()}.{name} has an incomplete sequence impedance "
                            f"(give R1, X1, R0 and X0; missing: {', '.join(sorted(seq - keys))})")
        for need in _NEEDS.get(kind, ()):
            if not keys & need:
                problems.append(f"{where}: {kind.title()}.{name} gives no {' or '.join(sorted(need))} "
                                "(the engine's default would be used)")
    return problems


def _bus_and_nodes(spec: str) -> tuple[str, list[int]]:
    parts = spec.split(".")
    return parts[0].lower(), [int(p) for p in parts[1:] if p.strip().isdigit()]


def feeder_from_opendss(path: Path, *, name: str) -> Feeder:
    """Read an OpenDSS model: a master .dss file or a folder with Master.dss."""
    try:
        import opendssdirect as dss
    except ImportError as e:  # pragma: no cover - it is a dependency
        raise FeederError(str(path), "reading OpenDSS needs the package opendssdirect.py") from e
    path = Path(path)
    master = path / "Master.dss" if path.is_dir() else path
    if not master.exists():
        raise FeederError(str(path), "no Master.dss in this folder")
    origin = str(master)
    given = _run_script(dss, master)
    if dss.Circuit.Name() == "" or not dss.Vsources.AllNames():
        raise FeederError(origin, "the script defines no circuit (New Circuit.<name>)")
    dss.Text.Command("makebuslist")
    problems: list[str] = _missing_data(given)

    buses = [b.lower() for b in dss.Circuit.AllBusNames()]
    index = {b: i for i, b in enumerate(buses)}

    def ask(element: str, prop: str) -> str:
        try:
            dss.Text.Command(f"? {element}.{prop}")
        except Exception as e:  # DSSException: e.g. a name with quotes the engine cannot look up
            raise FeederError(origin, f"{element}: OpenDSS cannot report its {prop}: {str(e).strip()}") from e
        return dss.Text.Result()

    # source
    if len(dss.Vsources.AllNames()) != 1:
        problems.append(f"exactly one Vsource is supported, found {len(dss.Vsources.AllNames())}")
    dss.Vsources.First()
    vname = f"vsource.{dss.Vsources.Name()}"

    def zpair(prop: str) -> complex:
        r, x = (float(v) for v in ask(vname, prop).strip("[] ").replace(",", " ").split()[:2])
        return complex(r, x)

    src_bus, _ = _bus_and_nodes(ask(vname, "bus1"))
    f_hz = float(ask(vname, "basefreq"))
    source = Source(bus=index[src_bus], vm_pu=dss.Vsources.PU(), va_degree=dss.Vsources.AngleDeg(),
                    z1_ohm=zpair("Z1"), z2_ohm=zpair("Z2"), z0_ohm=zpair("Z0"))
    base_kv = {src_bus: dss.Vsources.BasekV()}

    # transformers
    trafos = []
    for tname in dss.Transformers.AllNames():
        el = f"transformer.{tname}"
        dss.Transformers.Name(tname)
        where = f"Transformer.{tname}"
        if dss.Transformers.NumWindings() != 2:
            problems.append(f"{where}: {dss.Transformers.NumWindings()} windings (allowed: 2)")
            continue
        if dss.CktElement.NumPhases() != 3:
            problems.append(f"{where}: {dss.CktElement.NumPhases()} phases (allowed: 3)")
            continue
        wdg = []
        for w in (1, 2):
            dss.Transformers.Wdg(w)
            wdg.append((dss.Transformers.kV(), dss.Transformers.kVA(), dss.Transformers.R(),
                        dss.Transformers.IsDelta(), dss.Transformers.Tap()))
        if not (wdg[0][3] and not wdg[1][3]):
            conns = ["Delta" if w[3] else "Wye" for w in wdg]
            problems.append(f"{where}: conns {conns} not supported (allowed: [Delta Wye], i.e. Dyn)")
            continue
        hv, lv = (_bus_and_nodes(b)[0] for b in dss.CktElement.BusNames())
        xhl = dss.Transformers.Xhl()
        r_tot = wdg[0][2] + wdg[1][2]
        if not (xhl > 0 and r_tot >= 0 and all(w[0] > 0 and w[1] > 0 for w in wdg)):
            problems.append(f"{where}: XHL {xhl}, %R {r_tot}, kVs {[w[0] for w in wdg]}, kVAs {[w[1] for w in wdg]} "
                            "(allowed: XHL > 0, %R >= 0, kV > 0, kVA > 0)")
            continue
        vk = math.hypot(xhl, r_tot)
        imag, nll = float(ask(el, "%imag")), float(ask(el, "%noloadloss"))
        if imag == 0 and nll == 0:
            mag0, mag0_rx = math.inf, 0.0
        else:
            zm = 1 / complex(nll / 100, -imag / 100)
            mag0, mag0_rx = abs(zm) / (vk / 100) * 100, zm.real / zm.imag
        shift = 30.0 if ask(el, "leadlag").strip().lower().startswith("lag") else -30.0
        taps = [w[4] for w in wdg]
        if taps[0] != 1.0 and taps[1] != 1.0:
            problems.append(f"{where}: taps on both windings {taps} not supported (allowed: one tapped winding)")
            continue
        tap_side, tap = ("hv", taps[0]) if taps[0] != 1.0 else ("lv", taps[1])
        base_kv.setdefault(hv, wdg[0][0])
        base_kv.setdefault(lv, wdg[1][0])
        trafos.append(Transformer(
            name=tname, hv_bus=index[hv], lv_bus=index[lv], sn_kva=wdg[0][1], vn_hv_kv=wdg[0][0],
            vn_lv_kv=wdg[1][0], vk_percent=vk, vkr_percent=r_tot, pfe_kw=nll / 100 * wdg[0][1],
            i0_percent=math.hypot(imag, nll), vector_group="Dyn", shift_degree=shift,
            vk0_percent=vk, vkr0_percent=r_tot, mag0_percent=mag0, mag0_rx=mag0_rx, si0_hv_partial=0.5,
            tap_side=tap_side, tap_pos=(tap - 1.0) * 100, tap_neutral=0.0, tap_step_percent=1.0,
        ))

    # lines
    line_names, lf, lt, zs, ys, amps = [], [], [], [], [], []
    w = 2 * math.pi * f_hz
    for lname in dss.Lines.AllNames():
        dss.Lines.Name(lname)
        where = f"Line.{lname}"
        if dss.Lines.Phases() != 3:
            problems.append(f"{where}: {dss.Lines.Phases()} phase(s) (allowed: 3)")
            continue
        (b1, n1), (b2, n2) = _bus_and_nodes(dss.Lines.Bus1()), _bus_and_nodes(dss.Lines.Bus2())
        for nodes in (n1, n2):
            if nodes and nodes[:3] != [1, 2, 3]:
                problems.append(f"{where}: phase order {nodes} (allowed: 1.2.3)")
        length = dss.Lines.Length()  # the matrices are per unit of the line's own length unit
        unit = dss.Lines.Units()  # 0: none, the line code's unit
        length_km = length * _KM_PER_UNIT[unit] if 0 < unit < len(_KM_PER_UNIT) else length
        if not 1e-6 <= length_km <= 1e3:
            problems.append(f"{where}: length = {length} {_UNITS[unit] if 0 < unit < len(_UNITS) else ''}"
                            " (allowed: 1 mm to 1000 km)")
            continue
        z = (np.array(dss.Lines.RMatrix()) + 1j * np.array(dss.Lines.XMatrix())).reshape(3, 3) * length
        y = 1j * w * np.array(dss.Lines.CMatrix()).reshape(3, 3) * 1e-9 * length
        if not np.abs(z).max() <= _MAX_OHM_PER_KM * length_km:  # also catches NaN
            problems.append(f"{where}: impedance {np.abs(z).max():.3g} ohm over {length_km:.3g} km "
                            f"(allowed: finite, up to {_MAX_OHM_PER_KM:g} ohm/km; check its line code)")
            continue
        line_names.append(lname)
        lf.append(index[b1])
        lt.append(index[b2])
        zs.append(z)
        ys.append(y)
        amps.append(dss.Lines.NormAmps())

    # loads
    agents, a_bus, a_ph, a_p, a_q = [], [], [], [], []
    for ldname in dss.Loads.AllNames():
        dss.Loads.Name(ldname)
        where = f"Load.{ldname}"
        if dss.Loads.IsDelta():
            problems.append(f"{where}: delta connection not supported (allowed: wye)")
            continue
        if dss.Loads.Model() != 1:
            problems.append(f"{where}: model={dss.Loads.Model()} not supported (allowed: 1, constant PQ)")
            continue
        bus, nodes = _bus_and_nodes(dss.CktElement.BusNames()[0])
        nph = dss.CktElement.NumPhases()
        nodes = [n for n in nodes if n != 0][:nph] or [1, 2, 3][:nph]
        if any(n not in (1, 2, 3) for n in nodes):
            problems.append(f"{where}: node(s) {nodes} (allowed: 1, 2, 3)")
            continue
        phases = np.zeros(3, bool)
        phases[[n - 1 for n in nodes]] = True
        agents.append(ldname)
        a_bus.append(index.get(bus, -1))
        a_ph.append(phases)
        a_p.append(np.where(phases, dss.Loads.kW() / nph, 0.0))
        a_q.append(np.where(phases, dss.Loads.kvar() / nph, 0.0))

    if not agents:
        problems.append("no loads (every agent is a Load)")
    if problems:
        raise FeederError(origin, problems)
    vn = _nominal_kv(len(buses), source.bus, base_kv, index, trafos, lf, lt)
    xy = None
    try:
        coords = []
        for b in buses:
            dss.Circuit.SetActiveBus(b)
            coords.append((dss.Bus.X(), dss.Bus.Y()) if dss.Bus.Coorddefined() else (np.nan, np.nan))
        xy = np.array(coords, float)
        if np.isnan(xy).all():
            xy = None
    except AttributeError:  # older engine API
        xy = None
    return Feeder.build(
        name=name, origin=origin, f_hz=f_hz, buses=buses, bus_vn_kv=vn, lines=line_names,
        line_from=lf, line_to=lt, line_z_ohm=np.array(zs).reshape(-1, 3, 3),
        line_y_s=np.array(ys).reshape(-1, 3, 3), line_i_max_a=amps, trafos=trafos, source=source,
        agents=agents, agent_bus=np.array(a_bus, np.int64), agent_phases=np.array(a_ph, bool).reshape(-1, 3),
        agent_p_kw=np.array(a_p).reshape(-1, 3), agent_q_kvar=np.array(a_q).reshape(-1, 3), bus_xy=xy,
        meta={"opendss_circuit": dss.Circuit.Name()},
    )


def _nominal_kv(nb, src, base_kv, index, trafos, lf, lt) -> np.ndarray:
    """Nominal voltage of every bus: from the source and transformer windings,
    carried along lines.  Buses no line reaches keep NaN (and fail validation
    as not connected)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    vn = np.full(nb, np.nan)
    g = sp.coo_matrix((np.ones(len(lf)), (lf, lt)), shape=(nb, nb))
    _, label = connected_components(g, directed=False)
    for bus, kv in base_kv.items():
        vn[label == label[index[bus]]] = kv
    vn[np.isnan(vn)] = 1.0  # isolated islands: any positive value; validation reports them
    return vn
