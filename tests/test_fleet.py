"""Fleet studies (``bayesflex run --feeders``) on real ENWL feeders, and the dask backend."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bayesflex.cli.main import main
from bayesflex.errors import ConfigError
from bayesflex.fleet import FLEET_FILE, find_feeders, fleet_row, rank, run_fleet
from bayesflex.io.feeders import load_feeder
from bayesflex.study.engine import CHUNK_DRAWS, run_study
from bayesflex.study.files import open_study
from bayesflex.study.schema import RESULT_FILE

from .conftest import REPO, shared_path

FEW = ["--draws", "12", "--periods", "2", "--start", "2026-01-14 18:00", "--jobs", "1"]


def test_feeders_are_found_and_named_uniquely():
    root = shared_path("enwl", "networks")
    every = find_feeders(root)
    assert len(every) == 29  # every LV feeder of the ENWL networks in shared data
    assert "network_1_Feeder_1" in every and "network_5_Feeder_1" in every  # same folder name, both kept
    assert all((p / "Master.dss").exists() for p in every.values())
    one_net = find_feeders(str(root / "network_1" / "Feeder_*"))
    assert list(one_net) == ["Feeder_1", "Feeder_2", "Feeder_3", "Feeder_4"]
    assert list(find_feeders(root / "network_1" / "Feeder_2")) == ["Feeder_2"]
    with pytest.raises(ConfigError, match="no feeders found"):
        find_feeders(str(root / "nowhere_*"))


@pytest.mark.slow
def test_fleet_run_ranks_feeders_and_survives_a_broken_one(tmp_path, capsys):
    root = shared_path("enwl", "networks")
    fleet = tmp_path / "feeders"
    for net, fd in (("network_1", "Feeder_2"), ("network_1", "Feeder_4"), ("network_2", "Feeder_4")):
        shutil.copytree(root / net / fd, fleet / net / fd)
    broken = fleet / "network_9" / "Feeder_1"
    shutil.copytree(root / "network_1" / "Feeder_2", broken)
    (broken / "Lines.txt").write_text("New Line.LINE1 Bus1=1 Bus2=2 phases=3 Linecode=nosuchcode Length=1 "
                                      "Units=m\n")
    out = tmp_path / "out"
    assert main(["run", "--feeders", str(fleet), "--out", str(out), *FEW]) == 1  # a feeder failed
    printed = capsys.readouterr()
    assert "FAILED network_9_Feeder_1" in printed.out and "1 of 4 feeders failed" in printed.err

    table = pd.read_csv(out / FLEET_FILE)
    assert list(table.status) == ["ok", "ok", "ok", "failed"]
    assert table.error.iloc[-1].count("nosuchcode") >= 1  # the error names what is wrong
    ok = table[table.status == "ok"]
    assert list(ok["rank"]) == [1, 2, 3]
    # the ranking is the per-feeder results' own figures, sorted; each figure as the per-draw arrays give it
    # (fleet.csv keeps 6 significant digits)
    for _, r in ok.iterrows():
        tree = open_study(out / r.feeder)
        h, net = tree["heuristic"], tree["network"]
        assert tree["sample_stats"]["converged"].values.all()  # so no draw is set aside below
        cong = h["congested"].values[0]
        assert r.p_congested_horizon == pytest.approx(cong.any(axis=(1, 2)).mean(), abs=1e-6)
        assert r.p_unresolved_horizon == pytest.approx((~h["resolved"].values[0]).any(axis=1).mean(), abs=1e-6)
        assert r.p_trafo_overload_max == pytest.approx((net["trafo_loading_pu"].values[0] > 1).mean(axis=0).max(),
                                                       abs=1e-6)
        # the 5 % point of 12 draws' lowest voltage is the lowest of them (the first order statistic)
        assert r.v_min_pu_p05 == pytest.approx(float(net["v_min_pu"].min()), rel=1e-5)
        kwh = (h["adjust_down_kw"].values[0].astype(float).sum(axis=(1, 2, 3)) * 0.5).mean()  # every agent moved
        assert r.turn_down_kwh_mean == pytest.approx(kwh, rel=1e-5, abs=1e-6)
        assert int(r.draws) == 12 and int(r.agents) == tree["constant_data"].sizes["agent"]
        assert (out / r.feeder / "report.html").exists()
    assert (ok.p_congested_horizon > 0).any() and (ok.turn_down_kwh_mean > 0).any()  # figures worth checking
    keys = list(zip(ok.p_congested_horizon, ok.p_unresolved_horizon, ok.p_congested_worst_half_hour, strict=True))
    assert keys == sorted(keys, reverse=True)
    assert (out / "fleet.png").stat().st_size > 5000


def _small_fleet(folder):
    """Two small feeders built like feeders/two_area.toml (15 houses each instead of 170)."""
    text = (REPO / "feeders" / "two_area.toml").read_text()
    for old, new in (("houses_per_feeder = [30, 30, 25]", "houses_per_feeder = [3, 2, 2]"),
                     ("houses_per_feeder = [22, 21, 21, 21]", "houses_per_feeder = [2, 2, 2, 2]")):
        assert text.count(old) == 1
        text = text.replace(old, new)
    folder.mkdir()
    for name in ("north", "south"):
        (folder / f"{name}.toml").write_text(text.replace('name = "two_area"', f'name = "{name}"'))
    return find_feeders(folder)


@pytest.mark.slow
def test_a_resumed_fleet_studies_only_what_was_not_finished(tmp_path, monkeypatch):
    """A fleet stopped in its second feeder's second chunk: resumed, the finished feeder is not
    studied again (its file untouched), the unfinished one computes only its missing chunk, and
    its row is that of the same study run uninterrupted."""
    from bayesflex.study import engine

    monkeypatch.setattr(engine, "CHUNK_DRAWS", 2)  # 3 draws: two chunks per feeder
    feeders = _small_fleet(tmp_path / "feeders")
    study = {"draws": 3, "periods": 1, "start": "2026-01-14 18:00", "jobs": 1}
    real, calls = engine._run_chunk, []

    def counted(feeder, priors, index, *rest):
        calls.append((feeder.name, index))
        if stop_at == (feeder.name, index):
            raise KeyboardInterrupt  # the night's run is killed
        return real(feeder, priors, index, *rest)

    monkeypatch.setattr(engine, "_run_chunk", counted)
    stop_at = ("south", 1)
    out = tmp_path / "fleet"
    with pytest.raises(KeyboardInterrupt):
        run_fleet(feeders, out=out, report=False, **study)
    assert calls == [("north", 0), ("north", 1), ("south", 0), ("south", 1)]
    north = (out / "north" / RESULT_FILE).stat().st_mtime_ns
    calls.clear()
    stop_at = None
    table = run_fleet(feeders, out=out, resume=True, report=False, **study).set_index("feeder")
    assert calls == [("south", 1)] and (out / "north" / RESULT_FILE).stat().st_mtime_ns == north
    assert list(table.status) == ["ok", "ok"]
    calls.clear()
    whole = fleet_row(run_study(load_feeder(feeders["south"]).replace(name="south"), "default", **study))
    assert len(calls) == 2
    for key, value in whole.items():
        want = pytest.approx(value, nan_ok=True) if isinstance(value, float) else value
        assert table.loc["south", key] == want, key


def test_rank_orders_by_risk_then_name_and_puts_failures_last():
    t = pd.DataFrame({"feeder": ["b", "a", "c", "d", "e"], "status": ["ok", "ok", "failed", "ok", "ok"],
                      "p_congested_horizon": [0.5, 0.5, np.nan, 0.9, 0.5],
                      "p_unresolved_horizon": [0.1, 0.1, np.nan, 0.0, 0.2],
                      "p_congested_worst_half_hour": [0.2, 0.2, np.nan, 0.3, 0.1]})
    r = rank(t)
    assert list(r.feeder) == ["d", "e", "a", "b", "c"]
    assert list(r["rank"]) == [1, 2, 3, 4, 0]


@pytest.mark.slow
def test_dask_cluster_gives_the_numbers_of_the_default_backend(tmp_path, ieee):
    distributed = pytest.importorskip("dask.distributed")
    study = {"draws": CHUNK_DRAWS + 5, "seed": 3, "periods": 2, "start": "2026-01-14 18:00"}
    here = run_study(ieee, "default", jobs=1, **study)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        there = run_study(ieee, "default", backend="dask", scheduler=cl.scheduler_address,
                          out=tmp_path, **study)
        # the chunks really ran as tasks of this cluster's scheduler
        assert any("_run_chunk" in k for k in cl.scheduler.task_prefixes), list(cl.scheduler.task_prefixes)
    # and on a local cluster started by the study, whose workers write their own chunk files (as loky's)
    local = run_study(ieee, "default", backend="dask", jobs=2, out=tmp_path / "local", **study)
    for other in (there, local):
        assert set(here.children) == set(other.children)
        for name in here.children:
            xr.testing.assert_identical(here[name].to_dataset(), other[name].to_dataset())


def test_backend_errors_are_clear(ieee):
    with pytest.raises(ConfigError, match="needs backend 'dask'"):
        run_study(ieee, "default", draws=1, periods=1, backend="threading", scheduler="tcp://x:1")
    with pytest.raises(ConfigError, match="backend 'nosuch' unknown .allowed: .*loky"):
        run_study(ieee, "default", draws=60, periods=1, jobs=2, backend="nosuch")


def test_a_parallel_fleet_gives_the_numbers_of_one_feeder_after_another(tmp_path, monkeypatch):
    """``jobs=2`` and five feeders (a broken one among them): the feeders are the tasks of two
    worker processes, which write the reports too.  The table and each feeder's result file are
    those of the same fleet studied one feeder after another."""
    import joblib

    pools = []

    class Counted(joblib.Parallel):
        def __init__(self, *args, **kw):
            pools.append(kw.get("n_jobs"))
            super().__init__(*args, **kw)

    monkeypatch.setattr(joblib, "Parallel", Counted)
    feeders = _small_fleet(tmp_path / "feeders")
    for name, like in (("east", "north"), ("west", "south")):
        text = feeders[like].read_text()
        (tmp_path / "feeders" / f"{name}.toml").write_text(text.replace(f'name = "{like}"', f'name = "{name}"'))
    broken = tmp_path / "feeders" / "broken.toml"
    broken.write_text("[feeder]\nname = 'broken'\n")
    feeders = find_feeders(tmp_path / "feeders")
    study = {"draws": 6, "periods": 2, "start": "2026-01-14 18:00"}
    lines = []
    serial = run_fleet(feeders, out=tmp_path / "serial", jobs=1, report=False, **study)
    parallel = run_fleet(feeders, out=tmp_path / "parallel", jobs=2, log=lines.append, **study)
    assert pools == [2]  # the fleet's own pool (each study in it runs on one worker, without a pool)
    pools.clear()
    run_fleet(dict(list(feeders.items())[:3]), out=tmp_path / "three", jobs=2, report=False, **study)
    assert pools == []  # fewer than two feeders a worker: no fleet pool, one feeder after another
    assert list(parallel.status) == ["ok"] * 4 + ["failed"] and "broken" in parallel.error.iloc[-1]
    pd.testing.assert_frame_equal(serial, parallel)
    assert sorted(line.split("] ")[1].split(":")[0] for line in lines) == ["broken", "east", "north", "south", "west"]
    for name in ("north", "south", "east", "west"):
        a, b = open_study(tmp_path / "serial" / name), open_study(tmp_path / "parallel" / name)
        for group in ("prior_predictive", "network", "heuristic"):
            xr.testing.assert_identical(a[group].to_dataset(), b[group].to_dataset())
        assert (tmp_path / "parallel" / name / "report.html").exists()


def _dies_in_a_worker(name, *args):
    """``fleet._study_feeder`` whose worker process dies on feeder ``east`` (as an out-of-memory kill
    would end it); in the main process the real one."""
    from bayesflex import fleet

    if name == "east" and os.environ.get("BAYESFLEX_TEST_MAIN_PID") != str(os.getpid()):
        os._exit(9)
    return getattr(fleet, "_real_study_feeder", fleet._study_feeder)(name, *args)  # a worker's fleet: unpatched


def test_a_worker_that_dies_does_not_stop_the_fleet(tmp_path, monkeypatch):
    """A fleet side by side whose worker dies on one feeder: the feeders without a row are then
    studied one after another, and every feeder gets its row."""
    from bayesflex import fleet

    feeders = _small_fleet(tmp_path / "feeders")
    for name, like in (("east", "north"), ("west", "south")):
        text = feeders[like].read_text()
        (tmp_path / "feeders" / f"{name}.toml").write_text(text.replace(f'name = "{like}"', f'name = "{name}"'))
    monkeypatch.setenv("BAYESFLEX_TEST_MAIN_PID", str(os.getpid()))
    monkeypatch.setattr(fleet, "_real_study_feeder", fleet._study_feeder, raising=False)
    monkeypatch.setattr(fleet, "_study_feeder", _dies_in_a_worker)
    table = run_fleet(find_feeders(tmp_path / "feeders"), out=tmp_path / "out", jobs=2, report=False,
                      draws=4, periods=1, start="2026-01-14 18:00")
    assert sorted(table.feeder) == ["east", "north", "south", "west"] and set(table.status) == {"ok"}
