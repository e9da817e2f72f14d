"""A study's tree from its filled store: summary statistics, the causes of congestion, the feeder's
constant data and provenance.

What the tree holds is :mod:`bayesflex.study.schema`'s; where the large arrays were gathered
(memory or the result file) is the store's (:mod:`bayesflex.study.store`); the file itself is
:mod:`bayesflex.study.files`'s.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform

import numpy as np
import xarray as xr

from bayesflex.core.intervals import quantile_interval, wilson_interval
from bayesflex.core.versions import __version__, package_versions
from bayesflex.grid.feeder import PHASES, Feeder
from bayesflex.study.schema import (
    CAUSE_DEFINITION,
    CONFIDENCE,
    COUNTS,
    PER_DRAW,
    PORTFOLIO_LONG,
    VIOLATIONS,
    causes,
)
from bayesflex.study.store import Store
from bayesflex.study.uncertainty import ENDS, SPREAD, draw_margin, screen

__all__ = ["build_tree", "deliverable", "effective_draws", "flexibility_vars", "mcse", "probability_vars",
           "study_effective_draws"]

_VERSIONS = ("numpy", "scipy", "xarray", "pandas", "pymc", "arviz", "joblib", "pandapower", "pvlib",
             "h5netcdf", "netCDF4")


def mcse(p, n: float):
    """Monte Carlo standard error of a probability estimated from ``n`` independent (or effective) draws."""
    return np.sqrt(p * (1 - p) / n)


def probability_vars(name: str, p, n: float, dims: tuple[str, ...], what: str) -> dict:
    """A probability estimated from ``n`` effective draws with its Monte Carlo standard error
    (``name_mcse``) and its 95 % Wilson interval (``name_lo``, ``name_hi``), as result variables."""
    lo, hi = wilson_interval(p, n)
    return {name: (dims, p, {"units": "1", "long_name": f"probability of {what} ({n:g} effective draws)"}),
            f"{name}_mcse": (dims, mcse(p, n), {"units": "1", "long_name": "Monte Carlo standard error"}),
            f"{name}_lo": (dims, lo, {"units": "1", "long_name": "95 % Wilson interval, lower bound"}),
            f"{name}_hi": (dims, hi, {"units": "1", "long_name": "95 % Wilson interval, upper bound"})}


def effective_draws(draws: int, posterior=None) -> float:
    """How many independent draws a study's probabilities rest on: ``draws`` from the priors;
    from a posterior, no more than the smallest bulk effective sample size of the MCMC draws
    the study resamples (their parameters are shared by the study's draws that pick them)."""
    ess = [d.get("ess_bulk", np.inf) for d in (getattr(posterior, "diagnostics", None) or {}).values()]
    return float(min([draws, *ess]))


def study_effective_draws(tree) -> float:
    """The effective draws a study's probabilities rest on (its root attribute; ``draws`` for a
    study written before it was recorded)."""
    return float(tree.attrs.get("effective_draws", tree.attrs["draws"]))


def _provenance(feeder: Feeder, priors, posterior, *, draws: int, chunk_draws: int, seed: int, opts,
                command: str | None) -> dict:

    pri = posterior.priors if posterior is not None else priors
    versions = {"python": platform.python_version()} | package_versions(_VERSIONS)
    lim = opts.limits
    attrs = {
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "creation_library": "bayesflex",
        "bayesflex_version": __version__,
        "versions": json.dumps(versions, sort_keys=True),
        "seed": int(seed), "draws": int(draws), "chunk_draws": chunk_draws,
        "effective_draws": effective_draws(draws, posterior),
        "feeder": feeder.name, "feeder_origin": str(feeder.origin), "feeder_sha256": feeder.sha256,
        "priors": pri.name, "priors_origin": str(getattr(pri, "origin", "")), "priors_sha256": pri.sha256,
        "priors_toml": pri.text,
        "conditioned": int(posterior is not None),
        "v_min_pu": lim.v_min_pu, "v_max_pu": lim.v_max_pu, "loading_max_pu": lim.loading_max_pu,
        "sensitivity_method": opts.method,
        "headroom_definition": "joint: every agent turns up (down) together; the heuristic takes back what breaks "
                               "a limit, most effective agents first; confirmed by a load flow",
        "command": command or "",
        "portfolio": "the agents with positions" if opts.positions is not None else "every agent",
        "timezone": pri.timezone,  # the site's zone: times are stored in UTC and printed in it
        "source_vm_pu": float(feeder.source.vm_pu),  # the set-point every bus voltage rests on
        "source_va_degree": float(feeder.source.va_degree),
        "source_vn_kv": float(feeder.bus_vn_kv[feeder.source.bus]),
        "lines_rating_defaulted": int(np.sum(feeder.line_rating_defaulted)),
        "line_ratings_set": json.dumps(feeder.meta.get("line_ratings_set", {}), sort_keys=True),
        "line_ratings_from": str(feeder.meta.get("line_ratings_from", "")),
    }
    if opts.positions is not None:
        attrs["positions_origin"] = opts.positions.origin
        attrs["positions_sha256"] = opts.positions.sha256
    if posterior is not None:
        attrs["observations_sha256"] = posterior.observations_sha256
        attrs["observed_agents"] = ",".join(posterior.agents)
        attrs["conditioning_ok"] = int(posterior.ok)
        attrs["conditioning_diagnostics"] = json.dumps(posterior.diagnostics, sort_keys=True, default=float)
    return attrs


def _constant_data(feeder: Feeder) -> xr.Dataset:
    agent_phases = np.asarray(feeder.agent_phases, bool)
    xy = np.full((feeder.n_bus, 2), np.nan) if feeder.bus_xy is None else np.asarray(feeder.bus_xy, float)
    return xr.Dataset(
        {
            "agent_bus": (("agent",), np.array([feeder.buses[i] for i in feeder.agent_bus], dtype=object)),
            "agent_phases": (("agent", "phase"), agent_phases),
            "line_from_bus": (("line",), np.array([feeder.buses[i] for i in feeder.line_from], dtype=object)),
            "line_to_bus": (("line",), np.array([feeder.buses[i] for i in feeder.line_to], dtype=object)),
            "line_i_max_a": (("line",), np.asarray(feeder.line_i_max_a, float), {"units": "A"}),
            "source_bus": ((), feeder.buses[feeder.source.bus]),
            "trafo_hv_bus": (("trafo",), np.array([feeder.buses[t.hv_bus] for t in feeder.trafos], dtype=object)),
            "trafo_lv_bus": (("trafo",), np.array([feeder.buses[t.lv_bus] for t in feeder.trafos], dtype=object)),
            "bus_x": (("bus",), xy[:, 0], {"long_name": "bus coordinate (as the source gives it)"}),
            "bus_y": (("bus",), xy[:, 1], {"long_name": "bus coordinate (as the source gives it)"}),
            "line_code": (("line",), np.array(feeder.line_code, dtype=object),
                          {"long_name": "line code (OpenDSS LineCode, pandapower std_type; empty: none)"}),
            "line_rating_defaulted": (("line",), np.asarray(feeder.line_rating_defaulted, bool),
                                      {"long_name": "the rating is a default the model never gave (OpenDSS's "
                                                    "400 A for a line code without normamps)"}),
            **_source_data(feeder), **_trafo_data(feeder),
        },
        coords={"agent": list(feeder.agents), "phase": list(PHASES), "line": list(feeder.lines),
                "bus": list(feeder.buses), "trafo": [t.name for t in feeder.trafos], "sequence": [0, 1, 2]},
    )


def _source_data(feeder: Feeder) -> dict:
    """The source's sequence impedances as the model gives them (its set-point, angle and nominal
    voltage are root attributes: ``source_vm_pu``, ``source_va_degree``, ``source_vn_kv``)."""
    src = feeder.source
    z = np.array([src.z0_ohm, src.z1_ohm, src.z2_ohm], complex)
    seq = "sequence (0 zero, 1 positive, 2 negative); 0: an ideal source, inf: no path"
    return {"source_r_ohm": (("sequence",), z.real, {"units": "ohm", "long_name": f"source resistance per {seq}"}),
            "source_x_ohm": (("sequence",), z.imag, {"units": "ohm", "long_name": f"source reactance per {seq}"})}


def _trafo_data(feeder: Feeder) -> dict:
    """The transformers' ratings, impedance and taps, and the LV voltage at no load (from the model)."""
    ts = feeder.trafos
    v0 = np.abs(np.asarray(feeder.model.v0_all)).reshape(-1, 3)  # pu of each bus's nominal voltage

    def col(values, units, long_name, dtype=float):
        return ("trafo",), np.array(list(values), dtype), {"units": units, "long_name": long_name}

    return {
        "trafo_sn_kva": col((t.sn_kva for t in ts), "kVA", "rated apparent power"),
        "trafo_vn_hv_kv": col((t.vn_hv_kv for t in ts), "kV", "rated HV voltage at the neutral tap"),
        "trafo_vn_lv_kv": col((t.vn_lv_kv for t in ts), "kV", "rated LV voltage at the neutral tap"),
        "trafo_vk_percent": col((t.vk_percent for t in ts), "%", "short-circuit voltage"),
        "trafo_tap_percent": col(((t.tap_pos - t.tap_neutral) * t.tap_step_percent for t in ts), "%",
                                 "rated voltage change the tap makes on trafo_tap_side's winding"),
        "trafo_tap_side": col((t.tap_side for t in ts), "1", "winding with the tap changer", object),
        "trafo_v_lv_no_load_pu": col((v0[t.lv_bus].mean() for t in ts), "pu",
                                     "LV terminal voltage at no load (mean of the phases), of the LV bus's nominal"),
    }


def build_tree(feeder: Feeder, priors, posterior, store: Store, *, draws: int, seed: int, opts,
               command: str | None = None, provenance: dict | None = None) -> xr.DataTree:
    """The study's DataTree from a filled :class:`~bayesflex.study.store.Store`: the summary
    groups computed here, the large arrays where the store put them (in memory, or in the
    result file, which is then renamed to ``result.nc`` and opened)."""
    n = effective_draws(draws, posterior)  # one chain; a posterior's draws share its MCMC samples
    coords = {**store.coords, "bus": list(feeder.buses), "line": list(feeder.lines),
              "trafo": [t.name for t in feeder.trafos], "technology": list(causes()), "violation": list(VIOLATIONS)}
    groups: dict[str, dict] = {"network": {}, "heuristic": {}, "sample_stats": {}}
    for k, v in store.small.items():
        dims, group, attrs = PER_DRAW[k]
        groups[group][k] = (("chain", "draw") + dims, v[None], attrs)
    for k, c in store.counts.items():
        name, dims = COUNTS[k]
        groups["network"].update(probability_vars(name, c / draws, n, dims, name[2:].replace("_", " ")))
    heur = groups["heuristic"]
    port = dict(store.portfolio)
    if "portfolio_headroom_up_kw" in port:
        port.update(deliverable(port))
    for k, v in port.items():
        heur[k] = (("chain", "draw", "time"), v[None], {"units": "kW", "long_name": PORTFOLIO_LONG[k]})
    heur.update(_cause_vars(store.sums))
    summary = _summary(store, n)
    if opts.positions is not None:
        pos = opts.positions
        for k, what in (("p_kw", "position"), ("p_lb_kw", "lowest position"), ("p_ub_kw", "highest position")):
            summary[f"portfolio_position_{k}"] = (("time",), getattr(pos, k).sum(axis=1),
                                                  {"units": "kW", "long_name": f"portfolio {what}, sum over the "
                                                                               "agents' planned positions"})
    for side in ("up", "down"):
        tot = port.get(f"portfolio_deliverable_{side}_kw")
        if tot is not None:
            summary.update(flexibility_vars(tot, side))
    rest = xr.concat(store.rest, dim="draw", data_vars="minimal", coords="minimal", compat="override",
                     join="override")
    rest.attrs = {}
    summary_coords = {**_sub(coords, "time", "phase"), "confidence": list(CONFIDENCE)}
    screened = _screening(store, rest)
    if screened is not None:
        summary.update(screened[0])
        summary_coords.update(screened[1])
    kind = store.kind
    tree = {
        f"{kind}_predictive": xr.Dataset(coords=_sub(coords, "chain", "draw", "time", "agent", "phase")),
        kind: rest,
        "network": xr.Dataset(groups["network"], coords=_sub(coords, "chain", "draw", "time", "bus", "line", "trafo",
                                                             "phase")),
        "heuristic": xr.Dataset(heur, coords=_sub(coords, "chain", "draw", "time", "agent", "phase", "technology",
                                                  "violation")),
        "summary": xr.Dataset(summary, coords=summary_coords),
        "sample_stats": xr.Dataset(groups["sample_stats"], coords=_sub(coords, "chain", "draw", "time")),
        "constant_data": _constant_data(feeder),
    }
    if opts.positions is not None:
        tree["positions"] = opts.positions.to_dataset()
    if posterior is not None and getattr(posterior, "idata", None) is not None and \
            "observed_data" in posterior.idata.groups():
        tree["observed_data"] = posterior.idata.observed_data
    root = _provenance(feeder, priors, posterior, draws=draws, chunk_draws=store.chunk_draws, seed=seed, opts=opts,
                       command=command) | (provenance or {})
    return store.finish(tree, root)


def deliverable(port: dict) -> dict:
    """Per draw and half-hour, what the portfolio can sell against its *planned*
    position: the joint headroom from the secure positions, less the net move
    the network forced against the product's direction (a forced turn-down
    uses up turn-up, and the other way round).  A move the network forces in the
    product's direction is not counted: the DSO has it already."""
    up, dn = port["portfolio_adjust_up_kw"], port["portfolio_adjust_down_kw"]
    return {"portfolio_deliverable_up_kw": np.maximum(port["portfolio_headroom_up_kw"] - np.maximum(dn - up, 0), 0),
            "portfolio_deliverable_down_kw": np.maximum(port["portfolio_headroom_down_kw"] - np.maximum(up - dn, 0),
                                                        0)}


def _cause_vars(sums: dict) -> dict:
    """The causes of congestion (means over the attributed draws) from the chunks' sums."""
    if not sums:
        return {}
    n = sums["cause_draws"]  # (time, phase)
    nk = n[..., None]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = sums["cause_share_sum"] / nk  # NaN where no draw was attributed
        var = np.maximum(sums["cause_share_sq_sum"] / nk - share**2, 0.0)  # over the draws, 1/n
        se = np.where(nk > 1, np.sqrt(var / (nk - 1)), np.nan)
        relief = sums["cause_relief_sum"] / nk
        agent = sums["cause_agent_share_sum"] / n[:, None, :]
    where = "over the congested draws attributed (cause_draws)"
    return {
        "cause_share": (("time", "phase", "technology"), share,
                        {"units": "1", "long_name": f"mean share of the phase's worst violation the technology "
                                                    f"causes, {where}; NaN: none", "definition": CAUSE_DEFINITION}),
        "cause_share_mcse": (("time", "phase", "technology"), se, {"units": "1", "long_name": "Monte Carlo SE"}),
        "cause_relief_share": (("time", "phase", "technology"), relief,
                               {"units": "1", "long_name": "mean share of the push into the violation that the "
                                                           f"technology takes back (<= 0), {where}"}),
        "cause_agent_share": (("time", "agent", "phase"), agent,
                              {"units": "1", "long_name": f"mean share of the phase's worst violation the agent "
                                                          f"causes, {where}; NaN: none"}),
        "cause_draws": (("time", "phase"), n, {"units": "1", "long_name": "congested draws whose worst violation on "
                                                                          "the phase was attributed"}),
        "cause_violation_draws": (("time", "phase", "violation"), sums["cause_violation_draws"],
                                  {"units": "1", "long_name": "attributed draws by kind of worst violation"}),
    }


def _sub(coords: dict, *names: str) -> dict:
    return {k: coords[k] for k in names}


def _screening(store: Store, rest: xr.Dataset) -> tuple[dict, dict] | None:
    """How much the headline depends on the priors' population-level parameters
    (:mod:`bayesflex.study.uncertainty`): summary variables and their coordinates, or None."""
    theta = {str(k): v.values[0] for k, v in rest.data_vars.items() if v.dims == ("chain", "draw")
             and v.dtype.kind == "f"}
    res = screen(draw_margin(store.small["exceedance_pu"]), theta)
    if res is None:
        return None
    par, sq = ("parameter",), ("spread_quantile",)
    what = "P(congested on any phase at least once in the horizon)"
    out = {
        "p_congested_any_horizon_given_theta": (sq, res.spread, {
            "units": "1", "long_name": f"quantiles over the draws' parameters theta of {what} given theta: its "
                                       "spread over the priors' parameter uncertainty (first-order screening)",
            "r2": res.r2, "method": "bayesflex.study.uncertainty.screen"}),
        "p_congested_any_horizon_given_theta_lo": (sq, res.spread_lo, {"units": "1", "long_name": "95 % bootstrap "
                                                                                                  "interval, lower"}),
        "p_congested_any_horizon_given_theta_hi": (sq, res.spread_hi, {"units": "1", "long_name": "95 % bootstrap "
                                                                                                  "interval, upper"}),
        "screen_theta_low": (par, res.theta_low, {"long_name": f"the parameter's {ENDS[0]:.0%} quantile over draws"}),
        "screen_theta_high": (par, res.theta_high, {"long_name": f"the parameter's {ENDS[1]:.0%} quantile"}),
        "screen_p_low": (par, res.p_low, {"units": "1", "long_name": f"{what} with the parameter at its "
                                                                      f"{ENDS[0]:.0%} quantile (first order)"}),
        "screen_p_high": (par, res.p_high, {"units": "1", "long_name": f"{what} with the parameter at its "
                                                                        f"{ENDS[1]:.0%} quantile (first order)"}),
        "screen_margin_effect_pu": (par, res.margin_effect_pu, {
            "units": "pu", "long_name": "move of the draws' worst exceedance of a limit between the parameter's "
                                        f"{ENDS[0]:.0%} and {ENDS[1]:.0%} quantiles (regression slope x range)"}),
    }
    return out, {"parameter": list(res.parameters), "spread_quantile": list(SPREAD)}


def flexibility_vars(tot: np.ndarray, side: str) -> dict:
    """The portfolio's deliverable turn-``side`` (``tot``: draw x time, kW) at the confidence
    levels, with 95 % order-statistic intervals: per half-hour (``flex_{side}_kw``, each
    half-hour on its own) and jointly over the horizon (``flex_{side}_joint_kw``: the
    (1 - c) quantile over draws of each draw's lowest half-hour, so that the figure is
    delivered in *every* half-hour with confidence c)."""
    q = 1 - np.asarray(CONFIDENCE)
    out = {}
    for name, x, dims, what in (
            (f"flex_{side}_kw", tot, ("confidence", "time"), "in this half-hour"),
            (f"flex_{side}_joint_kw", tot.min(axis=1), ("confidence",), "in every half-hour of the horizon (joint)")):
        lo, hi = quantile_interval(x, q, axis=0)
        out[name] = (dims, np.quantile(x, q, axis=0),
                     {"units": "kW", "long_name": f"portfolio turn-{side} deliverable {what} with at least this "
                                                  "confidence: the (1 - confidence) quantile over draws"})
        out[f"{name}_lo"] = (dims, lo, {"units": "kW", "long_name": "95 % order-statistic interval, lower bound "
                                                                    "(-inf: too few draws to bound it)"})
        out[f"{name}_hi"] = (dims, hi, {"units": "kW", "long_name": "95 % order-statistic interval, upper bound "
                                                                    "(inf: too few draws to bound it)"})
    return out


def _summary(store: Store, n: float) -> dict:
    a = store.small
    cong = a["congested"]  # (draw, time, phase)
    out = {}

    def prob(name, x, dims, what):
        out.update(probability_vars(name, x.mean(axis=0), n, dims, what))

    prob("p_congested", cong, ("time", "phase"), "congestion on the phase")
    prob("p_congested_any", cong.any(axis=2), ("time",), "congestion on any phase")
    prob("p_congested_horizon", cong.any(axis=1), ("phase",), "congestion on the phase at least once in the horizon")
    prob("p_congested_any_horizon", cong.any(axis=(1, 2)), (), "congestion on any phase at least once in the horizon")
    prob("p_unresolved_horizon", (~a["resolved"]).any(axis=1), (),
         "congestion the agents' flexibility cannot resolve, at least once in the horizon")
    prob("p_unresolved", ~a["resolved"], ("time",), "congestion the agents' flexibility cannot resolve")
    prob("p_nonconverged", ~a["converged"], ("time",), "no load-flow solution")
    return out
