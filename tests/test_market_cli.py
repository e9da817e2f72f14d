"""``bayesflex market``: files, fresh draws, positions, report section; markets files with bad input."""

import json
import tomllib

import numpy as np
import pandas as pd
import pytest

from bayesflex.aggregator.markets import load_markets, parse_markets
from bayesflex.cli.main import main
from bayesflex.errors import ConfigError
from bayesflex.study.files import open_study
from bayesflex.study.positions import read_positions


@pytest.fixture(scope="module")
def decided(tmp_path_factory):
    out = tmp_path_factory.mktemp("market")
    assert main(["run", "--draws", "40", "--periods", "8", "--start", "2026-01-14 16:00", "--seed", "4",
                 "--jobs", "1", "--out", str(out)]) == 0
    assert main(["market", str(out), "--risk", "0.1", "--jobs", "1"]) == 0
    return out


def test_market_writes_its_files_and_judges_on_a_fresh_seed(decided):
    m = json.loads((decided / "market.json").read_text())
    fresh = open_study(decided / "market_fresh" / "result.nc")
    assert fresh.attrs["seed"] != 4 and int(fresh.attrs["draws"]) == 40
    assert m["fresh"]["draws"] == 40 and m["fresh_seed"] == int(fresh.attrs["seed"])
    table = pd.read_csv(decided / "market.csv")
    assert set(table.columns) >= {"product", "direction", "start", "end", "kw"}
    assert "Markets: what to offer where" in (decided / "report.html").read_text()
    # what fell short on the fresh draws, recomputed here from their deliverable flexibility
    h = fresh["heuristic"]
    short = np.zeros(40, bool)
    for d in ("up", "down"):
        cap = np.asarray(m["capacity_kw"][d])
        short |= (cap[None, :] > h[f"portfolio_deliverable_{d}_kw"].values[0] + 1e-6).any(axis=1)
    assert m["fresh"]["p_shortfall"] == pytest.approx(short.mean())


def test_market_positions_move_the_plan_by_the_commitments(decided):
    m = json.loads((decided / "market.json").read_text())
    tree = open_study(decided / "result.nc")
    pos = read_positions(decided / "market_positions.csv", agents=tuple(tree["constant_data"].agent.values))
    pp = tree["prior_predictive"]
    plan = (pp["p_kw"] - pp["p_base_kw"] - pp["p_pv_kw"]).sum("phase").mean(("chain", "draw"))
    moved = pos.p_kw.sum(axis=1) - plan.transpose("time", "agent").values.sum(axis=1)
    assert moved == pytest.approx(np.asarray(m["capacity_kw"]["up"]) - np.asarray(m["capacity_kw"]["down"]),
                                  abs=1e-4)  # powers are stored in float32
    assert np.all(pos.p_lb_kw <= pos.p_kw + 1e-9) and np.all(pos.p_kw <= pos.p_ub_kw + 1e-9)


def test_market_reuses_its_fresh_study_and_names_bad_options(decided, capsys):
    assert main(["market", str(decided), "--risk", "0.1", "--objective", "profit=1,carbon=0.05"]) == 0
    assert "already run" in capsys.readouterr().err
    assert main(["market", str(decided), "--risk", "lots"]) == 2
    assert "--risk 'lots'" in capsys.readouterr().err
    assert main(["market", str(decided), "--markets", "ukk"]) == 2
    assert "did you mean uk?" in capsys.readouterr().err


def _uk():
    return tomllib.loads(load_markets("uk").text)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c["products"]["day_ahead"].update(direction="sideways"), r"\[products.day_ahead\] direction = "
                                                                        r"'sideways': one of up, down"),
    (lambda c: c["products"]["day_ahead"].update(energy_gbp_per_mwh=[1.0] * 47), "48 numbers"),
    (lambda c: c["products"]["dso_secure"].update(stacks_with=["dayahead"]), "did you mean day_ahead"),
    (lambda c: c["products"]["dso_secure"].update(stacks_with=["bm_bid"]), "different directions"),
    (lambda c: c["products"]["day_ahead"].update(called=0.5), "always delivered"),
    (lambda c: c["products"]["day_ahead"].pop("penalty_gbp_per_mwh"), "penalty_gbp_per_mwh required"),
    (lambda c: c["products"]["dc_low"].update(block_hours=0.75), "whole number of half-hours"),
    (lambda c: c["products"]["dc_low"].update(pennalty=1), "key 'pennalty' unknown .allowed: availability"),
    (lambda c: c["products"]["intraday"]["energy_gbp_per_mwh"].update(p90=[0.0] * 48), "must not decrease"),
    (lambda c: c["products"]["dso_secure"].update(window=["16:15", "20:00"]), "a half-hour between"),
])
def test_markets_file_errors_name_the_key(edit, message):
    cfg = _uk()
    edit(cfg)
    with pytest.raises(ConfigError, match=message):
        parse_markets(cfg, origin="uk.toml")


def test_quantile_forecast_mean_and_efa_blocks():
    m = load_markets("uk")
    fc = m.product("intraday").energy
    # linear between p10, p50, p90 and flat beyond: the mean of the 100 levels, derived by hand at 00:00
    p10, p50, p90 = 66.0, 74.0, 84.0
    u = (np.arange(100) + 0.5) / 100
    expect = np.where(u < 0.1, p10, np.where(u < 0.5, p10 + (u - 0.1) / 0.4 * (p50 - p10),
                                             np.where(u < 0.9, p50 + (u - 0.5) / 0.4 * (p90 - p50), p90))).mean()
    assert fc.mean()[0] == pytest.approx(expect)
    from bayesflex.aggregator.markets import blocks

    times = pd.date_range("2026-01-13 22:00", periods=12, freq="30min")  # UTC = UK time in January
    ids = blocks(m.product("dc_low"), times, "Europe/London")
    assert (ids[:2] == -1).all() and (ids[2:10] == 0).all() and (ids[10:] == -1).all()  # 23:00-03:00 only
