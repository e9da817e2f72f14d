"""Stage 2: the DSO makes the aggregators' schedules secure (bayesflex.aggregator.coordination)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.optimize import brentq

import bayesflex as bf
from bayesflex.aggregator.coordination import (
    Aggregator,
    Coordination,
    Round,
    _verdict,
    _zone_totals,
    _zones,
    confirmation_seed,
    coordinate,
    draws_to_confirm,
    power_range,
    tolerated_draws,
)
from bayesflex.aggregator.portfolio import Battery, EVCharger, HeatPump, schedule
from bayesflex.errors import ConfigError

N = 24  # twelve hours from midnight
Z2 = 1.959963984540054**2  # 97.5 % normal quantile, squared
TUNING, FRESH = 10, 100  # draws per round and of the confirmation in the fixture
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
    """Tuned on 10 draws a round: too few to bound a risk of 5 % (that needs 73 with none congested)."""
    pumps = _pumps(small_area)
    aggs = [Aggregator("alpha", tuple(pumps[::2])), Aggregator("beta", tuple(pumps[1::2]))]
    return coordinate(small_area, "two_area", aggs, PRICE, risk=0.05, draws=TUNING, seed=3, max_rounds=12,
                      confirm_draws=FRESH)


def _loadflow_of_the_draws(feeder, tree):
    """An independent load flow (bf.solve_loadflow) of a study's drawn powers, (draw, time, ...)."""
    pp = tree["prior_predictive"]
    return bf.solve_loadflow(feeder, pp["p_kw"].values[0].astype(float), pp["q_kvar"].values[0].astype(float))


def test_cheap_hours_overload_first_and_the_loop_clears_the_tuning_draws(result, small_area):
    first, last = result.rounds[0], result.rounds[-1]
    assert first.p_congested.max() > 0.5  # every pump preheats in the cheapest half-hours
    assert result.secure_in_sample, result.outcome
    # the last study, on the final schedules, has no congested tuning draw (10 draws bound no count below
    # 5 %): a load flow of its drawn powers of our own keeps every limit in every draw and half-hour
    assert tolerated_draws(TUNING, result.risk) == 0
    lf = _loadflow_of_the_draws(small_area, result.tree)
    v = np.delete(lf.v_pu, small_area.source.bus, axis=-2)
    assert lf.converged.all() and lf.trafo_loading_pu.max() <= 1.0 and lf.loading_pu.max() <= 1.0
    assert small_area.v_min_pu <= v.min() and v.max() <= small_area.v_max_pu
    assert (last.p_congested == 0).all()
    assert last.trafo_peak_pu[0] < first.trafo_peak_pu[0]
    assert result.peak_reduction()[0] > 0


def test_final_schedules_keep_the_dso_limits_and_cost_no_less(result):
    for name, s in result.final.items():
        cap, floor = result.cap_kw[name], result.floor_kw[name]
        assert (s.p_kw <= cap + 1e-6).all() and (s.p_kw >= floor - 1e-6).all()
        for idx, limit, least in result.group_limits[name].values():
            total = s.p_kw[idx].sum(axis=0)
            assert (total <= limit + 1e-6).all() and (total >= least - 1e-6).all()
        # only transformer A is overloaded: the DSO limits what the pumps under it draw together, per phase
        assert {key for key, (_i, limit, _f) in result.group_limits[name].items() if np.isfinite(limit).any()} <= {
            ("A transformer", ph) for ph in "abc"}
        assert any(np.isfinite(g[1]).any() for g in result.group_limits[name].values())  # the DSO did set limits
        # stage 1 was optimal without limits: limits can only cost more
        assert s.total_cost >= result.first[name].cost - 1e-9
    assert result.customer_cost_increase() >= -1e-12
    table = result.table()
    tuning = table[table["sample"] == "tuning"]
    assert list(tuning["round"]) == list(range(len(result.rounds)))
    assert (np.diff(tuning["limits"]) >= 0).all()  # limits only ever tighten


def test_clear_on_the_tuning_draws_is_not_secure_on_fresh_ones(result):
    """The verdict is checked on other draws than the loop tuned against, and fails there."""
    fresh = result.confirmation
    assert result.confirm_tree.attrs["seed"] == fresh.seed == confirmation_seed(3)
    assert fresh.seed != result.tree.attrs["seed"] == 3
    assert fresh.draws == result.confirm_tree["heuristic"].sizes["draw"] == FRESH
    assert not result.secure and result.outcome.startswith("not secure out of sample"), result.outcome
    lo, hi = fresh.interval()
    k = int(np.argmax(fresh.p_congested))
    assert fresh.p_congested[k] >= result.risk  # at or above the risk: no confirmation could bound it below
    row = result.table().iloc[-1]  # the confirmation is the table's last row, on the last round's schedules
    assert (row["sample"], row["round"], row["draws"]) == ("fresh", result.rounds[-1].index, FRESH)
    assert row["p_congested_max_lo"] == lo[k] and row["p_congested_max_hi"] == hi[k]
    for figure in (f"{FRESH} fresh draws", f"{TUNING} tuning draws", f"{100 * fresh.p_congested[k]:.1f} %"):
        assert figure in result.outcome


def test_congestion_by_transformer_is_the_share_of_draws_it_overloads(result, small_area):
    """On the confirmation's fresh draws transformer A overloads in some (the verdict above): the
    probability by transformer is the share of draws whose transformer loading exceeds 1, as the
    per-draw loading says and as a load flow of the drawn powers of our own finds."""
    from bayesflex.analysis.query import congestion_probability

    tree = result.confirm_tree
    df = congestion_probability(tree, by="trafo").set_index(["time", "trafo"]).probability
    loading = tree["network"]["trafo_loading_pu"]  # (chain, draw, time, trafo)
    assert tree.attrs["loading_max_pu"] == 1.0 and float(np.abs(loading - 1.0).min()) > 1e-5  # no ties
    share = (loading > 1.0).mean(("chain", "draw")).to_series()
    assert 0 < share.max() < 1 and share.xs("B transformer", level="trafo").max() == 0
    np.testing.assert_allclose(df.loc[share.index].values, share.values, rtol=0, atol=1e-12)
    # B never overloads, so the highest loading of either transformer is A's: ours, draw by draw
    lf = _loadflow_of_the_draws(small_area, tree)
    assert lf.converged.all()
    np.testing.assert_allclose(lf.trafo_loading_pu, loading.values[0].max(axis=-1), rtol=1e-5)
    p_a = df.xs("A transformer", level="trafo").loc[loading.time.values].values
    np.testing.assert_allclose((lf.trafo_loading_pu > 1.0).mean(axis=0), p_a, rtol=0, atol=1e-12)


def test_the_confirmation_is_reproducible_from_the_seed(result, small_area):
    """Same seed, same verdict: the confirmation is the study of the final schedules at the derived seed."""
    tree = bf.run_study(small_area, "two_area", draws=FRESH, seed=confirmation_seed(3), positions=result.positions,
                        headroom=False)
    np.testing.assert_array_equal(tree["summary"]["p_congested_any"].values, result.confirmation.p_congested)
    assert confirmation_seed(3) == confirmation_seed(3) != confirmation_seed(4)


def test_schedules_without_congestion_are_confirmed_secure(small_area):
    """Twelve pumps never overload the transformer: none of 100 fresh draws is congested, bound 3.7 % < 5 %."""
    pumps = _pumps(small_area, 12)
    res = coordinate(small_area, "two_area", [Aggregator("alpha", tuple(pumps))], PRICE, risk=0.05, draws=5, seed=2,
                     max_rounds=0, confirm_draws=100)
    assert res.secure and res.outcome.startswith("secure"), res.outcome
    assert res.confirmation.p_congested.max() == 0 and res.confirmation.interval()[1].max() < 0.05


def _study(p, draws, seed=0):
    p = np.asarray(p, float)
    return Round(0, p, p * 0, p[:, None], np.ones(1), np.ones(1), {}, {}, {}, 0, draws, seed)


def test_verdict_on_the_upper_bound_of_the_fresh_draws():
    tuned = _study([0.0, 0.0], 30)
    secure, text = _verdict("within", True, tuned, _study([0.0, 0.0], 100), 0.05)  # bound 3.84 / 103.84 = 3.7 %
    assert secure and text.startswith("secure")
    secure, text = _verdict("within", True, tuned, _study([0.0, 0.06], 1000), 0.05)
    assert not secure and text.startswith("not secure out of sample")
    # 0 of 50: bound 3.84 / 53.84 = 7.1 % >= 5 %; 73 draws would do (3.84 / 76.84 = 4.998 %)
    secure, text = _verdict("within", True, tuned, _study([0.0, 0.0], 50), 0.05)
    assert not secure and text.startswith("not confirmed") and "about 73 fresh draws" in text
    # the in-sample verdict stands when it is negative, whatever the fresh draws say
    secure, text = _verdict("not secure after 3 rounds", False, tuned, _study([0.0, 0.0], 1000), 0.05)
    assert not secure and text.startswith("not secure after 3 rounds")


def _score_upper(k: int, n: int) -> float:
    """Upper end of the 95 % score interval, by root-finding: the u > k/n where the score
    statistic (k/n - u)^2 n / (u (1 - u)) reaches z^2."""
    return brentq(lambda u: (k / n - u) ** 2 * n - Z2 * u * (1 - u), max(k / n, 1e-12), 1.0)


def test_tolerated_and_needed_draws_follow_the_wilson_bound():
    # zero count: upper bound z^2 / (n + z^2) < risk  <=>  n > z^2 (1 - risk) / risk = 72.99 at 5 %
    assert draws_to_confirm(0.0, 0.05) == 73 and Z2 / (73 + Z2) < 0.05 < Z2 / (72 + Z2)
    assert tolerated_draws(72, 0.05) == 0 and tolerated_draws(73, 0.05) == 0
    assert draws_to_confirm(0.05, 0.05) == np.inf
    for n, risk in ((200, 0.05), (1000, 0.05), (30, 0.2)):
        k = tolerated_draws(n, risk)
        assert _score_upper(k, n) < risk <= _score_upper(k + 1, n), (n, risk, k)
        assert k < risk * n  # stricter than the point estimate
    for p, risk in ((0.02, 0.05), (0.004, 0.01)):
        n = draws_to_confirm(p, risk)
        assert _score_upper(p * n, n) < risk <= _score_upper(p * (n - 1), n - 1)


def test_congestion_that_is_not_the_portfolios_is_reported(small_area):
    """A transformer of 10 kVA: the houses' own demand overloads it whatever the pumps do."""
    f = small_area.replace(trafos=tuple(dataclasses.replace(t, sn_kva=10.0) for t in small_area.trafos))
    pumps = _pumps(f, 4)
    res = coordinate(f, "two_area", [Aggregator("alpha", tuple(pumps))], PRICE, risk=0.05, draws=10, seed=1,
                     max_rounds=6, confirm_draws=20)
    assert not res.secure and not res.secure_in_sample
    assert res.outcome.startswith("not secure") and "on 20 fresh draws" in res.outcome


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
    with pytest.raises(ConfigError, match=r"confirm_draws 0\b.*whole number >= 1"):
        coordinate(small_area, "two_area", [Aggregator("a", tuple(pumps))], PRICE, confirm_draws=0)


# -- stage 2 keeps the commitment where the devices can (hand-derived cases) -----------------------------------
STEP_PRICE = np.array([0.10, 0.10, 0.30, 0.30])  # GBP/kWh, four half-hours
IMBALANCE = 1.0  # GBP/kWh: above every price, so no re-plan leaves its commitment to save energy cost


def _ev_and_battery(feeder):
    """An EV in area A (home for the first two half-hours; 1.8 kWh at 90 %: 4 kW for one half-hour) and a
    battery in area B (10 kWh, 4 kW, half full; 1 .. 9.5 kWh)."""
    a = next(x for x in feeder.agents if x.startswith("A"))
    b = next(x for x in feeder.agents if x.startswith("B"))
    return [EVCharger(a, power_kw=4.0, energy_kwh=1.8, home=(True, True, False, False), departure=2, efficiency=0.9),
            Battery(b, capacity_kwh=10.0, power_kw=4.0)]


def _replan(devices, commitment, ev_cap_kw):
    cap = np.full((2, 4), np.inf)
    cap[0, 0] = ev_cap_kw  # the DSO limits the EV in area A in the first half-hour
    return schedule(devices, STEP_PRICE, cap_kw=cap, commitment_kw=commitment, imbalance_price_per_kwh=IMBALANCE)


def test_a_limit_is_met_by_moving_energy_to_another_half_hour_and_device(small_area):
    """Committed [4, 4, -2, -2] kW: the EV charging in half-hour 0, the battery in half-hour 1, discharging
    after.  The DSO stops the EV in half-hour 0; it can charge only in half-hour 1 (its 2 kWh: 4 kW), and the
    battery in area B takes half-hour 0 instead (4 kW, SoC 5 -> 7 -> 7 -> 6 -> 5 kWh, within 1 .. 9.5):
    every half-hour on its commitment, no imbalance, area A's power in half-hour 0 down by 4 kW."""
    s = _replan(_ev_and_battery(small_area), np.array([4.0, 4.0, -2.0, -2.0]), ev_cap_kw=0.0)
    np.testing.assert_allclose(s.p_kw, [[0, 4, 0, 0], [4, 0, -2, -2]], atol=1e-7)
    np.testing.assert_allclose(s.shortfall_kw, 0, atol=1e-7)
    assert abs(s.imbalance_cost) < 1e-7
    assert s.cost == pytest.approx(0.5 * (0.1 * 4 + 0.1 * 4 - 0.3 * 2 - 0.3 * 2))  # the committed energy's


def test_what_cannot_be_moved_is_short_where_limited_and_long_where_bought_back(small_area):
    """Committed [8, 0, -4, 0] kW: EV and battery both charging at 4 kW in half-hour 0.  The DSO caps the EV
    at 1 kW there; the battery is already at its 4 kW: 3 kW short (1.5 kWh).  The EV still needs 1.5 kWh
    from the grid, at 3 kW in half-hour 1 -- bought there (3 kW long at 0.10) rather than freed by the
    battery, which would then have to recharge at 0.30.  Off commitment: 1.5 + 1.5 = 3 kWh."""
    s = _replan(_ev_and_battery(small_area), np.array([8.0, 0.0, -4.0, 0.0]), ev_cap_kw=1.0)
    np.testing.assert_allclose(s.shortfall_kw, [-3, 3, 0, 0], atol=1e-7)
    np.testing.assert_allclose(s.p_kw, [[1, 3, 0, 0], [4, 0, -4, 0]], atol=1e-7)
    assert s.imbalance_cost == pytest.approx(IMBALANCE * 3.0)
    assert s.cost == pytest.approx(0.5 * (0.1 * 5 + 0.1 * 3 - 0.3 * 4))
    # the coordination's account of it: 1.5 kWh short, all of it where the DSO limited the devices, 1.5 long
    res = Coordination(secure=True, outcome="", risk=0.05, rounds=[], first={"alpha": s}, final={"alpha": s},
                       cap_kw={"alpha": np.where(np.arange(4) == 0, 1.0, np.inf)[None].repeat(2, 0)},
                       floor_kw={"alpha": np.full((2, 4), -np.inf)}, positions=None, tree=None,
                       commitment_kw={"alpha": np.array([8.0, 0.0, -4.0, 0.0])})
    row = res.commitments().iloc[0]
    assert (row.half_hours, row.half_hours_kept, row.half_hours_limited) == (4, 2, 1)
    assert (row.short_kwh, row.short_limited_kwh, row.long_kwh) == pytest.approx((1.5, 1.5, 1.5))


def test_agents_are_zoned_by_the_transformer_that_feeds_them(small_area):
    agents = list(small_area.agents)
    zones = _zones(small_area, agents)
    names = [t.name for t in small_area.trafos]
    np.testing.assert_array_equal(zones, [names.index(f"{a[0]} transformer") for a in agents])  # the builder's areas


def test_limits_are_sized_zone_by_zone():
    """Ten congested draws of one half-hour; zone 0 (agents 0, 1) is asked 1..10 kW, zone 1 (agent 2) 5..8 kW
    in four of them.  With 3 tolerated draws, 2 may stay uncured, one per zone: each zone's total is its own
    second largest, plus 5 % -- 9 x 1.05 and 7 x 1.05 -- so that one draw stays uncured in each (10 > 9.45,
    8 > 7.35).  Zone 1's big asks fall in zone 0's small ones: one total over both zones (the draws' sums
    9, 9, 9, 9, 5, 6, 7, 8, 9, 10: the third largest, 9 x 1.05) shared by the mean asks (5.5 : 2.6) would cut
    zone 0 by 6.4 kW and zone 1 by 3.0 kW, leaving four draws uncured in each."""
    need0 = np.arange(1.0, 11.0)
    rows = np.c_[need0 / 2, need0 / 2, np.r_[np.zeros(6), [5.0, 6.0, 7.0, 8.0]][::-1]]
    assert tolerated_draws(200, 0.05) == 3
    totals = _zone_totals(rows, np.array([0, 0, 1]), allowed=3)
    assert totals == pytest.approx({0: 9 * 1.05, 1: 7 * 1.05})
    assert _zone_totals(rows, np.array([0, 0, 1]), allowed=0) == pytest.approx({0: 10 * 1.05, 1: 8 * 1.05})


def test_a_transformer_limit_on_the_devices_sum_leaves_the_choice_to_the_aggregator(small_area):
    """The same commitment [8, 0, -4, 0] kW, now with the DSO's limit on what the two devices draw together
    in half-hour 0 (5 kW, as if both were under one transformer phase) instead of a cap on the EV: 3 kW
    short there whichever device gives way, the energy bought back at 0.10 in half-hour 1 -- the same
    3 kWh off the commitment, the same cost, each device within its own constraints."""
    devices = _ev_and_battery(small_area)
    limit = np.array([5.0, np.inf, np.inf, np.inf])
    s = schedule(devices, STEP_PRICE, commitment_kw=np.array([8.0, 0.0, -4.0, 0.0]),
                 imbalance_price_per_kwh=IMBALANCE, groups=[([0, 1], limit, None)])
    assert s.portfolio_kw[0] == pytest.approx(5.0)
    np.testing.assert_allclose(s.shortfall_kw, [-3, 3, 0, 0], atol=1e-7)
    assert s.imbalance_cost == pytest.approx(IMBALANCE * 3.0)
    assert s.cost == pytest.approx(0.5 * (0.1 * 5 + 0.1 * 3 - 0.3 * 4))
    ev, battery = s.p_kw
    assert ev[:2].sum() * 0.5 * 0.9 == pytest.approx(1.8) and ev[2:].max() == 0  # charged while home
    soc = 5.0 + 0.5 * np.cumsum(battery)
    assert soc.min() >= 1 - 1e-9 and soc.max() <= 9.5 + 1e-9 and soc[-1] >= 5 - 1e-9
