"""Aggregator positions as study input, the portfolio's sums, and market products at risk."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bayesflex as bf
from bayesflex.analysis.query import flexibility_at_risk, predictive, product_at_risk
from bayesflex.cli.main import main
from bayesflex.errors import ConfigError
from bayesflex.study.engine import run_study
from bayesflex.study.positions import read_positions, write_positions
from bayesflex.study.results import deliverable

START = "2026-01-14 17:00"
PERIODS = 4


def _frame(agents, *, start=START, periods=PERIODS, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    times = pd.date_range(start, periods=periods, freq="30min")
    rows = []
    for a in agents:
        for t in times:
            p = rng.uniform(0.0, 6.0)  # a heat pump or an EV charger's planned kW
            rows.append({"agent": a, "time": t, "p_kw": p, "p_lb_kw": p - rng.uniform(0, p),
                         "p_ub_kw": p + rng.uniform(0, 4), "offer_price": rng.uniform(40, 200)})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def portfolio(ieee):
    return list(ieee.agents[::5])  # 11 of the 55 houses


@pytest.fixture(scope="module")
def positions_csv(tmp_path_factory, portfolio):
    path = tmp_path_factory.mktemp("pos") / "positions.csv"
    _frame(portfolio).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def study(ieee, positions_csv):
    return run_study(ieee, "default", draws=40, seed=4, positions=positions_csv)


def test_positions_round_trip_through_csv_and_netcdf(tmp_path, ieee, portfolio):
    pos = read_positions(_frame(portfolio), agents=ieee.agents)
    for name in ("p.csv", "p.nc"):
        back = read_positions(write_positions(pos, tmp_path / name), agents=ieee.agents)
        assert back.agents == pos.agents and (back.times == pos.times).all()
        for k in ("p_kw", "p_lb_kw", "p_ub_kw", "offer_price"):
            np.testing.assert_allclose(getattr(back, k), getattr(pos, k), rtol=0, atol=1e-12)


@pytest.mark.parametrize("edit, words", [
    (lambda df: df.drop(columns="p_ub_kw"), ["p_ub_kw", "missing"]),
    (lambda df: df.assign(agent=df.agent.where(df.index != 3, "nobody")), ["'nobody'", "not on the feeder"]),
    (lambda df: df.assign(p_lb_kw=df.p_lb_kw.where(df.index != 2, 99.0)), ["row 4", "p_lb_kw", "p_kw"]),
    (lambda df: pd.concat([df, df.iloc[[0]]]), ["given twice"]),
    (lambda df: df.drop(index=5), ["no position at"]),
    (lambda df: df.assign(p_kw=df.p_kw.astype(object).where(df.index != 1, "lots")), ["row 3", "'lots'"]),
    (lambda df: df.assign(time=df.time.where(df.index != 0, pd.Timestamp("2026-01-14 17:10"))),
     ["half-hour"]),
])
def test_bad_positions_are_named(tmp_path, ieee, portfolio, edit, words):
    path = tmp_path / "bad.csv"
    edit(_frame(portfolio)).to_csv(path, index=False)
    with pytest.raises(ConfigError) as err:
        read_positions(path, agents=ieee.agents)
    assert str(path) in str(err.value)
    for w in words:
        assert w in str(err.value)


def test_positions_must_cover_the_study(ieee, positions_csv):
    with pytest.raises(ConfigError, match="no positions for half-hour 2026-01-14 19:00"):
        run_study(ieee, "default", draws=2, seed=1, start=START, periods=PERIODS + 1, positions=positions_csv)


def test_a_positioned_agent_is_its_uncontrollable_draw_plus_its_position(study, ieee, positions_csv, portfolio):
    pred = predictive(study)
    pos = read_positions(positions_csv)
    assert list(pd.to_datetime(pred.time.values)) == list(pos.times)  # the horizon is the positions'
    sub = pred.sel(agent=portfolio)
    phases = study["constant_data"]["agent_phases"].sel(agent=portfolio).values
    unc = (sub.p_base_kw + sub.p_pv_kw).values
    for name in ("p_kw", "p_lb_kw", "p_ub_kw"):
        want = unc + getattr(pos, name)[None, None, :, :, None] * phases  # single-phase houses
        np.testing.assert_allclose(sub[name].values, want, atol=2e-6)
    for name in ("p_ev_kw", "p_hp_kw", "p_battery_kw"):
        assert float(np.abs(sub[name]).max()) == 0.0
    others = pred.drop_sel(agent=portfolio)  # the rest keep their drawn technologies
    parts = sum(others[k] for k in ("p_base_kw", "p_pv_kw", "p_ev_kw", "p_hp_kw", "p_battery_kw"))
    np.testing.assert_allclose(others.p_kw.values, parts.values, atol=2e-5)
    assert float(others.p_ev_kw.max()) > 0


def test_portfolio_is_the_positioned_agents(study, positions_csv, portfolio):
    pos = read_positions(positions_csv)
    s, h = study["summary"], study["heuristic"]
    np.testing.assert_allclose(s.portfolio_position_p_kw.values, pos.p_kw.sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(s.portfolio_position_p_lb_kw.values, pos.p_lb_kw.sum(axis=1), rtol=1e-12)
    pred = predictive(study).sel(agent=portfolio)
    np.testing.assert_allclose(h.portfolio_p_kw.values, pred.p_kw.sum(("agent", "phase")).values, atol=1e-4)
    assert study["positions"].sizes["agent"] == len(portfolio)
    assert study.attrs["positions_sha256"]


def _within_limits(feeder, p_kw, q_kvar) -> np.ndarray:
    """Every bus but the source within the feeder's voltage limits, every line and transformer within
    its rating, by a load flow of its own (bf.solve_loadflow, checked against pandapower)."""
    lf = bf.solve_loadflow(feeder, p_kw, q_kvar)
    v = np.delete(lf.v_pu, feeder.source.bus, axis=-2)
    return (lf.converged & (v.min(axis=(-2, -1)) >= feeder.v_min_pu) & (v.max(axis=(-2, -1)) <= feeder.v_max_pu)
            & (lf.loading_pu.max(axis=-1) <= 1.0) & (lf.trafo_loading_pu <= 1.0))


def test_what_the_portfolio_can_sell_is_its_bounds_where_the_network_takes_them(study, ieee, positions_csv):
    """Where every agent at its upper (lower) bound is within the network's limits (an independent
    load flow of the draws' bounds), nothing is taken back and nothing was forced: the portfolio
    can sell the whole span of its planned bounds, sum(p_ub_kw - p_kw) (sum(p_kw - p_lb_kw)) of the
    positions file, in every such draw; nowhere can it sell more."""
    pos = read_positions(positions_csv)
    pred, h = predictive(study), study["heuristic"]
    q = pred.q_kvar.values[0].astype(float)
    assert float(np.abs(h.portfolio_adjust_down_kw).max() + np.abs(h.portfolio_adjust_up_kw).max()) == 0.0
    for side, bound, span in (("up", "p_ub_kw", (pos.p_ub_kw - pos.p_kw).sum(axis=1)),
                              ("down", "p_lb_kw", (pos.p_kw - pos.p_lb_kw).sum(axis=1))):
        secure = _within_limits(ieee, pred[bound].values[0].astype(float), q)  # (draw, time)
        assert secure.mean() > 0.9, side
        got = h[f"portfolio_deliverable_{side}_kw"].values[0]
        np.testing.assert_allclose(got[secure], np.broadcast_to(span, got.shape)[secure], rtol=0, atol=1e-4,
                                   err_msg=side)
        assert np.all(got <= span + 1e-4), side


def test_a_forced_move_against_the_product_uses_up_its_headroom():
    """By hand: what the portfolio can sell is its joint headroom less the net move the network
    forced the other way; a forced move the product's way is not counted, and nothing goes below 0."""
    port = {"portfolio_headroom_up_kw": np.array([5.0, 5.0, 5.0, 1.0]),
            "portfolio_headroom_down_kw": np.array([4.0, 4.0, 4.0, 4.0]),
            "portfolio_adjust_up_kw": np.array([0.0, 2.0, 1.0, 0.0]),
            "portfolio_adjust_down_kw": np.array([0.0, 0.0, 3.0, 3.0])}
    got = deliverable(port)
    # net forced: none; 2 kW up; 2 kW down; 3 kW down
    np.testing.assert_array_equal(got["portfolio_deliverable_up_kw"], [5.0, 5.0, 3.0, 0.0])
    np.testing.assert_array_equal(got["portfolio_deliverable_down_kw"], [4.0, 2.0, 4.0, 4.0])


def test_product_delivery_and_commitment(study):
    h = study["heuristic"]
    t0, t1 = pd.Timestamp(START), pd.Timestamp(START) + pd.Timedelta("60min")
    delivered = h.portfolio_deliverable_up_kw.sel(time=slice(t0, t1)).min("time").values.ravel()
    kw = float(np.median(delivered))
    df = product_at_risk(study, "up", kw, start=t0, end=t1, confidence=(0.5, 0.9))
    assert df.half_hours.iloc[0] == 3
    assert df.p_deliver.iloc[0] == pytest.approx((delivered >= kw - 1e-9).mean())
    for _, r in df.iterrows():  # a commitment at confidence c is delivered in at least c of the draws
        assert (delivered >= r.commitment_kw - 1e-9).mean() >= r.confidence
    assert df.commitment_kw.iloc[1] <= df.commitment_kw.iloc[0]
    one = product_at_risk(study, "up", kw, start=t0, confidence=0.9)  # fewer half-hours: never less
    assert one.commitment_kw.iloc[0] >= df.commitment_kw.iloc[1] - 1e-12
    per_slot = flexibility_at_risk(study, 0.9, direction="up", time=str(t0))
    assert per_slot.deliverable_kw.iloc[0] == pytest.approx(one.commitment_kw.iloc[0])
    with pytest.raises(ConfigError, match="before start"):
        product_at_risk(study, "up", 1.0, start=t1, end=t0)
    with pytest.raises(ConfigError, match="allowed: up, down"):
        product_at_risk(study, "sideways", 1.0, start=t0)


def test_cli_runs_with_positions_and_answers_a_product(tmp_path, positions_csv, capsys):
    out = tmp_path / "study"
    assert main(["run", "--draws", "5", "--jobs", "1", "--positions", str(positions_csv), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "agents with positions" in text
    assert f"{len(read_positions(positions_csv).agents)} agents with planned positions" in \
        (out / "report.html").read_text()
    assert main(["query", str(out), "product", "--direction", "down", "--kw", "2", "--start", START,
                 "--end", "2026-01-14 18:00", "--format", "csv"]) == 0
    df = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert list(df.confidence) == [0.5, 0.9, 0.95] and (df.half_hours == 3).all()
    assert main(["query", str(out), "product", "--kw", "2"]) == 2
    assert "needs --kw and --start" in capsys.readouterr().err
