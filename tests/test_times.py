"""Times in tidy tables (meter readings, EV state logs, positions): one parser, UTC out.

Every expected UTC half-hour below is written out by hand from the UK's clock
changes in 2026 (not computed with the code under test): on Sunday 29 March the
clocks go from 01:00 GMT to 02:00 BST (01:00 UTC), so local 01:00-01:59 does not
exist; on Sunday 25 October they go from 02:00 BST back to 01:00 GMT (01:00 UTC),
so local 01:00-01:59 happens twice, first at 00:00-00:59 UTC, then at 01:00-01:59 UTC.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bayesflex.errors import ConfigError
from bayesflex.priors import condition, load_priors, read_ev_states, read_observations
from bayesflex.study.positions import Positions, read_positions, write_positions

from .conftest import edited_priors

LONDON = "Europe/London"

# One day per clock change: the same eight half-hours written three ways.
DAYS = {
    "spring": {
        "utc": ["2026-03-28T23:00", "2026-03-28T23:30", "2026-03-29T00:00", "2026-03-29T00:30",
                "2026-03-29T01:00", "2026-03-29T01:30", "2026-03-29T02:00", "2026-03-29T02:30"],
        "offset": ["2026-03-28T23:00:00+00:00", "2026-03-28T23:30:00+00:00", "2026-03-29T00:00:00+00:00",
                   "2026-03-29T00:30:00+00:00", "2026-03-29T02:00:00+01:00", "2026-03-29T02:30:00+01:00",
                   "2026-03-29T03:00:00+01:00", "2026-03-29T03:30:00+01:00"],
        "naive": ["2026-03-28T23:00", "2026-03-28T23:30", "2026-03-29T00:00", "2026-03-29T00:30",
                  "2026-03-29T02:00", "2026-03-29T02:30", "2026-03-29T03:00", "2026-03-29T03:30"],
        "z": ["2026-03-28T23:00Z", "2026-03-28T23:30Z", "2026-03-29T00:00Z", "2026-03-29T00:30Z",
              "2026-03-29T01:00Z", "2026-03-29T01:30Z", "2026-03-29T02:00Z", "2026-03-29T02:30Z"],
        "slots": [46, 47, 0, 1, 2, 3, 4, 5],  # UTC half-hour of the day
    },
    "autumn": {
        "utc": ["2026-10-24T23:00", "2026-10-24T23:30", "2026-10-25T00:00", "2026-10-25T00:30",
                "2026-10-25T01:00", "2026-10-25T01:30", "2026-10-25T02:00", "2026-10-25T02:30"],
        "offset": ["2026-10-25T00:00:00+01:00", "2026-10-25T00:30:00+01:00", "2026-10-25T01:00:00+01:00",
                   "2026-10-25T01:30:00+01:00", "2026-10-25T01:00:00+00:00", "2026-10-25T01:30:00+00:00",
                   "2026-10-25T02:00:00+00:00", "2026-10-25T02:30:00+00:00"],
        "naive": ["2026-10-25T00:00", "2026-10-25T00:30", "2026-10-25T01:00", "2026-10-25T01:30",
                  "2026-10-25T01:00", "2026-10-25T01:30", "2026-10-25T02:00", "2026-10-25T02:30"],
        "z": ["2026-10-24T23:00Z", "2026-10-24T23:30Z", "2026-10-25T00:00Z", "2026-10-25T00:30Z",
              "2026-10-25T01:00Z", "2026-10-25T01:30Z", "2026-10-25T02:00Z", "2026-10-25T02:30Z"],
        "slots": [46, 47, 0, 1, 2, 3, 4, 5],
    },
}
# form -> the zone a reader is given (naive times need the site's; the others read the same in any)
FORMS = {"offset": LONDON, "naive": LONDON, "z": LONDON, "z_no_zone": None}
AGENTS = ("A1", "A2")
STATES = {"A1": "RRMMCCMR", "A2": "RRRRRRRR"}  # no R->C or C->R without moving


def _times(day: str, form: str) -> list[str]:
    return DAYS[day]["z" if form == "z_no_zone" else form]


def _p_kw(a: int, k: int) -> float:
    return 1.0 + 10 * a + 0.125 * k


def _tidy(day: str, form: str, kind: str) -> pd.DataFrame:
    """Rows agent by agent, each agent's times in order (as a meter export gives them)."""
    rows = []
    for a, agent in enumerate(AGENTS):
        for k, t in enumerate(_times(day, form)):
            p = _p_kw(a, k)
            if kind == "observations":
                rows.append({"agent": agent, "time": t, "p_kw": p})
            elif kind == "ev_states":
                rows.append({"agent": agent, "time": t, "state": STATES[agent][k]})
            else:
                rows.append({"agent": agent, "time": t, "p_kw": p, "p_lb_kw": p - 1, "p_ub_kw": p + 1,
                             "offer_price": 50.0})
    return pd.DataFrame(rows)


def _csv(tmp_path, df: pd.DataFrame, name: str = "t.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def _expected_wide(day: str) -> pd.DataFrame:
    index = pd.DatetimeIndex(DAYS[day]["utc"])
    return pd.DataFrame({agent: [_p_kw(a, k) for k in range(len(index))] for a, agent in enumerate(AGENTS)},
                        index=index)


# --------------------------------------------------------------------------- meter readings
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("day", DAYS)
def test_meter_readings_land_on_utc_half_hours(tmp_path, day, form):
    wide = read_observations(_csv(tmp_path, _tidy(day, form, "observations")), tz=FORMS[form])
    expected = _expected_wide(day)
    assert list(wide.index) == list(expected.index)
    np.testing.assert_array_equal(wide[list(AGENTS)].to_numpy(), expected.to_numpy())


@pytest.mark.parametrize("day", DAYS)
def test_meter_readings_same_in_every_form_file_or_frame(tmp_path, day):
    tables = [read_observations(_csv(tmp_path, _tidy(day, f, "observations"), f"{f}.csv"), tz=FORMS[f])
              for f in FORMS]
    tables += [read_observations(_tidy(day, f, "observations"), tz=FORMS[f]) for f in FORMS]
    for wide in tables[1:]:
        pd.testing.assert_frame_equal(wide, tables[0], check_names=False, check_freq=False)


def test_mixed_offsets_across_dst_no_longer_crash(tmp_path):
    """main raised AttributeError here (pandas gave an object column of mixed-offset stamps)."""
    df = pd.DataFrame({"agent": ["A1", "A1"], "time": ["2026-03-29T00:30:00+00:00", "2026-03-29T02:00:00+01:00"],
                       "p_kw": [1.0, 2.0]})
    wide = read_observations(_csv(tmp_path, df))
    assert list(wide.index) == [pd.Timestamp("2026-03-29 00:30"), pd.Timestamp("2026-03-29 01:00")]


def test_bst_reading_lands_on_18_utc(tmp_path):
    df = pd.DataFrame({"agent": ["A1", "A1"], "time": ["2026-07-01T19:00:00+01:00", "2026-07-01T19:30:00+01:00"],
                       "p_kw": [1.0, 2.0]})
    for tz in (None, LONDON, "UTC", "Asia/Tokyo"):  # an offset is read as given, whatever the zone
        wide = read_observations(_csv(tmp_path, df), tz=tz)
        assert list(wide.index) == [pd.Timestamp("2026-07-01 18:00"), pd.Timestamp("2026-07-01 18:30")]
        assert list(wide["A1"]) == [1.0, 2.0]


def test_naive_summer_times_are_local_with_the_site_zone_and_utc_without():
    df = pd.DataFrame({"agent": ["A1", "A1"], "time": ["2026-07-01T19:00", "2026-07-01T19:30"], "p_kw": [1.0, 2.0]})
    assert read_observations(df, tz=LONDON).index[0] == pd.Timestamp("2026-07-01 18:00")
    assert read_observations(df).index[0] == pd.Timestamp("2026-07-01 19:00")  # None: UTC, as before


def test_tz_aware_frame_and_datetime64_frame():
    times = pd.DatetimeIndex(["2026-07-01 19:00", "2026-07-01 19:30"])
    aware = pd.DataFrame({"agent": "A1", "time": times.tz_localize(LONDON), "p_kw": [1.0, 2.0]})
    naive = pd.DataFrame({"agent": "A1", "time": times, "p_kw": [1.0, 2.0]})
    for df, tz in ((aware, None), (aware, "UTC"), (naive, LONDON)):
        assert read_observations(df, tz=tz).index[0] == pd.Timestamp("2026-07-01 18:00")


def test_netcdf_inputs_are_read_by_h5netcdf_or_scipy_not_netcdf_c(tmp_path, monkeypatch):
    """A NetCDF-4 file of readings or positions is read through h5netcdf and a NetCDF-3 one through
    scipy, whichever engine wrote it; never through the netCDF-C library (netCDF4), which xarray
    would pick by default once installed (see ARCHITECTURE.md); positions are written through
    h5netcdf."""
    engines = []
    real = xr.open_dataset
    monkeypatch.setattr(xr, "open_dataset", lambda *a, **k: engines.append(k.get("engine")) or real(*a, **k))
    times = pd.DatetimeIndex(["2026-07-01 18:00", "2026-07-01 18:30"])
    ds = xr.Dataset({"p_kw": (("agent", "time"), [[1.0, 2.0]])}, coords={"agent": ["A1"], "time": times})
    for i, writer in enumerate(("netcdf4", "h5netcdf", "scipy")):
        ds.to_netcdf(tmp_path / f"m{i}.nc", engine=writer)
        assert read_observations(tmp_path / f"m{i}.nc").to_numpy().tolist() == [[1.0], [2.0]]
    assert engines == ["h5netcdf", "h5netcdf", "scipy"]
    pos = read_positions(pd.DataFrame({"agent": "A1", "time": times.tz_localize("UTC"), "p_kw": [1.0, 2.0],
                                       "p_lb_kw": [0.0, 0.5], "p_ub_kw": [2.0, 3.0]}))
    written = []
    real_write = xr.Dataset.to_netcdf
    monkeypatch.setattr(xr.Dataset, "to_netcdf", lambda self, *a, **k: written.append(k.get("engine"))
                        or real_write(self, *a, **k))
    back = read_positions(write_positions(pos, tmp_path / "p.nc"))
    assert written == ["h5netcdf"] and engines[-1] == "h5netcdf"
    np.testing.assert_array_equal(back.p_kw, pos.p_kw)


def test_netcdf_times_are_utc_whatever_the_zone(tmp_path):
    """CF: a time without a zone is UTC; a naive NetCDF time is not re-read as local."""
    times = pd.DatetimeIndex(["2026-07-01 18:00", "2026-07-01 18:30"])
    ds = xr.Dataset({"p_kw": (("agent", "time"), [[1.0, 2.0]])}, coords={"agent": ["A1"], "time": times})
    ds.to_netcdf(tmp_path / "m.nc")
    assert list(read_observations(tmp_path / "m.nc", tz=LONDON).index) == list(times)


# --------------------------------------------------------------------------- errors
ERROR_CASES = {
    # (times of agent A1 only, tz, the row that must be named, words in the message)
    "spring_gap": (["2026-03-29T00:30", "2026-03-29T01:00", "2026-03-29T01:30"], LONDON, 3, "does not exist"),
    "gap_0130": (["2026-03-29T00:30", "2026-03-29T01:30", "2026-03-29T02:00"], LONDON, 3, "does not exist"),
    "naive_then_offset": (["2026-03-29T00:00", "2026-03-29T00:30", "2026-03-29T01:00Z"], LONDON, 4,
                          "has a UTC offset"),
    "offset_then_naive": (["2026-03-29T00:00Z", "2026-03-29T00:30+00:00", "2026-03-29T01:00"], None, 4,
                          "has no UTC offset"),
    "repeat_once": (["2026-10-25T00:00", "2026-10-25T00:30", "2026-10-25T01:00"], LONDON, 4, "occurs twice"),
    # newest first: read in file order, 01:30 would be taken as summer time and the two readings swapped
    "repeat_reversed": (["2026-10-25T01:30", "2026-10-25T01:00", "2026-10-25T01:30", "2026-10-25T01:00"], LONDON,
                        3, "not in time order"),
    "not_iso": (["2026-03-29T00:00", "29/03/2026 00:30", "2026-03-29T01:00"], None, 3, "not a date-time"),
}


def _error_frame(times: list[str], kind: str) -> pd.DataFrame:
    rows = [{"agent": "A1", "time": t, "p_kw": 1.0, "state": "R", "p_lb_kw": 0.0, "p_ub_kw": 2.0} for t in times]
    cols = {"observations": ["agent", "time", "p_kw"], "ev_states": ["agent", "time", "state"],
            "positions": ["agent", "time", "p_kw", "p_lb_kw", "p_ub_kw"]}[kind]
    return pd.DataFrame(rows)[cols]


READERS = {"observations": read_observations, "ev_states": read_ev_states, "positions": read_positions}


@pytest.mark.parametrize("kind", READERS)
@pytest.mark.parametrize("case", ERROR_CASES)
def test_bad_times_name_the_row(tmp_path, kind, case):
    times, tz, row, words = ERROR_CASES[case]
    path = _csv(tmp_path, _error_frame(times, kind))
    with pytest.raises(ConfigError, match=rf"t\.csv: row {row}: .*{words}"):
        READERS[kind](path, tz=tz)


@pytest.mark.parametrize("kind", READERS)
@pytest.mark.parametrize("bad", ["Europe/Londn", "", "BST", "../etc/passwd", 1])
def test_unknown_zone_is_a_config_error_with_examples(kind, bad):
    df = _error_frame(["2026-01-14T00:00Z", "2026-01-14T00:30Z"], kind)
    with pytest.raises(ConfigError, match=r"tz = .*Europe/London"):
        READERS[kind](df, tz=bad)


# --------------------------------------------------------------------------- EV state logs
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("day", DAYS)
def test_ev_logs_land_on_utc_half_hours(tmp_path, day, form):
    states, slots = read_ev_states(_csv(tmp_path, _tidy(day, form, "ev_states")), tz=FORMS[form])
    assert list(slots) == DAYS[day]["slots"]
    code = {"M": 0, "R": 1, "C": 2}
    np.testing.assert_array_equal(states, [[code[STATES[a][k]] for a in AGENTS] for k in range(8)])


def test_condition_reads_ev_logs_in_the_priors_zone(tmp_path):
    """The shipped priors say Europe/London: a naive summer log counts its moves at UTC half-hours;
    with the zone removed (UTC, as older prior files mean) the same log lands an hour later."""
    log = pd.DataFrame({"agent": "A1", "time": ["2026-07-01T19:00", "2026-07-01T19:30", "2026-07-01T20:00"],
                        "state": ["R", "M", "M"]})
    pri = load_priors("default")
    assert pri.timezone == LONDON
    # (slot, from, to), a move counted under the slot it leaves: R->M from 18:00 UTC (slot 36)
    counts = condition(pri, ev_states=log).ev_counts
    assert counts[36, 1, 0] == 1 and counts[37, 0, 0] == 1 and counts.sum() == 2
    old = edited_priors(tmp_path, [('timezone = "Europe/London"\n', "")])
    assert load_priors(old).timezone == "UTC"
    counts = condition(load_priors(old), ev_states=log).ev_counts
    assert counts[38, 1, 0] == 1 and counts[39, 0, 0] == 1
    counts = condition(load_priors(old), ev_states=log, tz=LONDON).ev_counts  # an explicit zone wins
    assert counts[36, 1, 0] == 1


# --------------------------------------------------------------------------- positions
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("day", DAYS)
def test_positions_land_on_utc_half_hours(tmp_path, day, form):
    pos = read_positions(_csv(tmp_path, _tidy(day, form, "positions")), tz=FORMS[form])
    expected = _expected_wide(day)
    assert list(pos.times) == list(expected.index)
    assert pos.agents == AGENTS
    np.testing.assert_array_equal(pos.p_kw, expected.to_numpy())
    np.testing.assert_array_equal(pos.p_ub_kw, expected.to_numpy() + 1)


@pytest.mark.parametrize("suffix", ["csv", "nc"])
def test_written_positions_read_back_in_any_zone(tmp_path, suffix):
    """Positions are written in UTC (CSV with Z, NetCDF by CF): a summer file reads back unshifted."""
    times = pd.DatetimeIndex(["2026-07-01 18:00", "2026-07-01 18:30"])
    one = np.ones((2, 1))
    pos = Positions(("A1",), times, one, 0 * one, 2 * one, np.full((2, 1), np.nan))
    for tz in (None, LONDON, "America/New_York"):
        back = read_positions(write_positions(pos, tmp_path / f"p.{suffix}"), tz=tz)
        assert list(back.times) == list(times)


# --------------------------------------------------------------------------- priors [site] timezone
def test_shipped_priors_are_uk_time():
    for name in ("default", "summer", "two_area"):
        assert load_priors(name).timezone == LONDON


@pytest.mark.parametrize("value, words", [('"Europe/Londn"', "unknown time zone"), ("5", "must be the name"),
                                          ('""', "unknown time zone")])
def test_bad_site_timezone_names_file_and_key(tmp_path, value, words):
    path = edited_priors(tmp_path, [('timezone = "Europe/London"', f"timezone = {value}")])
    with pytest.raises(ConfigError, match=rf"{path.name} \[site\] timezone = .*{words}.*Europe/London"):
        load_priors(path)


def test_fall_back_read_per_agent_when_rows_go_time_by_time(tmp_path):
    """A time-major export (all agents at 01:00, all at 01:30, then the repeat) reads like the agent-major one."""
    by_agent = _tidy("autumn", "naive", "observations")
    by_time = by_agent.iloc[np.lexsort((by_agent.agent, np.tile(np.arange(8), 2)))]
    assert list(by_time.agent[:4]) == ["A1", "A2", "A1", "A2"]
    pd.testing.assert_frame_equal(read_observations(by_time, tz=LONDON), _expected_wide("autumn"),
                                  check_names=False, check_freq=False)


def test_a_year_of_local_times_covers_every_utc_half_hour_once():
    """Invariant: a year of UK wall-clock readings (each half-hour as the clock showed it)
    maps onto the year's 17,520 UTC half-hours, each once, in order."""
    utc = pd.date_range("2026-01-01", periods=17520, freq="30min")
    wall = utc.tz_localize("UTC").tz_convert(LONDON).tz_localize(None).strftime("%Y-%m-%dT%H:%M")
    assert len(set(wall)) == 17520 - 2  # two wall times are repeated in October ...
    assert "2026-03-29T01:00" not in set(wall)  # ... and two skipped in March
    df = pd.DataFrame({"agent": np.repeat(AGENTS, len(wall)), "time": np.tile(wall, 2), "p_kw": 1.0})
    assert list(read_observations(df, tz=LONDON).index) == list(utc)
