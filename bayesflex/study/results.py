"""A study's results as an ``xarray.DataTree`` with ArviZ group names, and its NetCDF file.

Groups (dimensions in the order ``chain, draw, time, agent|bus|line, phase``):

``prior_predictive`` (``posterior_predictive`` when conditioned)
    agent powers: ``p_kw``, ``q_kvar``, ``p_lb_kw``, ``p_ub_kw`` and one
    component per technology present (``p_base_kw``, ``p_pv_kw``...).
``prior`` (``posterior``)
    the sampled parameters and technology states.
``observed_data``
    the meter readings conditioned on, when there were any.
``network``
    per draw: ``v_min_pu``/``v_max_pu`` per phase, ``loading_max_pu``,
    ``trafo_loading_pu``; probabilities with their Monte Carlo standard errors
    (``*_mcse``) and 95 % Wilson intervals (``*_lo``, ``*_hi``; over the root
    attribute ``effective_draws``: the draws, or a posterior's smallest bulk
    ESS): ``p_undervoltage``/``p_overvoltage (time, bus, phase)``,
    ``p_overload (time, line)``, ``p_trafo_overload (time, trafo)``; with
    ``full_voltages`` also ``v_pu``.
``heuristic``
    ``adjust_up_kw``, ``adjust_down_kw``, ``headroom_up_kw``,
    ``headroom_down_kw``, ``sensitivity_rank`` per agent and phase;
    ``congested`` per phase, ``resolved``, ``exceedance_pu``; portfolio sums
    per draw and half-hour (the portfolio is every agent, or the agents with
    positions): power ``portfolio_p_kw`` and bounds, the network's turn-up and
    turn-down, the joint headroom and what can be sold against the planned
    position (``portfolio_deliverable_up_kw``/``_down_kw``, :func:`deliverable`).
    The causes of congestion, per half-hour and phase, over the draws where
    the phase's worst violation was attributed (``cause_draws``: congested
    with a converged load flow; :func:`bayesflex.grid.heuristic.cause_shares`):
    ``cause_share (time, phase, technology)`` the mean share of each
    technology (summing to 1) with its Monte Carlo error, ``cause_relief_share``
    what technologies pushing the other way take back (<= 0, same scale),
    ``cause_agent_share (time, agent, phase)`` the mean share of each agent,
    ``cause_violation_draws (time, phase, violation)`` the kinds of violation.
``summary``
    probabilities of congestion per time and phase and over the horizon, of
    unresolved congestion (each with ``_mcse``, ``_lo``, ``_hi``), and the
    portfolio flexibility at confidence levels with 95 % order-statistic
    intervals: per half-hour (``flex_up_kw (confidence, time)``) and jointly,
    delivered in every half-hour of the horizon (``flex_up_joint_kw
    (confidence)``, a quantile of each draw's lowest half-hour); with
    positions, the portfolio position ``P_T`` and its bounds.  Model
    uncertainty beside the Monte Carlo error (:mod:`bayesflex.study.uncertainty`):
    ``p_congested_any_horizon_given_theta (spread_quantile)`` the spread of
    the headline over the priors' population-level parameters, and per
    ``parameter`` the headline at its 10 % and 90 % quantiles
    (``screen_p_low``/``_high``) and the move of the worst margin
    (``screen_margin_effect_pu``).
``positions``
    the aggregator's planned positions, when the study was given them.
``sample_stats``
    ``converged``, ``iterations`` of the load flow, heuristic ``rounds``.
``constant_data``
    the feeder's topology: agents' buses and phases, lines' ends, ratings,
    line codes and which ratings are defaults the model never gave
    (``line_rating_defaulted``); what the numbers rest on: the source's
    sequence impedances (``source_r_ohm``/``source_x_ohm``; its set-point and
    nominal kV are root attributes ``source_vm_pu``, ``source_vn_kv``), the
    transformers' ratings, impedance, taps and no-load LV voltage (``trafo_*``).

Times: ``time`` holds naive UTC half-hours; the root attribute ``timezone``
names the site's zone, in which every time is printed (:mod:`bayesflex.core.timefmt`).

A draw whose load flow did not converge is kept: ``converged=False``, counted
as congested on every phase and as violating every limit.

Integrity: ``result.nc`` is written under another name and renamed when
complete; beside it ``result.nc.sha256`` holds the SHA-256 of the whole file
(the format of ``sha256sum``, so ``sha256sum -c result.nc.sha256`` checks it
too).  :func:`open_study` checks it before reading anything: a file changed or
damaged after it was written is a clear error, never numbers.  A report
built from an earlier result in the same folder is removed when a new result
takes its place.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
from pathlib import Path

import numpy as np
import xarray as xr

from bayesflex.core.intervals import quantile_interval, wilson_interval
from bayesflex.core.outdir import ensure_space, fresh, regular
from bayesflex.core.versions import __version__, package_versions
from bayesflex.errors import ConfigError
from bayesflex.grid.feeder import PHASES, Feeder
from bayesflex.priors.registry import components
from bayesflex.study.uncertainty import ENDS, SPREAD, draw_margin, screen

__all__ = ["CHECKSUM_SUFFIX", "CONFIDENCE", "RESULT_FILE", "StudyStore", "build_tree", "causes", "effective_draws",
           "flexibility_vars", "mcse", "open_study", "probability_vars", "save_study", "study_effective_draws"]

RESULT_FILE = "result.nc"
#: the result's checksum file: ``result.nc.sha256``
CHECKSUM_SUFFIX = ".sha256"
#: files built from a result; removed when a new result replaces it (they would describe the old one)
DERIVED_FILES = ("report.html",)
#: confidence levels at which the portfolio flexibility is summarised
CONFIDENCE = (0.5, 0.9, 0.95)
#: agent power arrays that go into the predictive group (when the technology is present)
PREDICTIVE = ("p_kw", "q_kvar", "p_lb_kw", "p_ub_kw")
#: the kinds of worst violation counted in ``heuristic/cause_violation_draws``
VIOLATIONS = ("undervoltage", "overvoltage", "overload", "trafo_overload")
_VERSIONS = ("numpy", "scipy", "xarray", "pandas", "pymc", "arviz", "joblib", "pandapower", "pvlib",
             "h5netcdf")


def causes() -> tuple[str, ...]:
    """What congestion is attributed to (``heuristic/cause_share``'s ``technology``): every
    technology's power component (:func:`bayesflex.priors.registry.components`, in its order),
    and "position", the planned power of agents with positions (it replaces their flexible ones)."""
    return (*components(), "position")


_PER_DRAW = {  # name -> (dims after chain, draw; group; attrs)
    "v_min_pu": (("time", "phase"), "network", {"units": "pu", "long_name": "lowest bus voltage (source bus excluded)"}),
    "v_max_pu": (("time", "phase"), "network", {"units": "pu", "long_name": "highest bus voltage (source bus excluded)"}),
    "loading_max_pu": (("time",), "network", {"units": "pu", "long_name": "highest line current / rating"}),
    "trafo_loading_pu": (("time", "trafo"), "network",
                         {"units": "pu", "long_name": "transformer current / rated current (worst phase and side)"}),
    "v_pu": (("time", "bus", "phase"), "network", {"units": "pu", "long_name": "bus voltage, phase to neutral"}),
    "adjust_up_kw": (("time", "agent", "phase"), "heuristic",
                     {"units": "kW", "long_name": "turn-up the network asks of the agent"}),
    "adjust_down_kw": (("time", "agent", "phase"), "heuristic",
                       {"units": "kW", "long_name": "turn-down the network asks of the agent"}),
    "adjust_target_phase": (("time", "agent", "phase"), "heuristic",
                            {"units": "1", "flag_values": [-1, 0, 1, 2], "flag_meanings": "not_adjusted a b c",
                             "long_name": "phase whose violation the agent's adjustment on this phase relieved (in "
                                          "the heuristic's round that moved it most): its own phase, or another "
                                          "through the neutral; -1 = not adjusted"}),
    "headroom_up_kw": (("time", "agent", "phase"), "heuristic",
                       {"units": "kW", "long_name": "turn-up deliverable with the whole portfolio turning up"}),
    "headroom_down_kw": (("time", "agent", "phase"), "heuristic",
                         {"units": "kW", "long_name": "turn-down deliverable with the whole portfolio turning down"}),
    "sensitivity_rank": (("time", "agent", "phase"), "heuristic",
                         {"units": "1", "long_name": "agent's rank for the phase's worst violation (1 = most "
                                                     "effective, 0 = phase not congested)"}),
    "congested": (("time", "phase"), "heuristic", {"long_name": "a limit is broken on the phase, or no load flow"}),
    "exceedance_pu": (("time", "phase"), "heuristic",
                      {"units": "pu", "long_name": "worst exceedance of a limit before adjustment (<= 0: within)"}),
    "resolved": (("time",), "heuristic", {"long_name": "within limits after adjustment, confirmed by a load flow"}),
    "headroom_ok": (("time",), "heuristic", {"long_name": "both headroom products were made secure"}),
    "converged": (("time",), "sample_stats", {"long_name": "the load flow converged"}),
    "iterations": (("time",), "sample_stats", {"units": "1"}),
    "rounds": (("time",), "sample_stats", {"units": "1", "long_name": "heuristic adjust/re-solve rounds"}),
}
_COUNTS = {
    "n_undervoltage": ("p_undervoltage", ("time", "bus", "phase")),
    "n_overvoltage": ("p_overvoltage", ("time", "bus", "phase")),
    "n_overload": ("p_overload", ("time", "line")),
    "n_trafo_overload": ("p_trafo_overload", ("time", "trafo")),
}

#: per-chunk sums over draws, added up chunk by chunk in chunk order (bayesflex.study.engine._causes)
_SUMS = ("cause_share_sum", "cause_share_sq_sum", "cause_relief_sum", "cause_agent_share_sum", "cause_draws",
         "cause_violation_draws")
CAUSE_DEFINITION = (
    "per congested draw, half-hour and phase with a load flow: c = s * S_a * P_ka, with S_a = dq/dP_a the "
    "sensitivity of the phase's worst violated quantity q to agent a, P_ka the power of technology k of agent a "
    "(kW, load positive) and s = +1 above the upper limit, -1 below the lower; share = max(c, 0) / sum of all "
    "max(c, 0) (sums to 1), relief = min(c, 0) on the same scale; averaged over those draws (cause_draws)")

#: per-agent arrays summed over agents and phases into the portfolio's (draw, time) totals
_PORTFOLIO = {"p_kw": "portfolio_p_kw", "p_lb_kw": "portfolio_p_lb_kw", "p_ub_kw": "portfolio_p_ub_kw",
              "adjust_up_kw": "portfolio_adjust_up_kw", "adjust_down_kw": "portfolio_adjust_down_kw",
              "headroom_up_kw": "portfolio_headroom_up_kw", "headroom_down_kw": "portfolio_headroom_down_kw"}
_PORTFOLIO_LONG = {
    "portfolio_p_kw": "portfolio power P_T = sum of the portfolio agents' powers",
    "portfolio_p_lb_kw": "portfolio lower bound", "portfolio_p_ub_kw": "portfolio upper bound",
    "portfolio_adjust_up_kw": "turn-up the network asks of the portfolio",
    "portfolio_adjust_down_kw": "turn-down the network asks of the portfolio",
    "portfolio_headroom_up_kw": "portfolio turn-up deliverable from the secure positions (joint headroom)",
    "portfolio_headroom_down_kw": "portfolio turn-down deliverable from the secure positions (joint headroom)",
    "portfolio_deliverable_up_kw": "turn-up the portfolio can sell against its planned position: headroom less "
                                   "any net turn-down the network forced",
    "portfolio_deliverable_down_kw": "turn-down the portfolio can sell against its planned position: headroom "
                                     "less any net turn-up the network forced",
}


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


def _is_big(dims: tuple[str, ...]) -> bool:
    """Per-draw arrays over agents or buses: streamed, never summed up in memory."""
    return "draw" in dims and ("agent" in dims or "bus" in dims) and "time" in dims


class StudyStore:
    """Gathers chunk results as they arrive, in bounded memory.

    Arrays per draw over agents or buses (the agent powers, adjustments,
    headroom, full voltages, agent states) go straight to their place: a
    preallocated array in memory, or -- with ``path`` -- a compressed
    variable of the NetCDF file being written, so that the main process holds
    only the small per-draw reductions and the counts whatever the number of
    draws.  :func:`build_tree` writes or assembles the rest.
    """

    def __init__(self, draws: int, kind: str, buses: tuple[str, ...], path: Path | None = None, *,
                 chunk_draws: int, portfolio: np.ndarray | None = None, final: Path | None = None):
        self.draws, self.kind, self.buses, self.path = draws, kind, list(buses), path
        self.chunk_draws = chunk_draws  # the engine's chunk: the file's chunk along draws
        self.final = final or (None if path is None else path.with_name(RESULT_FILE))  # renamed to, when complete
        self.portfolio_agents = portfolio  # agent indices of the portfolio (None: every agent)
        self.small: dict[str, np.ndarray] = {}  # physics per draw, without agent/bus
        self.counts: dict[str, np.ndarray] = {}
        self.sums: dict[str, np.ndarray] = {}  # sums over draws (_SUMS), chunk by chunk
        self.big: dict[tuple[str, str], object] = {}  # (group, name) -> array or file variable
        self.big_meta: dict[tuple[str, str], tuple] = {}  # -> (dims, shape, dtype, attrs, from physics?)
        self.portfolio: dict[str, np.ndarray] = {}  # (draw, time) sums over agents
        self.rest: list[xr.Dataset] = []
        self.coords: dict | None = None
        self._file = None

    # -- arriving chunks --------------------------------------------------------------------
    def add(self, part: dict, a: int, b: int) -> None:
        ds = part.pop("draws")
        if self.path is not None:
            ensure_space(self.path.parent, sum(np.asarray(v).nbytes for v in part.values()) + ds.nbytes,
                         f"draws {a}-{b - 1} of the result")
        if self.coords is None:
            self._allocate(part, ds)
        for (g, n), (_, _, _, _, from_physics) in self.big_meta.items():
            v = part.pop(n) if from_physics else ds[n].values[0]
            if n in _PORTFOLIO:
                self._sum(_PORTFOLIO[n], v, a, b)
            if self._file is not None and v.dtype == bool:
                v = v.astype(np.int8)
            self.big[(g, n)][0, a:b] = v
        for k, v in part.items():
            if k in _COUNTS:
                self.counts[k] = self.counts[k] + v if k in self.counts else v.astype(np.int64)
            elif k in _SUMS:
                self.sums[k] = self.sums[k] + v if k in self.sums else np.array(v)
            else:
                if k not in self.small:
                    self.small[k] = np.empty((self.draws,) + v.shape[1:], v.dtype)
                self.small[k][a:b] = v
        big = [n for g, n in self.big_meta if g not in ("heuristic", "network")]
        self.rest.append(ds.drop_vars(big).assign_coords(draw=np.arange(a, b)))

    def _sum(self, name: str, v: np.ndarray, a: int, b: int) -> None:
        if name not in self.portfolio:
            self.portfolio[name] = np.empty((self.draws,) + v.shape[1:2])
        if self.portfolio_agents is not None:
            v = v[:, :, self.portfolio_agents]
        self.portfolio[name][a:b] = v.sum(axis=(2, 3), dtype=np.float64)

    def _allocate(self, part: dict, ds: xr.Dataset) -> None:
        self.coords = {"chain": [0], "draw": np.arange(self.draws),
                       **{k: ds.coords[k].values for k in ("time", "agent", "phase")}}
        for k, v in part.items():
            if k not in _COUNTS and k not in _SUMS and _is_big(("draw",) + _PER_DRAW[k][0]):
                dims, group, attrs = _PER_DRAW[k]
                self.big_meta[(group, k)] = (("chain", "draw") + dims, v.shape[1:], v.dtype, attrs, True)
        for n in ds.data_vars:
            if _is_big(ds[n].dims):
                group = f"{self.kind}_predictive" if ds[n].dims[-1] == "phase" else self.kind
                self.big_meta[(group, n)] = (ds[n].dims, ds[n].shape[2:], ds[n].dtype, dict(ds[n].attrs), False)
        if self.path is None:
            for key, (_, shape, dtype, _, _) in self.big_meta.items():
                self.big[key] = np.empty((1, self.draws) + shape, dtype)
            return
        self._create_file()

    def _create_file(self) -> None:
        import h5netcdf

        groups = sorted({g for g, _ in self.big_meta})
        fresh(self.path)
        for i, g in enumerate(groups):
            dims = {d for (gg, _), (dd, *_rest) in self.big_meta.items() if gg == g for d in dd}
            coords = {k: v for k, v in self.coords.items() if k in dims}
            if "bus" in dims:
                coords["bus"] = self.buses
            xr.Dataset(coords=coords).to_netcdf(self.path, mode="w" if i == 0 else "a", group=g,
                                               engine="h5netcdf")
        self._file = h5netcdf.File(self.path, "a")
        for (g, n), (dims, shape, dtype, attrs, _) in self.big_meta.items():
            dt = np.int8 if dtype == bool else dtype
            chunks = (1, min(self.chunk_draws, self.draws)) + tuple(shape)
            var = self._file[g].create_variable(n, dims, dt, chunks=chunks, compression="gzip",
                                                compression_opts=1, shuffle=True)
            var.attrs.update({**attrs, **({"dtype": "bool"} if dtype == bool else {})})
            self.big[(g, n)] = var

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def discard(self) -> None:
        """Close and delete an unfinished file: a partial study is never left to be taken for a result."""
        try:
            self.close()
        except Exception:  # noqa: BLE001 - a file that failed to write may fail to close: it is deleted anyway
            self._file = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)



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


def build_tree(feeder: Feeder, priors, posterior, store: StudyStore, *, draws: int, seed: int, opts,
               command: str | None = None, provenance: dict | None = None) -> xr.DataTree:
    """The study's DataTree from a filled :class:`StudyStore`.

    In memory, or, when the store writes a file, by appending the small
    groups to it; the file is then renamed to ``result.nc`` and opened.
    """
    n = effective_draws(draws, posterior)  # one chain; a posterior's draws share its MCMC samples
    coords = {**store.coords, "bus": list(feeder.buses), "line": list(feeder.lines),
              "trafo": [t.name for t in feeder.trafos], "technology": list(causes()), "violation": list(VIOLATIONS)}
    groups: dict[str, dict] = {"network": {}, "heuristic": {}, "sample_stats": {}}
    for k, v in store.small.items():
        dims, group, attrs = _PER_DRAW[k]
        groups[group][k] = (("chain", "draw") + dims, v[None], attrs)
    for k, c in store.counts.items():
        name, dims = _COUNTS[k]
        groups["network"].update(probability_vars(name, c / draws, n, dims, name[2:].replace("_", " ")))
    heur = groups["heuristic"]
    port = dict(store.portfolio)
    if "portfolio_headroom_up_kw" in port:
        port.update(deliverable(port))
    for k, v in port.items():
        heur[k] = (("chain", "draw", "time"), v[None], {"units": "kW", "long_name": _PORTFOLIO_LONG[k]})
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
    if store.path is None:
        for (g, name), arr in store.big.items():
            dims, _, _, attrs, _ = store.big_meta[(g, name)]
            tree[g] = tree[g].assign({name: (dims, arr, attrs)})
        tree["/"] = xr.Dataset(attrs=root)
        return xr.DataTree.from_dict(tree)
    store.close()
    ensure_space(store.path.parent, sum(ds.nbytes for ds in tree.values()), "the result's summary groups")
    for g, ds in tree.items():
        ds.to_netcdf(store.path, mode="a", group=g, engine="h5netcdf", encoding=_compressed(ds))
    xr.Dataset(attrs=root).to_netcdf(store.path, mode="a", engine="h5netcdf")
    _install(store.path, store.final)
    return open_study(store.final, verify=False)  # _install has just hashed these very bytes


def _install(part: Path, final: Path) -> None:
    """Put the finished file ``part`` in place as ``final``, with its checksum; remove what was
    built from the result it replaces.  The checksum goes first: a crash in between leaves a
    result that fails its check (and is computed again), never an unchecked one."""
    digest = file_sha256(part)
    for name in DERIVED_FILES:
        (final.parent / name).unlink(missing_ok=True)
    side = checksum_path(final)
    tmp = fresh(side.with_name(f".{side.name}.tmp"))
    tmp.write_text(f"{digest}  {final.name}\n")
    os.replace(tmp, side)
    os.replace(part, final)


def checksum_path(result: Path) -> Path:
    """Where the checksum of the result file ``result`` is kept."""
    return result.with_name(result.name + CHECKSUM_SUFFIX)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def verify_result(f: Path) -> None:
    """Raise a ConfigError if ``f`` has no checksum file beside it or does not match it."""
    side = checksum_path(f)
    if not regular(side):
        raise ConfigError(f"{f}: no checksum file {side.name} beside it, so its numbers cannot be checked; keep "
                          f"{f.name} and {side.name} together (copy both), or, for a file you trust, "
                          "open_study(path, verify=False)")
    try:
        expected = side.read_text(encoding="ascii").split()[0]
    except (OSError, UnicodeDecodeError, IndexError) as err:
        raise ConfigError(f"{side}: not a readable checksum file ({err})") from err
    if file_sha256(f) != expected:
        raise ConfigError(f"{f}: the file does not match its checksum ({side.name}): it was changed or damaged "
                          "after bayesflex wrote it, so its numbers cannot be trusted; run the study again")


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


def _screening(store: StudyStore, rest: xr.Dataset) -> tuple[dict, dict] | None:
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


def _summary(store: StudyStore, n: float) -> dict:
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


# ----------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------
def save_study(tree: xr.DataTree, directory: str | Path) -> Path:
    """Write ``directory/result.nc`` (NetCDF4 groups); written to a temporary
    name and renamed, so a partial file is never taken for a finished one."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / RESULT_FILE
    tmp = fresh(d / f".{RESULT_FILE}.partial-{os.getpid()}")
    try:
        enc = {node.path: _compressed(node.dataset) for node in tree.subtree}
        tree.to_netcdf(tmp, engine="h5netcdf", encoding={k: v for k, v in enc.items() if v})
        _install(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _compressed(ds: xr.Dataset) -> dict:
    """Encoding that compresses a dataset's large numeric arrays (most agent-phase cells are zero)."""
    return {k: {"zlib": True, "complevel": 1, "shuffle": True} for k, v in ds.data_vars.items()
            if v.size > 100_000 and v.dtype.kind in "fiub"}


def open_study(path: str | Path, *, verify: bool = True) -> xr.DataTree:
    """Open a study from its folder or its ``result.nc``; a clear error if it is not one, or
    (``verify``) if the file does not match its checksum."""
    p = Path(path)
    f = p / RESULT_FILE if p.is_dir() else p
    if not f.is_file():
        raise ConfigError(f"{f}: no study result here (expected {RESULT_FILE}, written by 'bayesflex run')")
    if verify:
        verify_result(f)
    try:
        tree = xr.open_datatree(f, engine="h5netcdf")
    except Exception as err:  # any reader failure means the same thing to the user
        raise ConfigError(f"{f}: not a readable study result ({err})") from err
    if tree.attrs.get("creation_library") != "bayesflex" or "heuristic" not in tree.children:
        raise ConfigError(f"{f}: not a bayesflex study result (no provenance or no 'heuristic' group)")
    return tree
