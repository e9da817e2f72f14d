"""The study engine: chunks of draws through priors, load flow and heuristic, in parallel.

Draws are cut into chunks of :data:`CHUNK_DRAWS` -- a fixed number, never the
number of workers -- and chunk ``c`` takes its random stream from
``SeedSequence(seed).spawn(...)[c]``.  Each chunk samples its agents' powers,
runs the load flow, the heuristic and the headroom products, and returns
per-draw arrays plus *counts* for the probability maps (so memory stays
bounded whatever the number of draws).  Inside a chunk BLAS runs on one
thread, so a chunk's numbers are the same bit for bit in any process:
``jobs=1`` and ``jobs=4`` give identical results.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from joblib import Parallel, delayed, parallel_config
from joblib.parallel import BACKENDS
from threadpoolctl import threadpool_limits

from bayesflex import priors as pri_mod
from bayesflex.core.checks import check_backend, check_horizon, resolve_feeder, resolve_priors
from bayesflex.core.outdir import (
    Resources,
    as_output_error,
    check_memory,
    check_space,
    check_writable,
    estimate,
    inside,
    quiet_failed_writes,
)
from bayesflex.core.progress import progress_bar
from bayesflex.core.tables import zone
from bayesflex.core.timefmt import utc_of_local
from bayesflex.errors import ConfigError
from bayesflex.grid.feeder import Feeder
from bayesflex.grid.heuristic import (
    LINE,
    TRAFO,
    VOLTAGE,
    Limits,
    assess,
    cause_shares,
    constraints,
    headroom,
    resolve_congestion,
)
from bayesflex.io.feeders import load_feeder
from bayesflex.priors import sample_priors
from bayesflex.priors.registry import components
from bayesflex.study.checkpoint import PARTIAL_DIR, Checkpoint, kept_chunks, save_chunk, study_fingerprint
from bayesflex.study.files import open_study, verify_result
from bayesflex.study.positions import apply_positions, read_positions
from bayesflex.study.results import build_tree
from bayesflex.study.schema import PORTFOLIO, PREDICTIVE, RESULT_FILE, VIOLATIONS, causes
from bayesflex.study.store import FileStore, MemoryStore, Store, chunk_rows

__all__ = ["CHUNK_DRAWS", "Inputs", "RunOptions", "StudyOptions", "check_inputs", "check_options", "compute",
           "prepare", "run_study"]

#: draws per chunk; part of what a seed means, so changing it changes every number
CHUNK_DRAWS = 50

#: chunks handed out per worker at a time (results waiting in memory: at most this many per worker)
WAVE = 4


@dataclass(frozen=True)
class StudyOptions:
    """What a chunk needs besides its draws; travels to the workers."""

    limits: Limits = Limits()
    method: str = "analytic"
    start: str | None = None
    periods: int | None = None
    full_voltages: bool = False
    headroom: bool = True
    positions: object = None  # bayesflex.study.positions.Positions, on the study's half-hours


def _chunk_seed(seed: int, index: int) -> int:
    """A 128-bit integer seed for chunk ``index``, from ``SeedSequence(seed)``."""
    child = np.random.SeedSequence(seed).spawn(index + 1)[index]
    return int.from_bytes(child.generate_state(4, np.uint32).tobytes(), "little")


def _run_chunk(feeder: Feeder, priors, index: int, draws: int, seed: int, opts: StudyOptions,
               save: tuple | None = None, parent: int | None = None) -> dict:
    """Chunk ``index``'s results; with ``save = (folder, fingerprint, a, b, rows)`` written to its
    checkpoint file, and then only their small arrays come back (the large ones stay in the file,
    compressed as the result file keeps them: the main process copies them from there).
    ``parent``: the pid of the study's main process, when this runs in a worker process of it."""
    if parent is not None and parent != os.getpid():
        _watch_parent(parent)
    part = _compute_chunk(feeder, priors, index, draws, seed, opts)
    if save is not None:
        folder, fingerprint, a, b, rows = save
        part = save_chunk(Path(folder), fingerprint, index, a, b, part, rows)
    return part


_WATCHED: set[int] = set()  # the main processes this worker process watches (one)


def _watch_parent(parent: int, every_s: float = 0.5) -> None:
    """End this worker process within a second once the study's main process is gone.

    loky keeps idle workers alive for minutes, and a worker busy with its wave
    of chunks goes on computing; when the main process is killed (SIGKILL: it
    can clean nothing up) both would hold their memory for nothing.  A daemon
    thread polls the main process and ends this one when it has disappeared."""
    if parent in _WATCHED:
        return
    _WATCHED.add(parent)
    ppid = os.getppid()

    def watch():
        while True:
            time.sleep(every_s)
            try:
                os.kill(parent, 0)  # signal 0: only asks whether the process exists
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # it exists (owned by another user after pid reuse): stop watching
                return
            if os.getppid() != ppid:  # orphaned: our parent died (it may linger as a zombie) and we were re-parented
                os._exit(1)

    threading.Thread(target=watch, name="bayesflex-parent-watch", daemon=True).start()


def _compute_chunk(feeder: Feeder, priors, index: int, draws: int, seed: int, opts: StudyOptions) -> dict:
    with threadpool_limits(limits=1):
        ds = sample_priors(feeder, priors, draws=draws, seed=_chunk_seed(seed, index), start=opts.start,
                           periods=opts.periods)
        if opts.positions is not None:
            ds = apply_positions(ds, opts.positions, feeder.agent_phases)
        keep = [k for k in ds.data_vars if k in PREDICTIVE or ds[k].dims[:2] == ("chain", "draw")
                and ds[k].ndim < 5]
        keep += [var for t, var in components().items() if t in _technologies(priors)]
        part = _physics(feeder, ds, opts)
        return part | {"portfolio": _portfolio_sums(part, ds, feeder, opts.positions), "draws": ds[keep]}


def _portfolio_sums(part: dict, ds, feeder: Feeder, positions) -> dict[str, np.ndarray]:
    """The portfolio's powers, bounds, adjustments and headroom per draw and half-hour (kW, summed
    over its agents and phases): the agents with ``positions``, or every agent."""
    agents = None if positions is None else [feeder.agents.index(a) for a in positions.agents]
    out = {}  # the physics' first, then the draws' (the result's order)
    for name, v in [(n, part[n]) for n in part if n in PORTFOLIO] + [(n, ds[n].values[0]) for n in ds.data_vars
                                                                     if n in PORTFOLIO]:
        out[PORTFOLIO[name]] = (v if agents is None else v[:, :, agents]).sum(axis=(2, 3), dtype=np.float64)
    return out


def _technologies(priors) -> tuple[str, ...]:
    pri = getattr(priors, "priors", priors)  # a Posterior carries its Priors
    return tuple(pri.technologies)


def _physics(feeder: Feeder, ds, opts: StudyOptions) -> dict:
    """Load flow, congestion counts, heuristic and headroom for one chunk's draws."""
    g = {k: ds[k].values[0].astype(float) for k in PREDICTIVE}  # (draw, time, agent, phase)
    p, q, lb, ub = g["p_kw"], g["q_kvar"], g["p_lb_kw"], g["p_ub_kw"]
    lim = opts.limits
    st = assess(feeder, p, q, limits=lim)
    bad = ~st.converged  # a draw without a solution counts against every limit
    n_under, n_over = st.bus_voltage_counts(lim.v_min_pu, lim.v_max_pu)
    overloaded = st.line_overloaded(lim.loading_max_pu)
    trafo = st.trafo_loading_each_pu()  # (draw, time, trafo)
    v_min, v_max = st.v_extremes_pu()
    count = np.min_scalar_type(p.shape[0])  # a count over the chunk's draws, in the smallest type holding it:
    # what a worker sends the main process (int64 bus counts were 4.2 of its 6.2 MB a chunk); the store adds in int64
    out = {
        "n_undervoltage": n_under.astype(count), "n_overvoltage": n_over.astype(count),
        "n_overload": (overloaded | bad[..., None]).sum(axis=0).astype(count),
        "n_trafo_overload": ((trafo > lim.loading_max_pu) | bad[..., None]).sum(axis=0).astype(count),
        "v_min_pu": v_min, "v_max_pu": v_max, "loading_max_pu": st.loading_max_pu(),
        "trafo_loading_pu": trafo, "converged": st.converged, "iterations": st.iterations.astype(np.int32),
    }
    if opts.full_voltages:
        buses, v = st.bus_v_pu()
        full = np.full(v.shape[:2] + (feeder.n_bus, 3), np.nan, np.float32)
        full[:, :, buses] = v
        src = feeder.source.bus  # the source bus holds the source voltage (no load flow needed)
        full[:, :, src] = np.where(st.converged[..., None], np.abs(feeder.model.v0_all[3 * src:3 * src + 3]), np.nan)
        out["v_pu"] = full
        del v
    st.state.q = None  # the values are read; the heuristic needs only the exceedances
    adj = resolve_congestion(feeder, p, q, lb, ub, limits=lim, method=opts.method, start=st)
    del st
    out |= {
        "adjust_up_kw": adj.adjust_up_kw.astype(np.float32),
        "adjust_down_kw": adj.adjust_down_kw.astype(np.float32),
        "adjust_target_phase": adj.target_phase,
        "sensitivity_rank": adj.rank, "congested": adj.congested, "resolved": adj.resolved,
        "exceedance_pu": adj.exceedance_pu.astype(np.float32), "rounds": adj.rounds.astype(np.int16),
    }
    out |= _causes(ds, adj, opts)
    if opts.headroom:
        up, down, ok_up, ok_dn = headroom(feeder, adj.p_kw, q, lb, ub, limits=lim, method=opts.method,
                                          secure=adj.resolved)
        out |= {"headroom_up_kw": up.astype(np.float32), "headroom_down_kw": down.astype(np.float32),
                "headroom_ok": ok_up & ok_dn}
    return out


def _causes(ds, adj, opts: StudyOptions) -> dict:
    """Per chunk, sums over its congested draws of what causes each phase's worst violation.

    For every (draw, half-hour, phase) the heuristic ranked, the shares of
    :func:`~bayesflex.grid.heuristic.cause_shares` (each agent's technologies,
    their power summed over the agent's phases) are summed per half-hour and
    phase: by technology (``cause_share_sum``, its square for the Monte Carlo
    error, ``cause_relief_sum``), by agent (``cause_agent_share_sum``), with
    the number of draws summed (``cause_draws``) and their kinds of violation
    (``cause_violation_draws``).  Sums, not means, so that chunks add up in
    chunk order whatever the number of workers; only the congested rows are
    gathered, so memory follows the congestion, not the chunk.
    """
    sign, kind = adj.violation_sign, adj.violation_kind  # (draw, time, phase)
    n_d, n_t = sign.shape[:2]
    n_a = adj.sensitivity_pu_per_kw.shape[2]
    n_k = len(causes())
    out = {"cause_share_sum": np.zeros((n_t, 3, n_k)), "cause_share_sq_sum": np.zeros((n_t, 3, n_k)),
           "cause_relief_sum": np.zeros((n_t, 3, n_k)), "cause_agent_share_sum": np.zeros((n_t, n_a, 3)),
           "cause_draws": np.zeros((n_t, 3), np.int64),
           "cause_violation_draws": np.zeros((n_t, 3, len(VIOLATIONS)), np.int64)}
    rows = np.flatnonzero((sign != 0).any(axis=2).ravel())  # (draw, time) rows with something to attribute
    if rows.size == 0:
        return out
    comp = np.zeros((rows.size, n_k, n_a))
    for i, var in enumerate(components().values()):
        if var in ds:
            comp[:, i] = ds[var].values[0].reshape(n_d * n_t, n_a, 3)[rows].sum(axis=2, dtype=np.float64)
    if opts.positions is not None:  # what the components do not explain is the planned position
        agents = [str(a) for a in ds.agent.values]
        idx = np.array([agents.index(a) for a in opts.positions.agents], dtype=np.int64)
        p = ds["p_kw"].values[0].reshape(n_d * n_t, n_a, 3)[rows][:, idx].sum(axis=2, dtype=np.float64)
        comp[:, -1, idx] = p - comp[:, :-1, idx].sum(axis=1)
    t_of = rows % n_t
    sens = adj.sensitivity_pu_per_kw.reshape(n_d * n_t, n_a, 3)[rows]
    sign, kind = sign.reshape(n_d * n_t, 3)[rows], kind.reshape(n_d * n_t, 3)[rows]
    for ph in range(3):
        push, relief = cause_shares(sens[..., ph], sign[:, ph], comp)
        ok = ~np.isnan(push[:, 0, 0])
        t, push, relief = t_of[ok], push[ok], relief[ok]
        tech = push.sum(axis=2)
        np.add.at(out["cause_share_sum"][:, ph], t, tech)  # in row order: the same sums in any process
        np.add.at(out["cause_share_sq_sum"][:, ph], t, tech**2)
        np.add.at(out["cause_relief_sum"][:, ph], t, relief.sum(axis=2))
        np.add.at(out["cause_agent_share_sum"][:, :, ph], t, push.sum(axis=1))
        np.add.at(out["cause_draws"][:, ph], t, 1)
        s, k = sign[ok, ph], kind[ok, ph]
        code = np.select([(k == VOLTAGE) & (s < 0), k == VOLTAGE, k == LINE, k == TRAFO], [0, 1, 2, 3], -1)
        np.add.at(out["cause_violation_draws"][:, ph], (t, code), 1)
    return out


# ----------------------------------------------------------------------------
# 1. the options, checked before anything is read
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RunOptions:
    """How a study runs: :func:`run_study`'s options, checked by :func:`check_options`."""

    draws: int = 1000
    seed: int = 1
    jobs: int = 1
    method: str = "analytic"
    start: object = None  # as given: a wall-clock time of the site's zone, or one with its UTC offset
    periods: int | None = None
    full_voltages: bool = False
    headroom: bool = True
    backend: str | None = None
    scheduler: str | None = None
    timezone: str | None = None
    progress: bool | None = None
    command: str | None = None
    out: Path | None = None
    resume: bool = False

    @property
    def chunks(self) -> list[tuple[int, int, int]]:
        """Every chunk: (index, first draw, end of its draws)."""
        return [(c, a, min(self.draws, a + CHUNK_DRAWS)) for c, a in enumerate(range(0, self.draws, CHUNK_DRAWS))]

    @property
    def n_jobs(self) -> int:
        """Worker processes: ``jobs`` (-1: every core), no more than there are chunks."""
        n_chunks = -(-self.draws // CHUNK_DRAWS)
        return min(os.cpu_count() or 1, n_chunks) if self.jobs == -1 else min(self.jobs, n_chunks)


def _check_draws(draws) -> int:
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 1:
        raise ConfigError(f"draws = {draws!r}: must be a positive whole number")
    return int(draws)


def _check_jobs(jobs) -> int:
    if isinstance(jobs, bool) or not isinstance(jobs, (int, np.integer)) or jobs == 0 or jobs < -1:
        raise ConfigError(f"jobs = {jobs!r}: must be a positive whole number, or -1 for every core")
    return int(jobs)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed = {seed!r}: must be a non-negative whole number")
    return int(seed)


def _check_flag(name: str, value, *, none: bool = False) -> bool | None:
    if value is None and none:
        return None
    if not isinstance(value, (bool, np.bool_)):
        allowed = "True, False or None" if none else "True or False"
        raise ConfigError(f"{name} = {value!r}: must be {allowed}")
    return bool(value)


def check_options(*, draws=1000, seed=1, jobs=1, method="analytic", start=None, periods=None, full_voltages=False,
                  headroom=True, backend=None, scheduler=None, timezone=None, progress=None, command=None, out=None,
                  resume=False) -> RunOptions:
    """:func:`run_study`'s options (its keyword arguments but the inputs), checked without reading
    a file or loading a model: a ConfigError naming the option and what it allows.  A study that
    would not fit in memory even on the smallest feeder is refused here too, with the figure;
    ``out`` is created and proven writable."""
    draws, jobs, seed = _check_draws(draws), _check_jobs(jobs), _check_seed(seed)
    if method not in ("analytic", "perturb"):
        raise ConfigError(f"method {method!r} unknown (allowed: 'analytic', 'perturb')")
    start, periods = check_horizon(start, periods)
    check_backend(backend, scheduler)
    if timezone is not None:
        zone(timezone, "timezone")
    run = RunOptions(draws=draws, seed=seed, jobs=jobs, method=method, start=start, periods=periods,
                     full_voltages=_check_flag("full_voltages", full_voltages),
                     headroom=_check_flag("headroom", headroom), backend=backend, scheduler=scheduler,
                     timezone=timezone, progress=_check_flag("progress", progress, none=True), command=command,
                     out=None if out is None else Path(out), resume=_check_flag("resume", resume))
    least = _resources(run, periods=run.periods or 1, n_agent=0, n_bus=0, n_line=0)  # on any feeder
    check_memory(least, run.n_jobs, least=True)
    if run.out is not None:
        check_writable(run.out)
        inside(run.out, PARTIAL_DIR)
        inside(run.out, RESULT_FILE)
    return run


def check_inputs(feeder, priors, limits) -> None:
    """The feeder and the priors named are there (nothing is read yet); ``limits`` are :class:`Limits`."""
    if not isinstance(feeder, Feeder):
        if not isinstance(feeder, (str, os.PathLike)):
            raise ConfigError(f"feeder = {feeder!r}: give the name of feeders/<name>.toml, a path or a Feeder")
        resolve_feeder(feeder)
    if isinstance(priors, (str, os.PathLike)):
        resolve_priors(priors)
    if limits is not None and not isinstance(limits, Limits):
        raise ConfigError(f"limits = {limits!r}: must be a bayesflex.grid.heuristic.Limits (or None: the feeder's)")


def _resources(run: RunOptions, *, periods: int, n_agent: int, n_bus: int, n_line: int) -> Resources:
    return estimate(draws=run.draws, periods=periods, n_agent=n_agent, n_bus=n_bus, n_line=n_line,
                    jobs=run.n_jobs, chunk_draws=CHUNK_DRAWS, wave=WAVE, full_voltages=run.full_voltages,
                    in_memory=run.out is None)


# ----------------------------------------------------------------------------
# 2. the inputs, read and prepared
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Inputs:
    """What a study's chunks are computed from: the feeder (its network model and constraint
    tables built), the priors (a ``Posterior`` when conditioned) and the chunks' options."""

    feeder: Feeder
    priors: object
    posterior: object  # the priors when they are a Posterior, else None
    opts: StudyOptions

    @property
    def kind(self) -> str:
        """The result's group names: "posterior" when the priors were conditioned, else "prior"."""
        return "posterior" if self.posterior is not None else "prior"


def prepare(feeder, priors, run: RunOptions, *, observations=None, ev_states=None, positions=None,
            limits: Limits | None = None) -> Inputs:
    """Read the priors (a TOML file), the feeder and the positions; refuse a study the machine's
    memory or the output folder's disk cannot take; then the heavy work: conditioning the priors
    on ``observations``/``ev_states`` (PyMC), and the network model the workers receive."""
    pr = pri_mod.load_priors(priors) if isinstance(priors, (str, os.PathLike)) else priors
    pr = with_timezone(pr, run.timezone)
    start, periods = local_start(run.start, pr), run.periods
    fd = feeder if isinstance(feeder, Feeder) else load_feeder(feeder)
    pos = None
    if positions is not None:
        pos, start, periods = _positions(positions, fd, pr, start, periods)
    opts = StudyOptions(limits=limits or Limits(v_min_pu=fd.v_min_pu, v_max_pu=fd.v_max_pu), method=run.method,
                        start=start, periods=periods, full_voltages=run.full_voltages, headroom=run.headroom,
                        positions=pos)
    _check_resources(fd, pr, opts, run)
    if observations is not None or ev_states is not None:
        base = pr.priors if isinstance(pr, pri_mod.Posterior) else pr
        pr = pri_mod.condition(base, observations, ev_states=ev_states, agents=fd.agents, seed=run.seed)
    constraints(fd.model, opts.limits)  # the model and its constraint table, built once here: workers receive them
    return Inputs(feeder=fd, priors=pr, posterior=pr if isinstance(pr, pri_mod.Posterior) else None, opts=opts)


def _positions(positions, fd: Feeder, pr, start, periods):
    """The positions on the study's half-hours, and the horizon (the positions' unless given)."""
    pri = getattr(pr, "priors", pr)  # a Posterior carries its Priors
    pos = read_positions(positions, agents=fd.agents, tz=pri.timezone)
    if start is None and periods is None:
        start, periods = str(pos.times[0]), len(pos.times)
    t0 = pd.Timestamp(start) if start is not None else pri.start
    times = pd.date_range(t0, periods=int(periods) if periods is not None else pri.periods, freq="30min")
    return pos.on(times), start, periods


def local_start(start, priors, what: str = "start") -> str | None:
    """The study's first half-hour as naive UTC text: ``start`` is a wall-clock time of the site's
    zone (the priors' ``[site] timezone``), or carries its UTC offset; None stays None (the priors'
    ``[horizon] start``).  A time the clocks skip or pass twice asks for the offset."""
    if start is None:
        return None

    t = utc_of_local(start, getattr(priors, "priors", priors).timezone, what)
    if t != t.floor("30min"):
        raise ConfigError(f"{what} {start!r} is {t:%Y-%m-%d %H:%M} UTC: the study's half-hours are UTC ones; give a "
                          f"time on a UTC half-hour")
    return t.isoformat()


def with_timezone(priors, timezone: str | None):
    """``priors`` (a ``Priors`` or a ``Posterior``) with the site's zone set to ``timezone`` (None: as they are).
    The zone decides local clocks in the draws (EV timers), naive times read and every time printed."""
    if timezone is None or getattr(priors, "priors", priors).timezone == timezone:
        return priors
    zone(timezone, "timezone")
    if hasattr(priors, "priors"):
        return dataclasses.replace(priors, priors=dataclasses.replace(priors.priors, timezone=timezone))
    return dataclasses.replace(priors, timezone=timezone)


def _check_resources(fd: Feeder, pr, opts: StudyOptions, run: RunOptions) -> None:
    """Refuse, with the figures, a study that needs more memory than the machine has, or more
    disk than ``out``'s (less what a resumed study has kept)."""
    n_periods = int(opts.periods) if opts.periods is not None else getattr(pr, "priors", pr).periods
    need = _resources(run, periods=n_periods, n_agent=fd.n_agent, n_bus=fd.n_bus, n_line=fd.n_line)
    check_memory(need, run.n_jobs)
    if run.out is not None:
        kept = min(kept_chunks(run.out) * CHUNK_DRAWS / run.draws, 1.0) if run.resume else 0.0  # share on disk
        check_space(run.out, need.disk_bytes * (1.0 - kept / 2), f"this study ({run.draws} draws of {n_periods} "
                    f"half-hours, {fd.n_agent} agents)")  # kept chunks are the checkpoint half of the need


# ----------------------------------------------------------------------------
# 3. the chunks, run and gathered; 4. the tree
# ----------------------------------------------------------------------------
def compute(inp: Inputs, run: RunOptions) -> xr.DataTree:
    """The study's tree: its chunks computed (or read from ``out/.partial`` when resumed), gathered
    in a store -- in memory, or streamed into ``out/result.nc`` -- and assembled.  With ``resume``,
    the finished result in ``out`` when it is this very study."""
    fd = inp.feeder
    fp = study_fingerprint(fd, inp.priors, inp.posterior, draws=run.draws, seed=run.seed, opts=inp.opts,
                           chunk_draws=CHUNK_DRAWS)
    attrs = {"study_fingerprint": fp["sha256"],
             "study_inputs": json.dumps({k: v for k, v in fp.items() if k != "sha256"}, sort_keys=True)}
    ck = None
    if run.out is None:
        store = MemoryStore(run.draws, inp.kind, fd.buses, chunk_draws=CHUNK_DRAWS)
    else:
        final = run.out / RESULT_FILE
        if _finished(final, fp, feeder=(str(fd.origin), fd.sha256), resume=run.resume):
            return open_study(final, verify=False)  # _finished has just checked it
        ck = Checkpoint(run.out, fp, len(run.chunks), rows=chunk_rows(run.draws, CHUNK_DRAWS), resume=run.resume)
        store = FileStore(run.draws, inp.kind, fd.buses, ck.stream_path, chunk_draws=CHUNK_DRAWS, final=final)
        if ck.done:
            attrs["chunks_resumed"] = len(ck.done)
    with _cleaned_up_on_failure(store, ck, run.out):
        _run_chunks(inp, run, store, ck)
        tree = build_tree(fd, inp.priors, inp.posterior, store, draws=run.draws, seed=run.seed, opts=inp.opts,
                          command=run.command, provenance=attrs)
    if ck is not None:
        ck.finish()
    return tree


@contextmanager
def _cleaned_up_on_failure(store: Store, ck: Checkpoint | None, out: Path | None):
    """A study that fails or is stopped leaves no unfinished result (its finished chunks stay in
    ``out/.partial`` for ``resume``) and releases its folder; a full disk or a folder made
    read-only is one line, not HDF5's traceback."""
    with quiet_failed_writes():  # a failed write is raised once, not reported by every HDF5 object it leaves
        try:
            yield
        except BaseException as err:
            store.discard()
            if ck is not None:  # the workers have stopped (joblib ends its pool on a failure)
                ck.remove_temporaries()
                ck.release()
            failed = err if out is None else as_output_error(out, err)
            if failed is not err:
                raise failed from None
            raise


def _run_chunks(inp: Inputs, run: RunOptions, store: Store, ck: Checkpoint | None) -> None:
    """Every chunk into ``store``, in chunk order: computed by the workers, or read from the
    checkpoint when an earlier run finished it (computed again here if it is damaged)."""
    done = set() if ck is None else ck.done
    remote = run.scheduler is not None  # a cluster's workers may not see our disk: we write their chunks (a local
    # cluster's, started here, see it and write their own, as loky's do)

    def task(c: int, a: int, b: int) -> tuple:
        save = None if ck is None or remote else (str(ck.dir), ck.sha256, a, b, ck.rows)
        parent = os.getpid() if run.scheduler is None else None  # workers on this machine (loky, or a local
        # dask cluster) watch this process and end with it
        return inp.feeder, inp.priors, c, b - a, run.seed, inp.opts, save, parent

    chunks = run.chunks
    todo = [task(c, a, b) for c, a, b in chunks if c not in done]
    bar = progress_bar(run.draws, f"study {inp.feeder.name}", progress=run.progress,
                       initial=sum(b - a for c, a, b in chunks if c in done))
    try:
        with _workers(run.backend, run.scheduler, run.n_jobs) as (parallel, width):
            results = _in_waves(parallel, width, todo)
            try:
                for c, a, b in chunks:
                    fresh = c not in done
                    part = next(results) if fresh else ck.load(c)
                    if part is None:  # a kept chunk was damaged: compute it again, here
                        part, fresh = _run_chunk(*task(c, a, b)[:-1]), True
                    if fresh and remote and ck is not None:
                        part = ck.save(c, a, b, part)
                    if c not in done:
                        bar.update(b - a)
                    store.add(part, a, b)
            finally:  # a study stopped early cancels the chunks in flight: joblib's warning says only that
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=r".*tasks which were still being processed")
                    results.close()
    finally:
        bar.close()


def run_study(
    feeder: Feeder | str | Path = "ieee_eu_lv",
    priors="default",
    *,
    draws: int = 1000,
    seed: int = 1,
    jobs: int = 1,
    observations=None,
    ev_states=None,
    start: str | None = None,
    periods: int | None = None,
    limits: Limits | None = None,
    method: str = "analytic",
    full_voltages: bool = False,
    headroom: bool = True,
    backend: str | None = None,
    progress: bool | None = None,
    command: str | None = None,
    out: str | Path | None = None,
    positions=None,
    resume: bool = False,
    scheduler: str | None = None,
    timezone: str | None = None,
):
    """Run a probabilistic congestion study.

    Parameters
    ----------
    feeder : name of ``feeders/<name>.toml``, a path, or a :class:`Feeder`.
    priors : name of ``priors/<name>.toml``, a path, a ``Priors`` or a ``Posterior``.
    draws : number of draws (one chain).
    seed : the study's seed; same inputs and seed give identical numbers.
    jobs : parallel workers (-1: every core); the numbers do not depend on it.
    observations, ev_states : metered readings / EV logs (CSV or NetCDF paths
        or tables); when given, the priors are conditioned on them first
        (:func:`bayesflex.condition`) and the draws come from the posterior.
    start, periods : the horizon (default: the priors file's, 96 half-hours); ``start`` is a
        wall-clock time of the site's zone (e.g. "2026-07-15 00:00" is midnight BST, 23:00 UTC
        the day before) or a time with its UTC offset.  The half-hours are UTC ones, so a horizon
        across a clock change still has ``periods`` half-hours.
    timezone : the site's IANA time zone (default: the priors' ``[site] timezone``): local clocks
        in the draws (EV timers), naive times in observations and positions, ``start``, and every
        time printed.  Stored as the result's ``timezone`` attribute (its times stay UTC).
    limits : voltage and thermal limits (default: the feeder's, 0.94-1.10 pu, and ratings).
    method : sensitivity method of the heuristic, "analytic" or "perturb".
    full_voltages : also keep every bus voltage of every draw (large).
    headroom : compute the turn-up/turn-down headroom products.
    backend : a joblib backend name ("loky" by default; "dask" on a
        dask.distributed cluster, see ``scheduler``); the numbers do not depend on it.
    scheduler : with ``backend="dask"``, the address of a running dask
        scheduler (``"tcp://host:8786"``); without, a local cluster of ``jobs``
        worker processes is started for the study and closed after it.
    progress : show a progress bar; by default a bar when stderr is a terminal, else a plain
        line at every tenth of the draws and at least every minute (:mod:`bayesflex.core.progress`).
    command : the command line that produced the study, for provenance.
    positions : the aggregator's planned positions (CSV or NetCDF path, a
        ``DataFrame`` or :class:`~bayesflex.study.positions.Positions`): the listed
        agents' controllable power and bounds (:mod:`bayesflex.study.positions`);
        the portfolio is then those agents.  Without ``start``/``periods`` the
        horizon is the positions'.
    out : a folder: stream the results into ``out/result.nc`` as chunks
        complete (memory stays bounded whatever the draws) and return the
        tree opened from it; without, the tree is built in memory.  Every
        finished chunk is also kept in ``out/.partial`` until the study is
        complete (:mod:`bayesflex.study.checkpoint`).
    resume : with ``out``, continue the unfinished study in ``out`` (computing
        only the chunks not yet finished), or return the finished one if
        ``out/result.nc`` is this study; the numbers are those of an
        uninterrupted run.  Without, an unfinished study in ``out`` is discarded.

    Options are checked before anything is read (:func:`check_options`, :func:`check_inputs`); then
    the inputs are read and prepared (:func:`prepare`), and the chunks run and gathered into the
    tree (:func:`compute`).

    Returns
    -------
    xarray.DataTree with the groups described in :mod:`bayesflex.study.results`.
    """
    run = check_options(draws=draws, seed=seed, jobs=jobs, method=method, start=start, periods=periods,
                        full_voltages=full_voltages, headroom=headroom, backend=backend, scheduler=scheduler,
                        timezone=timezone, progress=progress, command=command, out=out, resume=resume)
    check_inputs(feeder, priors, limits)
    inputs = prepare(feeder, priors, run, observations=observations, ev_states=ev_states, positions=positions,
                     limits=limits)
    return compute(inputs, run)


def _finished(path: Path, fingerprint: dict, *, feeder: tuple[str, str], resume: bool) -> bool:
    """With ``resume``: whether ``path`` is a complete, intact result of this very study (then it
    is kept).  A finished study of other inputs is refused with ``resume``, naming what differs,
    and without it when it is another feeder's (two model sets may share folder names): running
    into its folder would overwrite it.  Another run of the same feeder replaces it."""
    if not path.is_file():
        return False
    try:  # its attributes decide what to do; its data are checked only if it is to be kept
        attrs = open_study(path, verify=False).attrs
    except ConfigError:  # not a study: computed again
        return False
    if attrs.get("study_fingerprint") == fingerprint["sha256"]:
        if not resume:
            return False
        try:
            verify_result(path)
        except ConfigError:  # damaged: computed again
            return False
        return True
    if not resume:
        origin, sha = feeder
        old_origin = str(attrs.get("feeder_origin", origin))
        if os.path.realpath(old_origin) != os.path.realpath(origin) and attrs.get("feeder_sha256", sha) != sha:
            raise ConfigError(f"{path.parent}: holds a finished study of another feeder ({old_origin}), not of "
                              f"{origin}; choose another --out, or delete {path} to replace it")
        return False
    try:
        old = json.loads(attrs.get("study_inputs", "{}"))
    except ValueError:
        old = {}
    diff = sorted(k for k in fingerprint if k != "sha256" and old.get(k) != fingerprint[k]) if old else []
    raise ConfigError(f"{path}: this folder holds a finished study of other inputs (differs in: "
                      f"{', '.join(diff) or 'the fingerprint'}; its feeder: {attrs.get('feeder_origin', '?')}); "
                      "--resume would overwrite it. Choose another --out, or run without --resume to replace it")


def _in_waves(parallel, width: int, todo: list):
    """The chunks' results in order.  joblib hands out a new task whenever a worker
    is free, whether or not we have taken the results so far: in waves of
    ``width`` tasks, at most ``width`` results wait for us, so memory is bounded
    even when writing them is slower than computing them (many workers)."""
    if parallel is None:
        yield from (_run_chunk(*a) for a in todo)
        return
    for i in range(0, len(todo), width):
        yield from parallel(delayed(_run_chunk)(*a) for a in todo[i:i + width])


@contextmanager
def _workers(backend: str | None, scheduler: str | None, n_jobs: int):
    """A ``joblib.Parallel`` returning results in order as they complete (None: run here, in order).
    ``backend`` and ``scheduler`` were checked by :func:`check_options`."""
    if backend == "dask" or scheduler is not None:
        with _dask_client(scheduler, n_jobs) as client, parallel_config(backend="dask"):
            slots = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
            yield Parallel(n_jobs=-1, return_as="generator"), WAVE * max(slots, 1)
        return
    if backend is None and n_jobs == 1:
        yield None, 1
        return
    try:
        parallel = Parallel(n_jobs=n_jobs, backend=backend, return_as="generator")
    except ValueError as err:
        raise ConfigError(f"backend {backend!r} unknown (allowed: {', '.join(sorted(BACKENDS))}, "
                          "or one registered with joblib.register_parallel_backend)") from err
    try:
        yield parallel, WAVE * n_jobs
    except BaseException:
        if backend in (None, "loky"):
            release_pool()
        raise


def release_pool(collect: bool = True) -> None:
    """Shut loky's worker pool down and (``collect``) free its semaphores here, in this thread.

    A failed chunk makes joblib kill the pool's workers and drop the pool; its semaphores
    are then garbage in reference cycles, which the next collection frees in whichever
    thread it runs. When that is one of loky's daemon threads as the interpreter ends, a
    semaphore can be unlinked but not yet deregistered from loky's resource tracker, which
    then prints four lines of warnings after the study's own one-line error."""
    pool = getattr(sys.modules.get("joblib.externals.loky.reusable_executor"), "_executor", None)
    if pool is not None:
        pool.shutdown(wait=True, kill_workers=True)
    if collect:
        gc.collect()


@contextmanager
def _dask_client(scheduler: str | None, n_jobs: int):
    """A dask.distributed client: connected to ``scheduler``, or to a local cluster of ``n_jobs`` processes."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as err:
        raise ConfigError("backend 'dask' needs dask.distributed: pip install 'bayesflex[cluster]'") from err
    if scheduler is None:
        with LocalCluster(n_workers=n_jobs, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=logging.ERROR) as cl, \
                Client(cl) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError, ValueError) as err:
        raise ConfigError(f"cannot reach the dask scheduler at {scheduler!r} ({err}); give its address as "
                          "tcp://host:port (what 'dask scheduler' prints)") from err
    with client:
        yield client
