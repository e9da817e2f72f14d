"""Stages 1 and 2: the aggregator's cost-optimal schedules, central and distributed."""

from __future__ import annotations

import numpy as np
import pytest

from bayesflex.aggregator.portfolio import Battery, EVCharger, HeatPump, schedule, step_bounds
from bayesflex.errors import ConfigError, SolverError

N, DT = 96, 0.5


def _portfolio(rng, n=N):
    t = np.arange(n)
    price = 0.15 + 0.12 * ((t % 48 >= 32) & (t % 48 < 40)) - 0.05 * ((t % 48) < 12) + 0.01 * rng.standard_normal(n)
    t_out = 4 + 3 * np.sin(2 * np.pi * (t - 20) / 48)
    home = np.ones(n, bool)
    home[16:36] = home[64:84] = False
    devices = [Battery(f"b{i}", capacity_kwh=rng.uniform(5, 13), power_kw=rng.uniform(2.5, 5)) for i in range(6)]
    devices += [HeatPump(f"h{i}", rating_kw=rng.uniform(2, 4), cop=3.0, c_kwh_per_k=rng.uniform(3, 8),
                         h_kw_per_k=rng.uniform(0.15, 0.3), t_out_c=tuple(t_out)) for i in range(6)]
    devices += [EVCharger(f"e{i}", power_kw=7.0, energy_kwh=rng.uniform(5, 15), home=tuple(home), departure=16)
                for i in range(3)]
    return devices, price


def _residuals(d, p):
    """Every constraint of device ``d`` on its power ``p`` (kW per step) as ``g(p) <= 0``: power
    limits (kW), state of charge, indoor temperature (K), energy by departure (kWh)."""
    p = np.asarray(p, float)
    if isinstance(d, Battery):
        soc = d.soc0 + DT / d.capacity_kwh * np.cumsum(p)
        return np.r_[np.abs(p) - d.power_kw, soc - d.soc_max, d.soc_min - soc, d.soc0 - soc[-1]]
    if isinstance(d, HeatPump):
        temp, k, cop = np.empty(len(p)), DT / d.c_kwh_per_k, np.broadcast_to(d.cop, p.shape)
        prev = d.t_init_c
        for t in range(len(p)):
            prev = temp[t] = prev + k * (cop[t] * p[t] - d.h_kw_per_k * (prev - d.t_out_c[t]))
        return np.r_[-p, p - d.rating_kw, temp - d.t_max_c, d.t_min_c - temp]
    home = np.asarray(d.home)
    return np.r_[-p, p - d.power_kw * home, d.energy_kwh - DT * d.efficiency * p[:d.departure][home[:d.departure]].sum()]


def _check_devices(devices, s, limit=None, tol=1e-7):
    """Every device's own constraints, recomputed from the schedule alone."""
    for d, p in zip(devices, s.p_kw):
        assert _residuals(d, p).max() <= tol, d.agent
        if isinstance(d, EVCharger):
            assert np.all(p[~np.asarray(d.home)] == 0)
    if limit is not None:
        assert np.all(s.portfolio_kw <= limit + 1e-6)


def test_distributed_scheme_reaches_the_central_optimum(rng):
    """Each agent solves only its own LP for the prices it is sent (Dantzig-Wolfe);
    the portfolio cost equals the central LP's to 1e-7 relative, with the DSO's
    limit binding, and every device's constraints hold."""
    devices, price = _portfolio(rng)
    free = schedule(devices, price)
    limit = np.full(N, 0.7 * free.portfolio_kw.max())
    central = schedule(devices, price, limit_kw=limit)
    dist = schedule(devices, price, limit_kw=limit, method="distributed")
    assert central.cost > free.cost  # the limit binds, and costs something
    assert central.shadow_price.min() < 0
    assert dist.cost == pytest.approx(central.cost, rel=1e-7)
    assert dist.iterations > 1
    for s in (free, central, dist):
        _check_devices(devices, s, None if s is free else limit)
    np.testing.assert_allclose(schedule(devices, price, method="distributed").cost, free.cost, rtol=1e-7)


def test_stage_two_distributed_reaches_the_central_optimum(rng):
    """Stage 2 over half a day: the DSO caps a few devices' power at some steps and floors
    one battery's, bounds the portfolio above and below, and the aggregator holds a market
    position (its stage-1 schedule for a forecast price) whose imbalance costs twice the
    dearest price.  Agents still solve only their own LPs (caps and floors are theirs); the
    master holds the limit, the floor and the commitment, and ends at the central optimum."""
    n = 24
    devices, price = _portfolio(rng, n)
    free = schedule(devices, price, dt_h=DT)
    commitment = schedule(devices, price + 0.02 * rng.standard_normal(n)).portfolio_kw
    cap, floor = np.full((len(devices), n), np.nan), np.full((len(devices), n), np.nan)
    for i in range(0, len(devices), 2):
        hot = np.argsort(-free.p_kw[i])[:2]
        cap[i, hot] = 0.5 * free.p_kw[i, hot]
    floor[1, 5:8] = 1.0
    kw = {"cap_kw": cap, "floor_kw": floor, "limit_kw": np.full(n, 0.8 * free.portfolio_kw.max()),
          "floor_portfolio_kw": np.full(n, 0.8 * free.portfolio_kw.min()), "commitment_kw": commitment}
    central = schedule(devices, price, **kw)
    dist = schedule(devices, price, method="distributed", **kw)
    assert dist.total_cost == pytest.approx(central.total_cost, rel=1e-6)
    assert dist.iterations > 1
    assert np.sum(np.isclose(central.p_kw, cap, atol=1e-7)) >= 3  # the caps bind at a few steps
    assert central.floor_shadow_price.max() > 0 and central.shadow_price.min() < 0
    assert 0 < np.sum(np.abs(central.shortfall_kw) > 1e-6) < n  # mostly on the position, not always
    for s in (central, dist):
        _check_devices(devices, s, kw["limit_kw"])
        assert np.all(s.portfolio_kw >= kw["floor_portfolio_kw"] - 1e-6)
        assert np.all(~(s.p_kw > cap + 1e-9)) and np.all(~(s.p_kw < floor - 1e-9))
        np.testing.assert_allclose(s.shortfall_kw, s.portfolio_kw - commitment, atol=1e-9)
        assert s.cost == pytest.approx(DT * price @ s.portfolio_kw)
        assert s.imbalance_cost == pytest.approx(DT * 2 * price.max() * np.abs(s.shortfall_kw).sum())


@pytest.mark.parametrize("method", ["central", "distributed"])
def test_caps_and_floors_hold_each_device(rng, method):
    devices, price = _portfolio(rng)
    free = schedule(devices, price)
    cap = np.where(free.p_kw > 1.0, 0.6 * free.p_kw, np.inf)
    floor = np.full_like(cap, np.nan)
    floor[:6, 10:20] = -0.5  # the batteries may not discharge fast in the morning
    s = schedule(devices, price, cap_kw=cap, floor_kw=floor, method=method)
    assert np.all(s.p_kw <= cap + 1e-9) and np.all(s.p_kw[:6, 10:20] >= -0.5 - 1e-9)
    assert s.cost > free.cost
    _check_devices(devices, s)


@pytest.mark.parametrize("method", ["central", "distributed"])
def test_an_impossible_cap_names_the_agent_and_the_step(rng, method):
    devices, price = _portfolio(rng)
    cap = np.full((len(devices), N), np.nan)
    cap[1, 5] = -devices[1].power_kw - 1  # below the battery's own range
    with pytest.raises(SolverError, match="agent 'b1', step 5: no feasible schedule"):
        schedule(devices, price, cap_kw=cap, method=method)
    cap = np.full((len(devices), N), np.nan)
    cap[7, 10:40] = 0.0  # the heat pump of h1 off through a cold morning: the house cools below 19 C
    with pytest.raises(SolverError, match=r"no feasible schedule: agent 'h1', step \d+") as err:
        schedule(devices, price, cap_kw=cap, method=method)
    step = int(err.value.args[0].split("step ")[1].split(":")[0])
    assert 10 <= step < 40  # the first step whose cap, with those before, leaves it no schedule
    before = np.where(np.arange(N) < step, cap[7], np.nan)
    schedule(devices[7:8], price, cap_kw=before[None])
    with pytest.raises(SolverError):
        schedule(devices[7:8], price, cap_kw=np.where(np.arange(N) <= step, cap[7], np.nan)[None])


@pytest.mark.parametrize("method", ["central", "distributed"])
def test_a_commitment_is_kept_when_imbalance_is_dear_and_ignored_when_free(rng, method):
    n = 24  # half a day keeps the distributed rounds short
    devices, price = _portfolio(rng, n)
    commitment = schedule(devices, np.roll(price, 6)).portfolio_kw  # feasible, not optimal at this price
    free = schedule(devices, price, method=method)
    kept = schedule(devices, price, commitment_kw=commitment, imbalance_price_per_kwh=100.0, method=method)
    np.testing.assert_allclose(kept.portfolio_kw, commitment, atol=1e-6)
    assert kept.imbalance_cost == pytest.approx(0, abs=1e-4) and kept.cost > free.cost
    ignored = schedule(devices, price, commitment_kw=commitment, imbalance_price_per_kwh=0.0, method=method)
    assert ignored.cost == pytest.approx(free.cost, rel=1e-7) and ignored.imbalance_cost == 0
    assert np.abs(ignored.shortfall_kw).max() > 1
    np.testing.assert_array_equal(free.shortfall_kw, 0)


def test_step_bounds_are_what_one_step_alone_can_move(rng):
    """For random devices and schedules (optimal ones, and mixtures of two, which have slack):
    moving one step's power to its lb or ub, the rest held, keeps every constraint of the device
    (to 1e-9); 1e-3 kW beyond breaks one."""
    devices, _ = _portfolio(rng)
    devices = [Battery("b", capacity_kwh=rng.uniform(4, 12), power_kw=rng.uniform(2, 5), soc0=rng.uniform(0.2, 0.8)),
               *devices[6:8], devices[12],
               HeatPump("hc", rating_kw=3.0, cop=tuple(rng.uniform(2.5, 4, N)), c_kwh_per_k=4.0, h_kw_per_k=0.2,
                        t_out_c=devices[6].t_out_c, t_min_c=18.0, t_max_c=23.0)]
    slack = []
    for trial in range(3):
        price = 0.2 + 0.1 * rng.standard_normal((2, N))
        price[1, -8:] = -0.1  # paid to charge at the end: the battery ends fuller than it began
        one, two = (schedule(devices, pr).p_kw for pr in price)
        for p_kw in (one, (w := rng.uniform(0.2, 0.8)) * one + (1 - w) * two):
            lb, ub = step_bounds(devices, p_kw, dt_h=DT)
            assert np.all(lb <= p_kw + 1e-12) and np.all(p_kw <= ub + 1e-12)
            slack.append((p_kw - lb).max())
            for i, (d, p) in enumerate(zip(devices, p_kw)):
                held = np.maximum(_residuals(d, p), 0)
                for t in range(N):
                    for edge, out in ((lb[i, t], -1e-3), (ub[i, t], 1e-3)):
                        q = p.copy()
                        q[t] = edge
                        assert (_residuals(d, q) - held).max() <= 1e-9, (d.agent, t, edge)
                        q[t] = edge + out
                        assert (_residuals(d, q) - held).max() > 1e-8, (d.agent, t, edge + out)
    assert max(slack) > 0.5  # the mixtures can move down as well as up


def test_a_battery_buys_low_and_sells_high_as_far_as_its_soc_allows():
    """Cheap first day, dear second: it fills from 0.5 to 0.95 (at full power if it
    can), then sells back down to 0.5 (it must end no emptier than it began):
    cost = 0.45 E (p_low - p_high) exactly."""
    e, p_lo, p_hi = 10.0, 0.10, 0.30
    price = np.r_[np.full(48, p_lo), np.full(48, p_hi)]
    s = schedule([Battery("b", capacity_kwh=e, power_kw=3.0)], price)
    assert s.cost == pytest.approx(0.45 * e * (p_lo - p_hi), rel=1e-9)
    soc = 0.5 + DT / e * np.cumsum(s.p_kw[0])
    assert soc[47] == pytest.approx(0.95) and soc[-1] == pytest.approx(0.5)


def test_what_cannot_be_scheduled_is_said(rng):
    home = np.ones(N, bool)
    ev = EVCharger("e", power_kw=3.0, energy_kwh=100.0, home=tuple(home), departure=8)
    with pytest.raises(SolverError, match="no feasible schedule"):
        schedule([ev], np.full(N, 0.2))
    hp = HeatPump("h", rating_kw=3.0, cop=3.0, c_kwh_per_k=5.0, h_kw_per_k=0.25, t_out_c=(0.0,) * N)
    for method in ("central", "distributed"):
        with pytest.raises(SolverError, match="no feasible schedule"):
            schedule([hp], np.full(N, 0.2), limit_kw=np.zeros(N), method=method)
        with pytest.raises(SolverError, match="no feasible schedule"):
            schedule([hp], np.full(N, 0.2), floor_portfolio_kw=np.full(N, 4.0), method=method)


@pytest.mark.parametrize("device, words", [
    (Battery("b", capacity_kwh=-1, power_kw=3), "battery of 'b'"),
    (EVCharger("e", power_kw=7, energy_kwh=5, home=(True,) * 3, departure=2), "one flag per step"),
    (HeatPump("h", rating_kw=3, cop=3, c_kwh_per_k=5, h_kw_per_k=0.2, t_out_c=(1.0, 2.0)), "t_out_c"),
])
def test_bad_devices_are_named(device, words):
    with pytest.raises(ConfigError, match=words):
        schedule([device], np.full(N, 0.2))
    with pytest.raises(ConfigError, match="allowed: 'central', 'distributed'"):
        schedule([Battery("b", 10, 3)], np.full(N, 0.2), method="auction")


def test_group_limits_leave_the_choice_of_device_and_both_methods_agree(rng):
    """A limit on the summed power of a group of devices (the aggregator's devices under one transformer
    phase) at the group's busiest steps, and a floor on another group: the sums keep them, the devices
    their own constraints, and the distributed scheme prices each agent with its group's dual to the
    central optimum."""
    n = 24
    devices, price = _portfolio(rng, n)
    free = schedule(devices, price)
    one, two = np.array([0, 1, 2, 6, 7]), np.array([3, 4, 8])
    busy = np.argsort(-free.p_kw[one].sum(axis=0))[:3]
    limit = np.full(n, np.nan)
    limit[busy] = 0.6 * free.p_kw[one][:, busy].sum(axis=0)
    low = np.argsort(free.p_kw[two].sum(axis=0))[:2]  # its batteries discharge there: room to do less
    floor = np.full(n, -np.inf)
    floor[low] = free.p_kw[two][:, low].sum(axis=0) + 1.0
    groups = [(one, limit, None), (two, None, floor)]
    central = schedule(devices, price, groups=groups)
    dist = schedule(devices, price, groups=groups, method="distributed")
    assert central.cost > free.cost  # the limit binds
    assert dist.cost == pytest.approx(central.cost, rel=1e-6)
    for s in (central, dist):
        _check_devices(devices, s)
        assert np.all(s.p_kw[one][:, busy].sum(axis=0) <= limit[busy] + 1e-6)
        assert np.all(s.p_kw[two][:, low].sum(axis=0) >= floor[low] - 1e-6)
    np.testing.assert_allclose(central.p_kw[one][:, busy].sum(axis=0), limit[busy], atol=1e-6)  # binding
    with pytest.raises(ConfigError, match=r"groups\[0\]: device indices \[99\] must lie in 0 .. 14"):
        schedule(devices, price, groups=[([99], limit, None)])
