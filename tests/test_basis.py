"""What the numbers rest on: local times with the zone named, the source and transformer as the
model gives them, line ratings that were defaulted (and setting them per line code), the headroom
definition.

References are derived by hand or read from the model files themselves, never from our output:
UK summer time is UTC+1 (BST) and winter time UTC (GMT); the clocks go back from 02:00 BST to
01:00 GMT on Sunday 25 October 2026 and forward from 01:00 GMT to 02:00 BST on 29 March 2026;
ENWL's network_5/Feeder_1 (the smallest model: 129 lines, 4 loads) gives ``pu=1.00``,
``BasekV=11``, ``ISC3=3000`` (so sqrt(3) x 11 kV x 3 kA = 57.16 MVA) and no ``normamps`` in
any of its line codes, so every line has OpenDSS's 400 A.
"""

from __future__ import annotations

import io
import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest

import bayesflex as bf
from bayesflex.analysis.report import _basis_section
from bayesflex.cli.main import main, print_summary
from bayesflex.core.timefmt import fmt_time, local, local_half_hour, utc_of_local
from bayesflex.errors import ConfigError, FeederWarning
from bayesflex.io.feeders import read_ratings, with_ratings
from bayesflex.priors import load_priors
from bayesflex.study.engine import local_start, with_timezone

from .conftest import edited_priors, shared_path

SMALLEST = ("enwl", "networks", "network_5", "Feeder_1")
LONDON = "Europe/London"


def _line_codes(folder) -> dict[str, str]:
    """Line name -> line code, read from the model's Lines.txt (not through OpenDSS)."""
    text = (folder / "Lines.txt").read_text().lower()
    return dict(re.findall(r"new line\.(\S+).*?linecode=(\S+)", text))


@pytest.fixture(scope="module")
def enwl():
    """The smallest ENWL feeder as loaded, with the warnings loading it raised, and its folder."""
    folder = shared_path(*SMALLEST)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fd = bf.load_feeder(folder)
    return fd, [w for w in caught if issubclass(w.category, FeederWarning)], folder


@pytest.fixture(scope="module")
def july(enwl, tmp_path_factory):
    """A two-half-hour summer study starting at 13:00 BST (12:00 UTC) on the smallest ENWL feeder."""
    out = tmp_path_factory.mktemp("july")
    tree = bf.run_study(enwl[0], "summer", draws=2, seed=3, start="2026-07-15 13:00", periods=2, jobs=1,
                        progress=False, out=out)
    return out, tree


# ------------------------------------------------------------------------------------------ line ratings
def test_defaulted_ratings_warn_with_their_count(enwl):
    fd, caught, folder = enwl
    n_lines = len(_line_codes(folder))
    assert "normamps" not in (folder / "LineCode.txt").read_text().lower()  # the model gives no rating
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert f"{n_lines} of {n_lines} lines use OpenDSS's default rating (400 A)" in msg
    assert "[line_i_max_a]" in msg and "5c_.06" in msg
    assert fd.line_rating_defaulted.all() and np.all(fd.line_i_max_a == 400.0)
    assert dict(zip(fd.lines, fd.line_code)) == _line_codes(folder)


def test_a_feeder_toml_sets_ratings_per_line_code(enwl, tmp_path):
    _, _, folder = enwl
    toml = tmp_path / "feeder.toml"
    toml.write_text(f'[feeder]\nname = "n5f1"\n[source]\ntype = "opendss"\npath = "{folder / "Master.dss"}"\n'
                    '[line_i_max_a]\n"5C_.06" = 265.0   # case as the user writes it\n"4_xc" = 120\n')
    codes = _line_codes(folder)
    set_ = {n for n, c in codes.items() if c in ("5c_.06", "4_xc")}
    with pytest.warns(FeederWarning, match=rf"{len(codes) - len(set_)} of {len(codes)} lines use") as rec:
        fd = bf.load_feeder(toml)
    assert "5c_.06" not in str(rec[0].message)  # the codes set are no longer named
    want = {n: 265.0 if codes[n] == "5c_.06" else 120.0 if codes[n] == "4_xc" else 400.0 for n in codes}
    assert dict(zip(fd.lines, fd.line_i_max_a.tolist())) == want
    assert dict(zip(fd.lines, fd.line_rating_defaulted.tolist())) == {n: n not in set_ for n in codes}
    assert fd.meta["line_ratings_set"] == {"5C_.06": 265.0, "4_xc": 120.0}


def test_an_unknown_line_code_names_the_file_the_key_and_the_known_codes(enwl, tmp_path):
    fd, _, _ = enwl
    path = tmp_path / "ratings.toml"
    path.write_text('[line_i_max_a]\n"5c_.06" = 265\n"4c_185" = 300\n')
    amps, where, _ = read_ratings(path)
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: \[line_i_max_a\] line code: '4c_185' not on "
                                          r"feeder .* \(allowed: 2c_.0145, 4_xc, 5c_.04, 5c_.06, 5c_.1\)"):
        with_ratings(fd, amps, where)


@pytest.mark.parametrize("body, words", [
    ('[line_i_max_a]\n"5c_.06" = -3\n', "5c_.06 = -3: must be a rating in amperes"),
    ('[line_i_max_a]\n"5c_.06" = "big"\n', "5c_.06 = 'big': must be a rating in amperes"),
    ('[line_i_max_a]\n"5c_.06" = true\n', "5c_.06 = True: must be a rating in amperes"),
    ('[line_i_max_a]\n"5c_.06" = inf\n', "5c_.06 = inf: must be a rating in amperes"),
    ('line_i_max_a = 3\n', "must be a table"),
    ('[ratings]\n"5c_.06" = 200\n', "holds one table, [line_i_max_a]"),
    ('[line_i_max_a\n', "not valid TOML"),
])
def test_bad_ratings_files_are_one_clear_error(tmp_path, body, words):
    path = tmp_path / "ratings.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        read_ratings(path)
    assert str(path) in str(err.value) and words in str(err.value), str(err.value)


def test_ieee_ratings_come_from_its_model(ieee):
    assert not ieee.line_rating_defaulted.any()
    assert set(ieee.line_code) >= {"4c_70", "2c_16"}  # the IEEE data's line codes, as pandapower's std_type


# ------------------------------------------------------------------------------------------ local times
def test_a_july_summary_prints_local_time_with_the_zone(july):
    tree = july[1]
    assert tree.attrs["timezone"] == LONDON
    assert pd.Timestamp(tree["summary"].time.values[0]) == pd.Timestamp("2026-07-15 12:00")  # stored UTC
    buf = io.StringIO()
    print_summary(tree, buf)
    head = buf.getvalue().splitlines()[:2]
    assert "2 half-hours from 2026-07-15 13:00 BST" in head[0], head
    assert "source 1.000 pu of 11 kV" in head[0], head
    assert "times in Europe/London (BST)" in head[1], head


def test_query_tables_and_arguments_are_local(july, capsys):
    out, tree = july
    assert main(["query", str(out), "congestion", "--by", "time", "--format", "csv"]) == 0
    csv = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert sorted(csv.time) == ["2026-07-15T13:00:00+01:00", "2026-07-15T13:30:00+01:00"]
    assert main(["query", str(out), "congestion", "--by", "time", "--time", "2026-07-15 13:30"]) == 0
    table = capsys.readouterr().out
    assert "2026-07-15 13:30 BST" in table and "13:00" not in table
    assert local_half_hour(tree, "2026-07-15 13:30") == pd.Timestamp("2026-07-15 12:30")
    with pytest.raises(ConfigError, match=r"--time '2026-07-15 12:00' is not a half-hour of the study "
                                          r"\(2026-07-15 13:00 BST .. 2026-07-15 13:30 BST"):
        local_half_hour(tree, "2026-07-15 12:00", "--time")


def test_printed_times_carry_the_zone_across_the_year():
    utc = np.array(["2026-01-14T18:00", "2026-07-15T12:00", "2026-10-25T00:30", "2026-10-25T01:30"],
                   dtype="datetime64[ns]")
    got = [fmt_time(t, LONDON, "%d %b %H:%M") for t in utc]
    assert got == ["14 Jan 18:00 GMT", "15 Jul 13:00 BST", "25 Oct 01:30 BST", "25 Oct 01:30 GMT"]
    assert fmt_time(utc[1], "UTC") == "Wed 12:00 UTC"


def test_start_is_local_time_and_a_clock_change_keeps_96_half_hours():
    pri = load_priors("default")
    assert pri.timezone == LONDON
    t0 = local_start("2026-10-24 00:00", pri)  # 00:00 BST
    assert t0 == "2026-10-23T23:00:00"
    times = pd.date_range(t0, periods=96, freq="30min")  # the study's UTC half-hours
    wall = local(times, LONDON)
    assert wall[-1] == pd.Timestamp("2026-10-25 22:30", tz=LONDON)  # a 25-hour Sunday: ends at 22:30 GMT
    assert list(wall.strftime("%H:%M %Z")[50:54]) == ["01:00 BST", "01:30 BST", "01:00 GMT", "01:30 GMT"]
    assert local_start("2026-01-14 17:00", pri) == "2026-01-14T17:00:00"  # winter: local = UTC
    assert local_start("2026-07-15T13:00+01:00", pri) == "2026-07-15T12:00:00"  # an offset is taken as given
    assert local_start("2026-07-15 13:00", with_timezone(pri, "America/New_York")) == "2026-07-15T17:00:00"


@pytest.mark.parametrize("value, words", [
    ("2026-03-29 01:30", "does not exist in Europe/London (the clocks go forward"),
    ("2026-10-25 01:30", ("occurs twice in Europe/London (the clocks go back); give it with its UTC offset: "
                          "'2026-10-25 01:30+01:00' or '2026-10-25 01:30+00:00'")),
    ("soon", "not a date-time"),
])
def test_a_start_the_clock_skips_or_repeats_asks_for_the_offset(value, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        utc_of_local(value, LONDON, "--start")


def test_the_time_zone_option_is_checked_before_any_work(capsys):
    with pytest.raises(ConfigError, match=r"timezone = 'Mars/Olympus': unknown time zone .*Europe/London"):
        bf.run_study("no-such-feeder", "default", timezone="Mars/Olympus")
    assert main(["run", "--timezone", "Europe/Lodnon"]) == 2
    assert "--timezone = 'Europe/Lodnon': unknown time zone" in capsys.readouterr().err


def test_priors_horizon_start_is_local_unless_it_has_an_offset(tmp_path):
    assert load_priors("summer").start == pd.Timestamp("2026-07-15 00:00")  # "00:00Z": as before
    naive = edited_priors(tmp_path, [('"2026-07-15T00:00Z"', '"2026-07-15T00:00"')], name="summer")
    assert load_priors(naive).start == pd.Timestamp("2026-07-14 23:00")  # midnight BST
    skipped = edited_priors(tmp_path, [('"2026-07-15T00:00Z"', '"2026-03-29T01:00"')], name="summer",
                            filename="skipped.toml")
    with pytest.raises(ConfigError, match=r"skipped.toml \[horizon\] start '2026-03-29 01:00:00': does not exist"):
        load_priors(skipped)


# ------------------------------------------------------------------------------------------ the report
def test_result_and_report_state_what_the_numbers_rest_on(july):
    saved = july[1]  # opened from out/result.nc by run_study
    cd = saved["constant_data"]
    assert saved.attrs["source_vm_pu"] == 1.0 and saved.attrs["source_vn_kv"] == 11.0
    s_sc = math.sqrt(3) * 11.0 * 3.0  # ISC3 = 3000 A at 11 kV
    z1 = math.hypot(float(cd["source_r_ohm"].sel(sequence=1)), float(cd["source_x_ohm"].sel(sequence=1)))
    assert 11.0**2 / z1 == pytest.approx(s_sc, rel=1e-3)
    assert float(cd["trafo_sn_kva"].item()) == 800.0 and float(cd["trafo_tap_percent"].item()) == 0.0
    assert float(cd["trafo_v_lv_no_load_pu"].item()) == pytest.approx(1.0)  # 1.00 pu through an untapped 11/0.416
    assert cd["line_rating_defaulted"].values.astype(bool).all()
    basis = "".join(_basis_section(saved))
    for words in ("times in Europe/London (BST)", "1.000 pu of 11 kV", f"({s_sc:.4g} MVA)", "800 kVA, 11/0.416 kV",
                  "tap at neutral", "LV voltage at no load 1.000 pu",
                  "129 of 129 lines use OpenDSS&#x27;s default 400 A rating",
                  "joint: every agent turns up (down) together"):
        assert words in basis, words


@pytest.mark.slow
def test_a_study_across_the_october_clock_change_has_96_half_hours(enwl):
    tree = bf.run_study(enwl[0], "default", draws=1, seed=2, start="2026-10-24 00:00", periods=96, jobs=1,
                        progress=False, headroom=False)
    times = pd.to_datetime(tree["summary"].time.values)
    assert len(times) == 96 and times[0] == pd.Timestamp("2026-10-23 23:00")
    assert (np.diff(times.values) == np.timedelta64(30, "m")).all()
    assert fmt_time(times[-1], tree, "%d %b %H:%M") == "25 Oct 22:30 GMT"
