"""Draw agent powers over the horizon from a prior set.

PyMC draws the parameters (per draw, or per draw and agent); the time series
are then simulated in numpy from those parameters, all draws at once, by each
technology's model (:mod:`bayesflex.priors.registry`): first those that do not
answer to the net power, then the baseload (every agent, below what its service
leaves after their ratings), then those that answer to the net power (the
battery).  Every random stream comes from ``numpy.random.SeedSequence(seed)``
(:mod:`bayesflex.priors.streams`): one child for PyMC and one per technology at
a fixed position or derived from its name, so that adding a technology never
changes the numbers of another.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import xarray as xr

from bayesflex.errors import ConfigError
from bayesflex.grid.feeder import PHASES, Feeder
from bayesflex.priors import baseload
from bayesflex.priors.conditioning import BASELOAD_VARS, Posterior
from bayesflex.priors.config import Priors, Technology, check_agents, load_priors
from bayesflex.priors.registry import get, technologies
from bayesflex.priors.spec import DRAW_MODE, PYTENSOR_LOCK
from bayesflex.priors.streams import pymc_stream, stream, technology_stream
from bayesflex.priors.technology import Context, Model, Simulation

__all__ = ["draw_parameters", "sample_priors"]


def _model(tech: Technology) -> Model:
    return tech.model or get(tech.name)


def draw_parameters(priors: Priors, n_agent: int, draws: int, seed: np.random.SeedSequence,
                    posterior: Posterior | None = None) -> dict[str, np.ndarray]:
    """``{"tech.key": array (draw,) or (draw, agent)}`` for every parameter, and the
    further variables of a technology's model (``ev.row_R``, ``baseload.service``...).

    Distributions are drawn with PyMC (``pm.draw``); fixed numbers are broadcast.
    Each technology draws from its own child of ``seed`` (``streams.pymc_stream``),
    so that adding, removing or changing one technology's parameters never changes
    another's numbers.  ``posterior``: its EV rows replace the prior's.
    """
    import pymc as pm

    out = {}
    with PYTENSOR_LOCK, pm.Model(coords={"agent": np.arange(n_agent)}):  # see PYTENSOR_LOCK
        for tech in priors.technologies.values():
            model = _model(tech)
            names, rvs, shapes = [], [], []
            for key, par in tech.params.items():
                name = f"{tech.name}.{key}"
                per_agent = key in model.per_agent
                shape = (draws, n_agent) if per_agent else (draws,)
                if par.fixed:
                    out[name] = np.full(shape, par.value)
                    continue
                rvs.append(getattr(pm, par.dist)(name, **par.kwargs(), dims="agent" if per_agent else None))
                names.append(name)
                shapes.append(shape)
            for name, (rv, shape) in (model.rvs(pm, tech, n_agent, posterior) if model.rvs else {}).items():
                names.append(name)
                rvs.append(rv)
                shapes.append((draws, *shape))
            if not rvs:
                continue
            values = _draw(rvs, draws, np.random.default_rng(pymc_stream(seed, tech.name)))
            for name, v, shape in zip(names, values, shapes):
                out[name] = np.asarray(v, float).reshape(shape)
    return out


#: the PyTensor draw functions this process compiled, least recently used first: (outputs, their
#: random generators, their other shared variables, function); a few, since a study draws the
#: same graphs in every chunk
_COMPILED: list[tuple[list, list, list, object]] = []
_COMPILED_KEPT = 16


def _draw(rvs: list, draws: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``pm.draw(rvs, draws=draws, random_seed=rng, mode=DRAW_MODE)`` as a list of (draw, ...)
    arrays: the same numbers, without compiling a graph equal to one this process drew before.

    Every chunk of a study builds the same graphs (the same distributions, arguments and
    shapes), and compiling them was half of drawing a chunk's parameters.  A graph found equal
    to a compiled one reuses that function: ``equal_computations``, the same operations on the
    same constants, its shared variables taken one for one (random generators, and the
    lengths of dimensions, whose values must be equal too); the function's generators are
    reseeded from ``rng`` as ``pm.draw`` seeds a new function's.  Called under ``PYTENSOR_LOCK``."""
    from pymc.pytensorf import collect_default_updates, reseed_rngs
    from pymc.pytensorf import compile as compile_pymc
    from pymc.util import _get_seeds_per_chain
    from pytensor.compile.sharedvalue import SharedVariable
    from pytensor.graph.basic import equal_computations

    try:
        from pytensor.graph.traversal import graph_inputs
    except ImportError:  # PyTensor before 2.32
        from pytensor.graph.basic import graph_inputs

    def same(outputs: list, generators: list, others: list) -> bool:
        """Whether a compiled graph is this one: equal values in its shared variables, equal operations."""
        if (len(outputs), len(generators), len(others)) != (len(rvs), len(rngs), len(shared)):
            return False
        for a, b in zip((v.get_value(borrow=True) for v in shared), (o.get_value(borrow=True) for o in others)):
            if type(a) is not type(b) or np.asarray(a).dtype != np.asarray(b).dtype or not np.array_equal(a, b):
                return False
        return equal_computations(rvs, outputs, in_xs=rngs + shared, in_ys=generators + others)

    (seed,) = _get_seeds_per_chain(rng, 1)
    rngs = list(collect_default_updates(inputs=[], outputs=rvs))
    shared = [v for v in graph_inputs(rvs) if isinstance(v, SharedVariable) and v not in rngs]
    for i, (outputs, generators, others, fn) in enumerate(_COMPILED):
        if same(outputs, generators, others):
            _COMPILED.append(_COMPILED.pop(i))
            reseed_rngs(generators, seed)
            break
    else:
        fn = compile_pymc(inputs=[], outputs=rvs, random_seed=seed, mode=DRAW_MODE)
        _COMPILED.append((rvs, rngs, shared, fn))
        del _COMPILED[:-_COMPILED_KEPT]
    return [np.stack(v) for v in zip(*(fn() for _ in range(draws)))]


def _params(par: dict, tech: str) -> dict[str, np.ndarray]:
    """One technology's parameters, without its ``tech.`` prefix."""
    return {k.split(".", 1)[1]: v for k, v in par.items() if k.startswith(f"{tech}.")}


def _service_kw(tech: Technology, service: np.ndarray, ratings: dict, models: dict, feeder: Feeder) -> np.ndarray:
    """Each agent's service capacity, kW (draw, agent): the drawn fuse's kW (``service``, an
    index into ``service_kw``) on each of its phases, at least ``electrified_service_kw`` per
    phase for an agent with an "electrified" technology (an EV charger, a heat pump), and for
    an agent with a "sized" one (refrigeration: a shop) the ratings of all its appliances plus
    ``electrified_service_kw`` per phase: a commercial supply is sized to its plant (ASSUMPTION)."""
    per_phase = np.asarray(tech.extra["service_kw"])[service.astype(int)]
    electrified = sum((r > 0 for k, r in ratings.items() if models[k].service == "electrified"),
                      np.zeros(per_phase.shape, bool))
    per_phase = np.where(electrified, np.maximum(per_phase, tech.extra["electrified_service_kw"]), per_phase)
    phases = feeder.agent_phases.sum(axis=1)[None, :]
    service_kw = per_phase * phases
    sized = [r for k, r in ratings.items() if models[k].service == "sized"]
    if sized:
        plant = sum(ratings.values()) + tech.extra["electrified_service_kw"] * phases
        for r in sized:
            service_kw = np.where(r > 0, np.maximum(service_kw, plant), service_kw)
    return service_kw


def _owners(tech, feeder: Feeder, draws: int, rng: np.random.Generator) -> np.ndarray:
    if tech.agents is not None:
        has = np.isin(np.array(feeder.agents), tech.agents)
        return np.broadcast_to(has, (draws, feeder.n_agent)).copy()
    return rng.random((draws, feeder.n_agent)) < tech.penetration


def _from_posterior(post, par: dict, feeder: Feeder, draws: int, rng: np.random.Generator) -> np.ndarray | None:
    """Replace the baseload parameters by posterior samples (resampled with
    ``rng``); return the observed agents' household level ``z (draw, agent)``
    (standard normal; see :func:`baseload.level_log`) with NaN for agents
    that were not observed."""
    samples = post.draws()
    n_avail = len(next(iter(samples.values())))
    pick = rng.choice(n_avail, size=draws, replace=draws > n_avail)
    for key in BASELOAD_VARS:
        if key in samples:
            par[f"baseload.{key}"] = samples[key][pick]
    fitted = np.full((draws, feeder.n_agent), np.nan)
    col = {a: i for i, a in enumerate(feeder.agents)}
    for j, a in enumerate(post.agents):
        if a not in col:
            raise ConfigError(f"posterior was fitted to agent {a!r}, which is not on feeder {feeder.name!r}")
        fitted[:, col[a]] = samples["z"][pick, j]
    return fitted


def _simulate(tech: Technology, par: dict, feeder: Feeder, draws: int, seed: int, context: Context,
              state: dict) -> Simulation:
    """One technology's draws; its ownership and state go into ``state``."""
    model = _model(tech)
    owners = _owners(tech, feeder, draws, np.random.default_rng(technology_stream(seed, tech.name, "ownership")))
    rng = np.random.default_rng(technology_stream(seed, tech.name, "simulate")) if model.random else None
    sim = model.simulate(_params(par, tech.name), tech.extra, owners, context, rng)
    state[f"{model.state}_has"] = (("draw", "agent"), owners)
    state.update(sim.variables)
    return sim


def _baseload(tech: Technology, par: dict, ratings: dict, models: dict, feeder: Feeder, seed: int,
              times: pd.DatetimeIndex, fitted: np.ndarray | None, state: dict) -> tuple[np.ndarray, ...]:
    """Every agent's baseload ``p_kw, q_kvar (draw, time, agent)``, below what its service leaves
    after the ``ratings`` of its other appliances (so that the drawn net import never exceeds the
    service), the household levels ``z`` and the service ``(draw, agent)``."""
    rng = np.random.default_rng(technology_stream(seed, tech.name, "simulate"))
    b = _params(par, tech.name)
    service_kw = _service_kw(tech, b["service"], ratings, models, feeder)
    cap_kw = np.maximum(service_kw - sum(ratings.values(), 0.0), baseload.MIN_CAP_KW)
    draws, n_agent = cap_kw.shape
    days = int(baseload.day_index(times.values)[-1]) + 1
    z = rng.standard_normal((draws, n_agent))
    w = rng.standard_normal((draws, n_agent, days))
    if fitted is not None:  # observed agents keep their fitted household level
        z = np.where(np.isnan(fitted), z, fitted)
    b["level_log"] = baseload.level_log(b, z, w)
    p_base, q_base = baseload.simulate(b, tech.extra["shape_kw"], times.values, cap_kw, rng)
    state["baseload_level_log"] = (("draw", "agent", "day"), b["level_log"],
                                   {"units": "1", "long_name": "ln of the household-and-day level"})
    state["baseload_cap_kw"] = (("draw", "agent"), cap_kw,
                                {"units": "kW", "long_name": "baseload bound: service less the rated "
                                 "power of the agent's EV charger, heat pump and refrigeration"})
    return p_base, q_base, z, service_kw


def sample_priors(
    feeder: Feeder,
    priors,
    *,
    draws: int,
    seed: int,
    start: str | pd.Timestamp | None = None,
    periods: int | None = None,
) -> xr.Dataset:
    """Draws of every agent's power over the horizon, from the priors, or
    from a :class:`~bayesflex.priors.conditioning.Posterior` (the posterior
    predictive: attrs ``conditioned = 1``).

    Returns an ``xarray.Dataset`` with ``p_kw``, ``q_kvar`` (net, load
    positive), the components ``p_base_kw``, ``q_base_kvar`` and one per
    technology known (:mod:`bayesflex.priors.registry`: ``p_pv_kw``,
    ``p_ev_kw``, ``p_hp_kw``, ``p_battery_kw``, ``p_refrigeration_kw``...;
    zero when the priors leave it out), the flexibility bounds
    ``p_lb_kw``/``p_ub_kw`` — all ``(chain, draw, time, agent, phase)`` in
    kW/kvar — the sampled parameters (``chain, draw[, agent]``) and each
    technology's state (ownership, the shared clear-sky index and outdoor
    temperature, EV states and SoC, battery SoC...).  Only
    the baseload draws reactive power; the other technologies run at unity
    power factor.  The power arrays are float32 (kW to 7 significant digits:
    half the memory of float64).  Same inputs and seed give identical numbers.
    """
    post = priors if isinstance(priors, Posterior) else None
    pri = post.priors if post else priors if isinstance(priors, Priors) else load_priors(priors)
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 1:
        raise ConfigError(f"draws = {draws!r}: must be a positive whole number")
    check_agents(pri, feeder.agents)
    t0 = pd.Timestamp(start) if start is not None else pri.start
    n_t = int(periods) if periods is not None else pri.periods
    times = pd.date_range(t0, periods=n_t, freq="30min")
    par = draw_parameters(pri, feeder.n_agent, draws, stream(seed, "pymc"), posterior=post)
    fitted = _from_posterior(post, par, feeder, draws, np.random.default_rng(stream(seed, "posterior"))) \
        if post and post.idata is not None else None

    context = Context(times, pri.latitude, pri.longitude, pri.timezone)
    models = {name: _model(t) for name, t in pri.technologies.items()}
    run = [t for t in pri.technologies.values() if models[t.name].simulate is not None]  # all but the baseload
    sims: dict[str, Simulation] = {}  # in the order run (and summed)
    state: dict[str, tuple] = {}  # the technologies' state variables, in the order run
    for tech in (t for t in run if not models[t.name].after_baseload):
        sims[tech.name] = _simulate(tech, par, feeder, draws, seed, context, state)
    ratings = {k: s.rating_kw for k, s in sims.items() if s.rating_kw is not None}  # (draw, agent), kW
    p_base, q_base, z, service_kw = _baseload(pri["baseload"], par, ratings, models, feeder, seed, times, fitted,
                                              state)
    for tech in (t for t in run if models[t.name].after_baseload):  # they answer to the net power of the rest
        net = dataclasses.replace(context, net_kw=p_base + sum(s.p_kw for s in sims.values()))
        sims[tech.name] = _simulate(tech, par, feeder, draws, seed, net, state)

    # plausibility: agent-half-hours whose drawn net power exceeds the agent's service (0 by
    # construction unless MIN_CAP_KW had to lift a capacity; a check, not an assumption)
    p_net = p_base + sum(s.p_kw for s in sims.values())
    beyond = (np.abs(p_net) > service_kw[:, None, :] * (1 + 1e-6)).sum(axis=(1, 2))
    state["n_above_service"] = (("draw",), beyond.astype(np.int64),
                                {"long_name": "agent-half-hours whose net power exceeds the agent's service "
                                 "capacity (must be 0)"})
    kept = {k: v for k, v in par.items() if k.split(".", 1)[1] in models[k.split(".", 1)[0]].schema}
    kept |= {"baseload.household_z": z, "baseload.service_kw": service_kw}
    return _dataset(feeder, pri, post, seed, times, p_net, p_base, q_base, sims, kept, state)


def _dataset(feeder: Feeder, pri: Priors, post: Posterior | None, seed: int, times: pd.DatetimeIndex,
             p_net: np.ndarray, p_base: np.ndarray, q_base: np.ndarray, sims: dict[str, Simulation],
             par: dict, state: dict) -> xr.Dataset:
    """The draws as a Dataset: powers per phase (float32), parameters, the technologies' state."""
    # per phase: single-phase agents on their phase, three-phase split equally
    split = feeder.agent_phases / feeder.agent_phases.sum(axis=1, keepdims=True)

    def phased(x):  # (draw, time, agent) -> (chain, draw, time, agent, phase), float32 (kW to 1e-7)
        out = np.empty((1,) + x.shape + (3,), np.float32)
        for ph in range(3):  # a phase at a time: half the time of one broadcast product into float32
            np.multiply(x, split[:, ph], out=out[0, ..., ph], casting="same_kind")
        return out

    zero = np.zeros_like(p_base)
    base = _model(pri["baseload"]).output
    simulated = {m.name: m for m in technologies()}
    simulated |= {k: _model(t) for k, t in pri.technologies.items() if k not in simulated}  # unregistered since
    # flexibility: each technology's own bounds (PV curtailed up to its whole output, EV
    # charging stopped or raised while the car is at home and not full, a heat pump run a
    # fraction below or above its demand, a shop's refrigeration by a defrost now or a lower
    # suction pressure, a battery within power and every later SoC limit); baseload cannot move
    data = {
        "p_kw": (p_net, "kW", "net active power, load positive"),
        "q_kvar": (q_base, "kvar", "net reactive power, load positive"),
        base.var: (p_base, base.units, base.long_name),
        "q_base_kvar": (q_base, "kvar", "household baseload, reactive"),
        **{m.output.var: (sims[m.name].p_kw if m.name in sims else zero, m.output.units, m.output.long_name)
           for m in simulated.values() if m.simulate is not None},
        "p_lb_kw": (p_base + sum(s.p_lb_kw for s in sims.values()), "kW", "lowest net power flexibility allows"),
        "p_ub_kw": (p_base + sum(s.p_ub_kw for s in sims.values()), "kW", "highest net power flexibility allows"),
    }
    dims5 = ("chain", "draw", "time", "agent", "phase")
    variables = {k: (dims5, phased(v), {"units": u, "long_name": d}) for k, (v, u, d) in data.items()}
    for name, v in par.items():
        dims = ("chain", "draw", "agent") if v.ndim == 2 else ("chain", "draw")
        variables[name.replace(".", "_")] = (dims, v[None])
    for name, (dims, v, *attrs) in state.items():  # per draw gets its chain
        variables[name] = (("chain", *dims), v[None], *attrs) if dims[0] == "draw" else (dims, v, *attrs)
    draws = p_base.shape[0]
    days = int(baseload.day_index(times.values)[-1]) + 1
    coords = {"chain": [0], "draw": np.arange(draws), "time": times, "agent": list(feeder.agents),
              "phase": list(PHASES), "day": np.arange(days)}
    for s in sims.values():
        coords.update(s.coords)
    return xr.Dataset(
        variables, coords=coords,
        attrs={"priors": pri.name, "priors_sha256": pri.sha256, "feeder": feeder.name, "seed": seed,
               "latitude": pri.latitude, "longitude": pri.longitude, "conditioned": int(post is not None),
               **({"observations_sha256": post.observations_sha256,
                   "observed_agents": ",".join(post.agents)} if post else {})},
    )
