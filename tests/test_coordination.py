"""Stage 2: the DSO makes the aggregators' schedules secure (bayesflex.coordination)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import bayesflex as bf
from bayesflex.coordination import Aggregator, coordinate, power_range
from bayesflex.errors import ConfigError
from bayesflex.portfolio import Battery, HeatPump

N = 24  # twelve hours from midnight
PRICE = np.r_[np.full(6, 0.12), np.full(4, 0.10), np.full(6, 0.20), np.full(8, 0.30)]  # GBP/kWh


@pytest.fixture(scope="module")
def small_area():
    """two_area with 100 kVA transformers, so that 24 heat pumps preheating together overload A."""
    f = bf.load_feeder("two_area")
    return f.replace(trafos=tuple(dataclasses.replace(t, sn_kva=100.0) for t in f.trafos))


def _pumps(feeder, k=24):
    agents = [a for a in feeder.agents if a.startswith("A")][:k]
    t_out = np.full(N, 3.0)
    return [HeatPump(a, rating_kw=5.0, cop=2.8, c_kwh_per_k=8.0, h_kw_per_k=0.18, t_out_c=tuple(t_out),
                     t_init_c=20.0, t_min_c=19.0, t_max_c=22.0) for a in agents]


@pytest.fixture(scope="module")
def result(small_area):
    pumps = _pumps(small_area)
    aggs = [Aggregator("alpha", tuple(pumps[::2])), Aggregator("beta", tuple(pumps[1::2]))]
    return coordinate(small_area, "two_area", aggs, PRICE, risk=0.05, draws=30, seed=3, max_rounds=12)


def test_cheap_hours_overload_first_and_the_loop_makes_them_secure(result):
    first, last = result.rounds[0], result.rounds[-1]
    assert first.p_congested.max() > 0.5  # every pump preheats in the cheapest half-hours
    assert result.secure, result.outcome
    # the last study, on the final schedules, is within the accepted risk in every half-hour
    p = result.tree["summary"]["p_congested_any"].values
    np.testing.assert_array_equal(p, last.p_congested)
    assert (p <= result.risk).all()
    assert last.trafo_peak_pu[0] < first.trafo_peak_pu[0]
    assert result.peak_reduction()[0] > 0


def test_final_schedules_keep_the_dso_limits_and_cost_no_less(result):
    for name, s in result.final.items():
        cap, floor = result.cap_kw[name], result.floor_kw[name]
        assert (s.p_kw <= cap + 1e-6).all() and (s.p_kw >= floor - 1e-6).all()
        assert np.isfinite(cap).any()  # the DSO did set limits
        # stage 1 was optimal without limits: limits can only cost more
        assert s.total_cost >= result.first[name].cost - 1e-9
    assert result.customer_cost_increase() >= -1e-12
    table = result.table()
    assert list(table["round"]) == list(range(len(result.rounds)))
    assert (np.diff(table["limits"]) >= 0).all()  # limits only ever tighten


def test_congestion_that_is_not_the_portfolios_is_reported(small_area):
    """A transformer of 10 kVA: the houses' own demand overloads it whatever the pumps do."""
    f = small_area.replace(trafos=tuple(dataclasses.replace(t, sn_kva=10.0) for t in small_area.trafos))
    pumps = _pumps(f, 4)
    res = coordinate(f, "two_area", [Aggregator("alpha", tuple(pumps))], PRICE, risk=0.05, draws=10, seed=1,
                     max_rounds=6)
    assert not res.secure
    assert res.outcome.startswith("not secure")


def test_power_range_moves_towards_idle_only():
    b = Battery("x", capacity_kwh=10, power_kw=4)
    lb, ub = power_range(b, np.array([3.0, -2.0, 0.0]))
    np.testing.assert_array_equal(lb, [0.0, -2.0, 0.0])
    np.testing.assert_array_equal(ub, [3.0, 0.0, 0.0])


def test_bad_aggregators_are_named(small_area):
    pumps = _pumps(small_area, 2)
    with pytest.raises(ConfigError, match="not on feeder"):
        coordinate(small_area, "two_area", [Aggregator("a", (dataclasses.replace(pumps[0], agent="nobody"),))],
                   PRICE)
    with pytest.raises(ConfigError, match="more than one device"):
        coordinate(small_area, "two_area", [Aggregator("a", (pumps[0],)), Aggregator("b", (pumps[0],))], PRICE)
    with pytest.raises(ConfigError, match="risk"):
        coordinate(small_area, "two_area", [Aggregator("a", tuple(pumps))], PRICE, risk=0)
