"""Stage 1 of the two-stage coordination: the aggregator schedules its agents for cost.

Each controllable device is a small linear programme over the horizon
(``dt_h`` hours per step):

* :class:`Battery` -- the paper's linear state of charge
  ``soc_min <= soc0 + dt/E * sum_{t<=s} B_t <= soc_max`` for every ``s``,
  ``|B_t| <= power_kw``, and the day ends no emptier than it began;
* :class:`HeatPump` -- a first-order thermal model of the house,
  ``T_t = T_{t-1} + dt/C (COP_t P_t - H (T_{t-1} - T_out,t))``, indoor
  temperature kept in the comfort band, ``0 <= P_t <= rating``;
* :class:`EVCharger` -- charging only while the car is home, the energy
  needed delivered by the departure step.

The portfolio minimises ``sum_t price_t * dt * sum_a P_a,t`` (kWh bought minus
kWh sold at the same price), optionally under a limit on the portfolio's
power per step -- what the DSO returns in stage 2.  Two ways to the same
optimum:

``"central"``
    one LP with every device (HiGHS through ``scipy.optimize.linprog``);
``"distributed"``
    Dantzig-Wolfe decomposition: each agent solves only its own LP, for
    prices the aggregator's small master LP sends it (the market price plus
    the shadow price of the limit); proposals are combined by the master
    until no agent can lower the portfolio cost any more.  It reaches the
    central optimum to the LP tolerance (a test).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

from .errors import ConfigError, SolverError

__all__ = ["Battery", "EVCharger", "HeatPump", "Schedule", "schedule"]


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
    """Optimal schedules: ``p_kw (device, step)``, the portfolio power, its cost
    (currency of ``price``), the shadow price of the limit per step (currency
    per kWh, <= 0: what one more kW of limit would save), and for the
    distributed method its iterations."""

    agents: tuple[str, ...]
    p_kw: np.ndarray
    cost: float
    shadow_price: np.ndarray
    method: str
    iterations: int = 1

    @property
    def portfolio_kw(self) -> np.ndarray:
        return self.p_kw.sum(axis=0)


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


def _blocks(devices, n: int, dt: float) -> list[_Block]:
    out = []
    for d in devices:
        build = _BUILD.get(type(d))
        if build is None:
            raise ConfigError(f"unknown device {d!r} (allowed: Battery, HeatPump, EVCharger)")
        out.append(build(d, n, dt))
    return out


def _solve(c, a_ub, b_ub, a_eq, b_eq, bounds, what: str):
    res = linprog(c, A_ub=a_ub if a_ub.shape[0] else None, b_ub=b_ub if a_ub.shape[0] else None,
                  A_eq=a_eq if a_eq.shape[0] else None, b_eq=b_eq if a_eq.shape[0] else None,
                  bounds=bounds, method="highs")
    if res.status == 2:
        raise SolverError(f"{what}: no feasible schedule (HiGHS: {res.message})")
    if res.status != 0:
        raise SolverError(f"{what}: the LP was not solved (HiGHS status {res.status}: {res.message})")
    return res


def schedule(devices, price_per_kwh, *, dt_h: float = 0.5, limit_kw=None, method: str = "central",
             tol: float = 1e-7, max_iter: int = 500) -> Schedule:
    """Cost-optimal schedules of ``devices`` against ``price_per_kwh`` (one per step).

    ``limit_kw`` (one per step, optional): the portfolio's controllable power
    may not exceed it.  ``method``: "central" or "distributed" (module
    docstring).  Raises :class:`SolverError` if no schedule meets the devices'
    constraints and the limit.
    """
    price = np.asarray(price_per_kwh, float)
    n = len(price)
    if not len(devices):
        raise ConfigError("schedule needs at least one device")
    blocks = _blocks(devices, n, dt_h)
    lim = None if limit_kw is None else _steps(limit_kw, n, "limit_kw")
    agents = tuple(d.agent for d in devices)
    if method == "central":
        return _central(blocks, price, dt_h, lim, agents)
    if method == "distributed":
        return _dantzig_wolfe(blocks, price, dt_h, lim, agents, tol=tol, max_iter=max_iter)
    raise ConfigError(f"method {method!r} unknown (allowed: 'central', 'distributed')")


def _central(blocks, price, dt, lim, agents) -> Schedule:
    n = len(price)
    c = np.concatenate([dt * (b.power.T @ price) for b in blocks])
    a_ub = sp.block_diag([b.a_ub for b in blocks], format="csr")
    b_ub = np.concatenate([b.b_ub for b in blocks])
    power = sp.hstack([b.power for b in blocks]).tocsr()
    if lim is not None:
        a_ub = sp.vstack([a_ub, power]).tocsr()
        b_ub = np.concatenate([b_ub, lim])
    a_eq = sp.block_diag([b.a_eq for b in blocks], format="csr")
    b_eq = np.concatenate([b.b_eq for b in blocks])
    res = _solve(c, a_ub, b_ub, a_eq, b_eq, np.vstack([b.bounds for b in blocks]), "portfolio schedule")
    x, p, i = res.x, [], 0
    for b in blocks:
        k = b.bounds.shape[0]
        p.append(b.power @ x[i:i + k])
        i += k
    shadow = res.ineqlin.marginals[-n:] / dt if lim is not None else np.zeros(n)
    return Schedule(agents, np.array(p), float(res.fun), shadow, "central")


def _dantzig_wolfe(blocks, price, dt, lim, agents, *, tol: float, max_iter: int) -> Schedule:
    """Column generation: agents propose schedules for prices; the master mixes them."""
    n, m = len(price), len(blocks)

    def own(b, dual):  # the agent's LP for the market price less the limit's shadow price (dual <= 0)
        c = dt * (b.power.T @ (price - dual / dt))
        p = b.power @ _solve(c, b.a_ub, b.b_ub, b.a_eq, b.b_eq, b.bounds, "an agent's own schedule").x
        return float(dt * price @ p), p

    cols = [[own(b, np.zeros(n))] for b in blocks]  # each agent's proposals: (cost at market price, power)
    big = 1e3 * (np.abs(price).max() + 1.0) * dt  # penalty on exceeding the limit: phase I inside the master
    iterations = 0
    for iterations in range(1, max_iter + 1):
        k = [len(cs) for cs in cols]
        nl = sum(k)
        cost = np.concatenate([[c[0] for c in cs] for cs in cols] + ([np.full(n, big)] if lim is not None else []))
        conv = sp.lil_matrix((m, nl + (n if lim is not None else 0)))
        j = 0
        for a, cs in enumerate(cols):
            conv[a, j:j + len(cs)] = 1.0
            j += len(cs)
        if lim is not None:
            pw = np.concatenate([np.stack([c[1] for c in cs], axis=1) for cs in cols], axis=1)  # (n, nl)
            a_ub = sp.hstack([sp.csr_matrix(pw), -sp.identity(n)]).tocsr()  # sum lambda P - slack <= lim
            res = _solve(cost, a_ub, lim, conv.tocsr(), np.ones(m), [(0, None)] * (nl + n), "master")
            dual = res.ineqlin.marginals  # <= 0
        else:
            res = _solve(cost, sp.csr_matrix((0, nl)), np.zeros(0), conv.tocsr(), np.ones(m),
                         [(0, None)] * nl, "master")
            dual = np.zeros(n)
        mu = res.eqlin.marginals
        improved = False
        for a, b in enumerate(blocks):
            true_cost, p = own(b, dual)
            reduced = true_cost - dual @ p - mu[a]
            if reduced < -tol * max(1.0, abs(res.fun)):
                cols[a].append((true_cost, p))
                improved = True
        if not improved:
            break
    else:
        raise SolverError(f"distributed schedule did not converge in {max_iter} rounds")
    lam = res.x
    if lim is not None and lam[-n:].max() > 1e-6:
        raise SolverError("portfolio schedule: no feasible schedule meets the limit (distributed master needs "
                          f"{lam[-n:].max():.3g} kW above it)")
    p, j = [], 0
    for cs in cols:
        w = lam[j:j + len(cs)]
        p.append(sum(wi * c[1] for wi, c in zip(w, cs)))
        j += len(cs)
    p = np.array(p)
    total = float(dt * price @ p.sum(axis=0))
    return Schedule(agents, p, total, dual / dt, "distributed", iterations)
