"""Electric vehicles: a three-state Markov chain of where the car is, and charging.

States ``M`` (moving), ``R`` (parked at home, residential), ``C`` (parked
elsewhere, commercial).  Every half-hour slot ``s`` of the day has its own
3x3 transition matrix, ``pi_ij(s) = P(z_t = j | z_t-1 = i)``; its rows have
Dirichlet priors centred on the mean probabilities in the priors file
(``leave_home``, ``leave_other``, ``home_share``, ``keep_moving``) with
strength ``concentration``; impossible moves (R->C, C->R directly) have
probability zero.  A draw shares one set of matrices across the feeder's EVs
(the population's travel behaviour); each car then runs its own chain, from
the chain's periodic stationary distribution at the first half-hour.

Every car first runs one day before the horizon (discarded), starting from
``initial_soc``, so that its state of charge at the first half-hour comes
from the chain's own dynamics rather than an arbitrary guess.

Energy: a moving half-hour uses ``kwh_per_halfhour_moving`` from the battery
(``battery_kwh``); a car parked at home charges at ``charger_kw`` (grid side,
``charge_efficiency`` into the battery) until full.  With ``charge_elsewhere``
it also charges while parked elsewhere (at work, at the shops), which is not
load on its household's bus but leaves less to charge at home.  A car whose battery would
go below empty records the missing energy as ``ev_shortfall_kwh``.
Timed (off-peak) charging: each car is on a timer with probability
``timed_share`` (a share of the draw's owners).  A timed car charges at home
only inside its off-peak window, from ``timer_start_h`` (local clock time of
the site's zone, hours after midnight; 24.5 is 00:30 next day; drawn per car)
to ``timer_end_h`` (the same for every car), and there until full or until it
leaves: a car already home waits for the window, one that arrives inside it
starts at once, and the half-hour in which the window opens charges for the
part of it that is inside.  Cars not on a timer charge on arrival.  Without
``timed_share`` in the priors no car is on a timer.
Flexibility per half-hour: a car at home can stop charging (``p_lb = 0``) or
charge at full power while not full (``p_ub = charger_kw``, or what the
battery can still take in the half-hour), a timed car outside its window too
(the owner, or an aggregator, can start it early).
These bounds do not carry the need to be charged by departure; that comes
with the aggregator's positions.

References: the Electric Vehicles (Smart Charge Points) Regulations 2021 (SI
2021/1467, GB), regulation 10: charge points sold from 30 June 2022 come with
default charging hours outside the peak hours (weekdays 08:00-11:00 and
16:00-22:00), which the owner may accept, change or remove; a random delay of
up to 600 s at the start spreads timed starts only within a half-hour.
"""

from __future__ import annotations

import numpy as np

from bayesflex.core.checks import HALF_HOURS_PER_DAY, toml_number, toml_numbers
from bayesflex.errors import ConfigError
from bayesflex.priors.baseload import half_hour_of_day
from bayesflex.priors.technology import Context, Model, Output, Simulation

M, R, C = 0, 1, 2
STATES = ("M", "R", "C")
DT_H = 0.5


def mean_matrices(tech) -> np.ndarray:
    """(48, 3, 3) mean transition matrices from the priors file."""
    x = tech.extra
    lam_r, lam_c, home = (np.asarray(x[k], float) for k in ("leave_home", "leave_other", "home_share"))
    keep = x["keep_moving"]
    P = np.zeros((48, 3, 3))
    P[:, R, M], P[:, R, R] = lam_r, 1 - lam_r
    P[:, C, M], P[:, C, C] = lam_c, 1 - lam_c
    P[:, M, M] = keep
    P[:, M, R] = (1 - keep) * home
    P[:, M, C] = (1 - keep) * (1 - home)
    return P


def prior_alpha(tech) -> np.ndarray:
    """(48, 3, 3) Dirichlet parameters of the rows (zero where a move is impossible)."""
    return tech.extra["concentration"] * mean_matrices(tech)


def add_rvs(pm, tech, alpha: np.ndarray | None = None) -> dict:
    """Dirichlet rows: ``ev.row_R (48, 2)`` over (M, R), ``ev.row_C (48, 2)``
    over (M, C), ``ev.row_M (48, 3)`` over (M, R, C); ``alpha`` (48, 3, 3)
    replaces the prior's parameters (a conjugate posterior)."""
    a = prior_alpha(tech) if alpha is None else alpha
    eps = 1e-9  # keeps a zero-probability move out of the simplex's boundary

    def dirichlet(name, alpha):
        # Dirichlet(alpha) as independent Gamma(alpha, 1) normalised: the same
        # distribution, drawn by numpy's vectorised sampler (pytensor's Dirichlet
        # draws row by row)
        g = pm.Gamma(f"{name}_gamma", alpha=alpha, beta=1.0)
        return pm.Deterministic(name, g / g.sum(axis=-1, keepdims=True))

    return {
        "ev.row_R": dirichlet("ev.row_R", np.maximum(a[:, R, [M, R]], eps)),
        "ev.row_C": dirichlet("ev.row_C", np.maximum(a[:, C, [M, C]], eps)),
        "ev.row_M": dirichlet("ev.row_M", np.maximum(a[:, M, :], eps)),
    }


IMPOSSIBLE = ((R, C), (C, R))


def transition_counts(states: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """(48, 3, 3) counts of observed moves; ``states (time, car)`` in 0..2,
    ``slots (time,)`` the half-hour of day of each row.  The move from row
    t-1 to t is counted under slot ``slots[t-1]``."""
    counts = np.zeros((48, 3, 3))
    frm, to = states[:-1], states[1:]
    np.add.at(counts, (np.broadcast_to(slots[:-1, None], frm.shape), frm, to), 1.0)
    return counts


def assemble(par: dict) -> np.ndarray:
    """(draw, 48, 3, 3) transition matrices from the drawn rows ``row_R``, ``row_C``, ``row_M``."""
    rr, rc, rm = par["row_R"], par["row_C"], par["row_M"]
    n = rr.shape[0]
    P = np.zeros((n, 48, 3, 3))
    P[:, :, R, M], P[:, :, R, R] = rr[..., 0], rr[..., 1]
    P[:, :, C, M], P[:, :, C, C] = rc[..., 0], rc[..., 1]
    P[:, :, M, :] = rm
    return P


def periodic_occupancy(P: np.ndarray, first_slot: int) -> np.ndarray:
    """(draw, 48, 3): the chain's periodic stationary distribution at each slot,
    slot index relative to ``first_slot`` (row 0 is the distribution at it)."""
    n = P.shape[0]
    order = (first_slot + np.arange(48)) % 48
    day = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
    for s in order:
        day = day @ P[:, s]
    # left eigenvector for eigenvalue 1: solve pi (day - I) = 0, sum(pi) = 1
    a = np.transpose(day, (0, 2, 1)) - np.eye(3)
    a[:, -1, :] = 1.0
    b = np.zeros((n, 3))
    b[:, -1] = 1.0
    pi = np.linalg.solve(a, b[..., None])[..., 0]
    out = np.empty((n, 48, 3))
    for i, s in enumerate(order):
        out[:, i] = pi
        pi = np.einsum("ni,nij->nj", pi, P[:, s])
    return out


def window_fraction(start_h: np.ndarray, end_h: float) -> np.ndarray:
    """``(..., 48)`` fraction of each local half-hour (from 00:00) inside the
    daily window from ``start_h (...)`` to ``end_h`` (hours after midnight,
    taken modulo 24; a window that starts after it ends runs over midnight)."""
    a = np.mod(np.asarray(start_h, float), 24.0)[..., None]
    b = float(end_h) % 24.0
    lo = np.arange(48) * DT_H  # half-hour starts, h

    def overlap(x, y):  # hours of [lo, lo + DT_H) inside [x, y)
        return np.clip(np.minimum(lo + DT_H, y) - np.maximum(lo, x), 0.0, DT_H)

    over_midnight = overlap(a, 24.0) + overlap(0.0, b)
    return np.where(a < b, overlap(a, b), over_midnight) / DT_H


def drive_and_charge(par: dict, P: np.ndarray, slots: np.ndarray, owners: np.ndarray, rng: np.random.Generator,
                     efficiency: float, charge_elsewhere: bool = False, *, local_slots: np.ndarray | None = None,
                     timer_end_h: float = 8.0) -> dict[str, np.ndarray]:
    """Run every car through the horizon; ``slots`` the UTC half-hour of day of
    each time (the chain's clock), ``local_slots`` the site's local one (the
    timers' clock; ``slots`` when not given).  Returns ``p_kw, p_lb_kw, p_ub_kw,
    soc (draw, time, agent)``, ``state (draw, time, agent)`` (int8, -1 without
    an EV), ``shortfall_kwh (draw, agent)`` and ``timed (draw, agent)`` (the
    car charges on a timer)."""
    n, n_agent = owners.shape
    spin = 48
    local = slots if local_slots is None else np.asarray(local_slots)
    slots = np.concatenate([(slots[0] - spin + np.arange(spin)) % 48, slots])
    local = np.concatenate([(local[0] - spin + np.arange(spin)) % 48, local])
    T = len(slots)
    # who is on a timer: from a stream of its own, so that the chain's numbers do not depend on it
    share = par.get("timed_share")
    timed = np.zeros((n, n_agent), bool) if share is None else \
        rng.spawn(1)[0].random((n, n_agent)) < share.reshape(n, 1)
    if timed.any():  # fraction of each local half-hour in which a car may charge
        allowed = np.where(timed[..., None], window_fraction(par["timer_start_h"], timer_end_h), 1.0)
        allowed = np.ascontiguousarray(np.moveaxis(allowed, -1, 0))  # (48, draw, agent)
    else:
        allowed = None
    pi0 = periodic_occupancy(P, int(slots[0]))[:, 0]  # (draw, 3)
    u = rng.random((n, n_agent))
    state = (u[..., None] > np.cumsum(pi0, axis=1)[:, None, :2]).sum(axis=-1)
    cap = par["battery_kwh"]
    charger = par["charger_kw"]
    use = par["kwh_per_halfhour_moving"]
    soc = par["initial_soc"].copy()
    out = {k: np.zeros((n, T, n_agent)) for k in ("p_kw", "p_lb_kw", "p_ub_kw", "soc")}
    states = np.empty((n, T, n_agent), np.int8)
    shortfall = np.zeros((n, n_agent))
    d_idx = np.arange(n)[:, None]
    for t in range(T):
        if t > 0:  # move the chain from slot t-1 to slot t
            probs = P[d_idx, slots[t - 1], state]  # (draw, agent, 3)
            u = rng.random((n, n_agent))
            state = (u[..., None] > np.cumsum(probs, axis=-1)[..., :2]).sum(axis=-1)
        moving = state == M
        need = np.where(moving, use, 0.0)
        short = np.maximum(need - soc * cap, 0.0)
        if t >= spin:
            shortfall += short
        soc = soc - (need - short) / cap
        home = state == R
        room_kw = (1.0 - soc) * cap / (DT_H * efficiency)
        rate = charger if allowed is None else charger * allowed[local[t]]
        p = np.where(home, np.minimum(rate, room_kw), 0.0)
        soc = soc + p * DT_H * efficiency / cap
        if charge_elsewhere:  # topped up while parked elsewhere: not this feeder's load
            away = np.where(state == C, np.minimum(charger, (1.0 - soc) * cap / (DT_H * efficiency)), 0.0)
            soc = soc + away * DT_H * efficiency / cap
        out["p_kw"][:, t] = p
        out["p_ub_kw"][:, t] = np.where(home, np.minimum(charger, room_kw), 0.0)
        out["soc"][:, t] = soc
        states[:, t] = state
    out = {k: v[:, spin:] for k, v in out.items()}
    states = states[:, spin:]
    for k in ("p_kw", "p_lb_kw", "p_ub_kw", "soc"):
        out[k] *= owners[:, None, :]
    out["soc"] = np.where(owners[:, None, :], out["soc"], np.nan)
    out["state"] = np.where(owners[:, None, :], states, -1).astype(np.int8)
    out["shortfall_kwh"] = shortfall * owners
    out["timed"] = timed & owners
    return out


def simulate(params: dict, extra: dict, owners: np.ndarray, context: Context,
             rng: np.random.Generator) -> Simulation:
    """The owners' cars through the horizon, on the draw's transition matrices."""
    P = assemble(params)
    times = context.times
    local = times.tz_localize("UTC").tz_convert(context.timezone).tz_localize(None)  # the timers' clock
    res = drive_and_charge(params, P, half_hour_of_day(times.values), owners, rng, extra["charge_efficiency"],
                           extra["charge_elsewhere"], local_slots=half_hour_of_day(local.values),
                           timer_end_h=extra["timer_end_h"])
    return Simulation(res["p_kw"], res["p_lb_kw"], res["p_ub_kw"],
                      rating_kw=np.where(owners, params["charger_kw"], 0.0), variables={
                          "ev_timed": (("draw", "agent"), res["timed"]),
                          "ev_state": (("draw", "time", "agent"), res["state"],
                                       {"flag_values": "-1 0 1 2",
                                        "flag_meanings": "no_ev moving parked_home parked_elsewhere"}),
                          "ev_soc": (("draw", "time", "agent"), res["soc"], {"units": "1"}),
                          "ev_shortfall_kwh": (("draw", "agent"), res["shortfall_kwh"], {"units": "kWh"}),
                          "ev_transition": (("draw", "slot", "from_state", "to_state"), P),
                      },
                      coords={"slot": np.arange(48), "from_state": list(STATES), "to_state": list(STATES)})


def rvs(pm, tech, n_agent: int, posterior=None) -> dict:
    """The Dirichlet rows (a conjugate posterior's when the posterior has EV logs)."""
    alpha = getattr(posterior, "ev_alpha", None)
    shapes = {"ev.row_R": (48, 2), "ev.row_C": (48, 2), "ev.row_M": (48, 3)}
    return {name: (rv, shapes[name]) for name, rv in add_rvs(pm, tech, alpha).items()}


def parse(tab: dict, where: str) -> dict:
    extra = {}
    for key in ("leave_home", "leave_other", "home_share"):
        extra[key] = toml_numbers(tab, key, where, lo=0, hi=1, n=HALF_HOURS_PER_DAY,
                                  what=f"{HALF_HOURS_PER_DAY} probabilities in [0, 1] (one per half-hour from 00:00)")
    extra["keep_moving"] = toml_number(tab, "keep_moving", where, lo=0, hi=1)
    extra["concentration"] = toml_number(tab, "concentration", where, lo=1e-6, hi=1e9)
    extra["charge_efficiency"] = toml_number(tab, "charge_efficiency", where, lo=1e-6, hi=1, default=0.9)
    elsewhere = tab.get("charge_elsewhere", False)
    if not isinstance(elsewhere, bool):
        raise ConfigError(f"{where} charge_elsewhere = {elsewhere!r}: must be true or false")
    extra["charge_elsewhere"] = elsewhere
    if ("timed_share" in tab) != ("timer_start_h" in tab):
        raise ConfigError(f"{where}: give timed_share (the share of cars on a timer) and timer_start_h "
                          "(its start, local hours after midnight) together, or neither")
    extra["timer_end_h"] = toml_number(tab, "timer_end_h", where, lo=0, hi=24, default=8.0)
    return extra


MODEL = Model(
    name="ev",
    schema={"battery_kwh": "positive", "charger_kw": "positive", "kwh_per_halfhour_moving": "positive",
            "initial_soc": "unit", "timed_share": "unit", "timer_start_h": "positive"},
    per_agent=("battery_kwh", "charger_kw", "kwh_per_halfhour_moving", "initial_soc", "timer_start_h"),
    optional=frozenset({"timed_share", "timer_start_h"}),  # without them no car is on a timer
    keys=frozenset({"concentration", "leave_home", "leave_other", "home_share", "keep_moving", "charge_efficiency",
                    "charge_elsewhere", "timer_end_h"}), parse=parse,
    output=Output("p_ev_kw", "EV charging", "EV"),
    simulate=simulate, random=True, service="electrified", rvs=rvs,
)
