"""Batched unbalanced three-phase load flow with constant-power loads.

The kernel works on the load nodes only (see :mod:`bayesflex.grid.network`):

    I_L = -conj(S_L / V_L)         V_L = V0_L + Z_LL I_L

a Z-bus fixed point, batched over scenarios as matrix products.  Scenarios
whose fixed point stalls or diverges (near voltage collapse) are handed to a
Newton method on the same equations.  A scenario is ``converged`` only if the
residual ``max |V_L - V0_L - Z_LL I_L(V_L)|`` is below ``tol`` (pu) and every
value is finite; otherwise its results are NaN and ``converged`` is False.

All bus voltages, line and transformer currents then follow by one product
each, in chunks so that memory stays bounded.
"""

from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController, threadpool_limits

from bayesflex.errors import SolverError
from bayesflex.grid.feeder import Feeder
from bayesflex.grid.kernels import add_and_step, div_conj, segment_min_max_abs2
from bayesflex.grid.network import BranchRows, NetworkModel

__all__ = ["solve_loadflow", "LoadFlowResult", "LoadFlowSummary", "solve_load_nodes", "voltage_sensitivity"]

#: scenarios solved together (load nodes and expansion); bounds memory per call.  A batch of many
#: chunks runs them in as many threads as BLAS may use (one in the study's workers, which limit it)
DEFAULT_CHUNK = 4096


@functools.cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def _blas_threads() -> int:
    """The threads BLAS may use now (``threadpoolctl.threadpool_limits`` lowers it)."""
    return max([lib["num_threads"] for lib in _blas().select(user_api="blas").info()] or [1])


#: held while a call runs its chunks in threads: BLAS's thread limit is the process's, so a second
#: call at the same time (from another thread) runs its chunks one after another instead
_THREADED = threading.Lock()


@dataclass(frozen=True)
class LoadFlowResult:
    """Full results; leading dimensions ``...`` are those of the inputs.

    ``v_pu (..., bus, phase)`` phase-to-neutral voltage magnitude;
    ``i_line_a (..., line, phase)`` current magnitude, the larger of the two
    line ends; ``loading_pu (..., line)`` max over phases of current/rating;
    ``trafo_loading_pu (...)`` max over transformers, phases and sides of
    current / rated current; ``p_source_kw``, ``q_source_kvar (..., phase)``
    power delivered by the source; ``converged (...)``; ``iterations (...)``;
    ``source_bus``, the index of the source bus, which ``v_min_pu``/``v_max_pu``
    leave out (limits apply to the feeder, not to the upstream grid).
    """

    v_pu: np.ndarray
    i_line_a: np.ndarray
    loading_pu: np.ndarray
    trafo_loading_pu: np.ndarray
    p_source_kw: np.ndarray
    q_source_kvar: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    source_bus: int
    v_complex_pu: np.ndarray | None = None

    @property
    def v_min_pu(self) -> np.ndarray:
        """(..., phase) over all buses but the source bus."""
        return np.delete(self.v_pu, self.source_bus, axis=-2).min(axis=-2)

    @property
    def v_max_pu(self) -> np.ndarray:
        return np.delete(self.v_pu, self.source_bus, axis=-2).max(axis=-2)

    @property
    def loading_max_pu(self) -> np.ndarray:
        return self.loading_pu.max(axis=-1)


@dataclass(frozen=True)
class LoadFlowSummary:
    """Reductions only: ``v_min_pu``/``v_max_pu (..., phase)`` over the
    monitored buses (all but the source bus), ``loading_max_pu (...)`` over
    lines, ``trafo_loading_pu (...)``, ``converged``, ``iterations``."""

    v_min_pu: np.ndarray
    v_max_pu: np.ndarray
    loading_max_pu: np.ndarray
    trafo_loading_pu: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray


def solve_loadflow(
    feeder: Feeder,
    p_kw: np.ndarray,
    q_kvar: np.ndarray,
    *,
    full: bool = True,
    tol: float = 1e-10,
    max_iter: int = 40,
    chunk_size: int | None = None,
    return_complex: bool = False,
    precision: str | None = None,
) -> LoadFlowResult | LoadFlowSummary:
    """Solve the load flow for every scenario in a batch.

    Parameters
    ----------
    feeder : Feeder
    p_kw, q_kvar : array (..., agent, phase)
        Active and reactive power of each agent on each phase, kW and kvar,
        consumption positive.  Phases an agent is not connected to must be 0.
    full : bool
        True: all bus voltages and line currents (:class:`LoadFlowResult`).
        False: per-scenario reductions only (:class:`LoadFlowSummary`), so
        that 10^5 scenarios take a few MB.
    tol : float
        Convergence tolerance on the load-node voltage residual, pu.
    max_iter : int
        Fixed-point iterations before a scenario is handed to Newton.
    chunk_size : int, optional
        Scenarios solved together (default 4096); bounds the working memory
        whatever the batch size.  Results differ between chunk sizes only by
        floating-point rounding.  A batch of at least twice as many chunks
        as BLAS may use threads (``threadpoolctl.threadpool_limits`` sets
        them) runs its chunks in that many threads, each with one BLAS
        thread: the numbers are those of one thread.
    return_complex : bool
        With ``full``, also return complex voltages ``v_complex_pu``.
    precision : {"double", "mixed"}, optional
        ``"double"`` (the default with ``full=True``): everything in float64.
        ``"mixed"`` (the default with ``full=False``): the load nodes are
        solved in float64, the voltage *drops* to the other buses are
        expanded in float32 around float64 no-load voltages, which halves the
        dominant cost; the magnitudes then differ from ``"double"`` by less
        than 1e-7 pu (checked in the tests), far below any limit's meaning.
    """
    model = feeder.model
    precision = precision or ("double" if full else "mixed")
    if precision not in ("double", "mixed"):
        raise SolverError(f"precision {precision!r} unknown (allowed: 'double', 'mixed')")
    lead, p, q = _checked_powers(feeder, p_kw, q_kvar)
    n = p.shape[0]
    outer = chunk_size or DEFAULT_CHUNK
    inner = max(1, int(8e6 // (16 * 3 * model.n_bus)))  # expansion rows per product: ~8 MB (32: 15 % slower)
    expand_dtype = np.complex64 if precision == "mixed" else np.complex128

    def block(a: int) -> dict[str, np.ndarray]:
        b = min(n, a + outer)
        s_l = _load_node_powers(model, p[a:b], q[a:b])
        v_l, conv, its = solve_load_nodes(model, s_l, tol=tol, max_iter=max_iter)
        with np.errstate(invalid="ignore"):  # rows that did not converge are NaN
            i_l = np.where(conv[:, None], -np.conj(s_l / v_l), np.nan)
        if full:
            out = _expand_full(feeder, model, i_l, min(inner, outer), return_complex)
        else:
            out = _expand_summary(model, i_l, min(inner, outer), expand_dtype)
        out["converged"], out["iterations"] = conv, its
        return out

    starts = range(0, max(n, 1), outer)  # an empty batch still runs once, on zero rows
    threads = _blas_threads()
    if len(starts) >= 2 * threads > 2 and _THREADED.acquire(blocking=False):
        # the same chunks, hence numbers, in threads of one BLAS thread each (with fewer chunks than
        # twice the threads, the largest is most of the work: BLAS's threads instead)
        try:
            with threadpool_limits(limits=1), ThreadPoolExecutor(threads, "bayesflex-lf") as pool:
                parts = list(pool.map(block, starts))
        finally:
            _THREADED.release()
    else:
        parts = [block(a) for a in starts]
    shaped = {k: np.concatenate([pt[k] for pt in parts]) for k in parts[0]}
    shaped = {k: v.reshape(lead + v.shape[1:]) for k, v in shaped.items()}
    if full:
        return LoadFlowResult(source_bus=feeder.source.bus, **shaped)
    return LoadFlowSummary(**shaped)


def _checked_powers(feeder: Feeder, p_kw, q_kvar):
    """``(leading shape, p (n, 3*agent), q (n, 3*agent))``, or a SolverError
    for the wrong shape, NaN, or power on a phase an agent is not connected to."""
    model = feeder.model
    p = np.asarray(p_kw, dtype=float)
    q = np.asarray(q_kvar, dtype=float)
    shape = (feeder.n_agent, 3)
    if p.shape[-2:] != shape or q.shape != p.shape:
        raise SolverError(
            f"p_kw and q_kvar must both have shape (..., agent={shape[0]}, phase=3); "
            f"got {p.shape} and {q.shape}"
        )
    lead = p.shape[:-2]
    p = p.reshape(-1, 3 * feeder.n_agent)
    q = q.reshape(-1, 3 * feeder.n_agent)
    if not (np.isfinite(p).all() and np.isfinite(q).all()):
        raise SolverError("p_kw/q_kvar contain NaN or infinite values")
    off = np.ones(3 * feeder.n_agent, bool)
    off[model.agent_cols] = False
    if off.any():
        bad = np.flatnonzero(np.any(p[:, off] != 0, axis=0) | np.any(q[:, off] != 0, axis=0))
        if bad.size:
            a, ph = divmod(int(np.flatnonzero(off)[bad[0]]), 3)
            raise SolverError(
                f"agent {feeder.agents[a]!r} has power on phase {'abc'[ph]}, which it is not "
                f"connected to (its phases: {''.join(np.array(list('abc'))[feeder.agent_phases[a]])})"
            )
    return lead, p, q


def _load_node_powers(model: NetworkModel, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Complex power (pu, load positive) at the load nodes, ``(n, L)``, from
    agent-phase powers ``(n, 3*agent)`` in kW/kvar."""
    return unit_node_powers(model, p[:, model.agent_cols], q[:, model.agent_cols])


def unit_node_powers(model: NetworkModel, p_units: np.ndarray, q_units: np.ndarray) -> np.ndarray:
    """The same from the connected agent-phase columns only, ``(n, C)`` kW/kvar."""
    m = model.agent_to_load / model.s_base_kva
    return p_units @ m + 1j * (q_units @ m)


def _real_jacobian(z: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """d F / d(Re V, Im V) of F(V) = V - V0 - Z I(V), I = -conj(S)/conj(V).

    I is not holomorphic: dF = dV - M conj(dV), M = Z diag(conj(S)/conj(V)^2),
    written in real form.  ``s``, ``v``: (..., L); returns (..., 2L, 2L).
    """
    nl = z.shape[0]
    eye = np.eye(nl)
    m = z * (np.conj(s) / np.conj(v) ** 2)[..., None, :]
    out = np.empty(m.shape[:-2] + (2 * nl, 2 * nl))  # the four blocks written in place (np.block: 2x the time)
    np.subtract(eye, m.real, out=out[..., :nl, :nl])
    np.negative(m.imag, out=out[..., :nl, nl:])
    out[..., nl:, :nl] = out[..., :nl, nl:]
    np.add(eye, m.real, out=out[..., nl:, nl:])
    return out


# ----------------------------------------------------------------------------
# kernels (numpy and the numba ones of grid.kernels, axis 0 = scenario)
# ----------------------------------------------------------------------------
def solve_load_nodes(model: NetworkModel, s_l: np.ndarray, *, tol: float = 1e-10, max_iter: int = 40):
    """Voltages at the load nodes for scenarios ``s_l (n, L)`` (pu, load positive).

    Returns ``v_l (n, L)``, ``converged (n,)``, ``iterations (n,)`` (fixed-point
    plus Newton iterations).
    """
    n, nl = s_l.shape
    v = np.broadcast_to(model.v0_l, (n, nl)).copy()
    iterations = np.zeros(n, np.int64)
    converged = np.zeros(n, bool)
    if n == 0:
        return v, converged, iterations
    zt = model.z_ll.T
    tol2 = tol * tol
    active = np.arange(n)
    va, ca = v.copy(), -np.conj(s_l)  # I_L = -conj(S / V) = ca / conj(V)
    prev = np.full(n, np.inf)
    stalled = []
    with np.errstate(all="ignore"):
        for _ in range(max_iter):
            i_l = np.empty_like(va)
            div_conj(ca, va, i_l)  # I_L = ca / conj(V), one pass
            vn = i_l @ zt
            step2 = np.empty(len(vn))
            add_and_step(vn, model.v0_l, va, step2)  # vn += V0 and max |vn - va|^2 per row, one pass
            iterations[active] += 1
            ok = step2 < tol2
            bad = ~np.isfinite(step2) | (step2 > 1.0) | (step2 > prev[active] * 2.25)
            prev[active] = step2
            va = vn
            done = ok | bad
            if done.all() or done.mean() > 0.25:  # compact the active set now and then, not every time
                v[active[done]] = va[done]
                converged[active[ok]] = True
                stalled.append(active[bad & ~ok])
                keep = ~done
                active, va, ca = active[keep], va[keep], ca[keep]
                if active.size == 0:
                    break
        v[active] = va
    rest = np.concatenate([*stalled, active])
    if rest.size:
        v_new, ok, its = _newton(model, s_l[rest], tol=tol)
        v[rest] = v_new
        converged[rest] = ok
        iterations[rest] += its
    v[~converged] = np.nan
    return v, converged, iterations


def _newton(model: NetworkModel, s: np.ndarray, *, tol: float, max_iter: int = 30):
    """Newton-Raphson on F(V) = V - V0 - Z I(V), from the no-load voltages.

    The step is solved in real form (:func:`_real_jacobian`).
    """
    n, nl = s.shape
    v = np.broadcast_to(model.v0_l, (n, nl)).copy()
    its = np.zeros(n, np.int64)
    ok = np.zeros(n, bool)
    z = model.z_ll
    with np.errstate(all="ignore"):
        for _ in range(max_iter):
            todo = np.flatnonzero(~ok & np.all(np.isfinite(v), axis=1))
            if todo.size == 0:
                break
            vt, st = v[todo], s[todo]
            f = vt - model.v0_l - (-np.conj(st / vt)) @ z.T
            res = np.abs(f).max(axis=1)
            good = res < tol
            ok[todo[good]] = True
            todo, vt, st, f = todo[~good], vt[~good], st[~good], f[~good]
            if todo.size == 0:
                break
            jac = _real_jacobian(z, st, vt)
            rhs = -np.concatenate([f.real, f.imag], axis=1)
            try:
                dx = np.linalg.solve(jac, rhs[..., None])[..., 0]
            except np.linalg.LinAlgError:
                dx = np.stack([np.linalg.lstsq(j, r, rcond=None)[0] for j, r in zip(jac, rhs)])
            v[todo] = vt + dx[:, :nl] + 1j * dx[:, nl:]
            its[todo] += 1
    return v, ok, its


def _rows_abs(rows: BranchRows, i_l: np.ndarray) -> np.ndarray:
    """|i0 + k @ I_L| for the distinct rows: (n, rows)."""
    return np.abs(rows.i0_a + i_l @ rows.k_a.T)


def _trafo_loading(model: NetworkModel, i_l: np.ndarray) -> np.ndarray:
    if model.trafo_rows.k_a.shape[0] == 0:
        return np.zeros(len(i_l))
    cur = _rows_abs(model.trafo_rows, i_l).reshape(len(i_l), -1, 2, 3)  # (n, trafo, side, phase)
    return (cur / model.trafo_i_rated_a[None, :, :, None]).max(axis=(1, 2, 3))


def _expand_full(feeder: Feeder, model: NetworkModel, i_l: np.ndarray, chunk: int, return_complex: bool):
    n, nb, nline = len(i_l), model.n_bus, feeder.n_line
    out = {
        "v_pu": np.empty((n, nb, 3)),
        "i_line_a": np.empty((n, nline, 3)),
        "loading_pu": np.empty((n, nline)),
        "trafo_loading_pu": np.empty(n),
        "p_source_kw": np.empty((n, 3)),
        "q_source_kvar": np.empty((n, 3)),
    }
    if return_complex:
        out["v_complex_pu"] = np.empty((n, nb, 3), complex)
    inv = model.line_rows.inverse
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        il = i_l[a:b]
        v = model.v0_all + il @ model.w_all_t
        out["v_pu"][a:b] = np.abs(v).reshape(-1, nb, 3)
        if return_complex:
            out["v_complex_pu"][a:b] = v.reshape(-1, nb, 3)
        cur = _rows_abs(model.line_rows, il)
        i_ends = cur[:, inv]  # (n, 2*line, 3)
        i_line = np.maximum(i_ends[:, :nline], i_ends[:, nline:])
        out["i_line_a"][a:b] = i_line
        out["loading_pu"][a:b] = i_line.max(axis=2) / model.line_i_max_a
        out["trafo_loading_pu"][a:b] = _trafo_loading(model, il)
        i_src = model.source_rows.i0_a + il @ model.source_rows.k_a.T  # (n, 3) A
        s_src = v[:, model.source_v] * model.v_base_v[feeder.source.bus] * np.conj(i_src) / 1e3
        out["p_source_kw"][a:b] = s_src.real
        out["q_source_kvar"][a:b] = s_src.imag
    return out


def _expand_summary(model: NetworkModel, i_l: np.ndarray, chunk: int, dtype=np.complex128):
    n = len(i_l)
    w_t = model.vmon_w_t.astype(dtype)
    starts = model.vmon_phase_start
    out = {k: np.empty((n, 3)) for k in ("v_min_pu", "v_max_pu")}
    out["loading_max_pu"] = np.empty(n)
    out["trafo_loading_pu"] = np.empty(n)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        il = i_l[a:b]
        drop = il.astype(dtype) @ w_t  # the drop in `dtype`, added to the no-load voltage in float64
        lo, hi = np.empty((b - a, 3)), np.empty((b - a, 3))
        segment_min_max_abs2(model.vmon_v0, drop, starts, lo, hi)  # min/max |V|^2 per phase, one pass
        out["v_min_pu"][a:b] = np.sqrt(lo)
        out["v_max_pu"][a:b] = np.sqrt(hi)
        out["loading_max_pu"][a:b] = (_rows_abs(model.line_rows, il) / model.line_rating_per_row_a).max(axis=1)
        out["trafo_loading_pu"][a:b] = _trafo_loading(model, il)
    return out


# ----------------------------------------------------------------------------
# sensitivities of voltage magnitudes to agents' active power
# ----------------------------------------------------------------------------
def voltage_sensitivity(feeder: Feeder, p_kw: np.ndarray, q_kvar: np.ndarray, *, agents=None,
                        tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """d|V|/dP of every bus and phase to each agent's active power, at the solved state.

    The load-node equations ``F(V) = V - V0 - Z I(V, S) = 0`` are linearised
    at the solution: ``dV - M conj(dV) = Z dI_S`` (the Newton system,
    :func:`_real_jacobian`) with
    ``dI_S = -conj(dS)/conj(V)``; all buses follow through ``W``.  An agent's
    dP is spread over its phases as its power is (equally over a three-phase
    agent's phases).

    Parameters
    ----------
    p_kw, q_kvar : (agent, phase) one scenario.
    agents : indices of the agents to differentiate by (default: all).

    Returns
    -------
    dv_dp : (bus, phase, agent) pu per kW; NaN if the scenario did not converge.
    v_pu : (bus, phase) the solved voltage magnitudes.
    """
    model = feeder.model
    if np.shape(p_kw) != (feeder.n_agent, 3):
        raise SolverError(f"voltage_sensitivity takes one scenario: (agent={feeder.n_agent}, phase=3)")
    _, p, q = _checked_powers(feeder, p_kw, q_kvar)
    agents = np.arange(feeder.n_agent) if agents is None else np.atleast_1d(np.asarray(agents, int))
    s_l = _load_node_powers(model, p, q)
    v_l, conv, _ = solve_load_nodes(model, s_l, tol=tol)
    nb, nl = model.n_bus, model.n_load_nodes
    if not conv[0]:
        return np.full((nb, 3, len(agents)), np.nan), np.full((nb, 3), np.nan)
    v, s = v_l[0], s_l[0]
    z = model.z_ll
    jac = _real_jacobian(z, s, v)
    # dS at the load nodes for 1 kW on each agent, split over its connected phases
    split = (feeder.agent_phases / feeder.agent_phases.sum(axis=1, keepdims=True)).reshape(-1)
    ds = np.zeros((3 * feeder.n_agent, len(agents)))
    for j, a in enumerate(agents):
        ds[3 * a: 3 * a + 3, j] = split[3 * a: 3 * a + 3]
    ds_l = _load_node_powers(model, ds.T, np.zeros_like(ds.T)).real.T  # (L, agents), pu
    di_s = -ds_l / np.conj(v)[:, None]  # -conj(dS)/conj(V), dS real
    rhs = z @ di_s
    dx = np.linalg.solve(jac, np.concatenate([rhs.real, rhs.imag]))
    dv_l = dx[:nl] + 1j * dx[nl:]
    i_l = -np.conj(s / v)
    di_l = di_s + (np.conj(s) / np.conj(v) ** 2)[:, None] * np.conj(dv_l)
    v_all = model.v0_all + i_l @ model.w_all_t
    dv_all = di_l.T @ model.w_all_t  # (agents, nodes)
    dmag = (np.conj(v_all)[None] * dv_all).real / np.abs(v_all)[None]
    return dmag.T.reshape(nb, 3, len(agents)), np.abs(v_all).reshape(nb, 3)
