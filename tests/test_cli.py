"""The command line as a user runs it: ``bayesflex run`` and ``bayesflex query``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bayesflex.analysis.query import adjustment_quantiles, match_name
from bayesflex.cli.main import EXIT_BROKEN_PIPE, main
from bayesflex.errors import ConfigError
from bayesflex.study.files import open_study

from .conftest import REPO


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    assert main(["run", "--draws", "20", "--periods", "6", "--seed", "4", "--jobs", "1", "--out", str(out)]) == 0
    return out


def test_run_writes_the_study_and_prints_a_summary(study_dir, capsys):
    tree = open_study(study_dir)
    assert tree["heuristic"].sizes == {"chain": 1, "draw": 20, "time": 6, "agent": 55, "phase": 3, "technology": 7,
                                       "violation": 4}
    assert tree.attrs["command"].startswith("bayesflex run --draws 20")
    assert tree.attrs["seed"] == 4


def test_run_summary_names_what_a_planner_looks_for(tmp_path, capsys):
    assert main(["run", "--draws", "3", "--periods", "2", "--jobs", "1", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "study ieee_eu_lv: 3 of 3 draws (100 %)" in err  # stderr is no terminal here: plain progress lines
    for words in ("probability of congestion at least once in the horizon", "phase a:", "worst half-hours",
                  "buses most at risk", "lines most at risk", "agents most often adjusted",
                  "portfolio flexibility sellable", "P90", "wrote"):
        assert words in out, words


def _query(capsys, *args) -> str:
    assert main(["query", *args]) == 0
    return capsys.readouterr().out


def test_query_answers_as_table_csv_and_json(study_dir, capsys):
    tree = open_study(study_dir)
    d = str(study_dir)
    csv = pd.read_csv(io.StringIO(_query(capsys, d, "congestion", "--by", "phase", "--top", "0", "--format", "csv")))
    assert len(csv) == 6 * 3 and set(csv.columns) == {"time", "phase", "probability", "mcse", "lo", "hi"}
    # each row is the share of the draws congested on that phase at that half-hour, counted from the
    # per-draw flags, with the 95 % Wilson interval of that count as scipy computes it
    congested = tree["heuristic"]["congested"]  # (chain, draw, time, phase)
    n = congested.sizes["chain"] * congested.sizes["draw"]
    counts = congested.sum(("chain", "draw")).to_series()
    for _, r in csv.iterrows():
        utc = pd.Timestamp(r.time).tz_convert("UTC").tz_localize(None)  # printed local, with its offset
        k = int(counts.loc[(utc, r.phase)])
        ci = stats.binomtest(k, n).proportion_ci(method="wilson")
        assert (r.probability, r.lo, r.hi) == pytest.approx((k / n, ci.low, ci.high), abs=1e-6)
    rows = json.loads(_query(capsys, d, "agents", "--top", "3", "--format", "json"))
    assert len(rows) == 3 and {"agent", "p_adjusted_in_horizon", "p_adjusted_in_horizon_mcse"} <= set(rows[0])
    flex = pd.read_csv(io.StringIO(_query(capsys, d, "flexibility", "--confidence", "0.9", "--format", "csv")))
    # at 90 % confidence: the 10 % point of the 20 draws, 1.9 order statistics up from the smallest
    # (linear interpolation between the 2nd and 3rd smallest), so that 18 of 20 draws deliver it
    tot = np.sort(tree["heuristic"]["portfolio_deliverable_up_kw"].values[0], axis=0)  # (draw, time)
    assert len(tot) == 20 and (tot[2] > tot[1]).all()
    np.testing.assert_allclose(flex.deliverable_kw, tot[1] + 0.9 * (tot[2] - tot[1]), rtol=1e-12)
    assert ((tot >= flex.deliverable_kw.to_numpy()).sum(axis=0) == 18).all()
    assert "LOAD1 is not moved in any draw" in _query(capsys, d, "adjustment", "--agent", "LOAD1")
    assert "probability" in _query(capsys, d, "congestion", "--by", "line", "--top", "2")


@pytest.mark.parametrize("argv, words", [
    (["run", "--feeder", "atlantis"], "no feeder named 'atlantis'"),
    (["run", "--draws", "0"], "--draws 0: must be at least 1"),
    (["query", "nowhere"], "no study result here"),
])
def test_bad_input_is_one_line_without_a_traceback(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_query_names_what_is_allowed(study_dir, capsys):
    assert main(["query", str(study_dir), "adjustment", "--agent", "NOPE"]) == 2
    assert "allowed: LOAD1" in capsys.readouterr().err
    assert main(["query", str(study_dir), "congestion", "--time", "2030-01-01"]) == 2
    assert "not a half-hour of the study" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# what a new user met (issue 15)
# ----------------------------------------------------------------------------
HEAVY = ("pymc", "pytensor", "pandapower", "xarray", "bayesflex.study.engine", "bayesflex.priors.sampling")


@pytest.mark.parametrize("argv, words", [
    (["--feeder", "atlantis"], ["no feeder named 'atlantis'"]),
    (["--feeder", "ieee"], ["no feeder named 'ieee'; did you mean ieee_eu_lv?"]),
    (["--priors", "defualt"], ["no prior set named 'defualt'; did you mean default?"]),
    (["--start", "2026-01-14 19:15"], ["--start '2026-01-14 19:15'", "on :00 or :30"]),
    (["--start", "19:15"], ["--start '19:15'", "without a date", "on :00 or :30"]),
    (["--start", "garbage"], ["--start 'garbage': not a date-time"]),
    (["--draws", "0"], ["--draws 0"]),
    (["--observations", "no_such_meters.csv"], ["--observations no_such_meters.csv: no such file"]),
    (["--feeders", "no_such_folder"], ["--feeders no_such_folder: no such folder"]),
    (["--backend", "nosuch"], ["backend 'nosuch' unknown", "loky"]),
])
def test_bad_run_input_fails_before_the_heavy_imports(argv, words, monkeypatch, tmp_path, capsys):
    """Bad input is judged before PyMC, pandapower, xarray or the engine are imported (each is
    made unimportable here: importing one would fail the command with an ImportError)."""
    for name in HEAVY:
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["run", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


@pytest.mark.parametrize("command", [["query", "{d}", "congestion"], ["report", "{d}"], ["map", "{d}"]])
def test_a_folder_without_a_study_is_said_before_the_heavy_imports(command, monkeypatch, tmp_path, capsys):
    """query, report and map name a folder without a result at once (pandas, xarray and
    matplotlib take seconds to import), as the same one-line error open_study gives."""
    for name in HEAVY + ("pandas", "matplotlib"):
        monkeypatch.setitem(sys.modules, name, None)
    (tmp_path / "empty").mkdir()
    for d in (tmp_path / "empty", tmp_path / "nowhere"):
        assert main([w.format(d=d) for w in command]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert "no study result here (expected result.nc" in err and str(d) in err, err


def test_agent_names_match_ignoring_case_and_a_typo_gets_the_closest(study_dir, capsys):
    assert main(["query", str(study_dir), "adjustment", "--agent", "LAOD12"]) == 2
    err = capsys.readouterr().err
    assert "--agent 'LAOD12' not in the study; did you mean LOAD12" in err, err
    tree = open_study(study_dir, verify=False)
    assert set(adjustment_quantiles(tree, "load1").agent) == {"LOAD1"}
    with pytest.raises(ConfigError, match=r"'xyz' not in the study \(allowed: LOAD1, LOAD2, .*55 in all\)"):
        match_name(tree["heuristic"].agent.values, "xyz", "--agent")  # nothing close


def test_the_heatmap_of_overload_is_refused_not_drawn_as_voltage(study_dir, capsys):
    assert main(["map", str(study_dir), "--heatmap", "--kind", "overload"]) == 2
    err = capsys.readouterr().err
    assert "--kind overload with --heatmap" in err and "allowed with --heatmap: any, undervoltage" in err, err
    assert not (study_dir / "heatmap_overload.png").exists()


def test_query_into_a_reader_that_stops_early_ends_quietly(study_dir):
    """``bayesflex query ... | head``: the reader closes after one line of a long table (every
    bus, phase and half-hour: far more than a pipe holds); no traceback, no error line."""
    cmd = [sys.executable, "-m", "bayesflex.cli", "query", str(study_dir), "congestion", "--by", "bus", "--top", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert b"probability" in first
    assert proc.returncode in (0, EXIT_BROKEN_PIPE) and err == "", (proc.returncode, err)
