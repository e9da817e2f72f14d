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
import hashlib
import math
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .checks import feeder_dir, resolve_feeder
from .errors import ConfigError, FeederError, FeederWarning

__all__ = [
    "Feeder",
    "Source",
    "Transformer",
    "load_feeder",
    "feeder_dir",
    "read_ratings",
    "resolve_feeder",
    "validate_feeder",
    "with_ratings",
    "sequence_to_phase_matrix",
    "phase_to_sequence_matrix",
]

PHASES = ("a", "b", "c")
SUPPORTED_VECTOR_GROUPS = ("Dyn",)
_A = np.exp(2j * np.pi / 3)
#: V_abc = SEQ_TO_PHASE @ V_012
SEQ_TO_PHASE = np.array([[1, 1, 1], [1, _A**2, _A], [1, _A, _A**2]])
PHASE_TO_SEQ = np.linalg.inv(SEQ_TO_PHASE)


def sequence_to_phase_matrix(z0: complex, z1: complex, z2: complex | None = None) -> np.ndarray:
    """3x3 phase-frame matrix of an element given by its sequence values.

    For a symmetric (transposed) element ``z2 = z1`` and the result is the
    familiar ``Zs = (2 z1 + z0) / 3`` on the diagonal, ``Zm = (z0 - z1) / 3``
    off it.
    """
    z2 = z1 if z2 is None else z2
    return SEQ_TO_PHASE @ np.diag([z0, z1, z2]) @ PHASE_TO_SEQ


def phase_to_sequence_matrix(z_abc: np.ndarray) -> np.ndarray:
    """Sequence-frame matrix ``A^-1 Z_abc A``; diagonal for a symmetric element."""
    return PHASE_TO_SEQ @ z_abc @ SEQ_TO_PHASE


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
    def model(self):
        """The factorised network model the solver uses (built once, cached)."""
        from .network import build_model

        return build_model(self)

    def __repr__(self) -> str:
        return (
            f"Feeder({self.name!r}: {self.n_bus} buses, {self.n_line} lines, "
            f"{len(self.trafos)} transformer(s), {self.n_agent} agents; from {self.origin})"
        )

    def __getstate__(self):  # the cached model is rebuilt where it is needed
        state = dict(self.__dict__)
        state.pop("model", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)


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


# ----------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------
_SOURCE_TYPES = ("pandapower", "pandapower_json", "opendss", "pandapower_elements")
#: keys of [source] per type (pandapower_elements is checked by the builder)
_SOURCE_KEYS = {"pandapower": {"type", "network", "kwargs"}, "pandapower_json": {"type", "path"},
                "opendss": {"type", "path"}}


def load_feeder(name_or_path: str | Path, *, ratings: str | Path | None = None) -> Feeder:
    """Load a feeder by name or path.

    * a name (``"ieee_eu_lv"``): ``feeders/<name>.toml`` of the current
      directory if present, else the built-in definition;
    * a ``.toml`` feeder definition;
    * a pandapower network saved as ``.json``;
    * an OpenDSS master file (``.dss``) or a folder holding ``Master.dss``.

    ``ratings``: a TOML file with a ``[line_i_max_a]`` table (line code ->
    amperes, :func:`read_ratings`), applied after the feeder's own; its bytes
    join the feeder's SHA-256.  Lines whose rating the model never gave (an
    OpenDSS line code without ``normamps``: the engine's 400 A) are a
    :class:`~bayesflex.errors.FeederWarning` naming how many and their codes.
    """
    table = None if ratings is None else read_ratings(ratings)
    feeder = _load_path(resolve_feeder(name_or_path))
    if table is not None:
        amps, where, sha = table
        feeder = with_ratings(feeder, amps, where)
        feeder = feeder.replace(sha256=hashlib.sha256((feeder.sha256 + sha).encode()).hexdigest())
    warn_default_ratings(feeder)
    return feeder


def _load_path(path: Path) -> Feeder:
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return _load_toml(path)
    if suffix == ".json":
        from ._pandapower import feeder_from_pandapower_json

        return check_feeder(feeder_from_pandapower_json(path, name=path.stem))
    if suffix in (".dss", ".txt") or path.is_dir():
        from ._opendss import feeder_from_opendss

        return check_feeder(feeder_from_opendss(path, name=path.parent.name if path.is_file() else path.name))
    raise ConfigError(
        f"{path}: cannot tell what kind of feeder this is "
        "(allowed: a feeder .toml, a pandapower .json, an OpenDSS .dss or folder)"
    )


def _load_toml(path: Path) -> Feeder:
    try:
        raw = path.read_bytes()
        cfg = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    allowed_tables = {"feeder", "source", "limits", RATINGS_TABLE}
    extra = set(cfg) - allowed_tables
    if extra:
        raise ConfigError(f"{path}: unknown table(s) {sorted(extra)} (allowed: {sorted(allowed_tables)})")
    for table in allowed_tables & set(cfg):
        if not isinstance(cfg[table], dict):
            raise ConfigError(f"{path}: {table} = {cfg[table]!r} must be a table ([{table}])")
    src = cfg.get("source")
    if not isinstance(src, dict) or "type" not in src:
        raise ConfigError(f"{path}: [source] table with a 'type' key is required "
                          f"(allowed types: {', '.join(_SOURCE_TYPES)})")
    kind = src["type"]
    if not isinstance(kind, str) or kind not in _SOURCE_TYPES:
        raise ConfigError(f"{path}: [source] type {kind!r} unknown (allowed: {', '.join(_SOURCE_TYPES)})")
    meta = cfg.get("feeder", {})
    if set(meta) - {"name"}:
        raise ConfigError(f"{path}: [feeder] unknown key(s) {sorted(set(meta) - {'name'})} (allowed: name)")
    name = meta.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{path}: [feeder] name = {name!r} must be a non-empty string")
    allowed_keys = _SOURCE_KEYS.get(kind)
    if allowed_keys is not None and set(src) - allowed_keys:
        raise ConfigError(f"{path}: [source] unknown key(s) {sorted(set(src) - allowed_keys)} for type {kind!r} "
                          f"(allowed: {', '.join(sorted(allowed_keys))})")
    digests = [hashlib.sha256(raw).hexdigest()]
    if kind == "pandapower":
        from ._pandapower import feeder_from_pandapower_network

        fn = src.get("network")
        if not isinstance(fn, str):
            raise ConfigError(f"{path}: [source] network must name a pandapower.networks function")
        kwargs = src.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise ConfigError(f"{path}: [source] kwargs = {kwargs!r} must be a table of keyword arguments")
        feeder = feeder_from_pandapower_network(fn, kwargs, name=name, origin=str(path))
    elif kind in ("pandapower_json", "opendss"):
        key = "path"
        if not isinstance(src.get(key), str):
            raise ConfigError(f"{path}: [source] {key} must be a file path (relative to the TOML)")
        target = (path.parent / src[key]).resolve()
        if not target.exists():
            raise ConfigError(f"{path}: [source] path {src[key]!r}: {target} does not exist")
        if kind == "opendss":
            from ._opendss import feeder_from_opendss

            feeder = feeder_from_opendss(target, name=name)
            digests.append(feeder.sha256)  # every file the script read, with its name
        else:
            from ._pandapower import feeder_from_pandapower_json

            feeder = feeder_from_pandapower_json(target, name=name)
        if kind == "pandapower_json" and target.is_file():
            digests.append(hashlib.sha256(target.read_bytes()).hexdigest())
    else:  # pandapower_elements (the type was checked above)
        from ._builder import net_from_elements
        from ._pandapower import feeder_from_pandapower

        net = net_from_elements(src, origin=str(path))
        feeder = feeder_from_pandapower(net, name=name, origin=str(path))
    if RATINGS_TABLE in cfg:
        feeder = with_ratings(feeder, _ratings(cfg[RATINGS_TABLE], str(path)), str(path))
    limits = cfg.get("limits", {})
    unknown = set(limits) - {"v_min_pu", "v_max_pu"}
    if unknown:
        raise ConfigError(f"{path}: [limits] unknown key(s) {sorted(unknown)} (allowed: v_min_pu, v_max_pu)")
    for key in ("v_min_pu", "v_max_pu"):
        v = limits.get(key, 1.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 2:
            raise ConfigError(f"{path}: [limits] {key} = {v!r} must be a number in (0, 2) (per unit)")
    feeder = feeder.replace(
        v_min_pu=float(limits.get("v_min_pu", 0.94)),
        v_max_pu=float(limits.get("v_max_pu", 1.10)),
        origin=str(path),
        sha256=hashlib.sha256("".join(digests).encode()).hexdigest() if len(digests) > 1 else digests[0],
    )
    return check_feeder(feeder)


# ----------------------------------------------------------------------------
# line ratings per line code
# ----------------------------------------------------------------------------
#: the table of a feeder TOML (or a ``--ratings`` file) that sets line ratings: line code -> amperes
RATINGS_TABLE = "line_i_max_a"
#: the largest rating accepted [A] (an LV cable carries well under 1,000 A)
MAX_RATING_A = 10_000.0


def read_ratings(path: str | Path) -> tuple[dict[str, float], str, str]:
    """A ratings file: TOML holding only a ``[line_i_max_a]`` table (line code -> rating in
    amperes per phase conductor).  Returns the checked table, the file as text for messages,
    and the SHA-256 of its bytes."""
    p = Path(path)
    try:
        raw = p.read_bytes()
        cfg = tomllib.loads(raw.decode("utf-8"))
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the ratings file ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from e
    if set(cfg) != {RATINGS_TABLE}:
        raise ConfigError(f"{p}: a ratings file holds one table, [{RATINGS_TABLE}] (line code = amperes); found "
                          f"{sorted(cfg) or 'none'}")
    return _ratings(cfg[RATINGS_TABLE], str(p)), str(p), hashlib.sha256(raw).hexdigest()


def _ratings(tab, where: str) -> dict[str, float]:
    """A ``[line_i_max_a]`` table checked: every value a rating in (0, MAX_RATING_A] amperes."""
    if not isinstance(tab, dict):
        raise ConfigError(f"{where}: {RATINGS_TABLE} = {tab!r} must be a table ([{RATINGS_TABLE}], line code = amperes)")
    for code, amps in tab.items():
        ok = isinstance(amps, (int, float)) and not isinstance(amps, bool) and math.isfinite(amps)
        if not (ok and 0 < amps <= MAX_RATING_A):
            raise ConfigError(f"{where}: [{RATINGS_TABLE}] {code} = {amps!r}: must be a rating in amperes "
                              f"(a number in (0, {MAX_RATING_A:g}])")
    return {str(k): float(v) for k, v in tab.items()}


def with_ratings(feeder: Feeder, amps: dict[str, float], where: str) -> Feeder:
    """``feeder`` with the rating of every line of each line code in ``amps`` (code -> A per phase
    conductor; codes compared without case, as OpenDSS does) set and no longer flagged as defaulted.
    A code no line has is a :class:`ConfigError` naming ``where``, the code and the known codes."""
    codes = np.array([c.casefold() for c in feeder.line_code], dtype=object)
    known = sorted({c for c in feeder.line_code if c})
    i_max = np.array(feeder.line_i_max_a, float)
    defaulted = np.array(feeder.line_rating_defaulted, bool)
    for code, a in amps.items():
        on = codes == code.casefold()
        if not code or not on.any():
            raise ConfigError(f"{where}: [{RATINGS_TABLE}] {code!r}: no line of feeder {feeder.name!r} has this line "
                              f"code (known: {', '.join(known) if known else 'none; its lines have no line codes'})")
        i_max[on], defaulted[on] = a, False
    set_before = dict(feeder.meta.get("line_ratings_set", {}))
    meta = {**feeder.meta, "line_ratings_set": set_before | amps,
            "line_ratings_from": ", ".join(dict.fromkeys([*filter(None, [feeder.meta.get("line_ratings_from")]),
                                                          where]))}
    return feeder.replace(line_i_max_a=i_max, line_rating_defaulted=defaulted, meta=meta)


def warn_default_ratings(feeder: Feeder) -> None:
    """A :class:`~bayesflex.errors.FeederWarning` when lines use a rating their model never gave."""
    on = np.asarray(feeder.line_rating_defaulted, bool)
    if not on.any():
        return
    codes = sorted({c for c, d in zip(feeder.line_code, on) if d and c})
    amps = ", ".join(f"{a:g} A" for a in sorted(set(np.asarray(feeder.line_i_max_a)[on])))
    warnings.warn(f"{feeder.origin}: {int(on.sum())} of {feeder.n_line} lines use OpenDSS's default rating ({amps}): "
                  f"their line code{'s' if len(codes) != 1 else ''} ({', '.join(codes) or 'none'}) give"
                  f"{'' if len(codes) != 1 else 's'} no normamps; "
                  f"set each code's rating in amperes in a [{RATINGS_TABLE}] table of a feeder TOML or a --ratings "
                  "file", FeederWarning, stacklevel=3)
