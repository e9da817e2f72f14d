"""The network flexibility heuristic: violations, sensitivities, ranked agents, adjustments.

After the aggregator paper (shared/SEEDS.md): for every scenario (a draw at a
half-hour) and every phase with a violation -- a voltage below ``v_min_pu``
or above ``v_max_pu`` at any bus but the source, a line or transformer
current above its rating -- measure how the violated quantity moves with each
agent's active power (``S_a = dq / dP_a``), rank the agents by ``|S_a|``, and
move the most effective ones, in that order and within their bounds
``[p_lb_kw, p_ub_kw]``, until the linearised violation is gone.  The load flow
is then re-run; what is still violated (the same quantity, a different one,
or another phase) goes round again, up to ``max_rounds``.  A scenario still
violated at the end, or whose load flow did not converge, is *unresolved*:
counted and flagged, never hidden.

Every constraint is an affine function of the load-node currents followed by
a magnitude, ``q = |c0 + c . I_L| / scale`` (a bus voltage in pu, or a branch
current in pu of its rating), so one table (:class:`Constraints`) serves
detection, ranking and adjustment.  Two sensitivities are offered:

``"analytic"``
    the linearisation at the solved state, by the adjoint of the load-node
    equations (one fixed point per scenario, as cheap as a load flow);
``"perturb"``
    the paper's method: turn each agent's power up by 10 % (at least 0.01
    kW), re-run the load flow, ``S = dq / dP``; batched through the solver.

Both are pure numpy on arrays whose axis 0 is the scenario.

What causes a violation is shared out with the same sensitivities
(:func:`cause_shares`): each technology of each agent by its power times the
agent's sensitivity, counting what pushes into the violation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from bayesflex.errors import ConfigError
from bayesflex.grid.feeder import Feeder
from bayesflex.grid.loadflow import _checked_powers, _real_jacobian, solve_load_nodes, unit_node_powers
from bayesflex.grid.network import NetworkModel

__all__ = ["Limits", "Constraints", "Assessment", "Adjustment", "constraints", "assess", "resolve_congestion",
           "headroom", "violation_sensitivity", "cause_shares", "VOLTAGE", "LINE", "TRAFO"]

VOLTAGE, LINE, TRAFO = 0, 1, 2
#: pu beyond the limit the adjustment aims for, so that rounding cannot leave a violation
AIM_PU = 1e-4
#: scenarios whose constraint values are formed together (bounds the temporaries)
_ROWS = 1024
#: the paper's step: 10 % of the agent's power, and at least this many kW
PERTURB_MIN_KW = 0.01


@dataclass(frozen=True)
class Limits:
    """Operating limits (UK practice by default: 0.94-1.10 pu, thermal ratings)."""

    v_min_pu: float = 0.94
    v_max_pu: float = 1.10
    loading_max_pu: float = 1.0

    def __post_init__(self):
        if not (0 < self.v_min_pu < self.v_max_pu) or not self.loading_max_pu > 0:
            raise ConfigError(f"limits {self}: need 0 < v_min_pu < v_max_pu and loading_max_pu > 0")


@dataclass(frozen=True, eq=False)
class Constraints:
    """Every monitored quantity ``q = |c0 + I_L @ c_t| / scale`` with ``lo <= q <= hi``.

    ``kind`` is VOLTAGE (distinct bus-phase voltages, source bus excluded),
    LINE (distinct line-end currents) or TRAFO (transformer side currents);
    ``phase`` 0, 1, 2 for a, b, c.  Rows are ordered by phase: phase ``ph``
    is ``slice(phase_start[ph], phase_start[ph + 1])``, voltages first.
    ``v_pos``, ``line_pos``, ``trafo_pos`` give the position in the table of
    the model's ``vmon``, ``line_rows`` and ``trafo_rows`` rows.
    """

    c0: np.ndarray  # (Q,) complex
    c_t: np.ndarray  # (L, Q) complex
    scale: np.ndarray  # (Q,)
    lo: np.ndarray  # (Q,)
    hi: np.ndarray  # (Q,)
    phase: np.ndarray  # (Q,) int
    kind: np.ndarray  # (Q,) int
    phase_start: np.ndarray  # (4,)
    v_stop: np.ndarray  # (3,) end of each phase's voltage rows
    v_pos: np.ndarray
    line_pos: np.ndarray
    trafo_pos: np.ndarray

    @cached_property
    def _c_t32(self):
        return self.c_t.astype(np.complex64)

    @cached_property
    def _c0_32(self):
        return self.c0.astype(np.complex64)

    @cached_property
    def _inv_scale32(self):
        return (1 / self.scale).astype(np.float32)

    def values(self, i_l: np.ndarray) -> np.ndarray:
        """Quantities (n, Q), float32, for load-node currents ``i_l`` (n, L).

        The product runs in single precision: magnitudes carry a relative
        error of ~1e-7 (1e-7 pu on a voltage), far below any limit's meaning;
        sensitivities and adjustments use double precision.
        """
        x = i_l.astype(np.complex64) @ self._c_t32
        x += self._c0_32
        q = x.real**2  # |x| by squares: much faster than np.abs (hypot) on complex64
        q += x.imag**2
        np.sqrt(q, out=q)
        q *= self._inv_scale32
        return q

    def exceedance(self, q: np.ndarray, *, overwrite: bool = False) -> np.ndarray:
        """How far each quantity is beyond its limits (n, Q): > 0 is a violation.
        With ``overwrite``, ``q`` itself becomes the result (no second array)."""
        lo, hi = self.lo.astype(q.dtype), self.hi.astype(q.dtype)
        below = lo - q
        out = q if overwrite else np.empty_like(q)
        np.subtract(q, hi, out=out)
        np.maximum(out, below, out=out)
        return out

    def per_phase(self, ex: np.ndarray) -> np.ndarray:
        """Largest of (n, Q) over each phase's rows: (n, 3)."""
        s = self.phase_start
        return np.stack([ex[:, s[ph]:s[ph + 1]].max(axis=1, initial=-np.inf) for ph in range(3)], axis=1)

    def voltage_rows(self, ph: int) -> slice:
        """The voltage rows of phase ``ph`` (the model's ``vmon`` rows of that phase, in order)."""
        return slice(self.phase_start[ph], self.v_stop[ph])


def constraints(model: NetworkModel, limits: Limits = Limits()) -> Constraints:
    """The constraint table of a network model under ``limits``, built once per
    model and limits (every load flow of a study uses it) and kept with the model."""
    key = ("constraints", limits)
    if key not in model.derived:
        model.derived[key] = _build_constraints(model, limits)
    return model.derived[key]


def _build_constraints(model: NetworkModel, limits: Limits) -> Constraints:
    n_v = len(model.vmon_v0)
    v_phase = np.searchsorted(model.vmon_phase_start, np.arange(n_v), side="right") - 1
    lr = model.line_rows
    l_phase = np.zeros(len(lr.i0_a), int)
    for ph in range(3):
        l_phase[lr.inverse[:, ph]] = ph  # a row shared by phases carries no current
    tr = model.trafo_rows
    n_t = len(tr.i0_a)
    t_phase = np.tile(np.arange(3), n_t // 3)
    t_scale = np.repeat(model.trafo_i_rated_a.reshape(-1), 3)
    inf = np.inf
    kind = np.concatenate([np.full(n_v, VOLTAGE), np.full(len(l_phase), LINE), np.full(n_t, TRAFO)])
    phase = np.concatenate([v_phase, l_phase, t_phase])
    order = np.lexsort((kind, phase))  # by phase, then kind (stable within)
    pos = np.empty_like(order)
    pos[order] = np.arange(len(order))
    start = np.searchsorted(phase[order], np.arange(4))
    return Constraints(
        c0=np.concatenate([model.vmon_v0, lr.i0_a, tr.i0_a])[order],
        c_t=np.ascontiguousarray(np.concatenate([model.vmon_w_t, lr.k_a.T, tr.k_a.T], axis=1)[:, order]),
        scale=np.concatenate([np.ones(n_v), model.line_rating_per_row_a, t_scale])[order],
        lo=np.concatenate([np.full(n_v, limits.v_min_pu), np.full(len(l_phase) + n_t, -inf)])[order],
        hi=np.concatenate([np.full(n_v, limits.v_max_pu),
                           np.full(len(l_phase) + n_t, limits.loading_max_pu)])[order],
        phase=phase[order], kind=kind[order],
        phase_start=start,
        v_stop=start[:3] + np.bincount(v_phase, minlength=3),
        v_pos=pos[:n_v], line_pos=pos[n_v:n_v + len(l_phase)], trafo_pos=pos[n_v + len(l_phase):],
    )


# ----------------------------------------------------------------------------
# state and sensitivities (axis 0 = scenario)
# ----------------------------------------------------------------------------
@dataclass
class _State:
    s_l: np.ndarray  # (n, L) pu
    v_l: np.ndarray  # (n, L) pu, NaN where not converged
    converged: np.ndarray  # (n,)
    iterations: np.ndarray  # (n,)
    ex: np.ndarray  # (n, Q), +inf where not converged
    q: np.ndarray | None = None  # (n, Q) the quantities themselves, NaN where not converged


def _solve(model: NetworkModel, cons: Constraints, p_units: np.ndarray, q_units: np.ndarray,
           keep_values: bool = False) -> _State:
    """Load flow and constraint exceedances for unit powers (n, C) kW/kvar."""
    s_l = unit_node_powers(model, p_units, q_units)
    v_l, conv, its = solve_load_nodes(model, s_l)
    i_l = np.where(conv[:, None], -np.conj(s_l / np.where(conv[:, None], v_l, 1.0)), 0.0)
    n_q = len(cons.c0)
    ex = np.empty((len(i_l), n_q), np.float32)
    q = np.empty_like(ex) if keep_values else None
    for a in range(0, len(i_l), _ROWS):  # bounded temporaries (the complex product is 2x the result)
        b = min(len(i_l), a + _ROWS)
        qa = cons.values(i_l[a:b])
        if keep_values:
            q[a:b] = qa
        ex[a:b] = cons.exceedance(qa, overwrite=True)
    ex[~conv] = np.inf
    if keep_values:
        q[~conv] = np.nan
    return _State(s_l, v_l, conv, its, ex, q)


@dataclass(frozen=True, eq=False)
class Assessment:
    """The network state of a batch of scenarios, from one load flow each.

    Built by :func:`assess`; the heuristic starts from it, and the engine
    reads its per-bus, per-line and per-draw reductions.
    """

    feeder: Feeder
    cons: Constraints
    state: _State
    lead: tuple

    @property
    def converged(self) -> np.ndarray:
        return self.state.converged.reshape(self.lead)

    @property
    def iterations(self) -> np.ndarray:
        return self.state.iterations.reshape(self.lead)

    def bus_v_pu(self) -> tuple[np.ndarray, np.ndarray]:
        """``(buses (M,), v_pu (..., M, phase))`` at every bus but the source bus."""
        m = self.feeder.model
        v = self.state.q[:, self.cons.v_pos[m.vmon_row]]
        return m.vmon_bus, v.reshape(self.lead + v.shape[1:])

    def line_loading_pu(self, lines: np.ndarray | None = None) -> np.ndarray:
        """(..., line): max over ends and phases of current / rating (of ``lines`` if given)."""
        m, c = self.feeder.model, self.cons
        nl = self.feeder.n_line
        lines = np.arange(nl) if lines is None else np.asarray(lines, int)
        inv = m.line_rows.inverse
        rows = np.concatenate([inv[lines], inv[lines + nl]], axis=1)  # (k, 6) rows of each line
        cur = self.state.q[:, c.line_pos] * c.scale[c.line_pos].astype(np.float32)  # amperes per row
        out = cur[:, rows].max(axis=2) / m.line_i_max_a[lines].astype(np.float32)
        return out.reshape(self.lead + (len(lines),))

    def line_overloaded(self, limit_pu: float) -> np.ndarray:
        """(..., line) bool: a line's current exceeds ``limit_pu`` of its rating (NaN: not converged, False).

        A row's value is in pu of the smallest rating among the lines that
        share it, so only lines with a row over the limit need a closer look.
        """
        m, c = self.feeder.model, self.cons
        nl = self.feeder.n_line
        q = self.state.q[:, c.line_pos]
        hot = np.flatnonzero(np.where(np.isnan(q), -np.inf, q).max(axis=0) > limit_pu) \
            if len(q) else np.zeros(0, int)
        out = np.zeros((len(q), nl), bool)
        if hot.size:
            inv = m.line_rows.inverse
            lines = np.flatnonzero(np.isin(inv[:nl], hot).any(axis=1) | np.isin(inv[nl:], hot).any(axis=1))
            out[:, lines] = self.line_loading_pu(lines).reshape(len(q), -1) > limit_pu
        return out.reshape(self.lead + (nl,))

    def loading_max_pu(self) -> np.ndarray:
        """(...,) highest line current / rating."""
        q = self.state.q[:, self.cons.line_pos]
        return (q.max(axis=1) if q.shape[1] else np.zeros(len(q), np.float32)).reshape(self.lead)

    def bus_voltage_counts(self, v_min_pu: float, v_max_pu: float) -> tuple[np.ndarray, np.ndarray]:
        """Counts over the first leading axis (draws) of bus voltages below
        ``v_min_pu`` and above ``v_max_pu``: ``(..., bus, phase)`` without the
        first axis, for every bus (the source bus never counts).  A scenario
        without a load flow counts at every bus.  Works on the distinct rows,
        without forming every bus voltage."""
        m, c, q = self.feeder.model, self.cons, self.state.q
        rest = self.lead[1:]
        bad = (~self.state.converged).reshape(self.lead).sum(axis=0)
        under = np.zeros(rest + (self.feeder.n_bus, 3), np.int64)
        over = np.zeros_like(under)
        for ph in range(3):
            qv = q[:, c.voltage_rows(ph)].reshape(self.lead + (-1,))
            cols = m.vmon_row[:, ph] - m.vmon_phase_start[ph]
            with np.errstate(invalid="ignore"):
                under[..., m.vmon_bus, ph] = (qv < v_min_pu).sum(axis=0)[..., cols] + bad[..., None]
                over[..., m.vmon_bus, ph] = (qv > v_max_pu).sum(axis=0)[..., cols] + bad[..., None]
        return under, over

    def trafo_loading_pu(self) -> np.ndarray:
        """The most loaded transformer's current / rated current (...,)."""
        each = self.trafo_loading_each_pu()
        return each.max(axis=-1) if each.shape[-1] else np.zeros(self.lead)

    def trafo_loading_each_pu(self) -> np.ndarray:
        """Each transformer's highest current / rated current over its phases and sides (..., trafo)."""
        q = self.state.q[:, self.cons.trafo_pos]  # 6 rows per transformer: hv a b c, lv a b c
        return q.reshape(len(q), -1, 6).max(axis=2).reshape(self.lead + (-1,))

    def v_extremes_pu(self) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest bus voltage per phase (..., phase), source bus excluded."""
        c, q = self.cons, self.state.q
        lo, hi = [], []
        for ph in range(3):
            lo.append(q[:, c.voltage_rows(ph)].min(axis=1))
            hi.append(q[:, c.voltage_rows(ph)].max(axis=1))
        return np.stack(lo, 1).reshape(self.lead + (3,)), np.stack(hi, 1).reshape(self.lead + (3,))


def assess(feeder: Feeder, p_kw, q_kvar, *, limits: Limits = Limits()) -> Assessment:
    """Load flow of every scenario and every constraint's value (see :class:`Assessment`)."""
    model = feeder.model
    lead, p, q = _checked_powers(feeder, p_kw, q_kvar)
    cons = constraints(model, limits)
    st = _solve(model, cons, p[:, model.agent_cols], q[:, model.agent_cols], keep_values=True)
    return Assessment(feeder, cons, st, lead)


def _gradient_rows(cons: Constraints, s_l, v_l, k):
    """``w`` (m, L) with ``dq_k = Re(w . dI_L)`` at the solved states."""
    i_l = -np.conj(s_l / v_l)
    c = cons.c_t[:, k].T  # (m, L)
    x = cons.c0[k] + np.einsum("ml,ml->m", i_l, c)
    return (np.conj(x) / (np.abs(x) * cons.scale[k]))[:, None] * c


def _sens_analytic(model: NetworkModel, cons: Constraints, s_l, v_l, k, *, tol=1e-13, max_iter=200):
    """dq_k/dP (pu per kW) at each load node, (m, L), by the adjoint of the load-node equations.

    With ``D = conj(S)/conj(V)^2``, ``dI_L = -dS/conj(V) + D conj(dV)`` and
    ``dV = Z dI_L``.  For ``dq = Re(w . dI_L)`` the adjoint ``lam`` solves
    ``lam = w D + D conj(Z^T lam)`` -- a fixed point that contracts like the load
    flow itself; then ``dq/dS_j = -Re(w_j/conj(V_j) + (Z^H lam)_j / V_j)``.
    Each row stops once its own step is below ``tol`` (the others go on: on a heavily loaded
    feeder a few rows take 100 steps where most take 25); rows whose fixed point stalls are
    solved densely in real form.
    """
    z = model.z_ll
    w = _gradient_rows(cons, s_l, v_l, k)
    d = np.conj(s_l) / np.conj(v_l) ** 2
    a = w * d
    lam = a.copy()
    active = np.arange(len(a))
    for _ in range(max_iter):
        old = lam[active]
        new = a[active] + d[active] * (np.conj(old) @ z)  # rows of Z^T conj(lam)
        step = np.abs(new - old).max(axis=1)
        lam[active] = new
        active = active[~(step <= tol * np.maximum(np.abs(new).max(axis=1), 1e-300))]  # NaN stays: solved below
        if not len(active):
            break
    if len(active):
        rows = active
        jac = _real_jacobian(z, s_l[rows], v_l[rows])
        r = np.concatenate([a[rows].real, a[rows].imag], axis=1)
        lr = np.linalg.solve(np.swapaxes(jac, 1, 2), r[..., None])[..., 0]
        nl = z.shape[0]
        lam[rows] = lr[:, :nl] + 1j * lr[:, nl:]
    zh_lam = lam @ np.conj(z)  # rows of Z^H lam
    return -(np.real(w / np.conj(v_l)) + np.real(zh_lam / v_l)) / model.s_base_kva


def _sens_perturb(model: NetworkModel, cons: Constraints, p_units, q_units, state: _State, rows, k):
    """The paper's sensitivity per unit (m, C): +10 % of the unit's power, re-solve, dq/dP."""
    m_, c_ = len(rows), p_units.shape[1]
    dp = np.maximum(0.1 * np.abs(p_units[rows]), PERTURB_MIN_KW)  # (m, C)
    node = _unit_node(model)
    s = np.repeat(state.s_l[rows][:, None, :], c_, axis=1)  # (m, C, L)
    s[:, np.arange(c_), node] += dp / model.s_base_kva
    v_l, conv, _ = solve_load_nodes(model, s.reshape(m_ * c_, -1))
    kk = np.repeat(k, c_)
    i_l = -np.conj(s.reshape(m_ * c_, -1) / v_l)
    x = cons.c0[kk] + np.einsum("nl,ln->n", i_l, cons.c_t[:, kk])
    q1 = (np.abs(x) / cons.scale[kk]).reshape(m_, c_)
    i0 = -np.conj(state.s_l[rows] / state.v_l[rows])
    x0 = cons.c0[k] + np.einsum("ml,lm->m", i0, cons.c_t[:, k])
    q0 = np.abs(x0) / cons.scale[k]
    out = (q1 - q0[:, None]) / dp
    out[~conv.reshape(m_, c_)] = np.nan
    return out


def _quantity(cons: Constraints, s_l, v_l, k) -> np.ndarray:
    """The value of constraint ``k[i]`` at solved state ``i`` (m,), double precision."""
    i_now = -np.conj(s_l / v_l)
    return np.abs(cons.c0[k] + np.einsum("ml,lm->m", i_now, cons.c_t[:, k])) / cons.scale[k]


def _unit_node(model: NetworkModel) -> np.ndarray:
    """The load node of every unit (connected agent-phase column)."""
    return np.argmax(model.agent_to_load, axis=1)


def _unit_sensitivity(model, cons, method, p_units, q_units, state: _State, rows, k):
    """dq_k/dP per unit (m, C), pu per kW."""
    if method == "analytic":
        return _sens_analytic(model, cons, state.s_l[rows], state.v_l[rows], k)[:, _unit_node(model)]
    if method == "perturb":
        return _sens_perturb(model, cons, p_units, q_units, state, rows, k)
    raise ConfigError(f"sensitivity method {method!r} unknown (allowed: 'analytic', 'perturb')")


def _agent_sensitivity(feeder: Feeder, s_units: np.ndarray) -> np.ndarray:
    """Per agent (m, agent): 1 kW spread over the agent's phases, as its power is."""
    model = feeder.model
    agent_of = model.agent_cols // 3
    n_ph = feeder.agent_phases.sum(axis=1)
    out = np.zeros((len(s_units), feeder.n_agent))
    np.add.at(out.T, agent_of, s_units.T)
    return out / n_ph


def _allocate(s_u, deficit, direction, x, lo, hi):
    """Move the most effective units, in order and within bounds, to gain ``deficit``.

    ``s_u`` (m, C) dq/dP; ``direction`` +1 where q must rise, -1 where it must
    fall.  Returns the power change (m, C), and whether the linearised gain
    could reach the deficit.
    """
    eff = s_u * direction[:, None]  # > 0: raising the unit's power helps
    eff = np.where(np.isfinite(eff), eff, 0.0)
    up = eff > 0
    room = np.where(up, hi - x, x - lo)
    room = np.maximum(room, 0.0)
    gain = np.abs(eff) * room
    order = np.argsort(-np.abs(eff), axis=1, kind="stable")
    g_sorted = np.take_along_axis(gain, order, axis=1)
    before = np.cumsum(g_sorted, axis=1) - g_sorted
    need = (deficit + AIM_PU)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.clip((need - before) / g_sorted, 0.0, 1.0)
    frac[g_sorted <= 0] = 0.0
    used = np.zeros_like(frac)
    np.put_along_axis(used, order, frac, axis=1)
    delta = np.where(up, 1.0, -1.0) * room * used
    return delta, gain.sum(axis=1) >= need[:, 0]


# ----------------------------------------------------------------------------
# the heuristic
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Adjustment:
    """What the heuristic returns; leading dims ``...`` are those of the inputs.

    ``p_kw (..., agent, phase)`` the adjusted positions; ``adjust_up_kw`` /
    ``adjust_down_kw`` (>= 0) the turn-up and turn-down per agent and phase;
    ``rank (..., agent, phase)``: for each phase with a violation at the
    positions given, each agent's rank (1 = most effective) for that phase's
    worst violation, 0 where the phase is not violated; ``sensitivity_pu_per_kw``
    the same agents' dq/dP; ``congested (..., phase)`` at the positions given
    (a scenario whose load flow did not converge is congested on every
    phase); ``exceedance_pu (..., phase)`` the worst exceedance before and
    ``exceedance_after_pu`` after the adjustment (<= 0 is within limits;
    +inf: no converged load flow); ``converged (...)`` of the positions given;
    ``resolved (...)``: within limits after the adjustment, confirmed by a
    load flow (True for scenarios never congested); ``rounds (...)``.
    ``violation_sign (..., phase)``: for the phase's worst violation (the one
    ``rank`` and ``sensitivity_pu_per_kw`` describe), +1 when the quantity is
    above its upper limit (over-voltage, overload), -1 below its lower limit
    (under-voltage), 0 where the phase is not ranked (within limits, no
    converged load flow, or ``rank=False``); ``violation_kind (..., phase)``:
    VOLTAGE, LINE or TRAFO there, -1 elsewhere.  ``target_phase (..., agent,
    phase)``: for each agent-phase the heuristic moved, the phase (0, 1, 2 for
    a, b, c) of the violated quantity it was relieving in the round that moved
    that agent-phase most -- the scenario's worst violation then, whose
    sensitivity to the agent's power on its own phase ranked it; -1 where not
    moved.  Another phase than the agent's own is relief through the coupling
    of the phases (a four-wire feeder's neutral: loading phase a shifts the
    neutral point and so moves the voltages of phases b and c).
    """

    p_kw: np.ndarray
    adjust_up_kw: np.ndarray
    adjust_down_kw: np.ndarray
    rank: np.ndarray
    sensitivity_pu_per_kw: np.ndarray
    congested: np.ndarray
    exceedance_pu: np.ndarray
    exceedance_after_pu: np.ndarray
    converged: np.ndarray
    resolved: np.ndarray
    rounds: np.ndarray
    violation_sign: np.ndarray
    violation_kind: np.ndarray
    target_phase: np.ndarray


def _units(feeder: Feeder, arr, name: str) -> np.ndarray:
    a = np.asarray(arr, float)
    if a.shape[-2:] != (feeder.n_agent, 3):
        raise ConfigError(f"{name} must have shape (..., agent={feeder.n_agent}, phase=3); got {a.shape}")
    return a.reshape(-1, 3 * feeder.n_agent)[:, feeder.model.agent_cols]


def resolve_congestion(
    feeder: Feeder,
    p_kw: np.ndarray,
    q_kvar: np.ndarray,
    p_lb_kw: np.ndarray,
    p_ub_kw: np.ndarray,
    *,
    limits: Limits = Limits(),
    method: str = "analytic",
    max_rounds: int = 12,
    rank: bool = True,
    start: Assessment | None = None,
) -> Adjustment:
    """Run the heuristic on every scenario of a batch.

    Parameters
    ----------
    p_kw, q_kvar, p_lb_kw, p_ub_kw : (..., agent, phase)
        Positions, reactive power and flexibility bounds, kW/kvar, load
        positive.  Bounds that do not contain the position are widened to it.
    limits : Limits
    method : {"analytic", "perturb"}
        How sensitivities are measured (module docstring).
    max_rounds : int
        Adjust / re-solve rounds before a scenario is declared unresolved.
    rank : bool
        Also rank the agents on every violated phase (one sensitivity per
        violated phase; skipped when only the adjustment is wanted).
    start : Assessment, optional
        The load flow of the positions (:func:`assess`, same limits), if the
        caller has it already.
    """
    model = feeder.model
    lead, p, q = _checked_powers(feeder, p_kw, q_kvar)
    x0, qu = p[:, model.agent_cols], q[:, model.agent_cols]
    lo = np.minimum(_units(feeder, p_lb_kw, "p_lb_kw"), x0)
    hi = np.maximum(_units(feeder, p_ub_kw, "p_ub_kw"), x0)
    n = len(x0)
    if start is not None:
        cons, st = start.cons, start.state
    else:
        cons = constraints(model, limits)
        st = _solve(model, cons, x0, qu)
    worst0 = cons.per_phase(st.ex)
    congested = worst0 > 0
    ranks = np.zeros((n, feeder.n_agent, 3), np.int16)
    sens = np.zeros((n, feeder.n_agent, 3), np.float32)
    sign = np.zeros((n, 3), np.int8)
    kind = np.full((n, 3), -1, np.int8)
    if rank:
        for ph in range(3):
            rows = np.flatnonzero(congested[:, ph] & st.converged)
            if rows.size == 0:
                continue
            a, b = cons.phase_start[ph], cons.phase_start[ph + 1]
            k = a + np.argmax(st.ex[rows, a:b], axis=1)
            s_a = _agent_sensitivity(feeder, _unit_sensitivity(model, cons, method, x0, qu, st, rows, k))
            order = np.argsort(-np.abs(np.nan_to_num(s_a)), axis=1, kind="stable")
            r = np.empty_like(order)
            np.put_along_axis(r, order, np.arange(1, feeder.n_agent + 1)[None], axis=1)
            ranks[rows, :, ph] = r
            sens[rows, :, ph] = s_a
            # which side: the nearer limit (robust to a quantity a rounding away from its limit)
            above = _quantity(cons, st.s_l[rows], st.v_l[rows], k) > (cons.lo[k] + cons.hi[k]) / 2
            sign[rows, ph] = np.where(above, 1, -1)
            kind[rows, ph] = cons.kind[k]
    x = x0.copy()
    ex = st.ex.copy()
    rounds = np.zeros(n, np.int64)
    active = np.flatnonzero(st.converged & (st.ex.max(axis=1, initial=-np.inf) > 0))
    v_l, s_l = st.v_l.copy(), st.s_l.copy()
    target = np.full(x0.shape, -1, np.int8)  # (n, C) phase of the violation each unit's largest move relieved
    largest = np.zeros(x0.shape)
    for _ in range(max_rounds):
        if active.size == 0:
            break
        sub = _State(s_l[active], v_l[active], np.ones(active.size, bool), None, ex[active])
        k = np.argmax(sub.ex, axis=1)
        deficit = sub.ex[np.arange(active.size), k]
        q_now = _quantity(cons, sub.s_l, sub.v_l, k)
        direction = np.where(q_now < cons.lo[k], 1.0, -1.0)
        s_u = _unit_sensitivity(model, cons, method, x[active], qu[active], sub, np.arange(active.size), k)
        delta, _ = _allocate(s_u, deficit, direction, x[active], lo[active], hi[active])
        moved = np.abs(delta).max(axis=1, initial=0.0) > 0
        more = np.abs(delta) > largest[active]
        target[active] = np.where(more, cons.phase[k].astype(np.int8)[:, None], target[active])
        largest[active] = np.maximum(largest[active], np.abs(delta))
        x[active] += delta
        rounds[active] += 1
        new = _solve(model, cons, x[active], qu[active])
        ex[active], v_l[active], s_l[active] = new.ex, new.v_l, new.s_l
        still = new.converged & (new.ex.max(axis=1) > 0) & moved
        active = active[still]
    # confirmation: every adjusted scenario's final state comes from a load flow above
    after = cons.per_phase(ex)
    resolved = st.converged & (after.max(axis=1) <= 0)
    d = x - x0
    full = np.zeros((n, 3 * feeder.n_agent))

    def back(u):  # units -> (..., agent, phase)
        out = full.copy()
        out[:, model.agent_cols] = u
        return out.reshape(lead + (feeder.n_agent, 3))

    congested_any = congested | ~st.converged[:, None]
    target_all = np.full((n, 3 * feeder.n_agent), -1, np.int8)
    target_all[:, model.agent_cols] = target
    return Adjustment(
        p_kw=back(x), adjust_up_kw=back(np.maximum(d, 0)), adjust_down_kw=back(np.maximum(-d, 0)),
        rank=ranks.reshape(lead + (feeder.n_agent, 3)),
        sensitivity_pu_per_kw=sens.reshape(lead + (feeder.n_agent, 3)),
        congested=congested_any.reshape(lead + (3,)),
        exceedance_pu=worst0.reshape(lead + (3,)), exceedance_after_pu=after.reshape(lead + (3,)),
        converged=st.converged.reshape(lead), resolved=resolved.reshape(lead), rounds=rounds.reshape(lead),
        violation_sign=sign.reshape(lead + (3,)), violation_kind=kind.reshape(lead + (3,)),
        target_phase=target_all.reshape(lead + (feeder.n_agent, 3)),
    )


def headroom(
    feeder: Feeder,
    p_kw: np.ndarray,
    q_kvar: np.ndarray,
    p_lb_kw: np.ndarray,
    p_ub_kw: np.ndarray,
    *,
    limits: Limits = Limits(),
    method: str = "analytic",
    max_rounds: int = 12,
    secure: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Turn-up and turn-down each agent can deliver *together* from secure positions.

    Turn-up: every agent goes to ``p_ub_kw``; the heuristic then takes back, from
    the most effective agents first, whatever breaks a limit, moving no agent
    below its position ``p_kw``.  What is left, ``x - p_kw``, is the headroom
    up: kW each agent can add, all at once, before a limit is reached, and
    confirmed by the load flow of the final state.  Turn-down the same way
    towards ``p_lb_kw``.  Per-agent headroom measured one agent at a time
    would overstate what a portfolio can deliver, so it is not what we return.

    ``p_kw`` should be within limits (the heuristic's adjusted positions);
    scenarios that are not, or whose product cannot be made secure, get zero
    headroom and ``ok=False``.  ``secure (...)``, if given, says which
    scenarios are within limits at ``p_kw`` (``Adjustment.resolved``); else a
    load flow finds out.

    Returns ``up_kw, down_kw (..., agent, phase)`` (>= 0) and ``ok_up, ok_down (...)``.
    """
    p = np.asarray(p_kw, float)
    lb, ub = np.minimum(np.asarray(p_lb_kw, float), p), np.maximum(np.asarray(p_ub_kw, float), p)
    res_up = resolve_congestion(feeder, ub, q_kvar, p, ub, limits=limits, method=method,
                                max_rounds=max_rounds, rank=False)
    res_dn = resolve_congestion(feeder, lb, q_kvar, lb, p, limits=limits, method=method,
                                max_rounds=max_rounds, rank=False)
    base_ok = _secure(feeder, p, q_kvar, limits) if secure is None else np.asarray(secure, bool)
    ok_up = res_up.resolved & base_ok
    ok_dn = res_dn.resolved & base_ok
    up = np.where(ok_up[..., None, None], np.maximum(res_up.p_kw - p, 0.0), 0.0)
    down = np.where(ok_dn[..., None, None], np.maximum(p - res_dn.p_kw, 0.0), 0.0)
    return up, down, ok_up, ok_dn


def _secure(feeder: Feeder, p_kw, q_kvar, limits: Limits) -> np.ndarray:
    lead, p, q = _checked_powers(feeder, p_kw, q_kvar)
    model = feeder.model
    st = _solve(model, constraints(model, limits), p[:, model.agent_cols], q[:, model.agent_cols])
    return (st.converged & (st.ex.max(axis=1) <= 0)).reshape(lead)


def violation_sensitivity(feeder: Feeder, p_kw, q_kvar, *, limits: Limits = Limits(), method: str = "analytic"):
    """Sensitivity of each scenario's worst violated quantity to every agent.

    Returns ``s (..., agent)`` in pu (voltage) or pu of rating (current) per kW,
    ``kind (...)`` (VOLTAGE/LINE/TRAFO, -1 without a violation) and
    ``phase (...)``; NaN rows where nothing is violated or the load flow did
    not converge.
    """
    model = feeder.model
    lead, p, q = _checked_powers(feeder, p_kw, q_kvar)
    cons = constraints(model, limits)
    pu, qu = p[:, model.agent_cols], q[:, model.agent_cols]
    st = _solve(model, cons, pu, qu)
    rows = np.flatnonzero(st.converged & (st.ex.max(axis=1) > 0))
    out = np.full((len(p), feeder.n_agent), np.nan)
    kind = np.full(len(p), -1)
    phase = np.full(len(p), -1)
    if rows.size:
        k = np.argmax(st.ex[rows], axis=1)
        out[rows] = _agent_sensitivity(feeder, _unit_sensitivity(model, cons, method, pu, qu, st, rows, k))
        kind[rows], phase[rows] = cons.kind[k], cons.phase[k]
    return out.reshape(lead + (feeder.n_agent,)), kind.reshape(lead), phase.reshape(lead)


def cause_shares(sensitivity_pu_per_kw: np.ndarray, violation_sign: np.ndarray,
                 components_kw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Attribute one phase's worst violation to each agent's technologies.

    Parameters
    ----------
    sensitivity_pu_per_kw : (..., agent)
        ``S_a = dq/dP_a`` of the violated quantity ``q`` (pu of voltage or of a
        rating) to agent ``a``'s active power spread over its phases as its
        power is: :attr:`Adjustment.sensitivity_pu_per_kw` of that phase.
    violation_sign : (...,)
        +1 where ``q`` is above its upper limit, -1 below its lower limit, 0
        where nothing is to be attributed (:attr:`Adjustment.violation_sign`).
    components_kw : (..., technology, agent)
        Each technology's active power per agent, summed over the agent's
        phases [kW, load positive, generation negative]; the technologies
        should add up to the agent's power.

    Returns
    -------
    push, relief : (..., technology, agent)
        ``c = sign * S_a * P_ka`` is how far technology ``k`` of agent ``a``
        moves ``q`` into the violation, to first order, from the no-load state
        (``P = 0``).  ``push = max(c, 0) / D`` and ``relief = min(c, 0) / D``
        with ``D`` the sum of every positive ``c``: ``push`` >= 0 sums to 1
        over technologies and agents (the violation's causes), ``relief`` <= 0
        says how much of that push the components moving ``q`` away from the
        violation take back (PV raising an evening under-voltage, baseload
        under a midday PV over-voltage), on the same scale.  Where nothing is
        to be attributed, nothing pushes (``D = 0``), or a sensitivity of an
        agent with power is not finite, both are NaN.

    Notes
    -----
    Why this attribution.  ``sum_k c_k = sign * sum_a S_a P_a`` is the
    linearised change of ``q`` from no load to the state found, taken along
    the tangent at that state (Euler's decomposition of a function by its
    gradient), so the technologies' parts add up to the whole without an
    order of removal, and an agent's part uses the very sensitivity by which
    the heuristic ranks and moves it: the causes and the cure agree.  It is
    first order: where ``q`` bends strongly between no load and the state
    found (near voltage collapse) the parts are a tangent's, not a path
    integral's (Aumann-Shapley would need several load flows per congested
    scenario).  A violation already present at no load (a high source
    voltage) is not anybody's and is not shown; only what loads and
    generators add to it is shared out.  On a four-wire feeder a load on
    one phase can raise another phase's voltage through the neutral: such
    a load relieves that phase's under-voltage (and may cause its
    over-voltage), and shows as such.  Reactive power is not attributed:
    the sensitivities are to active power (the baseload's reactive power,
    power factor ~0.95, moves an LV cable's voltage by roughly a tenth of
    what its active power does).
    """
    s = np.asarray(sensitivity_pu_per_kw, float)
    sign = np.asarray(violation_sign, float)
    p = np.asarray(components_kw, float)
    with np.errstate(invalid="ignore"):
        c = np.where(p == 0, 0.0, (sign[..., None] * s)[..., None, :] * p)
    push = np.maximum(c, 0.0)
    total = push.sum(axis=(-2, -1))
    ok = (sign != 0) & (total > 0) & np.isfinite(c).all(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(ok, 1.0 / total, np.nan)[..., None, None]
    return push * scale, np.minimum(c, 0.0) * scale
