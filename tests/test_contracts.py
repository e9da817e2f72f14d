"""Aggregator contracts as data (bayesflex.aggregator.contracts) and the ``bayesflex coordinate`` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bayesflex.aggregator.contracts import load_contracts
from bayesflex.aggregator.portfolio import Battery, EVCharger, HeatPump
from bayesflex.cli.main import main
from bayesflex.errors import ConfigError

from .conftest import REPO

sys.path.insert(0, str(REPO / "contracts"))
import derive_two_area

TIMES = pd.date_range("2026-01-14 00:00", periods=96, freq="30min")
#: a stand-in for a feeder: load_contracts checks only its agents' names
FEEDER = SimpleNamespace(name="tiny", agents=("A1-01", "A1-02", "A1-03", "B1-01"), n_agent=4)
HEAD = """
[market]
price_per_kwh = 0.2
"""


def _write(tmp_path: Path, body: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(HEAD + body)
    return path


def _load(tmp_path, body, **kw):
    return load_contracts(_write(tmp_path, body), **{"feeder": FEEDER, "times": TIMES, **kw})


BATTERY = """
[[aggregator]]
name = "x"
batteries = [ {{ agent = "{agent}", capacity_kwh = {cap}, power_kw = 4{extra} }} ]
"""


def _two_area_agents() -> tuple[str, ...]:
    """The two-area feeder's houses as its builder names them (area, feeder, house: "A1-01", ...), from
    feeders/two_area.toml's houses per feeder, without building the network."""
    import tomllib

    areas = tomllib.loads((REPO / "feeders" / "two_area.toml").read_text())["source"]["area"]
    return tuple(f"{a['name']}{f + 1}-{h + 1:02d}" for a in areas for f, n in enumerate(a["houses_per_feeder"])
                 for h in range(n))


def test_the_two_area_file_holds_the_papers_devices_as_drawn():
    """The shipped file lists, explicitly, the devices its script draws (to its rounding), on the feeder."""
    feeder = SimpleNamespace(name="two_area", agents=_two_area_agents())
    feeder.n_agent = len(feeder.agents)
    c = load_contracts("two_area", feeder=feeder, times=TIMES.tz_localize("Europe/London"))  # priors/two_area's
    assert (c.feeder, c.priors, c.currency) == ("two_area", "two_area", "GBP")
    kinds = [type(d) for a in c.aggregators for d in a.devices]
    assert (kinds.count(Battery), kinds.count(HeatPump), len(c.aggregators)) == (70, 80, 2)  # the paper's counts
    bats, pumps, t_out, cop = derive_two_area.draw(feeder.agents, 1)
    expect = {"alpha": bats[0::2] + pumps[0::2], "beta": bats[1::2] + pumps[1::2]}
    hh = np.arange(96) % 48
    for agg in c.aggregators:
        assert [d.agent for d in agg.devices] == [e["agent"] for e in expect[agg.name]]
        for d, e in zip(agg.devices, expect[agg.name]):
            for key, value in e.items():
                if key == "agent":
                    continue
                got = np.asarray(getattr(d, key), float)
                night = (hh >= 44) | (hh < 12)  # 22:00-06:00: the 3 K setback of the lower bound
                want = value - 3.0 * night if key == "t_min_c" else np.broadcast_to(value, got.shape)
                np.testing.assert_allclose(got, want, atol=5e-4, err_msg=f"{d.agent} {key}")  # 3 decimals written
            if isinstance(d, HeatPump):  # hplib's generic COP at 45 degC of the (rounded) daily temperature
                np.testing.assert_allclose(d.cop, np.tile(cop, 2), atol=0.154 * 0.005 + 1e-9)
                np.testing.assert_allclose(d.t_out_c, np.tile(t_out, 2), atol=0.005)
            else:
                assert (d.soc0, d.soc_min, d.soc_max) == (0.5, 0.1, 0.95)
    np.testing.assert_allclose(c.price_per_kwh, derive_two_area.PRICE_DAY * 2)
    np.testing.assert_allclose(c.imbalance_price_per_kwh, 2 * 0.38)
    assert c.commitment_kw == {} and len(c.sha256) == 64


def test_a_daily_profile_follows_the_local_time_of_day(tmp_path):
    """48 values are read by the half-hour of the day: a horizon from 12:00 starts at value 24."""
    profile = ", ".join(str(k / 100) for k in range(48))
    path = tmp_path / "p.toml"
    path.write_text(f"[market]\nprice_per_kwh = [{profile}]\nimbalance_price_per_kwh = 1.5\n"
                    + BATTERY.format(agent="A1-01", cap=9, extra=""))
    noon = pd.date_range("2026-01-14 12:00", periods=4, freq="30min", tz="Europe/London")
    c = load_contracts(path, feeder=FEEDER, times=noon)
    np.testing.assert_allclose(c.price_per_kwh, [0.24, 0.25, 0.26, 0.27])
    np.testing.assert_allclose(c.imbalance_price_per_kwh, 1.5)
    c = load_contracts(path, times=pd.date_range("2026-01-14 23:00", periods=3, freq="30min"))
    np.testing.assert_allclose(c.price_per_kwh, [0.46, 0.47, 0.0])  # and wraps past midnight


def test_ev_window_departure_setback_and_commitment(tmp_path):
    body = """
[weather]
t_out_c = 4.0
[[aggregator]]
name = "x"
commitment_kw = 1.5
ev_chargers = [ { agent = "A1-01", power_kw = 7, energy_kwh = 20, home = ["18:00", "07:30"], departure = "07:30" } ]
[[aggregator.heat_pumps]]
agent = "A1-02"
rating_kw = 3
c_kwh_per_k = 8
h_kw_per_k = 0.2
cop = 3.0
t_min_c = 19
setback_k = 2.5
setback = ["22:00", "06:00"]
"""
    c = _load(tmp_path, body)
    hp, ev = c.aggregators[0].devices  # by kind: batteries, heat pumps, EV chargers
    assert isinstance(ev, EVCharger) and ev.departure == 15  # 07:30 is half-hour 15 of the horizon
    hh = np.arange(96) % 48
    np.testing.assert_array_equal(ev.home, (hh >= 36) | (hh < 15))
    np.testing.assert_allclose(hp.t_min_c, np.where((hh >= 44) | (hh < 12), 16.5, 19.0))
    np.testing.assert_allclose(hp.t_out_c, 4.0)
    np.testing.assert_allclose(c.commitment_kw["x"], 1.5)
    ev2 = _load(tmp_path, body.replace('departure = "07:30"', 'departure = "2026-01-15 07:30"')).aggregators[0]
    assert ev2.devices[1].departure == 48 + 15


@pytest.mark.parametrize("body, words", [
    (BATTERY.format(agent="A1-1", cap=9, extra=""), ["[[aggregator]] 'x' batteries[0] agent", ("'A1-1' not on feeder "
                                                     "'tiny'"), "did you mean A1-01"]),
    (BATTERY.format(agent="A1-01", cap=-3, extra=""), ["batteries[0] capacity_kwh", "-3", "allowed: a finite number > 0"]),
    (BATTERY.format(agent="A1-01", cap=9, extra=", soc_min = 0.6"), ["batteries[0]", "soc_min 0.6, soc0 0.5",
                                                                     "out of order", "soc_min <= soc0 <= soc_max"]),
    (BATTERY.format(agent="A1-01", cap=9, extra=", capcity_kwh = 3"), ["unknown key 'capcity_kwh'",
                                                                       "did you mean capacity_kwh"]),
    ('[[aggregator]]\nname = "x"\nbatteries = [ { agent = "A1-01", power_kw = 4 } ]\n',
     ["batteries[0]", "missing key 'capacity_kwh'"]),
    (BATTERY.format(agent="A1-01", cap=9, extra="") + 'heat_pumps = [ { agent = "A1-01", rating_kw = 3, '
     'c_kwh_per_k = 8, h_kw_per_k = 0.2, cop = 3 } ]\n[weather]\nt_out_c = 3\n',
     ["heat_pumps[0] agent", "'A1-01' is listed twice (again)"]),
    (BATTERY.format(agent="A1-01", cap=9, extra="") + BATTERY.format(agent="A1-01", cap=9, extra="").replace(
        '"x"', '"y"'), ["'A1-01' is listed twice (already under contract with aggregator 'x')"]),
    (BATTERY.format(agent="A1-01", cap=9, extra="") + "commitment_kw = [" + "1.0, " * 47 + "]\n",
     ["[[aggregator]] 'x' commitment_kw", "47 values", "48 values (a daily profile", ("one per half-hour of the "
      "horizon (96)")]),
    (BATTERY.format(agent="A1-01", cap=9, extra="") + 'ev_chargers = [ { agent = "A1-02", power_kw = 3, energy_kwh '
     '= 50, home = ["18:00", "07:30"], departure = "07:30" } ]\n', ["energy_kwh 50 cannot be charged", "20.2 kWh"]),
    (('[[aggregator]]\nname = "x"\nheat_pumps = [ { agent = "A1-01", rating_kw = 3, c_kwh_per_k = 8, '
     'h_kw_per_k = 0.2, cop = 3 } ]\n'), ["heat_pumps[0]", "no outdoor temperature", "[weather] t_out_c"]),
    ('[[aggregator]]\nname = "x"\n', ["[[aggregator]] 'x'", "has no device"]),
])
def test_bad_contracts_are_named_with_file_key_value_and_what_is_allowed(tmp_path, body, words):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, body)
    text = str(err.value)
    assert text.startswith(str(tmp_path / "c.toml")), text
    for w in words:
        assert w in text, (w, text)


def test_a_price_profile_of_the_wrong_length_is_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[market]\nprice_per_kwh = [0.1, 0.2, 0.3]\n" + BATTERY.format(agent="A1-01", cap=9, extra=""))
    with pytest.raises(ConfigError, match=r"c.toml: \[market\] price_per_kwh: 3 values: give a number, 48 values"):
        load_contracts(path, times=TIMES)


def test_names_files_and_toml_errors(tmp_path):
    with pytest.raises(ConfigError, match="no contracts named 'two_are'; did you mean two_area"):
        load_contracts("two_are")
    bad = tmp_path / "bad.toml"
    bad.write_text("[market\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_contracts(bad, times=TIMES)
    with pytest.raises(ConfigError, match=r"no horizon: give times="):
        load_contracts(_write(tmp_path, BATTERY.format(agent="A1-01", cap=9, extra="")))


@pytest.mark.parametrize("args, words", [
    (["--contracts", "two_are"], "no contracts named 'two_are'; did you mean two_area"),
    (["--contracts", "two_area", "--risk", "1.5"], "--risk 1.5: must lie strictly between 0 and 1"),
    (["--contracts", "two_area", "--draws", "0"], "--draws 0: must be a whole number >= 1"),
    (["--contracts", "two_area", "--feeder", "two_are"], "no feeder named 'two_are'; did you mean two_area"),
])
def test_coordinate_refuses_bad_options_in_one_line(args, words, capsys, tmp_path):
    assert main(["coordinate", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.slow
def test_coordinate_runs_from_files_and_writes_what_run_reads(tmp_path, capsys):
    """One command from a contracts file: rounds, positions (read back by a study), verdict and report.

    Two batteries on the two-area feeder cannot congest it (none of 80 fresh draws: secure at 5 %,
    the bound 3.84 / 83.84 = 4.6 %): no limit, so each aggregator keeps its
    commitment in every half-hour -- ``beta`` its stage-1 schedule, ``alpha`` an explicit 0 kW,
    which a battery keeps by staying idle (no energy bought: cost 0)."""
    import bayesflex as bf

    path = tmp_path / "small.toml"
    path.write_text("""
[contracts]
name = "small"
feeder = "two_area"
priors = "two_area"
[market]
price_per_kwh = [0.1, 0.1, 0.3, 0.3]
[[aggregator]]
name = "alpha"
commitment_kw = 0.0
batteries = [ { agent = "A1-01", capacity_kwh = 9, power_kw = 4 } ]
[[aggregator]]
name = "beta"
batteries = [ { agent = "B1-01", capacity_kwh = 9, power_kw = 4 } ]
""".replace("[0.1, 0.1, 0.3, 0.3]", "[" + ", ".join(["0.1"] * 24 + ["0.3"] * 24) + "]"))
    out = tmp_path / "out"
    assert main(["coordinate", "--contracts", str(path), "--draws", "5", "--confirm-draws", "80", "--jobs", "1",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "round 0: worst P(congestion)" in printed and "\nSECURE: secure" in printed, printed
    info = json.loads((out / "coordination.json").read_text())
    default = load_contracts(path)  # on the horizon of the priors it names: 48 h from 00:00 GMT, 14 January
    assert default.times[0] == pd.Timestamp("2026-01-14 00:00", tz="Europe/London") and len(default.times) == 96
    assert info["inputs"]["contracts"]["sha256"] == default.sha256
    assert info["limits"] == 0 and info["verdict"]["rounds"] == 0
    commit = {c["aggregator"]: c for c in info["commitments"]}
    assert commit["alpha"]["half_hours_kept"] == commit["beta"]["half_hours_kept"] == 96
    assert commit["alpha"]["short_kwh"] == commit["alpha"]["long_kwh"] == 0
    rounds = pd.read_csv(out / "rounds.csv")
    assert list(rounds["sample"]) == ["tuning", "fresh"] and list(rounds["draws"]) == [5, 80]
    html = (out / "report.html").read_text()
    for words in ("Verdict", "Transformers before and after", "data:image/png;base64,", "Market commitments",
                  "Rounds", info["inputs"]["contracts"]["sha256"]):
        assert words in html, words
    pos = pd.read_csv(out / "positions.csv")
    np.testing.assert_allclose(pos[pos.agent == "A1-01"].p_kw, 0.0)  # idle: its commitment
    beta = pos[pos.agent == "B1-01"].p_kw.to_numpy()
    assert beta[:24].max() > 0 and beta[24:].min() < 0  # charges while cheap, discharges while dear
    tree = bf.run_study("two_area", "two_area", draws=2, seed=1, positions=out / "positions.csv", jobs=1)
    np.testing.assert_allclose(tree["summary"]["portfolio_position_p_kw"].values, beta, atol=1e-9)
