"""Reading feeders: a name, a feeder TOML, a pandapower JSON or an OpenDSS model -> a checked
:class:`~bayesflex.grid.feeder.Feeder`; line ratings per line code from a TOML table.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
import warnings
from pathlib import Path

import numpy as np

from bayesflex.core.checks import check_on_feeder, resolve_feeder
from bayesflex.errors import ConfigError, FeederWarning
from bayesflex.grid.feeder import Feeder, check_feeder
from bayesflex.io.builder import net_from_elements
from bayesflex.io.opendss import feeder_from_opendss
from bayesflex.io.pandapower import (
    feeder_from_pandapower,
    feeder_from_pandapower_json,
    feeder_from_pandapower_network,
)

__all__ = ["RATINGS_TABLE", "load_feeder", "read_ratings", "warn_default_ratings", "with_ratings"]
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
        return check_feeder(feeder_from_pandapower_json(path, name=path.stem))
    if suffix in (".dss", ".txt") or path.is_dir():
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
            feeder = feeder_from_opendss(target, name=name)
            digests.append(feeder.sha256)  # every file the script read, with its name
        else:
            feeder = feeder_from_pandapower_json(target, name=name)
        if kind == "pandapower_json" and target.is_file():
            digests.append(hashlib.sha256(target.read_bytes()).hexdigest())
    else:  # pandapower_elements (the type was checked above)
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
    check_on_feeder([c for c in amps if not c or not (codes == c.casefold()).any()], known,
                    f"{where}: [{RATINGS_TABLE}] line code", feeder=feeder.name)
    for code, a in amps.items():
        on = codes == code.casefold()
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
