"""Parameter specifications: a number, or a PyMC distribution by name and arguments.

In a priors TOML a parameter is either a fixed number or an inline table::

    capacity_kw = { dist = "LogNormal", mu = 1.3, sigma = 0.35 }

Every parameter declares its domain (``real``, ``positive``, ``unit``: the
closed interval [0, 1]).  A distribution is accepted only if its support lies
in the domain, decided from the distribution and its arguments, not by
sampling: ``Normal`` is never a capacity, ``Uniform(0.9, 1.1)`` never a
probability.  Errors name the file, the key and what is allowed.
"""

from __future__ import annotations

import functools
import inspect
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from bayesflex.errors import ConfigError

__all__ = ["DOMAINS", "DRAW_MODE", "PYTENSOR_LOCK", "Param", "parse_param"]

DOMAINS = ("real", "positive", "unit")

#: how ``pm.draw`` compiles its graphs: a prior's draw graph is random-variable ops, which
#: draw with numpy whatever the linker, so the Python linker gives the same numbers as C
#: code and saves compiling it (~2 s a study, ~0.1 s a parameter check)
DRAW_MODE = "FAST_COMPILE"

#: held while building or compiling a PyTensor graph.  PyTensor's configuration is one
#: process-wide object that its compiler changes and restores around each graph rewrite
#: (``config.change_flags(mode=..., cxx="")``), which is not thread-safe: studies whose chunks
#: draw in threads (the threading backend) could leave ``config.mode`` at DRAW_MODE or
#: ``config.cxx`` empty, and every later PyTensor function of the process compiled in the
#: default mode then ran in Python, 10-20 times slower (the conditioning fit's NUTS did, before
#: it named its own mode, ``conditioning.FIT_MODE``)
PYTENSOR_LOCK = threading.RLock()


def draw_dist(dist: str, args: dict[str, float], **kwargs) -> np.ndarray:
    """Seeded draws (seed 0) of PyMC's distribution ``dist`` with ``args``; ``kwargs`` go to ``pm.draw``.
    Read-only: the same arguments give the same array, drawn once per process (every study reads
    its priors file, and checking it draws each distribution once and takes some means)."""
    def frozen(d: dict) -> tuple:
        return tuple(sorted((k, type(v).__name__, v) for k, v in d.items()))

    return _draw_dist(dist, frozen(args), frozen(kwargs))


@functools.lru_cache(maxsize=256)
def _draw_dist(dist: str, args: tuple, kwargs: tuple) -> np.ndarray:
    import pymc as pm

    with PYTENSOR_LOCK:
        out = np.asarray(pm.draw(getattr(pm, dist).dist(**{k: v for k, _, v in args}), random_seed=0, mode=DRAW_MODE,
                                 **{k: v for k, _, v in kwargs}))
    out.flags.writeable = False
    return out

# distributions whose support is (0, inf) or [0, inf) whatever their arguments
_POSITIVE = {"LogNormal", "Gamma", "HalfNormal", "HalfCauchy", "HalfStudentT", "Exponential", "Weibull",
             "InverseGamma", "ChiSquared", "Wald", "Pareto"}
_UNIT = {"Beta", "Kumaraswamy"}
_BOUNDED = {"Uniform", "TruncatedNormal"}  # support set by lower/upper arguments
_REAL = {"Normal", "StudentT", "Cauchy", "Logistic", "Laplace", "SkewNormal", "Gumbel"}
ALLOWED = sorted(_POSITIVE | _UNIT | _BOUNDED | _REAL)


@dataclass(frozen=True)
class Param:
    """A parameter: ``value`` when fixed, else ``dist`` with keyword ``args``."""

    key: str
    domain: str
    value: float | None = None
    dist: str | None = None
    args: tuple[tuple[str, float], ...] = ()

    @property
    def fixed(self) -> bool:
        return self.dist is None

    def kwargs(self) -> dict[str, float]:
        return dict(self.args)

    def mean(self) -> float:
        """The value, or the distribution's mean (Monte Carlo, 20,000 seeded PyMC draws: to about
        1 % of its sd)."""
        if self.fixed:
            return float(self.value)
        return float(np.mean(draw_dist(self.dist, self.kwargs(), draws=20_000)))

    def __str__(self) -> str:
        if self.fixed:
            return f"{self.value:g}"
        return f"{self.dist}({', '.join(f'{k}={v:g}' for k, v in self.args)})"


def _support(dist: str, args: dict[str, float]) -> tuple[float, float]:
    if dist in _POSITIVE:
        return 0.0, math.inf
    if dist in _UNIT:
        return 0.0, 1.0
    if dist in _BOUNDED:
        return args.get("lower", -math.inf), args.get("upper", math.inf)
    return -math.inf, math.inf


def _accepted_args(dist: str) -> list[str]:
    import pymc as pm

    sig = inspect.signature(getattr(pm, dist).dist)
    return [p for p in sig.parameters if p not in ("args", "kwargs", "cls")]


def parse_param(raw: Any, *, where: str, key: str, domain: str) -> Param:
    """Check and convert one TOML value; ``where`` names the file and table."""
    name = f"{where} {key}"
    if isinstance(raw, bool):
        raise ConfigError(f"{name}: expected a number or {{ dist = ..., ... }}, got {raw!r}")
    if isinstance(raw, (int, float)):
        v = float(raw)
        if not math.isfinite(v):
            raise ConfigError(f"{name}: {raw!r} is not a finite number")
        if domain == "positive" and v < 0:
            raise ConfigError(f"{name} = {v:g}: must not be negative")
        if domain == "unit" and not 0 <= v <= 1:
            raise ConfigError(f"{name} = {v:g}: must lie in [0, 1]")
        return Param(key=key, domain=domain, value=v)
    if not isinstance(raw, dict) or "dist" not in raw:
        raise ConfigError(f"{name}: expected a number or an inline table {{ dist = \"LogNormal\", mu = ..., ... }}")
    dist = raw["dist"]
    if dist not in ALLOWED:
        raise ConfigError(f"{name}: unknown distribution {dist!r} (allowed: {', '.join(ALLOWED)})")
    args = {k: v for k, v in raw.items() if k != "dist"}
    accepted = _accepted_args(dist)
    for k, v in args.items():
        if k not in accepted:
            raise ConfigError(f"{name}: {dist} takes no argument {k!r} (allowed: {', '.join(accepted)})")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{name}: {dist} argument {k} = {v!r} must be a finite number")
    described = f"{dist}({', '.join(f'{k}={v}' for k, v in args.items())})"
    if dist == "Uniform" and not {"lower", "upper"} <= set(args):
        raise ConfigError(f"{name}: {described} needs both lower and upper")
    if dist in _BOUNDED and not args.get("lower", -math.inf) < args.get("upper", math.inf):
        raise ConfigError(f"{name}: {described}: lower must be below upper")
    try:
        draw = draw_dist(dist, args)
    except Exception as e:  # PyMC raises TypeError/ValueError/ParameterValueError here
        msg = str(e).split("\n")[0]
        raise ConfigError(f"{name}: {described} is not a valid distribution: {msg}") from e
    if not math.isfinite(float(draw)):
        raise ConfigError(f"{name}: {described} draws {float(draw)}, not a finite number (arguments too large?)")
    lo, hi = _support(dist, args)
    if domain == "positive" and lo < 0:
        raise ConfigError(
            f"{name}: {dist} can be negative, but {key} must not be (use a positive distribution: "
            f"{', '.join(sorted(_POSITIVE))}, or Uniform/TruncatedNormal with lower >= 0)"
        )
    if domain == "unit" and (lo < 0 or hi > 1):
        raise ConfigError(
            f"{name}: {dist} reaches outside [0, 1], but {key} is a fraction "
            "(use Beta, or Uniform/TruncatedNormal with 0 <= lower < upper <= 1)"
        )
    return Param(key=key, domain=domain, dist=dist, args=tuple(sorted((k, float(v)) for k, v in args.items())))
