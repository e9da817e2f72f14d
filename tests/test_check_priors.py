"""bayesflex check-priors: the prior predictive check a user runs against their own readings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bayesflex.cli.main import main
from bayesflex.priors.check import enwl_house_days, house_days

from .conftest import shared_path


def _readings(path, scale=1.0, houses=20, days=5):
    """Tidy readings of ``houses`` meters over ``days`` local days: ENWL's winter
    house-days laid end to end (house h, day d = profile 5 h + d), times naive local."""
    x = enwl_house_days("winter", shared_path("enwl", "profiles")) * scale
    times = pd.date_range("2026-01-12 00:00", periods=48 * days, freq="30min")
    rows = []
    for h in range(houses):
        kw = np.concatenate([x[(days * h + d) % len(x)] for d in range(days)])
        rows.append(pd.DataFrame({"agent": f"M{h}", "time": times.strftime("%Y-%m-%dT%H:%M"), "p_kw": kw}))
    pd.concat(rows).to_csv(path, index=False)
    return x


def test_house_days_cut_whole_local_days():
    """Readings in UTC are cut at local midnight: a Europe/London summer day
    starts at 23:00 UTC, and a partial first day is left out."""
    times = pd.date_range("2026-07-01 12:00", periods=48 * 3, freq="30min")  # UTC
    wide = pd.DataFrame({"A": np.arange(len(times), dtype=float)}, index=times)
    days, owner = house_days(wide, "Europe/London")
    assert days.shape == (2, 48) and (owner == 0).all()
    assert days[0, 0] == list(times).index(pd.Timestamp("2026-07-01 23:00"))


def test_against_own_readings_prints_table_writes_figure_and_passes_the_same_data(tmp_path, capsys):
    """Against ENWL's own households (100 house-days as 20 meters x 5 days) the shipped
    priors meet the quantile and ADMD targets of N up to 20 (its own ENWL check)."""
    path = tmp_path / "meters.csv"
    _readings(path)
    assert main(["check-priors", "--against", str(path), "--draws", "200", "--out", str(tmp_path / "out")]) in (0, 1)
    out = capsys.readouterr()
    assert "meters.csv (100 house-days)" in out.out and "ADMD N=20" in out.out and "ADMD N=55" not in out.out
    table = pd.read_csv(tmp_path / "out" / "check_priors.csv", index_col="figure")
    for k in ("half-hour p90", "half-hour p99", "ADMD N=5", "ADMD N=20", "share > 23 kW"):
        assert table.loc[k, "ok"], (k, table.loc[k].to_dict())
    assert (tmp_path / "out" / "check_priors.png").stat().st_size > 10_000


def test_a_mismatch_is_found_named_and_exits_1(tmp_path, capsys):
    """Households three times ENWL's: the quantiles and ADMD miss, exit status 1, and
    the misses are named on stderr."""
    path = tmp_path / "big.csv"
    _readings(path, scale=3.0)
    code = main(["check-priors", "--against", str(path), "--draws", "100", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "missed:" in err and "half-hour p90" in err and "ADMD N=5" in err


@pytest.mark.parametrize("argv, words", [
    (["--against", "nope.csv"], ["nope.csv", "no such file"]),
    (["--draws", "0"], ["--draws 0"]),
    (["--draws", "2"], ["--draws 2: too few", "give at least 4"]),
    (["no_such_priors"], ["no prior set named 'no_such_priors'"]),
])
def test_bad_arguments_get_one_clear_line(tmp_path, capsys, argv, words):
    code = main(["check-priors", *argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    for w in words:
        assert w in err, err


def test_the_report_checks_the_study_s_own_draws(tmp_path):
    """A study over a whole weekday: report.html sets its own baseload draws beside
    ENWL's winter households, figure by figure, and counts the draws above their service."""
    out = tmp_path / "study"
    assert main(["run", "--draws", "20", "--periods", "48", "--start", "2026-01-14T00:00", "--jobs", "1",
                 "--out", str(out)]) == 0
    text = (out / "report.html").read_text()
    assert "Household baseload against measured households" in text
    assert "against ENWL's 100 winter households" in text and "ADMD N=100" in text
    n = int(text.split("targets met")[0].rsplit("):", 1)[1].split(" of ")[0])
    assert n >= 10, n  # 20 draws only: the plumbing, not the accuracy (tests/test_priors_tails.py)


def test_the_data_side_is_computed_once_and_equals_a_fresh_computation(monkeypatch):
    """compare keeps its figures of the data and their bootstrap (the same ENWL season in every
    report) for each data, owners, resamples and seed: a second comparison with other draws does
    not resample the data, and gives what a process that never compared before gives; other
    data, owners or seeds are computed afresh."""
    from bayesflex.priors import check

    x = enwl_house_days("winter")[:40]
    rng = np.random.default_rng(4)
    draws = [rng.gamma(2.0, 0.3, size=(12, 55, 48)) for _ in range(2)]
    calls = []
    real = check.bootstrap
    monkeypatch.setattr(check, "bootstrap", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(check, "_DATA_FIGURES", {})
    first = [check.compare(x, d, reps=20, seed=3).table for d in draws]
    assert len(calls) == 1
    for d, kept in zip(draws, first):
        check._DATA_FIGURES.clear()  # as a fresh process
        pd.testing.assert_frame_equal(check.compare(x, d, reps=20, seed=3).table, kept, check_exact=True)
        # one generator a comparison: the data's figures, their bootstrap, then the draws' figures
        g = np.random.default_rng(3)
        data = check.figures_data(x, g, groups=1000)
        real(x, 20, g)
        model = check.figures_draws(d, g, block=x.shape[0], sizes=check._admd_sizes(x.shape[0]))
        assert kept["data"].to_dict() == {k: data[k] for k in kept.index}
        assert kept["model"].to_dict() == {k: model[k] for k in kept.index}
    assert not first[0].equals(first[1])  # the draws' side is the draws'
    owner = np.repeat(np.arange(20), 2)
    for kw in ({"seed": 4}, {"owner": owner}):
        n = len(calls)
        other = check.compare(x, draws[0], reps=20, **({"seed": 3} | kw)).table
        assert len(calls) == n + 1 and not other[["data_lo", "data_hi"]].equals(first[0][["data_lo", "data_hi"]])
    x2 = x.copy()
    x2[0, 0] += 1.0
    n = len(calls)
    check.compare(x2, draws[0], reps=20, seed=3)
    assert len(calls) == n + 1
