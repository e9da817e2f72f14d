"""Resumable studies (bayesflex.study.checkpoint): killed part-way, restarted with --resume,
the result equals an uninterrupted run and the finished chunks are not computed again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zlib

import h5py
import numpy as np
import pytest
import xarray as xr

from bayesflex.cli.main import main
from bayesflex.errors import ConfigError
from bayesflex.study.checkpoint import PARTIAL_DIR, Checkpoint
from bayesflex.study.engine import CHUNK_DRAWS, run_study
from bayesflex.study.files import open_study
from bayesflex.study.schema import RESULT_FILE

STUDY = {"draws": 2 * CHUNK_DRAWS + 10, "seed": 7, "periods": 2, "start": "2026-01-14 18:00"}


def _numbers_identical(a: xr.DataTree, b: xr.DataTree) -> None:
    """Every group's data identical; root provenance may differ only in when/how it was made."""
    assert set(a.children) == set(b.children)
    for name in a.children:
        xr.testing.assert_identical(a[name].to_dataset(), b[name].to_dataset())
    skip = {"created_at", "command", "chunks_resumed"}
    assert {k: v for k, v in a.attrs.items() if k not in skip} == {k: v for k, v in b.attrs.items() if k not in skip}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    run_study("ieee_eu_lv", "default", jobs=1, out=out, **STUDY)  # by name, as the CLI run it is compared with
    assert not (out / PARTIAL_DIR).exists()  # cleaned up once complete
    return open_study(out)


def _cli(out, *extra) -> list[str]:
    return ["run", "--draws", str(STUDY["draws"]), "--seed", str(STUDY["seed"]), "--periods", str(STUDY["periods"]),
            "--start", STUDY["start"], "--jobs", "1", "--out", str(out), *extra]


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(uninterrupted, tmp_path, capsys):
    out = tmp_path / "study"
    proc = subprocess.Popen([sys.executable, "-m", "bayesflex.cli", *_cli(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    first = out / PARTIAL_DIR / "chunk-00000.h5"
    deadline = time.monotonic() + 300
    while not first.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the study wrote no chunk in 300 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / RESULT_FILE).exists()  # nothing that looks finished
    done = sorted(p.name for p in (out / PARTIAL_DIR).glob("chunk-*.h5"))
    assert 1 <= len(done) < 3, done

    assert main(_cli(out, "--resume")) == 0
    printed = capsys.readouterr().out
    assert f"({len(done)} finished chunks of {CHUNK_DRAWS} draws resumed, not recomputed)" in printed
    resumed = open_study(out)
    assert int(resumed.attrs["chunks_resumed"]) == len(done)
    _numbers_identical(resumed, uninterrupted)
    assert not (out / PARTIAL_DIR).exists()


SMALL = {"draws": 12, "seed": 7, "periods": 2, "start": "2026-01-14 18:00"}


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 5 draws (the real size, 50, makes these tests slow); returns the engine module."""
    from bayesflex.study import engine

    monkeypatch.setattr(engine, "CHUNK_DRAWS", 5)
    return engine


def test_resume_computes_only_the_missing_chunks(small_chunks, tmp_path, monkeypatch, ieee):
    engine = small_chunks
    whole = run_study(ieee, "default", jobs=1, **SMALL)  # in memory: no checkpoints involved
    real, calls = engine._run_chunk, []

    def dies_at_chunk_2(feeder, priors, index, *rest):
        calls.append(index)
        if index == 2:
            raise KeyboardInterrupt  # as when the operator presses Ctrl-C
        return real(feeder, priors, index, *rest)

    monkeypatch.setattr(engine, "_run_chunk", dies_at_chunk_2)
    with pytest.raises(KeyboardInterrupt):
        run_study(ieee, "default", jobs=1, out=tmp_path, **SMALL)
    assert calls == [0, 1, 2] and not (tmp_path / RESULT_FILE).exists()

    # a chunk file garbled by a crash is computed again, never read as numbers
    (tmp_path / PARTIAL_DIR / "chunk-00001.h5").write_bytes(b"\x89HDF\r\n garbage")
    calls.clear()
    monkeypatch.setattr(engine, "_run_chunk", lambda fd, pr, index, *rest: calls.append(index) or real(fd, pr, index,
                                                                                                      *rest))
    tree = run_study(ieee, "default", jobs=1, out=tmp_path, resume=True, **SMALL)
    assert calls == [1, 2]
    assert int(tree.attrs["chunks_resumed"]) == 1
    _numbers_identical(tree, whole)

    # resuming a finished study returns it without computing anything
    calls.clear()
    again = run_study(ieee, "default", jobs=1, out=tmp_path, resume=True, **SMALL)
    assert calls == []
    _numbers_identical(again, whole)


def test_resume_refuses_a_study_started_with_other_inputs(small_chunks, tmp_path, monkeypatch, ieee):
    engine = small_chunks
    real = engine._run_chunk

    def dies_at_chunk_1(feeder, priors, index, *rest):
        if index == 1:
            raise KeyboardInterrupt
        return real(feeder, priors, index, *rest)

    monkeypatch.setattr(engine, "_run_chunk", dies_at_chunk_1)
    with pytest.raises(KeyboardInterrupt):
        run_study(ieee, "default", jobs=1, out=tmp_path, **SMALL)
    kept = tmp_path / PARTIAL_DIR / "chunk-00000.h5"
    assert kept.exists()
    with pytest.raises(ConfigError, match=r"other inputs \(differs in: seed\)") as err:
        run_study(ieee, "default", jobs=1, out=tmp_path, resume=True, **{**SMALL, "seed": 8})
    assert str(tmp_path) in str(err.value)
    assert kept.exists()  # refused, not discarded
    # without --resume the unfinished study is discarded, loudly
    monkeypatch.setattr(engine, "_run_chunk", real)
    with pytest.warns(UserWarning, match="unfinished study .1 chunks. was discarded"):
        run_study(ieee, "default", jobs=1, out=tmp_path, **{**SMALL, "seed": 8})
    assert int(open_study(tmp_path).attrs["seed"]) == 8


def test_a_chunk_file_keeps_every_array_exactly(tmp_path):
    """What a chunk file gives back is what the chunk computed: small arrays as they were, large
    ones as compressed chunks of the result file's draws (4 draws padded to 50) that HDF5's own
    deflate filter reads back, and that decompress to the arrays."""
    from bayesflex.io.feeders import load_feeder
    from bayesflex.priors import load_priors
    from bayesflex.study import engine
    from bayesflex.study.checkpoint import study_fingerprint
    from bayesflex.study.files import ChunkArray

    fd, pr = load_feeder("ieee_eu_lv"), load_priors("default")
    opts = engine.StudyOptions(periods=2, full_voltages=True)
    part = engine._run_chunk(fd, pr, 3, 4, 5, opts)
    ck = Checkpoint(tmp_path, study_fingerprint(fd, pr, None, draws=200, seed=5, opts=opts, chunk_draws=50), 4,
                    rows=50)
    saved = ck.save(3, 150, 154, part)
    back = ck.load(3)
    assert set(back) == set(saved) == set(part) | {"stored_draws"}
    path = tmp_path / PARTIAL_DIR / "chunk-00003.h5"
    big = {k for k, v in back.items() if isinstance(v, ChunkArray)}
    assert {"adjust_up_kw", "headroom_down_kw", "v_pu", "sensitivity_rank", "adjust_target_phase"} <= big
    assert set(back["stored_draws"]) >= {"p_kw", "q_kvar", "p_lb_kw", "p_ub_kw", "ev_soc"}
    with h5py.File(path) as f:
        for k, v in part.items():
            if k == "draws":
                whole = back[k].assign({n: (dims, a.values(), attrs) for n, (dims, attrs, a) in
                                        back["stored_draws"].items()})[list(v.variables)]
                xr.testing.assert_identical(whole, v.drop_attrs(deep=False))
                for n, (_, _, a) in back["stored_draws"].items():
                    assert np.array_equal(f[f"draws/{n}"][()], v[n].values, equal_nan=True), n
            elif k == "portfolio":
                assert back[k].keys() == v.keys() and all(np.array_equal(back[k][n], v[n]) for n in v)
            elif k in big:
                assert back[k] == saved[k] and back[k].shape == v.shape and back[k].rows == 50
                assert back[k].values().dtype == v.dtype and np.array_equal(back[k].values(), v, equal_nan=True), k
                assert np.array_equal(f[f"physics/{k}"][()], v.astype(f[f"physics/{k}"].dtype), equal_nan=True), k
                padded = np.frombuffer(zlib.decompress(back[k].raw()), f[f"physics/{k}"].dtype)
                assert padded.size == 50 * v[0].size and not padded[4 * v[0].size:].any(), k
            else:
                assert back[k].dtype == v.dtype and np.array_equal(back[k], v, equal_nan=True), k
        assert (f.attrs["draw_start"], f.attrs["draw_stop"]) == (150, 154)
    ck.release()


def test_the_result_file_gets_the_same_arrays_copied_or_decompressed(tmp_path):
    """A chunk file's large arrays go into the result file copied as they are when their chunk
    is the result's (4 draws: 4 rows), and decompressed when it is not (kept padded to 8 rows):
    either way every array equals what the chunk computed, as kept in memory."""
    import copy

    from bayesflex.io.feeders import load_feeder
    from bayesflex.priors import load_priors
    from bayesflex.study import engine
    from bayesflex.study.checkpoint import save_chunk
    from bayesflex.study.files import ChunkArray, read_raw
    from bayesflex.study.store import FileStore, MemoryStore

    fd, pr = load_feeder("ieee_eu_lv"), load_priors("default")
    part = engine._run_chunk(fd, pr, 0, 4, 5, engine.StudyOptions(periods=2))
    memory = MemoryStore(4, "prior", fd.buses, chunk_draws=50)
    memory.add(copy.deepcopy(part), 0, 4)
    for rows, copied in ((4, True), (8, False)):
        folder = tmp_path / f"rows{rows}"
        folder.mkdir()
        light = save_chunk(folder, "x", 0, 0, 4, copy.deepcopy(part), rows)
        kept = {n: a for n, (_, _, a) in light["stored_draws"].items()}
        kept |= {n: a for n, a in light.items() if isinstance(a, ChunkArray)}
        store = FileStore(4, "prior", fd.buses, folder / "r.part", chunk_draws=50, final=folder / "result.nc")
        store.add(light, 0, 4)
        assert set(store.big) == set(memory.big) and len(store.big) >= 14
        for key, target in store.big.items():
            want = memory.big[key]
            assert np.array_equal(target[()], want.astype(np.int8) if want.dtype == bool else want, equal_nan=True), key
            stored_raw = target.id.read_direct_chunk((0,) * target.ndim)[1]
            assert (stored_raw == read_raw([kept[key[1]]])[0]) == copied, (rows, key)
        store.discard()


def test_two_runs_cannot_write_one_folder(tmp_path):
    fp = {"sha256": "x"}
    first = Checkpoint(tmp_path, fp, 2, rows=50)
    with pytest.raises(ConfigError, match="another bayesflex run is writing a study here"):
        Checkpoint(tmp_path, fp, 2, rows=50)
    first.release()
    Checkpoint(tmp_path, fp, 2, rows=50).release()
