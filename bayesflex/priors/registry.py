"""The technologies bayesflex knows, in order: the built-in ones, then any registered.

The priors file's tables, the order in which sampling runs them and sums their power, the
draws' power variables and the study's causes of congestion all follow this order.  A
technology defined outside the package joins with :func:`register`::

    from bayesflex.priors import registry
    registry.register(SAUNA)        # a technology.Model; its table may then be in a priors file

Its random numbers come from streams derived from its name (``priors.streams``), so that
registering it changes no other technology's numbers.  A study's workers unpickle the
priors, which carry each table's model: a model defined and registered at import of its
module is known in every worker.
"""

from __future__ import annotations

import re

from bayesflex.errors import ConfigError
from bayesflex.priors import baseload, battery, ev, heat_pump, pv, refrigeration
from bayesflex.priors.technology import SERVICE, Model

__all__ = ["BUILTIN", "components", "get", "labels", "power_vars", "register", "technologies", "unregister"]

#: the built-in technologies, in their order (sampling sums their power in it: never reorder)
BUILTIN = (baseload.MODEL, pv.MODEL, ev.MODEL, heat_pump.MODEL, battery.MODEL, refrigeration.MODEL)
#: the registered ones (process-wide, like Python's codecs: a registry is what register() is for)
_REGISTERED: dict[str, Model] = {}
_RESERVED = {"horizon", "site", "position"}  # priors tables and the study's own cause


def technologies() -> tuple[Model, ...]:
    """Every known technology, built-in first, then in the order registered."""
    return BUILTIN + tuple(_REGISTERED.values())


def get(name: str) -> Model:
    for m in technologies():
        if m.name == name:
            return m
    raise ConfigError(f"unknown technology {name!r} (known: {', '.join(m.name for m in technologies())})")


def components() -> dict[str, str]:
    """technology -> its power in the draws (``p_base_kw``, ``p_pv_kw``...), in order."""
    return {m.name: m.output.var for m in technologies()}


def power_vars(*, controllable: bool) -> list[str]:
    """The power variables a planned position replaces (``controllable``: EV, heat pump,
    battery...) or leaves as drawn (the baseload first, then PV), in order."""
    return [m.output.var for m in technologies() if m.controllable == controllable]


def labels() -> dict[str, str]:
    """technology -> its plural label for printouts ("heat pumps"), in order."""
    return {m.name: m.output.label for m in technologies()}


def _problems(model: Model) -> list[str]:
    """What keeps ``model`` from joining the technologies known (an empty list: nothing)."""
    known = technologies()
    out = []
    if not re.fullmatch(r"[a-z][a-z0-9_]*", model.name) or model.name in _RESERVED:
        out.append(f"name {model.name!r} must be lower-case letters, digits and _ (not {', '.join(sorted(_RESERVED))})")
    if any(m.name == model.name for m in known):
        out.append(f"name {model.name!r} is taken")
    if not re.fullmatch(r"p_[a-z0-9_]+_kw", model.output.var) or any(m.output.var == model.output.var for m in known):
        out.append(f"output.var {model.output.var!r} must be a new p_<x>_kw")
    if any(m.state == model.state for m in known):
        out.append(f"prefix {model.state!r} of its state variables is taken")
    for what, keys in (("per_agent", model.per_agent), ("optional", model.optional)):
        if not set(keys) <= set(model.schema):
            out.append(f"{what} {sorted(set(keys) - set(model.schema))} not in its schema")
    if set(model.keys) & (set(model.schema) | {"penetration", "agents"}):
        out.append("keys must not repeat its schema's, penetration or agents")
    if model.simulate is None:
        out.append("simulate is required (only the baseload is run by sampling itself)")
    if model.service not in SERVICE:
        out.append(f"service {model.service!r} not one of {SERVICE}")
    return out


def register(model: Model) -> Model:
    """Add ``model`` to the technologies, after those known; returns it."""
    if not isinstance(model, Model):
        raise TypeError(f"register() takes a bayesflex.priors.technology.Model, not {type(model).__name__}")
    problems = _problems(model)
    if problems:
        raise ConfigError(f"technology {model.name!r} cannot be registered: {'; '.join(problems)}")
    _REGISTERED[model.name] = model
    return model


def unregister(name: str) -> None:
    """Remove a registered technology (the built-in ones stay)."""
    if name not in _REGISTERED:
        raise ConfigError(f"{name!r} is not a registered technology (registered: {', '.join(_REGISTERED) or 'none'})")
    del _REGISTERED[name]
