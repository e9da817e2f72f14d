"""Draw agent powers over the horizon from a prior set.

PyMC draws the parameters (per draw, or per draw and agent); the time series
are then simulated in numpy from those parameters, all draws at once.  Every
random stream comes from ``numpy.random.SeedSequence(seed)``: one child for
PyMC and one per technology at a fixed position, so that adding a technology
never changes the numbers of another.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from bayesflex.errors import ConfigError
from bayesflex.grid.feeder import PHASES, Feeder
from bayesflex.priors import baseload, battery, ev, heat_pump, pv, refrigeration
from bayesflex.priors.conditioning import BASELOAD_VARS, Posterior
from bayesflex.priors.config import Priors, check_agents, load_priors

__all__ = ["draw_parameters", "sample_priors"]

#: the technologies; a technology's PyMC parameters draw from the child of the seed at its position
#: here (draw_parameters): never reorder
MODELS = {"baseload": baseload, "pv": pv, "ev": ev, "heat_pump": heat_pump, "battery": battery,
          "refrigeration": refrigeration}
#: position of each stream in SeedSequence(seed).spawn(...): never reorder
STREAMS = {
    "pymc": 0, "baseload": 1, "pv": 2, "pv_ownership": 3, "posterior": 4, "ev": 5, "ev_ownership": 6,
    "heat_pump": 7, "heat_pump_ownership": 8, "battery_ownership": 9, "refrigeration_ownership": 10,
}


def draw_parameters(priors: Priors, n_agent: int, draws: int, seed: np.random.SeedSequence,
                    ev_alpha: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``{"tech.key": array (draw,) or (draw, agent)}`` for every parameter.

    Distributions are drawn with PyMC (``pm.draw``); fixed numbers are broadcast.
    Each technology draws from its own child of ``seed`` (at its position in
    ``MODELS``), so that adding, removing or changing one technology's
    parameters never changes another's numbers.
    """
    import pymc as pm

    out = {}
    with pm.Model(coords={"agent": np.arange(n_agent)}):
        for tech in priors.technologies.values():
            names, rvs, shapes = [], [], []
            per_agent = MODELS[tech.name].PER_AGENT
            for key, par in tech.params.items():
                name = f"{tech.name}.{key}"
                shape = (draws, n_agent) if key in per_agent else (draws,)
                if par.fixed:
                    out[name] = np.full(shape, par.value)
                    continue
                rv = getattr(pm, par.dist)(name, **par.kwargs(), dims="agent" if key in per_agent else None)
                names.append(name)
                rvs.append(rv)
                shapes.append(shape)
            if tech.name == "baseload":
                names.append("baseload.service")
                rvs.append(pm.Categorical("baseload.service", p=np.asarray(tech.extra["service_share"]),
                                          dims="agent"))
                shapes.append((draws, n_agent))
            if tech.name == "ev":
                for name, rv in ev.add_rvs(pm, tech, ev_alpha).items():
                    names.append(name)
                    rvs.append(rv)
                    shapes.append((draws,) + tuple(rv.type.shape))
            if not rvs:
                continue
            child = np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, list(MODELS).index(tech.name)))
            values = pm.draw(rvs, draws=draws, random_seed=np.random.default_rng(child))
            values = values if isinstance(values, list) else [values]
            for name, v, shape in zip(names, values, shapes):
                out[name] = np.asarray(v, float).reshape(shape)  # pm.draw drops the axis when draws == 1
    return out


def _params(par: dict, tech: str) -> dict[str, np.ndarray]:
    """One technology's parameters, without its ``tech.`` prefix."""
    return {k.split(".", 1)[1]: v for k, v in par.items() if k.startswith(f"{tech}.")}


def _service_kw(tech, par: dict, ratings: dict, feeder: Feeder) -> np.ndarray:
    """Each agent's service capacity, kW (draw, agent): the drawn fuse's kW on each of
    its phases, at least ``electrified_service_kw`` per phase for an agent with an EV
    charger or a heat pump, and for an agent with refrigeration (a shop) the ratings of
    all its appliances plus ``electrified_service_kw`` per phase: a commercial supply is
    sized to its plant (ASSUMPTION)."""
    per_phase = np.asarray(tech.extra["service_kw"])[par.pop("baseload.service").astype(int)]
    electrified = sum((ratings[k] > 0 for k in ("ev", "heat_pump") if k in ratings), np.zeros(per_phase.shape, bool))
    per_phase = np.where(electrified, np.maximum(per_phase, tech.extra["electrified_service_kw"]), per_phase)
    phases = feeder.agent_phases.sum(axis=1)[None, :]
    service = per_phase * phases
    if "refrigeration" in ratings:
        sized = sum(ratings.values()) + tech.extra["electrified_service_kw"] * phases
        service = np.where(ratings["refrigeration"] > 0, np.maximum(service, sized), service)
    return service


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
    positive), the components ``p_base_kw``, ``q_base_kvar``, ``p_pv_kw``,
    ``p_ev_kw``, ``p_hp_kw``, ``p_battery_kw``, ``p_refrigeration_kw``, the
    flexibility bounds ``p_lb_kw``/``p_ub_kw`` — all ``(chain, draw, time,
    agent, phase)`` in kW/kvar — the sampled parameters (``chain, draw[,
    agent]``) and each technology's state (ownership, the shared clear-sky
    index and outdoor temperature, EV states and SoC, battery SoC...).  Only
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
    streams = np.random.SeedSequence(seed).spawn(len(STREAMS))
    par = draw_parameters(pri, feeder.n_agent, draws, streams[STREAMS["pymc"]],
                          ev_alpha=post.ev_alpha if post else None)
    n_agent = feeder.n_agent
    fitted = _from_posterior(post, par, feeder, draws, np.random.default_rng(streams[STREAMS["posterior"]])) \
        if post and post.idata is not None else None

    extra_vars = {}
    ratings = {}  # technology -> its rated power on the agent's service (draw, agent), kW
    flex = {}  # technology -> (power, lowest, highest) (draw, time, agent), kW

    def owners_of(name):
        return _owners(pri[name], feeder, draws, np.random.default_rng(streams[STREAMS[f"{name}_ownership"]]))

    if "pv" in pri:
        tech = pri["pv"]
        cs = pv.clear_sky_kw_per_kwp(times, pri.latitude, pri.longitude, tech.extra["tilt_deg"],
                                     tech.extra["azimuth_deg"])
        owners = owners_of("pv")
        p_pv, k = pv.simulate(_params(par, "pv"), cs, owners, np.random.default_rng(streams[STREAMS["pv"]]))
        flex["pv"] = (p_pv, p_pv, np.zeros_like(p_pv))  # curtailable down to nothing
        extra_vars["pv_has"] = (("chain", "draw", "agent"), owners[None])
        extra_vars["pv_clear_sky_index"] = (("chain", "draw", "time"), k[None], {"units": "1"})
        extra_vars["pv_clear_sky_kw_per_kwp"] = (("time",), cs, {"units": "kW/kWp"})

    if "ev" in pri:
        tech = pri["ev"]
        owners = owners_of("ev")
        P = ev.assemble(par)
        for key in ("ev.row_R", "ev.row_C", "ev.row_M"):
            par.pop(key)
        local = times.tz_localize("UTC").tz_convert(pri.timezone).tz_localize(None)  # the timers' clock
        res = ev.simulate(_params(par, "ev"), P, baseload.half_hour_of_day(times.values), owners,
                          np.random.default_rng(streams[STREAMS["ev"]]), tech.extra["charge_efficiency"],
                          tech.extra["charge_elsewhere"], local_slots=baseload.half_hour_of_day(local.values),
                          timer_end_h=tech.extra["timer_end_h"])
        flex["ev"] = (res["p_kw"], res["p_lb_kw"], res["p_ub_kw"])
        ratings["ev"] = np.where(owners, par["ev.charger_kw"], 0.0)
        extra_vars["ev_has"] = (("chain", "draw", "agent"), owners[None])
        extra_vars["ev_timed"] = (("chain", "draw", "agent"), res["timed"][None])
        extra_vars["ev_state"] = (("chain", "draw", "time", "agent"), res["state"][None],
                                  {"flag_values": "-1 0 1 2", "flag_meanings": "no_ev moving parked_home parked_elsewhere"})
        extra_vars["ev_soc"] = (("chain", "draw", "time", "agent"), res["soc"][None], {"units": "1"})
        extra_vars["ev_shortfall_kwh"] = (("chain", "draw", "agent"), res["shortfall_kwh"][None], {"units": "kWh"})
        extra_vars["ev_transition"] = (("chain", "draw", "slot", "from_state", "to_state"), P[None])

    if "heat_pump" in pri:
        owners = owners_of("heat_pump")
        res = heat_pump.simulate(_params(par, "heat_pump"), pri["heat_pump"].extra, times.values, owners,
                                 np.random.default_rng(streams[STREAMS["heat_pump"]]))
        flex["heat_pump"] = (res["p_kw"], res["p_lb_kw"], res["p_ub_kw"])
        ratings["heat_pump"] = np.where(owners, par["heat_pump.rating_kw"], 0.0)
        extra_vars["hp_has"] = (("chain", "draw", "agent"), owners[None])
        extra_vars["hp_outdoor_temp_c"] = (("chain", "draw", "time"), res["t_out_c"][None], {"units": "degC"})
        extra_vars["hp_unmet_kwh"] = (("chain", "draw", "agent"), res["unmet_kwh"][None], {"units": "kWh"})

    if "refrigeration" in pri:
        owners = owners_of("refrigeration")
        res = refrigeration.simulate(_params(par, "refrigeration"), pri["refrigeration"].extra,
                                     baseload.half_hour_of_day(times.values) * 30, owners)
        flex["refrigeration"] = (res["p_kw"], res["p_lb_kw"], res["p_ub_kw"])
        ratings["refrigeration"] = np.where(owners, par["refrigeration.compressor_kw"], 0.0)
        extra_vars["refrigeration_has"] = (("chain", "draw", "agent"), owners[None])
        extra_vars["refrigeration_defrost_min"] = (("chain", "draw", "agent"), res["defrost_min"][None],
                                                   {"units": "min"})
        extra_vars["refrigeration_recovered"] = (("chain", "draw", "agent"), res["recovered"][None])

    # baseload: every agent, below what its service leaves after its EV charger, heat pump
    # and refrigeration (so that the drawn net import never exceeds the service)
    rng = np.random.default_rng(streams[STREAMS["baseload"]])
    b = _params(par, "baseload")
    service_kw = _service_kw(pri["baseload"], par, ratings, feeder)
    cap_kw = np.maximum(service_kw - sum(ratings.values(), 0.0), baseload.MIN_CAP_KW)
    days = int(baseload.day_index(times.values)[-1]) + 1
    z = rng.standard_normal((draws, n_agent))
    w = rng.standard_normal((draws, n_agent, days))
    if fitted is not None:  # observed agents keep their fitted household level
        z = np.where(np.isnan(fitted), z, fitted)
    b["level_log"] = baseload.level_log(b, z, w)
    p_base, q_base = baseload.simulate(b, pri["baseload"].extra["shape_kw"], times.values, cap_kw, rng)
    par["baseload.household_z"] = z
    extra_vars["baseload_level_log"] = (("chain", "draw", "agent", "day"), b["level_log"][None],
                                        {"units": "1", "long_name": "ln of the household-and-day level"})
    par["baseload.service_kw"] = service_kw
    extra_vars["baseload_cap_kw"] = (("chain", "draw", "agent"), cap_kw[None],
                                     {"units": "kW", "long_name": "baseload bound: service less the rated "
                                      "power of the agent's EV charger, heat pump and refrigeration"})

    if "battery" in pri:  # last: it answers to the household's net power
        owners = owners_of("battery")
        net = p_base + sum(f[0] for f in flex.values())
        res = battery.simulate(_params(par, "battery"), pri["battery"].extra, net, owners)
        flex["battery"] = (res["p_kw"], res["p_lb_kw"], res["p_ub_kw"])
        extra_vars["battery_has"] = (("chain", "draw", "agent"), owners[None])
        extra_vars["battery_soc"] = (("chain", "draw", "time", "agent"), res["soc"][None], {"units": "1"})
        for k in ("p_lb_kw", "p_ub_kw"):
            extra_vars[f"battery_{k}"] = (("chain", "draw", "time", "agent"), res[k][None].astype(np.float32),
                                          {"units": "kW", "long_name": "the battery's own bound"})

    # plausibility: agent-half-hours whose drawn net power exceeds the agent's service (0 by
    # construction unless MIN_CAP_KW had to lift a capacity; a check, not an assumption)
    p_net = p_base + sum(f[0] for f in flex.values())
    beyond = (np.abs(p_net) > service_kw[:, None, :] * (1 + 1e-6)).sum(axis=(1, 2))
    extra_vars["n_above_service"] = (("chain", "draw"), beyond[None].astype(np.int64),
                                     {"long_name": "agent-half-hours whose net power exceeds the agent's service "
                                      "capacity (must be 0)"})

    # per phase: single-phase agents on their phase, three-phase split equally
    split = feeder.agent_phases / feeder.agent_phases.sum(axis=1, keepdims=True)

    def phased(x):  # (draw, time, agent) -> (chain, draw, time, agent, phase), float32 (kW to 1e-7)
        out = np.empty((1,) + x.shape + (3,), np.float32)
        np.multiply(x[..., None], split, out=out[0], casting="same_kind")
        return out

    zero = np.zeros_like(p_base)
    part = {name: flex[name][0] if name in flex else zero for name in ("pv", "ev", "heat_pump", "battery",
                                                                        "refrigeration")}
    # flexibility: PV can be curtailed (up to its whole output), EV charging stopped or
    # raised to the charger's power while the car is at home and not full, a heat pump run
    # a fraction below or above its demand, a shop's refrigeration by a defrost now or a
    # lower suction pressure, a battery within power and every later SoC limit; baseload
    # cannot move
    data = {
        "p_kw": (p_net, "kW", "net active power, load positive"),
        "q_kvar": (q_base, "kvar", "net reactive power, load positive"),
        "p_base_kw": (p_base, "kW", "household baseload"),
        "q_base_kvar": (q_base, "kvar", "household baseload, reactive"),
        "p_pv_kw": (part["pv"], "kW", "PV generation (negative)"),
        "p_ev_kw": (part["ev"], "kW", "EV charging"),
        "p_hp_kw": (part["heat_pump"], "kW", "heat pump"),
        "p_battery_kw": (part["battery"], "kW", "battery, charging positive"),
        "p_refrigeration_kw": (part["refrigeration"], "kW", "commercial refrigeration"),
        "p_lb_kw": (p_base + sum(f[1] for f in flex.values()), "kW", "lowest net power flexibility allows"),
        "p_ub_kw": (p_base + sum(f[2] for f in flex.values()), "kW", "highest net power flexibility allows"),
    }
    dims5 = ("chain", "draw", "time", "agent", "phase")
    variables = {k: (dims5, phased(v), {"units": u, "long_name": d}) for k, (v, u, d) in data.items()}
    for name, v in par.items():
        dims = ("chain", "draw", "agent") if v.ndim == 2 else ("chain", "draw")
        variables[name.replace(".", "_")] = (dims, v[None])
    variables.update(extra_vars)
    return xr.Dataset(
        variables,
        coords={"chain": [0], "draw": np.arange(draws), "time": times, "agent": list(feeder.agents),
                "phase": list(PHASES), "day": np.arange(days), **({"slot": np.arange(48), "from_state": list(ev.STATES),
                                           "to_state": list(ev.STATES)} if "ev" in pri else {})},
        attrs={"priors": pri.name, "priors_sha256": pri.sha256, "feeder": feeder.name, "seed": seed,
               "latitude": pri.latitude, "longitude": pri.longitude, "conditioned": int(post is not None),
               **({"observations_sha256": post.observations_sha256,
                   "observed_agents": ",".join(post.agents)} if post else {})},
    )
