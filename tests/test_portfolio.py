"""Stage 1: the aggregator's cost-optimal schedules, central and distributed."""

from __future__ import annotations

import numpy as np
import pytest

from bayesflex.errors import ConfigError, SolverError
from bayesflex.portfolio import Battery, EVCharger, HeatPump, schedule

N, DT = 96, 0.5


def _portfolio(rng):
    t = np.arange(N)
    price = 0.15 + 0.12 * ((t % 48 >= 32) & (t % 48 < 40)) - 0.05 * ((t % 48) < 12) + 0.01 * rng.standard_normal(N)
    t_out = 4 + 3 * np.sin(2 * np.pi * (t - 20) / 48)
    home = np.ones(N, bool)
    home[16:36] = home[64:84] = False
    devices = [Battery(f"b{i}", capacity_kwh=rng.uniform(5, 13), power_kw=rng.uniform(2.5, 5)) for i in range(6)]
    devices += [HeatPump(f"h{i}", rating_kw=rng.uniform(2, 4), cop=3.0, c_kwh_per_k=rng.uniform(3, 8),
                         h_kw_per_k=rng.uniform(0.15, 0.3), t_out_c=tuple(t_out)) for i in range(6)]
    devices += [EVCharger(f"e{i}", power_kw=7.0, energy_kwh=rng.uniform(5, 15), home=tuple(home), departure=16)
                for i in range(3)]
    return devices, price


def _check_devices(devices, s, limit=None):
    """Every device's own constraints, recomputed from the schedule alone."""
    for d, p in zip(devices, s.p_kw):
        if isinstance(d, Battery):
            soc = d.soc0 + DT / d.capacity_kwh * np.cumsum(p)
            assert np.all(np.abs(p) <= d.power_kw + 1e-7)
            assert soc.min() >= d.soc_min - 1e-7 and soc.max() <= d.soc_max + 1e-7 and soc[-1] >= d.soc0 - 1e-7
        elif isinstance(d, HeatPump):
            temp, k = d.t_init_c, DT / d.c_kwh_per_k
            assert np.all(p >= -1e-7) and np.all(p <= d.rating_kw + 1e-7)
            for t in range(N):
                temp = temp + k * (d.cop * p[t] - d.h_kw_per_k * (temp - d.t_out_c[t]))
                assert d.t_min_c - 1e-6 <= temp <= d.t_max_c + 1e-6
        else:
            home = np.asarray(d.home)
            assert np.all(p[~home] == 0) and np.all(p >= -1e-9) and np.all(p <= d.power_kw + 1e-7)
            assert DT * d.efficiency * p[:d.departure].sum() >= d.energy_kwh - 1e-6
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
