"""Feeders: immutable network descriptions that the load flow solves.

A :class:`Feeder` is plain data: buses, three-phase lines with their 3x3 phase
impedance, transformers with the sequence data pandapower uses, the source,
and the agents (one per load) with their bus and phase connection.  It is
built from a feeder TOML (``feeders/<name>.toml``), a pandapower JSON file, or
an OpenDSS model, and checked before it is returned: a feeder that cannot be
solved raises :class:`~bayesflex.errors.FeederError` listing every problem.

Sign convention: load convention, consumption positive, generation negative.
Units are in the names: ``_kv`` line-to-line kV, ``_ohm``, ``_s`` (siemens),
``_a`` (amperes), ``_kva``.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bayesflex.errors import FeederError
from bayesflex.grid.network import NetworkModel, build_model

__all__ = ["PHASES", "Feeder", "Source", "Transformer", "check_feeder", "validate_feeder"]

PHASES = ("a", "b", "c")
SUPPORTED_VECTOR_GROUPS = ("Dyn",)


@dataclass(frozen=True)
class Source:
    """The upstream grid: an ideal voltage behind sequence impedances.

    ``z1_ohm = 0`` makes the source bus a slack bus in the positive sequence
    (pandapower's ``ext_grid``); OpenDSS's ``Vsource`` has a finite ``z1``.
    Impedances are per phase, in ohm at the source bus voltage level.
    """

    bus: int
    vm_pu: float
    va_degree: float
    z1_ohm: complex
    z2_ohm: complex
    z0_ohm: complex


@dataclass(frozen=True)
class Transformer:
    """A two-winding three-phase transformer, pandapower's parameters.

    Positive and negative sequence: series ``vk_percent``/``vkr_percent`` split
    between the windings (T model, ``leakage_ratio_hv`` on the HV side) with
    the magnetising branch (``pfe_kw``, ``i0_percent``) in the middle, and a
    phase shift of ``+shift_degree`` (positive) and ``-shift_degree``
    (negative sequence).  Zero sequence for ``Dyn``: the delta blocks it on
    the HV side; the LV side sees ``vk0``/``vkr0`` split by ``si0_hv_partial``
    with the zero-sequence magnetising impedance ``mag0_percent`` (of
    ``vk0``, R/X ``mag0_rx``) in the middle; ``mag0_percent = inf`` means no
    magnetising branch (a bank of single-phase units, as OpenDSS models it).
    """

    name: str
    hv_bus: int
    lv_bus: int
    sn_kva: float
    vn_hv_kv: float
    vn_lv_kv: float
    vk_percent: float
    vkr_percent: float
    pfe_kw: float
    i0_percent: float
    vector_group: str
    shift_degree: float
    vk0_percent: float
    vkr0_percent: float
    mag0_percent: float
    mag0_rx: float
    si0_hv_partial: float
    tap_side: str = "hv"
    tap_pos: float = 0.0
    tap_neutral: float = 0.0
    tap_step_percent: float = 0.0
    leakage_ratio_hv: float = 0.5

    def rated_kv(self) -> tuple[float, float]:
        """HV and LV rated voltages after the tap changer, kV line-to-line."""
        step = (self.tap_pos - self.tap_neutral) * self.tap_step_percent / 100.0
        hv, lv = self.vn_hv_kv, self.vn_lv_kv
        if self.tap_side == "hv":
            hv *= 1.0 + step
        elif self.tap_side == "lv":
            lv *= 1.0 + step
        return hv, lv


def _readonly(a: Any, dtype=None) -> np.ndarray:
    arr = np.array(a, dtype=dtype)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class Feeder:
    """An LV feeder ready to be solved.  Immutable; arrays are read-only.

    Shapes: ``bus_vn_kv (bus,)``, ``line_z_ohm (line, 3, 3)`` series
    impedance of the whole line, ``line_y_s (line, 3, 3)`` total shunt
    admittance (half at each end), ``line_i_max_a (line,)`` ampacity per
    phase conductor, ``agent_phases (agent, 3)`` which phases an agent is
    connected to (wye, phase to neutral), ``agent_p_kw``/``agent_q_kvar
    (agent, 3)`` the powers as shipped with the source network (a snapshot).
    ``line_code (line,)`` each line's code as the source names it (OpenDSS
    ``LineCode``, pandapower ``std_type``; "" when none), and
    ``line_rating_defaulted (line,)`` whether its rating is a default the
    model never gave (OpenDSS's 400 A), see :func:`with_ratings`.
    """

    name: str
    origin: str
    f_hz: float
    buses: tuple[str, ...]
    bus_vn_kv: np.ndarray
    lines: tuple[str, ...]
    line_from: np.ndarray
    line_to: np.ndarray
    line_z_ohm: np.ndarray
    line_y_s: np.ndarray
    line_i_max_a: np.ndarray
    trafos: tuple[Transformer, ...]
    source: Source
    agents: tuple[str, ...]
    agent_bus: np.ndarray
    agent_phases: np.ndarray
    agent_p_kw: np.ndarray
    agent_q_kvar: np.ndarray
    v_min_pu: float = 0.94
    v_max_pu: float = 1.10
    bus_xy: np.ndarray | None = None
    sha256: str = ""
    meta: dict = field(default_factory=dict)
    line_code: tuple[str, ...] = ()
    line_rating_defaulted: np.ndarray | None = None

    @classmethod
    def build(cls, **kw: Any) -> "Feeder":
        """Make a Feeder from lists or arrays; arrays are copied and frozen."""
        for key, dtype in (
            ("bus_vn_kv", float), ("line_from", np.int64), ("line_to", np.int64),
            ("line_z_ohm", complex), ("line_y_s", complex), ("line_i_max_a", float),
            ("agent_bus", np.int64), ("agent_phases", bool), ("agent_p_kw", float),
            ("agent_q_kvar", float),
        ):
            kw[key] = _readonly(kw[key], dtype)
        for key in ("buses", "lines", "agents", "trafos"):
            kw[key] = tuple(kw[key])
        n_line = len(kw["lines"])
        kw["line_code"] = tuple(str(c) for c in kw.get("line_code") or ("",) * n_line)
        defaulted = kw.get("line_rating_defaulted")
        kw["line_rating_defaulted"] = _readonly(np.zeros(n_line, bool) if defaulted is None else defaulted, bool)
        if kw.get("bus_xy") is not None:
            kw["bus_xy"] = _readonly(kw["bus_xy"], float)
        return cls(**kw)

    def replace(self, **changes: Any) -> "Feeder":
        """A new Feeder with some fields changed (the original is untouched)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields.update(changes)
        return Feeder.build(**fields)

    @property
    def n_bus(self) -> int:
        return len(self.buses)

    @property
    def n_line(self) -> int:
        return len(self.lines)

    @property
    def n_agent(self) -> int:
        return len(self.agents)

    @functools.cached_property
    def model(self) -> NetworkModel:
        """The factorised network model the solver uses (built once, cached; a pickled feeder
        carries it, so a worker does not build it again)."""
        return build_model(self)

    def __repr__(self) -> str:
        return (
            f"Feeder({self.name!r}: {self.n_bus} buses, {self.n_line} lines, "
            f"{len(self.trafos)} transformer(s), {self.n_agent} agents; from {self.origin})"
        )



# ----------------------------------------------------------------------------
# validation: problems as data, one error that lists them all
# ----------------------------------------------------------------------------
def validate_feeder(feeder: Feeder) -> list[str]:
    """Every problem that would make ``feeder`` unsolvable, as sentences."""
    problems: list[str] = []
    nb = feeder.n_bus
    for arr, what in ((feeder.line_from, "from"), (feeder.line_to, "to")):
        bad = np.flatnonzero((arr < 0) | (arr >= nb))
        problems += [f"line {feeder.lines[i]!r}: {what} bus does not exist" for i in bad]
    if len(feeder.line_code) != feeder.n_line or feeder.line_rating_defaulted.shape != (feeder.n_line,):
        problems.append(f"line codes ({len(feeder.line_code)}) or rating flags "
                        f"({len(feeder.line_rating_defaulted)}) do not match the {feeder.n_line} lines")
    for i in np.flatnonzero(~(feeder.line_i_max_a > 0)):
        problems.append(
            f"line {feeder.lines[i]!r}: rating {feeder.line_i_max_a[i]} A is not positive"
        )
    zdiag = np.abs(np.diagonal(feeder.line_z_ohm, axis1=1, axis2=2))
    for i in np.flatnonzero(~np.all(np.isfinite(feeder.line_z_ohm), axis=(1, 2))):
        problems.append(f"line {feeder.lines[i]!r}: impedance is not finite (missing R0/X0?)")
    for i in np.flatnonzero(np.any(zdiag <= 0, axis=1)):
        problems.append(f"line {feeder.lines[i]!r}: zero series impedance")
    if len(feeder.line_z_ohm) and np.isfinite(feeder.line_z_ohm).all():  # passive: resistance matrix >= 0
        herm = (feeder.line_z_ohm + np.conj(np.swapaxes(feeder.line_z_ohm, 1, 2))) / 2
        r_min = np.linalg.eigvalsh(herm)[:, 0]
        for i in np.flatnonzero(r_min < -1e-9 * zdiag.max(axis=1)):
            problems.append(f"line {feeder.lines[i]!r}: negative resistance (check its length, R1 and R0)")
    for i in np.flatnonzero(feeder.bus_vn_kv[feeder.line_from] != feeder.bus_vn_kv[feeder.line_to]):
        problems.append(f"line {feeder.lines[i]!r} joins buses of different nominal voltage")
    for t in feeder.trafos:
        problems += _validate_trafo(t, nb)
    if not 0 <= feeder.source.bus < nb:
        problems.append("source: bus does not exist")
    if not 0.5 <= feeder.source.vm_pu <= 1.5:
        problems.append(f"source: voltage {feeder.source.vm_pu} pu (allowed: 0.5 to 1.5)")
    if not (np.isfinite(feeder.f_hz) and feeder.f_hz > 0):
        problems.append(f"frequency {feeder.f_hz} Hz is not positive")
    for i in np.flatnonzero(~np.isfinite(feeder.agent_p_kw).all(axis=1) | ~np.isfinite(feeder.agent_q_kvar).all(axis=1)):
        problems.append(f"agent {feeder.agents[i]!r}: power is not a finite number")
    bad_agents = np.flatnonzero((feeder.agent_bus < 0) | (feeder.agent_bus >= nb))
    problems += [f"agent {feeder.agents[i]!r}: its bus does not exist" for i in bad_agents]
    for i in np.flatnonzero(~feeder.agent_phases.any(axis=1)):
        problems.append(f"agent {feeder.agents[i]!r}: connected to no phase")
    if problems:  # connectivity needs valid indices
        return problems
    reached = _reachable(feeder)
    cut = np.flatnonzero(~reached)
    for b in cut[:10]:
        problems.append(f"bus {feeder.buses[b]!r} is not connected to the source")
    if len(cut) > 10:
        problems.append(f"... and {len(cut) - 10} more buses are not connected to the source")
    for i in np.flatnonzero(feeder.agent_bus == feeder.source.bus):
        problems.append(f"agent {feeder.agents[i]!r} sits on the source bus; not supported")
    if not feeder.v_min_pu < feeder.v_max_pu:
        problems.append(f"limits: v_min_pu {feeder.v_min_pu} must be below v_max_pu {feeder.v_max_pu}")
    return problems


def _validate_trafo(t: Transformer, nb: int) -> list[str]:
    p: list[str] = []
    where = f"transformer {t.name!r}"
    if t.vector_group not in SUPPORTED_VECTOR_GROUPS:
        p.append(
            f"{where}: vector group {t.vector_group!r} not supported "
            f"(allowed: {', '.join(SUPPORTED_VECTOR_GROUPS)})"
        )
    for key in ("vk0_percent", "vkr0_percent", "mag0_percent", "mag0_rx", "si0_hv_partial"):
        v = getattr(t, key)
        if v is None or not np.isfinite(v) and not (key == "mag0_percent" and v == np.inf):
            p.append(f"{where}: zero-sequence data {key} is missing")
    for key in ("sn_kva", "vn_hv_kv", "vn_lv_kv", "vk_percent"):
        if not getattr(t, key) > 0:
            p.append(f"{where}: {key} = {getattr(t, key)} is not positive")
    if t.vk0_percent is not None and np.isfinite(t.vk0_percent) and not t.vk0_percent > 0:
        p.append(f"{where}: vk0_percent = {t.vk0_percent} is not positive")
    if not 0 <= t.vkr_percent < t.vk_percent:
        p.append(f"{where}: vkr_percent must lie in [0, vk_percent)")
    if t.si0_hv_partial is not None and not 0 <= t.si0_hv_partial <= 1:
        p.append(f"{where}: si0_hv_partial = {t.si0_hv_partial} must lie in [0, 1]")
    if t.tap_side not in ("hv", "lv"):
        p.append(f"{where}: tap_side {t.tap_side!r} (allowed: 'hv', 'lv')")
    for b, side in ((t.hv_bus, "hv"), (t.lv_bus, "lv")):
        if not 0 <= b < nb:
            p.append(f"{where}: {side} bus does not exist")
    return p


def _reachable(feeder: Feeder) -> np.ndarray:
    import scipy.sparse as sp
    from scipy.sparse.csgraph import breadth_first_order

    nb = feeder.n_bus
    f = np.concatenate([feeder.line_from, [t.hv_bus for t in feeder.trafos]]).astype(np.int64)
    t = np.concatenate([feeder.line_to, [t.lv_bus for t in feeder.trafos]]).astype(np.int64)
    g = sp.coo_matrix((np.ones(len(f)), (f, t)), shape=(nb, nb)).tocsr()
    order = breadth_first_order(g, feeder.source.bus, directed=False, return_predecessors=False)
    reached = np.zeros(nb, dtype=bool)
    reached[order] = True
    return reached


def check_feeder(feeder: Feeder) -> Feeder:
    """Return ``feeder`` if it is solvable, else raise one FeederError."""
    problems = validate_feeder(feeder)
    if problems:
        raise FeederError(feeder.origin, problems)
    return feeder
