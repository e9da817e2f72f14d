"""The aggregator's cost-optimal schedules: stage 1 and stage 2 of the DSO-aggregator coordination.

Each controllable device is a small linear programme over the horizon
(``dt_h`` hours per step; power in kW, > 0 drawn from the grid):

* :class:`Battery` -- the paper's linear state of charge
  ``soc_min <= soc0 + dt/E * sum_{t<=s} B_t <= soc_max`` for every ``s``,
  ``|B_t| <= power_kw``, and the day ends no emptier than it began;
* :class:`HeatPump` -- a first-order thermal model of the house,
  ``T_t = T_{t-1} + dt/C (COP_t P_t - H (T_{t-1} - T_out,t))``, indoor
  temperature kept in the comfort band, ``0 <= P_t <= rating``;
* :class:`EVCharger` -- charging only while the car is home, the energy
  needed delivered by the departure step.

The portfolio minimises its energy cost ``sum_t price_t * dt * P_T,t``
(``P_T = sum_a P_a``: kWh bought minus kWh sold at the same price) plus, once
it holds a market position ``commitment_kw``, the imbalance penalty
``sum_t imbalance_price_t * dt * |P_T,t - commitment_t|``.  Stage 1 may limit
the portfolio's power per step; in stage 2 the DSO returns

* a limit and a floor on the portfolio's power per step (``limit_kw``,
  ``floor_portfolio_kw``), and
* a cap and a floor on each device's power per step (``cap_kw``,
  ``floor_kw``) -- bounds on the device's own LP variables; and
* a limit and a floor on the summed power of a group of devices per step
  (``groups``; e.g. the aggregator's devices under one transformer phase),
  which leave the aggregator to choose which of them moves.

Two ways to the same optimum:

``"central"``
    one LP with every device (HiGHS through ``scipy.optimize.linprog``);
``"distributed"``
    Dantzig-Wolfe decomposition: each agent solves only its own LP (its caps
    and floors included), for prices the aggregator's small master LP sends
    it -- the market price less the shadow prices of the portfolio rows
    (limit, floor, commitment) and of its groups' rows, which are the only
    rows linking the agents;
    the imbalance deviations live in the master.  Proposals are combined by
    the master until no agent can lower the portfolio cost any more.  It
    reaches the central optimum to the LP tolerance (a test).

:func:`step_bounds` gives, around a schedule, the range each device's power
could take at one step alone, the rest of its schedule held.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

from bayesflex.errors import ConfigError, SolverError

__all__ = ["Battery", "EVCharger", "HeatPump", "Schedule", "schedule", "step_bounds"]


@dataclass(frozen=True)
class Battery:
    agent: str
    capacity_kwh: float
    power_kw: float
    soc0: float = 0.5
    soc_min: float = 0.1
    soc_max: float = 0.95


@dataclass(frozen=True)
class HeatPump:
    agent: str
    rating_kw: float  # electrical
    cop: float | tuple[float, ...]  # per step or constant
    c_kwh_per_k: float  # thermal capacity of the house
    h_kw_per_k: float  # heat loss coefficient
    t_out_c: tuple[float, ...]  # outdoor temperature per step
    t_init_c: float = 20.0
    t_min_c: float | tuple[float, ...] = 19.0
    t_max_c: float | tuple[float, ...] = 22.0


@dataclass(frozen=True)
class EVCharger:
    agent: str
    power_kw: float
    energy_kwh: float  # needed by the departure step
    home: tuple[bool, ...]  # per step: the car is plugged in at home
    departure: int  # the energy must be in before this step
    efficiency: float = 0.9


@dataclass(frozen=True)
class _Block:
    """One device's LP: A_ub x <= b_ub, A_eq x = b_eq, bounds; power = P x (kW per step).
    Its cost is that of its power, ``dt * price @ (P x)``."""

    a_ub: sp.csr_matrix
    b_ub: np.ndarray
    a_eq: sp.csr_matrix
    b_eq: np.ndarray
    bounds: np.ndarray  # (n, 2)
    power: sp.csr_matrix  # (T, n)


@dataclass(frozen=True)
class Schedule:
    """Optimal schedules.

    ``p_kw``: power per (device, step), kW.  ``cost``: the energy cost alone,
    ``dt * price @ portfolio_kw`` (currency of ``price``).  ``imbalance_cost``:
    the penalty for deviating from the commitment,
    ``dt * imbalance_price @ |shortfall_kw|`` (0 without one); the LP minimises
    :attr:`total_cost` = ``cost + imbalance_cost``.  ``shortfall_kw``: per step,
    the portfolio power less the commitment (kW; 0 where there is none).
    ``shadow_price``: per step, of the portfolio limit (currency per kWh, <= 0:
    what one more kW of limit would save); ``floor_shadow_price``: of the
    portfolio floor (>= 0: what one kW less floor would save).
    ``iterations``: master rounds of the distributed method (1 for central).
    """

    agents: tuple[str, ...]
    p_kw: np.ndarray
    cost: float
    imbalance_cost: float
    shortfall_kw: np.ndarray
    shadow_price: np.ndarray
    floor_shadow_price: np.ndarray
    method: str
    iterations: int = 1

    @property
    def portfolio_kw(self) -> np.ndarray:
        return self.p_kw.sum(axis=0)

    @property
    def total_cost(self) -> float:
        return self.cost + self.imbalance_cost


def _steps(v, n: int, name: str) -> np.ndarray:
    a = np.broadcast_to(np.asarray(v, float), (n,)) if np.ndim(v) == 0 else np.asarray(v, float)
    if a.shape != (n,):
        raise ConfigError(f"{name}: needs one value per step ({n}), got {a.shape[0] if a.ndim else 1}")
    return a


def _battery(d: Battery, n: int, dt: float) -> _Block:
    if d.capacity_kwh <= 0 or d.power_kw <= 0 or not (0 <= d.soc_min <= d.soc0 <= d.soc_max <= 1):
        raise ConfigError(f"battery of {d.agent!r}: need capacity_kwh > 0, power_kw > 0 and "
                          f"0 <= soc_min <= soc0 <= soc_max <= 1")
    cum = sp.csr_matrix(np.tril(np.ones((n, n))) * dt / d.capacity_kwh)
    a_ub = sp.vstack([cum, -cum, -cum[-1:]]).tocsr()  # SoC <= max, SoC >= min, end SoC >= start
    b_ub = np.concatenate([np.full(n, d.soc_max - d.soc0), np.full(n, d.soc0 - d.soc_min), [0.0]])
    return _Block(a_ub, b_ub, sp.csr_matrix((0, n)), np.zeros(0),
                  np.tile([-d.power_kw, d.power_kw], (n, 1)), sp.identity(n, format="csr"))


def _heat_pump(d: HeatPump, n: int, dt: float) -> _Block:
    if d.rating_kw <= 0 or d.c_kwh_per_k <= 0 or d.h_kw_per_k < 0:
        raise ConfigError(f"heat pump of {d.agent!r}: need rating_kw > 0, c_kwh_per_k > 0, h_kw_per_k >= 0")
    cop = _steps(d.cop, n, f"heat pump of {d.agent!r}: cop")
    t_out = _steps(d.t_out_c, n, f"heat pump of {d.agent!r}: t_out_c")
    lo = _steps(d.t_min_c, n, f"heat pump of {d.agent!r}: t_min_c")
    hi = _steps(d.t_max_c, n, f"heat pump of {d.agent!r}: t_max_c")
    # x = [P_1..P_n, T_1..T_n]; T_t - (1 - dt H / C) T_{t-1} - dt COP_t / C P_t = dt H / C T_out,t
    k = dt / d.c_kwh_per_k
    a = 1 - k * d.h_kw_per_k
    eq = sp.lil_matrix((n, 2 * n))
    b = k * d.h_kw_per_k * t_out
    for t in range(n):
        eq[t, n + t] = 1.0
        eq[t, t] = -k * cop[t]
        if t:
            eq[t, n + t - 1] = -a
        else:
            b = b.copy()
            b[0] += a * d.t_init_c
    bounds = np.vstack([np.tile([0.0, d.rating_kw], (n, 1)), np.c_[lo, hi]])
    power = sp.hstack([sp.identity(n), sp.csr_matrix((n, n))]).tocsr()
    return _Block(sp.csr_matrix((0, 2 * n)), np.zeros(0), eq.tocsr(), b, bounds, power)


def _ev(d: EVCharger, n: int, dt: float) -> _Block:
    home = np.asarray(d.home, bool)
    if home.shape != (n,):
        raise ConfigError(f"EV of {d.agent!r}: home needs one flag per step ({n})")
    if not (0 < d.departure <= n) or d.power_kw <= 0 or d.energy_kwh < 0 or not 0 < d.efficiency <= 1:
        raise ConfigError(f"EV of {d.agent!r}: need 0 < departure <= {n}, power_kw > 0, energy_kwh >= 0, "
                          f"0 < efficiency <= 1")
    row = np.zeros((1, n))
    row[0, :d.departure] = -dt * d.efficiency * home[:d.departure]
    bounds = np.c_[np.zeros(n), d.power_kw * home]
    return _Block(sp.csr_matrix(row), np.array([-d.energy_kwh]), sp.csr_matrix((0, n)), np.zeros(0),
                  bounds, sp.identity(n, format="csr"))


_BUILD = {Battery: _battery, HeatPump: _heat_pump, EVCharger: _ev}


def check_device(d) -> None:
    """A clear error unless ``d`` is one of the devices this module schedules."""
    if type(d) not in _BUILD:
        raise ConfigError(f"unknown device {d!r} (allowed: Battery, HeatPump, EVCharger)")


def _blocks(devices, n: int, dt: float) -> list[_Block]:
    for d in devices:
        check_device(d)
    return [_BUILD[type(d)](d, n, dt) for d in devices]


class _Infeasible(SolverError):
    """No schedule meets the constraints (``schedule`` then looks for a device to blame)."""


def _solve(c, a_ub, b_ub, a_eq, b_eq, bounds, what: str, method: str = "highs"):
    res = linprog(c, A_ub=a_ub if a_ub.shape[0] else None, b_ub=b_ub if a_ub.shape[0] else None,
                  A_eq=a_eq if a_eq.shape[0] else None, b_eq=b_eq if a_eq.shape[0] else None,
                  bounds=bounds, method=method)
    if res.status == 2:
        raise _Infeasible(f"{what}: no feasible schedule (HiGHS: {res.message})")
    if res.status != 0:
        raise SolverError(f"{what}: the LP was not solved (HiGHS status {res.status}: {res.message})")
    return res


def _feasible(b: _Block) -> bool:
    try:
        _solve(np.zeros(b.bounds.shape[0]), b.a_ub, b.b_ub, b.a_eq, b.b_eq, b.bounds, "")
    except _Infeasible:
        return False
    return True


def _per_device(v, m: int, n: int, name: str, none: float) -> np.ndarray:
    """A (device, step) array in kW; NaN (and ``none``) mean no bound."""
    if v is None:
        return np.full((m, n), none)
    a = np.asarray(v, float)
    if a.shape != (m, n):
        raise ConfigError(f"{name}: needs one value per (device, step) = ({m}, {n}), got shape {a.shape}")
    return np.where(np.isnan(a), none, a)


def _tighten(b: _Block, agent: str, floor: np.ndarray, cap: np.ndarray) -> _Block:
    """The block with its power (its first n variables) kept in [floor, cap] kW per step."""
    n = len(cap)
    bounds = b.bounds.copy()
    lo, hi = np.maximum(bounds[:n, 0], floor), np.minimum(bounds[:n, 1], cap)
    bad = np.flatnonzero(lo > hi + 1e-9)
    if bad.size:
        t = bad[0]
        raise SolverError(f"agent {agent!r}, step {t}: no feasible schedule: its floor {floor[t]:g} kW and cap "
                          f"{cap[t]:g} kW leave no power in its own range [{bounds[t, 0]:g}, {bounds[t, 1]:g}] kW")
    bounds[:n, 0], bounds[:n, 1] = lo, np.maximum(hi, lo)
    return replace(b, bounds=bounds)


def _culprit(raw, agents, floor, cap) -> str | None:
    """The first device whose own LP is infeasible under its bounds, and the first step whose
    bounds (with those before) make it so -- or None if each device alone is feasible."""
    for b, agent, lo, hi in zip(raw, agents, floor, cap):
        if _feasible(_tighten(b, agent, lo, hi)):
            continue
        if not _feasible(b):
            return f"agent {agent!r} cannot meet its own constraints"
        ok, bad = 0, len(hi)  # bounds on the steps before `ok` leave a schedule, before `bad` none
        while bad - ok > 1:
            mid = (ok + bad) // 2
            before = np.arange(len(hi)) < mid
            if _feasible(_tighten(b, agent, np.where(before, lo, -np.inf), np.where(before, hi, np.inf))):
                ok = mid
            else:
                bad = mid
        return f"agent {agent!r}, step {bad - 1}: its caps and floors up to this step leave its own constraints unmet"
    return None


@dataclass(frozen=True)
class _Link:
    """The portfolio rows, on P_T (kW per step): ``g @ P_T <= h`` (the limit's rows at ``lim``, then
    the floor's at ``flo``) and ``e @ P_T - d+ + d- = commit`` at the steps ``com``, each deviation
    (d+, d- >= 0, kW) costing ``dev`` (= dt * imbalance price) per kW."""

    g: sp.csr_matrix
    h: np.ndarray
    lim: np.ndarray
    flo: np.ndarray
    e: sp.csr_matrix
    commit: np.ndarray
    com: np.ndarray
    dev: np.ndarray


def _groups(groups, m: int, n: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """The group rows ``a @ P <= h`` on the devices' powers stacked device by device (``P[i * n + t]``):
    one row per finite limit (+1 on the group's devices) and floor (-1, ``h = -floor``)."""
    rows, cols, vals, h = [], [], [], []
    for k, g in enumerate(groups or ()):
        try:
            idx, limit, floor = g
        except (TypeError, ValueError):
            raise ConfigError(f"groups[{k}]: give (device indices, limit_kw, floor_kw), each limit and floor one "
                              f"value per step ({n}; NaN or inf: none)") from None
        idx = np.unique(np.asarray(idx, np.int64).ravel())
        if not idx.size or idx.min() < 0 or idx.max() >= m:
            raise ConfigError(f"groups[{k}]: device indices {idx.tolist()} must lie in 0 .. {m - 1}")
        for sign, bound, name in ((1.0, limit, "limit_kw"), (-1.0, floor, "floor_kw")):
            v = _steps(np.nan if bound is None else bound, n, f"groups[{k}] {name}")
            for t in np.flatnonzero(np.isfinite(v)):
                r = len(h)
                rows += [r] * idx.size
                cols += list(idx * n + t)
                vals += [sign] * idx.size
                h.append(sign * v[t])
    return sp.csr_matrix((vals, (rows, cols)), shape=(len(h), m * n)), np.asarray(h, float)


def _link(n: int, dt: float, limit, floor, commitment, imbalance) -> _Link:
    """The portfolio rows from per-step arrays (NaN or +-inf: none at that step)."""
    lim, flo, com = (np.flatnonzero(np.isfinite(v)) for v in (limit, floor, commitment))
    eye = sp.identity(n, format="csr")
    return _Link(sp.vstack([eye[lim], -eye[flo]]).tocsr(), np.r_[limit[lim], -floor[flo]], lim, flo,
                 eye[com], commitment[com], com, dt * imbalance[com])


def _result(agents, p, price, dt, link: _Link, y_g, method, iterations=1) -> Schedule:
    """The schedule from the devices' powers ``p`` (device, step) and the duals of the ``g`` rows."""
    n = len(price)
    total = p.sum(axis=0)
    short, shadow, floor_shadow = np.zeros(n), np.zeros(n), np.zeros(n)
    short[link.com] = total[link.com] - link.commit
    shadow[link.lim] = y_g[:link.lim.size] / dt
    floor_shadow[link.flo] = -y_g[link.lim.size:] / dt
    return Schedule(agents, p, float(dt * price @ total), float(link.dev @ np.abs(short[link.com])), short,
                    shadow, floor_shadow, method, iterations)


def schedule(devices, price_per_kwh, *, dt_h: float = 0.5, limit_kw=None, floor_portfolio_kw=None,
             cap_kw=None, floor_kw=None, commitment_kw=None, imbalance_price_per_kwh=None,
             method: str = "central", tol: float = 1e-7, max_iter: int = 500, groups=None) -> Schedule:
    """Cost-optimal schedules of ``devices`` against ``price_per_kwh`` (currency per kWh, one per step).

    ``limit_kw``, ``floor_portfolio_kw`` (kW per step): the portfolio's power may not exceed the limit
    nor fall below the floor.  ``cap_kw``, ``floor_kw`` (kW per (device, step)): the same for each
    device's power.  ``commitment_kw`` (kW per step): the portfolio power sold or bought in the market;
    every kW off it costs ``imbalance_price_per_kwh`` (currency per kWh, scalar or per step, >= 0;
    default twice the largest |price|) per hour.  ``groups``: ``(device indices, limit_kw,
    floor_kw)`` each, the summed power of those devices kept within limit and floor per step.  NaN
    or +-inf anywhere means no bound (or no commitment) there.  ``method``: "central" or "distributed" (module docstring); ``tol``: the
    distributed method stops when the master's cost is within ``tol`` (relative) of its lower bound.

    Raises :class:`SolverError` if no schedule meets the constraints, naming the agent and step when
    one device's own bounds are to blame.
    """
    price = np.asarray(price_per_kwh, float)
    n, m = len(price), len(devices)
    if not m:
        raise ConfigError("schedule needs at least one device")
    raw = _blocks(devices, n, dt_h)
    agents = tuple(d.agent for d in devices)
    floor = _per_device(floor_kw, m, n, "floor_kw", -np.inf)
    cap = _per_device(cap_kw, m, n, "cap_kw", np.inf)
    blocks = [_tighten(b, a, lo, hi) for b, a, lo, hi in zip(raw, agents, floor, cap)]
    if imbalance_price_per_kwh is None:
        imbalance_price_per_kwh = 2 * np.abs(price).max()
    imbalance = _steps(imbalance_price_per_kwh, n, "imbalance_price_per_kwh")
    if not np.all((imbalance >= 0) & np.isfinite(imbalance)):
        raise ConfigError("imbalance_price_per_kwh: needs finite values >= 0")
    link = _link(n, dt_h, *(_steps(np.nan if v is None else v, n, name) for v, name in
                             [(limit_kw, "limit_kw"), (floor_portfolio_kw, "floor_portfolio_kw"),
                              (commitment_kw, "commitment_kw")]), imbalance)
    grp = _groups(groups, m, n)
    if method not in ("central", "distributed"):
        raise ConfigError(f"method {method!r} unknown (allowed: 'central', 'distributed')")
    try:
        if method == "central":
            return _central(blocks, price, dt_h, link, agents, grp)
        return _dantzig_wolfe(blocks, price, dt_h, link, agents, grp, tol=tol, max_iter=max_iter)
    except _Infeasible as e:
        why = _culprit(raw, agents, floor, cap)
        if why is None:
            raise
        raise SolverError(f"portfolio schedule: no feasible schedule: {why}") from e


def _central(blocks, price, dt, link: _Link, agents, grp) -> Schedule:
    """One LP: x = [every device's variables, d+, d-]."""
    q = link.commit.size
    power = sp.hstack([b.power for b in blocks]).tocsr()  # (step, variable)

    def pad(a):  # no coefficients on the deviations
        return sp.hstack([a, sp.csr_matrix((a.shape[0], 2 * q))])

    eye = sp.identity(q)
    c = np.concatenate([dt * (power.T @ price), link.dev, link.dev])
    group_a, group_h = grp
    a_ub = pad(sp.vstack([sp.block_diag([b.a_ub for b in blocks]),
                          group_a @ sp.block_diag([b.power for b in blocks]), link.g @ power])).tocsr()
    b_ub = np.concatenate([b.b_ub for b in blocks] + [group_h, link.h])
    a_eq = sp.vstack([pad(sp.block_diag([b.a_eq for b in blocks])),
                      sp.hstack([link.e @ power, -eye, eye])]).tocsr()
    b_eq = np.concatenate([b.b_eq for b in blocks] + [link.commit])
    bounds = np.vstack([b.bounds for b in blocks] + [np.tile([0.0, np.inf], (2 * q, 1))])
    res = _solve(c, a_ub, b_ub, a_eq, b_eq, bounds, "portfolio schedule")
    p, i = [], 0
    for b in blocks:
        k = b.bounds.shape[0]
        p.append(b.power @ res.x[i:i + k])
        i += k
    y_g = res.ineqlin.marginals[len(b_ub) - link.h.size:]  # the portfolio rows come last
    return _result(agents, np.array(p), price, dt, link, y_g, "central")


_MASTER = "highs-ipm"  # its duals, nearer the centre of the optimal face, need fewer rounds


def _dantzig_wolfe(blocks, price, dt, link: _Link, agents, grp, *, tol: float, max_iter: int,
                   smoothing: float = 0.7) -> Schedule:
    """Column generation: agents propose schedules for prices; the aggregator's master mixes them.

    Master variables: a convex weight per proposal of each agent, P_T (kW per step), a slack per
    ``g`` row (at a prohibitive cost: phase I inside the master) and the deviations d+, d-; rows:
    one convexity row per agent, ``sum of weighted proposals - P_T = 0`` (its dual ``y``: what one
    kW more of P_T is worth), the portfolio rows on P_T, and the group rows on the weighted
    proposals (each with a slack like the limit's).  Agents are priced at the market price less ``y``
    and their groups' duals, smoothed towards those of the best lower bound so far (Wentges); the
    rounds stop when the master's cost is within ``tol`` (relative) of that Lagrangian bound."""
    n, m = len(price), len(blocks)
    r, q = link.h.size, link.commit.size
    group_a, group_h = grp
    rg = group_h.size
    rows = sp.vstack([link.g, link.e]).tocsr()  # y = rows.T @ pi, pi = duals of the portfolio rows
    rhs = np.concatenate([link.h, link.commit, group_h])
    mine = [group_a[:, a * n:(a + 1) * n].tocsr() for a in range(m)]  # each agent's part of the group rows

    def prices(at):  # what one kW more of each agent's power is worth at each step, for duals ``at``
        y = rows.T @ at[:r + q]
        return [y + g.T @ at[r + q:] for g in mine]

    def own(b, y):  # the agent's LP for the market price less y: (energy cost, power)
        c = b.power.T @ (dt * price - y)
        p = b.power @ _solve(c, b.a_ub, b.b_ub, b.a_eq, b.b_eq, b.bounds, "an agent's own schedule").x
        return float(dt * price @ p), p

    first = [own(b, np.zeros(n)) for b in blocks]
    cost, pw, owner = np.array([c for c, _ in first]), np.stack([p for _, p in first], axis=1), np.arange(m)
    big = 1e3 * (np.abs(price).max() * dt + link.dev.max(initial=0.0) + dt)
    z, eye = sp.csr_matrix, sp.identity
    fixed_ub = sp.vstack([sp.hstack([link.g, -eye(r), z((r, rg + 2 * q))]),
                          sp.hstack([z((rg, n + r)), -eye(rg), z((rg, 2 * q))])]).tocsr()
    fixed_eq = sp.vstack([sp.hstack([-eye(n), z((n, r + rg + 2 * q))]),
                          sp.hstack([link.e, z((q, r + rg)), -eye(q), eye(q)])])
    bounds = [(None, None)] * n + [(0, None)] * (r + rg + 2 * q)
    best, center = -np.inf, None
    for iterations in range(1, max_iter + 1):
        nl = len(cost)
        conv = z((np.ones(nl), (owner, np.arange(nl))), shape=(m, nl))
        a_eq = sp.vstack([sp.hstack([conv, z((m, n + r + rg + 2 * q))]),
                          sp.hstack([sp.vstack([z(pw), z((q, nl))]), fixed_eq])]).tocsr()
        on_groups = z(np.column_stack([mine[a] @ pw[:, k] for k, a in enumerate(owner)]) if rg else (0, nl))
        res = _solve(np.concatenate([cost, np.zeros(n), np.full(r + rg, big), link.dev, link.dev]),
                     sp.vstack([sp.hstack([z((r, nl)), fixed_ub[:r]]), sp.hstack([on_groups, fixed_ub[r:]])]).tocsr(),
                     np.concatenate([link.h, group_h]), a_eq, np.concatenate([np.ones(m), np.zeros(n), link.commit]),
                     [(0, None)] * nl + bounds, "the aggregator's master", method=_MASTER)
        mu = res.eqlin.marginals[:m]
        pi = np.concatenate([res.ineqlin.marginals[:r], res.eqlin.marginals[m + n:], res.ineqlin.marginals[r:]])
        y = prices(pi)
        scale = tol * max(1.0, abs(res.fun))
        for at in ([pi] if center is None else [smoothing * center + (1 - smoothing) * pi, pi]):
            y_at = prices(at)
            props = [own(b, ya) for b, ya in zip(blocks, y_at)]
            bound = sum(c - ya @ p for (c, p), ya in zip(props, y_at)) + at @ rhs  # Lagrangian: <= the optimum
            if bound > best:
                best, center = bound, at
            new = [a for a, (c, p) in enumerate(props) if c - y[a] @ p - mu[a] < -scale / m]
            if new or res.fun - best <= scale:  # else the smoothed prices found nothing: try the master's
                break
        if res.fun - best <= scale:
            break
        cost = np.concatenate([cost, [props[a][0] for a in new]])
        pw = np.hstack([pw, np.stack([props[a][1] for a in new], axis=1)])
        owner = np.concatenate([owner, new])
    else:
        raise SolverError(f"distributed schedule did not converge in {max_iter} rounds")
    slack = res.x[nl + n:nl + n + r + rg]
    if r + rg and slack.max() > 1e-6:
        raise _Infeasible("portfolio schedule: no feasible schedule meets the portfolio or group limits/floors "
                          f"(the distributed master needs {slack.max():.3g} kW beyond them)")
    p = np.array([pw[:, owner == a] @ res.x[:nl][owner == a] for a in range(m)])
    return _result(agents, p, price, dt, link, res.ineqlin.marginals[:r], "distributed", iterations)


def _later_min(x: np.ndarray) -> np.ndarray:
    """Per t, the least of x[s] over s >= t."""
    return np.minimum.accumulate(x[::-1])[::-1]


def _battery_range(d: Battery, p, dt):
    e = d.capacity_kwh / dt  # kW for one step to move the SoC by 1
    soc = d.soc0 + np.cumsum(p) / e
    up = np.maximum(_later_min(d.soc_max - soc), 0.0) * e
    down = np.maximum(np.minimum(_later_min(soc - d.soc_min), soc[-1] - d.soc0), 0.0) * e
    return np.maximum(-d.power_kw, p - down), np.minimum(d.power_kw, p + up)


def _heat_pump_range(d: HeatPump, p, dt):
    n = len(p)
    cop, t_out = _steps(d.cop, n, "cop"), _steps(d.t_out_c, n, "t_out_c")
    k = dt / d.c_kwh_per_k
    a = 1 - k * d.h_kw_per_k
    temp, prev = np.empty(n), d.t_init_c
    for t in range(n):
        prev = temp[t] = a * prev + k * (cop[t] * p[t] + d.h_kw_per_k * t_out[t])
    lag = np.arange(n)[None, :] - np.arange(n)[:, None]  # s - t
    g = np.where(lag >= 0, k * cop[:, None] * a ** np.maximum(lag, 0), 0.0)  # dT_s / dP_t, K per kW
    up = np.maximum(_steps(d.t_max_c, n, "t_max_c") - temp, 0.0)
    down = np.maximum(temp - _steps(d.t_min_c, n, "t_min_c"), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rise = np.where(g > 0, up / g, np.where(g < 0, -down / g, np.inf)).min(axis=1)
        fall = np.where(g > 0, down / g, np.where(g < 0, -up / g, np.inf)).min(axis=1)
    return np.maximum(0.0, p - fall), np.minimum(d.rating_kw, p + rise)


def _ev_range(d: EVCharger, p, dt):
    home = np.asarray(d.home, bool)
    counts = home & (np.arange(len(p)) < d.departure)  # charging that counts towards the energy
    slack = max(dt * d.efficiency * p[counts].sum() - d.energy_kwh, 0.0) / (dt * d.efficiency)
    return np.where(counts, np.maximum(p - slack, 0.0), 0.0), d.power_kw * home


_RANGE = {Battery: _battery_range, HeatPump: _heat_pump_range, EVCharger: _ev_range}


def step_bounds(devices, sched, *, dt_h: float = 0.5, cap_kw=None, floor_kw=None):
    """Per (device, step), the range ``(lb, ub)`` in kW the device's power could take at that step
    alone, the rest of its schedule (``sched``: a :class:`Schedule` or its ``p_kw``) held:

    * battery: within +-power_kw and the state-of-charge room over the rest of the day (more power
      at step t raises the SoC at every later step by ``dt/E`` per kW; the day's end SoC no lower
      than ``soc0``);
    * heat pump: within 0..rating, the indoor temperature kept in the comfort band at every later
      step (one kW more at t warms step s >= t by ``dt/C * COP_t * (1 - dt H / C)^(s-t)`` K);
    * EV: within 0..power_kw while home (0 away), lowered at most by the surplus over the energy
      needed by departure.

    ``cap_kw``, ``floor_kw`` (kW per (device, step), NaN = none) narrow the ranges further.
    """
    p_kw = np.asarray(sched.p_kw if isinstance(sched, Schedule) else sched, float)
    if p_kw.ndim != 2 or p_kw.shape[0] != len(devices):
        raise ConfigError(f"step_bounds: needs one schedule row per device ({len(devices)}), got {p_kw.shape}")
    m, n = p_kw.shape
    for d in devices:
        check_device(d)
    lb, ub = np.array([_RANGE[type(d)](d, p, dt_h) for d, p in zip(devices, p_kw)]).transpose(1, 0, 2)
    return (np.maximum(lb, _per_device(floor_kw, m, n, "floor_kw", -np.inf)),
            np.minimum(ub, _per_device(cap_kw, m, n, "cap_kw", np.inf)))
