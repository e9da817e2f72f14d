"""What a technology is to bayesflex: one interface that sampling, the priors file's checks
and the result's names read, instead of naming the technologies one by one.

A technology module (``pv``, ``ev``...) declares one :class:`Model`: the name of its table in
a priors file, its parameters (key -> domain, see :mod:`bayesflex.priors.spec`) and which of
them are drawn per agent, the other keys of its table and their checks, its power variable,
whether it draws random numbers, whether it runs after the baseload, and one simulation::

    simulate(params, extra, owners, context, rng) -> Simulation

``params``: the drawn parameters without the ``<name>.`` prefix, ``(draw,)`` or ``(draw,
agent)``; ``extra``: the table's other keys as ``parse`` checked them; ``owners (draw,
agent)``: who has the technology in each draw; ``context``: the horizon and the site
(:class:`Context`); ``rng``: the technology's own ``numpy.random.Generator`` (``None`` unless
``random``).  :mod:`bayesflex.priors.registry` lists the models in order and registers new
ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["SERVICE", "Context", "Model", "Output", "Simulation"]

#: how having a technology sizes an agent's service (see ``sampling._service_kw``):
#: "" as drawn; "electrified" at least the baseload's ``electrified_service_kw`` per phase;
#: "sized" to the ratings of all its appliances (a commercial supply)
SERVICE = ("", "electrified", "sized")


@dataclass(frozen=True)
class Output:
    """A technology's power in the draws: ``var (chain, draw, time, agent, phase)``."""

    var: str  # "p_<x>_kw"
    long_name: str  # the variable's long_name
    label: str  # plural, for printouts ("heat pumps")
    units: str = "kW"


@dataclass(frozen=True)
class Context:
    """What a simulation may know besides its own parameters."""

    times: pd.DatetimeIndex  # half-hour starts, naive UTC
    latitude: float
    longitude: float
    timezone: str  # IANA zone of the site's clocks
    net_kw: np.ndarray | None = None  # (draw, time, agent): the net power before it (``after_baseload`` only)


@dataclass(frozen=True)
class Simulation:
    """One technology's draws: power and bounds ``(draw, time, agent)`` in kW, load positive,
    zero for agents without it."""

    p_kw: np.ndarray
    p_lb_kw: np.ndarray  # lowest power flexibility allows
    p_ub_kw: np.ndarray  # highest
    #: (draw, agent) kW of the agent's service it takes (so less is left for the baseload); None: none
    rating_kw: np.ndarray | None = None
    #: state to keep in the draws: name -> (dims, values[, attrs]); dims from "draw" get "chain" in front
    variables: dict[str, tuple] = field(default_factory=dict)
    coords: dict[str, Any] = field(default_factory=dict)  # coordinates its variables need


def _nothing(tab: dict, where: str) -> dict:
    return {}


@dataclass(frozen=True, eq=False)
class Model:
    """One technology: its priors table, its parameters and its simulation."""

    name: str  # the table's name in a priors file
    schema: Mapping[str, str]  # parameter -> domain ("real", "positive", "unit")
    output: Output
    simulate: Callable[..., Simulation] | None  # None: sampling runs it itself (the baseload)
    per_agent: tuple[str, ...] = ()  # parameters drawn for each agent; the rest once per draw
    optional: frozenset[str] = frozenset()  # parameters a table may leave out (then not drawn)
    keys: frozenset[str] = frozenset()  # the table's other keys ...
    parse: Callable[[dict, str], dict] = _nothing  # ... checked: (table, "file [name]") -> extra
    retired: Mapping[str, str] = field(default_factory=dict)  # key of an older model -> what to do instead
    owned: bool = True  # ``penetration`` or ``agents`` says who has it; False: every agent
    random: bool = False  # its simulation draws random numbers (from a stream of its own)
    after_baseload: bool = False  # it answers to the net power of the rest (``context.net_kw``)
    controllable: bool = True  # a planned position replaces its power (``study.positions``)
    service: str = ""  # one of SERVICE
    prefix: str = ""  # of its state variables (``<prefix>_has``...); the name when empty
    #: PyMC variables beyond the schema's, drawn with them: (pm, technology table, n_agent,
    #: posterior or None) -> {"<name>.<key>": (random variable, shape of one draw)}; inputs of
    #: its simulation, not kept in the draws
    rvs: Callable[..., dict] | None = None

    @property
    def state(self) -> str:
        return self.prefix or self.name
