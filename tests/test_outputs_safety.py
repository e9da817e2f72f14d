"""Safe outputs and no silent corruption: paths stay inside OUT, damaged files are never
taken for results, faults are one-line errors with nothing lost, honest fleet rows.

The disk-full and read-only cases mount a small tmpfs (root only, as in CI); elsewhere they
skip with the reason."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

import bayesflex as bf
from bayesflex.cli.main import default_out, main
from bayesflex.core.outdir import default_label, inside, safe_name
from bayesflex.errors import ConfigError, OutputError
from bayesflex.fleet import _names, fleet_row
from bayesflex.study import engine
from bayesflex.study.checkpoint import PARTIAL_DIR, Checkpoint
from bayesflex.study.files import open_study, save_study
from bayesflex.study.schema import RESULT_FILE

from .conftest import shared_path

BAYESFLEX = Path(sys.executable).with_name("bayesflex")


# ----------------------------------------------------------------------------------------
# names and paths
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["..", ".", "...", "", "/tmp/anywhere/x", "a/../../b", "../../etc", ".hidden",
                                  "-rf", "x" * 500, "na\x00me", "C:\\Windows\\x"])
def test_a_name_from_a_file_is_one_plain_folder_inside_out(name, tmp_path):
    s = safe_name(name)
    assert s and "/" not in s and "\\" not in s and not s.startswith((".", "-")) and len(s) <= 120
    p = inside(tmp_path, s)
    assert p.parent == tmp_path


@pytest.mark.parametrize("part", ["..", "../x", "/tmp/x", "a/../../x"])
def test_a_path_that_leaves_out_is_refused(part, tmp_path):
    with pytest.raises(OutputError, match="leave the output folder"):
        inside(tmp_path, part)


def test_a_feeder_named_like_a_path_writes_under_reports(tmp_path):
    toml = tmp_path / "evil.toml"
    toml.write_text('[feeder]\nname = "/tmp/anywhere/x"\n[source]\ntype = "pandapower"\n'
                    'network = "ieee_european_lv_asymmetric"\n')
    fd = bf.load_feeder(toml)
    out = default_out(fd, "../../up")
    assert out.parent == Path("reports") and out.name == "tmp_anywhere_x_up"


def test_enwl_feeders_with_the_same_folder_name_get_their_own_default_folders():
    a = bf.load_feeder(shared_path("enwl", "networks", "network_1", "Feeder_1"))
    b = bf.load_feeder(shared_path("enwl", "networks", "network_2", "Feeder_1"))
    assert a.name == b.name == "Feeder_1"  # the source's own names collide
    assert default_label(a) == "network_1_Feeder_1" and default_label(b) == "network_2_Feeder_1"
    assert default_out(a, "default") != default_out(b, "default")


def test_fleet_names_are_safe_and_unique(tmp_path):
    for name in ("...toml", "..toml", "a b.toml", "a_b.toml"):
        (tmp_path / name).write_text("")
    names = _names([tmp_path / n for n in ("...toml", "..toml", "a b.toml", "a_b.toml")])
    assert len(names) == 4
    for n in names:
        assert inside(tmp_path, n).parent == tmp_path and not n.startswith(".")


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    for i in range(3):
        (victim / f"precious-{i}.txt").write_text("keep me")
    return victim


def test_a_partial_folder_that_is_a_link_is_refused_and_its_target_untouched(tmp_path):
    victim = _victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / PARTIAL_DIR).symlink_to(victim)
    with pytest.raises(OutputError, match="symbolic link"):
        Checkpoint(out, {"sha256": "x"}, 2, rows=50)
    assert sorted(p.name for p in victim.iterdir()) == [f"precious-{i}.txt" for i in range(3)]


def test_a_result_file_that_is_a_link_is_refused_before_any_work(tmp_path, ieee):
    victim = _victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / RESULT_FILE).symlink_to(victim / "precious-0.txt")
    with pytest.raises(OutputError, match="symbolic link"):
        engine.run_study(ieee, "default", draws=2, periods=2, out=out)
    assert (victim / "precious-0.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------------------
# a finished study: resume refuses another feeder's; damage is found
# ----------------------------------------------------------------------------------------
def _strip(tree: xr.DataTree) -> xr.DataTree:
    """The tree without what differs between two runs of one study (when and how it was made)."""
    tree = tree.copy()
    for k in ("created_at", "command", "chunks_resumed"):
        tree.attrs.pop(k, None)
    return tree.load()


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ieee) -> Path:
    out = tmp_path_factory.mktemp("finished") / "study"
    engine.run_study(ieee, "default", draws=4, periods=2, seed=3, out=out)
    return out


def test_resume_refuses_a_folder_holding_another_feeders_study(finished, ieee):
    enwl = shared_path("enwl", "networks", "network_1", "Feeder_1")
    with pytest.raises(ConfigError, match=r"finished study of other inputs \(differs in: .*feeder") as e:
        engine.run_study(enwl, "default", draws=4, periods=2, seed=3, out=finished, resume=True)
    assert "ieee_eu_lv" in str(e.value)  # names the feeder whose study is there
    with pytest.raises(ConfigError, match=r"differs in: .*seed"):
        engine.run_study(ieee, "default", draws=4, periods=2, seed=4, out=finished, resume=True)
    assert open_study(finished).attrs["seed"] == 3  # still there, intact


def _flip(path: Path, offset: int, n: int = 8) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0x5A for b in data))


def _data_offset(path: Path, name: str, *, middle_of_chunk: bool = False) -> int:
    """Where the bytes of dataset ``name`` lie in an HDF5 file (the middle of its first
    compressed chunk when it is chunked)."""
    with h5py.File(path, "r") as f:
        d = f[name]
        if d.chunks is None:
            return d.id.get_offset()
        info = d.id.get_chunk_info(0)
        return info.byte_offset + (info.size // 2 if middle_of_chunk else 0)


def test_result_with_changed_bytes_is_an_error_not_numbers(finished, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    open_study(copy)  # intact: opens without a word
    _flip(copy / RESULT_FILE, _data_offset(copy / RESULT_FILE, "summary/p_congested_horizon"))
    with pytest.raises(ConfigError, match="does not match its checksum"):
        open_study(copy)
    assert main(["query", str(copy), "congestion", "--by", "phase"]) == 2
    err = capsys.readouterr().err
    assert "does not match its checksum" in err and "Traceback" not in err and err.count("\n") == 1


def test_a_result_without_its_checksum_is_not_read(finished, tmp_path):
    copy = tmp_path / "alone.nc"
    shutil.copy(finished / RESULT_FILE, copy)
    with pytest.raises(ConfigError, match="no checksum file"):
        open_study(copy)
    assert open_study(copy, verify=False).attrs["seed"] == 3  # for a file the user vouches for
    (tmp_path / "alone.nc.sha256").symlink_to(finished / "result.nc.sha256")  # not a checksum we wrote
    with pytest.raises(ConfigError, match="no checksum file"):
        open_study(copy)


def test_damaged_chunks_are_computed_again_and_the_study_is_unchanged(tmp_path, monkeypatch, ieee):
    """Changed data bytes (chunk 0) and a damaged deflate block of a large array, which the main
    process copies into the result without decompressing it (chunk 1), in kept chunks: both are
    computed again, with a warning, and the result equals the uninterrupted study's."""
    args = {"draws": 2 * engine.CHUNK_DRAWS, "periods": 2, "seed": 5, "jobs": 1}
    whole = _strip(engine.run_study(ieee, "default", **args))
    out = tmp_path / "s"
    monkeypatch.setattr(Checkpoint, "finish", lambda self: self.release())  # keep .partial as after a crash
    engine.run_study(ieee, "default", out=out, **args)
    monkeypatch.undo()
    (out / RESULT_FILE).unlink()
    chunk = [out / PARTIAL_DIR / f"chunk-{c:05d}.h5" for c in (0, 1)]
    with h5py.File(chunk[1], "r") as f:
        assert f["physics/adjust_down_kw"].compression == "gzip"
    _flip(chunk[0], _data_offset(chunk[0], "physics/iterations"))
    _flip(chunk[1], _data_offset(chunk[1], "physics/adjust_down_kw", middle_of_chunk=True), n=64)
    computed = []
    run_chunk = engine._run_chunk
    monkeypatch.setattr(engine, "_run_chunk", lambda *a: computed.append(a[2]) or run_chunk(*a))
    with pytest.warns(UserWarning, match="damaged") as record:
        tree = engine.run_study(ieee, "default", out=out, resume=True, **args)
    assert sorted(computed) == [0, 1]
    assert sum("damaged" in str(w.message) for w in record) == 2
    xr.testing.assert_identical(_strip(tree), whole)


# ----------------------------------------------------------------------------------------
# faults: one line, nothing lost
# ----------------------------------------------------------------------------------------
# the lines bayesflex.core.progress prints when stderr is no terminal
_PROGRESS = re.compile(r"^.*: \d+ of \d+ draws \(\d+ %\), .*\n", re.MULTILINE)


def _without_progress(err: str) -> str:
    """stderr less the progress lines a run prints when stderr is not a terminal (as here)."""
    return _PROGRESS.sub("", err)


def _one_line(capsys, *words: str) -> str:
    err = _without_progress(capsys.readouterr().err)
    assert "Traceback" not in err and err.count("\n") == 1, err
    for w in words:
        assert w in err, err
    return err


@pytest.mark.parametrize("argv, words", [
    (["--periods", "0"], "--periods 0"),
    (["--start", "notadate"], "--start 'notadate': not a date-time"),
    (["--start", "2026-13-01"], "--start '2026-13-01': not a date-time"),
    (["--start", "2026-01-14 19:15"], "on a half-hour"),
    (["--jobs", "0"], "--jobs 0"),
    (["--backend", "nosuch"], "backend 'nosuch' unknown"),
])
def test_bad_run_arguments_are_refused_before_any_work(argv, words, tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "o"), *argv]) == 2
    _one_line(capsys, words)
    assert not (tmp_path / "o" / PARTIAL_DIR).exists()


@pytest.mark.parametrize("argv", [["--draws", str(10**12)], ["--periods", "100000"]])
def test_a_study_beyond_the_machines_memory_is_refused_with_the_figure(argv, tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "o"), *argv]) == 2
    err = _one_line(capsys, "of memory", "is available")
    assert " GB" in err or " TB" in err or " PB" in err
    assert not (tmp_path / "o" / PARTIAL_DIR).exists()


@pytest.fixture
def small_disk(tmp_path):
    """A mount point and a function that mounts a tmpfs of a given size (and options) there."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = []

    def mount(size: str, *opts: str) -> Path:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join((f"size={size}",) + opts), "tmpfs", str(mnt)],
                           check=False, capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for m in mounted:
        subprocess.run(["umount", "-l", str(m)], check=False)


def test_a_read_only_output_folder_is_one_line(small_disk, capsys):
    mnt = small_disk("1m", "ro")
    assert main(["run", "--draws", "2", "--periods", "2", "--out", str(mnt / "o")]) == 2
    _one_line(capsys, str(mnt / "o"), "read-only")


def test_a_disk_too_small_for_the_study_is_refused_before_it_starts(small_disk, capsys):
    mnt = small_disk("4m")
    assert main(["run", "--draws", "1000", "--out", str(mnt / "o")]) == 2
    _one_line(capsys, "of disk", "free")
    assert not any((mnt / "o").glob(f"{PARTIAL_DIR}/chunk-*"))


@pytest.mark.slow
def test_a_disk_that_fills_during_the_study_is_one_line_and_keeps_the_chunks(small_disk):
    """The up-front estimate fits (2.6 MB) but the first chunk write would leave less than the
    reserve HDF5 needs: one line from the worker, exit 2 (not a crash), no temporary file left."""
    mnt = small_disk("18m")
    r = subprocess.run([str(BAYESFLEX), "run", "--draws", "100", "--periods", "4", "--jobs", "2",
                        "--out", str(mnt / "o")], check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    err = _without_progress(r.stderr)
    assert err.count("\n") == 1 and "disk is full" in err and "Traceback" not in err, r.stderr
    assert not list((mnt / "o" / PARTIAL_DIR).glob(".chunk-*"))  # no half-written chunk file
    assert not (mnt / "o" / RESULT_FILE).exists()


def test_a_new_result_removes_the_report_of_the_old_one(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "report.html").write_text("the old study's report")
    save_study(xr.DataTree.from_dict({"/": xr.Dataset(attrs={"x": 1})}), out)
    assert not (out / "report.html").exists()
    assert (out / "result.nc.sha256").read_text().split()[1] == RESULT_FILE


def test_a_report_that_cannot_be_written_leaves_no_half_file(finished, tmp_path, monkeypatch):
    import errno

    from bayesflex.analysis import report

    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError):
        report.write_report(copy)
    monkeypatch.undo()
    assert sorted(p.name for p in copy.iterdir()) == [RESULT_FILE, "result.nc.sha256"]


def _children(pid: int) -> set[int]:
    kids = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.add(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_workers_end_within_seconds_after_the_main_process_is_killed(tmp_path):
    out = tmp_path / "o"
    # short chunks (4 half-hours), many of them: the first is written within a second of the workers'
    # start, and the study runs on for ~20 s more
    proc = subprocess.Popen([str(BAYESFLEX), "run", "--draws", "2000", "--periods", "4", "--jobs", "2",
                             "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        workers: set[int] = set()
        while time.monotonic() < deadline and not (len(workers) >= 2 and list(out.glob(f"{PARTIAL_DIR}/chunk-*"))):
            workers = {k for k in _children(proc.pid) if "loky" in (Path("/proc") / str(k) / "cmdline").read_bytes()
                       .decode(errors="replace")} if proc.poll() is None else workers
            time.sleep(0.2)
        assert len(workers) >= 2, "the workers did not start"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10 and any(_alive(w) for w in workers):
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), f"workers still alive {time.monotonic() - t0:.1f} s after"
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in _children(proc.pid):
            os.kill(w, signal.SIGKILL)


# ----------------------------------------------------------------------------------------
# honest fleet rows
# ----------------------------------------------------------------------------------------
def _tree(v_min: np.ndarray, solved: np.ndarray, up_kw: np.ndarray) -> xr.DataTree:
    """The groups fleet_row reads, for ``draws`` draws of 2 half-hours; no-solution cells are NaN."""
    n, nt = solved.shape
    t = np.array(["2026-01-14T00:00", "2026-01-14T00:30"], "datetime64[ns]")[:nt]
    cd = ("chain", "draw", "time")
    cong = np.repeat(~solved[..., None], 3, axis=2)
    return xr.DataTree.from_dict({
        "/": xr.Dataset(attrs={"draws": n}),
        "summary": xr.Dataset({"p_congested_any": ("time", cong.any(axis=2).mean(axis=0)),
                               "p_congested_horizon": ("phase", cong.any(axis=1).mean(axis=0)),
                               "p_nonconverged": ("time", (~solved).mean(axis=0))},
                              coords={"time": t, "phase": ["a", "b", "c"]}),
        "heuristic": xr.Dataset({"congested": (cd + ("phase",), cong[None]), "resolved": (cd, solved[None]),
                                 "portfolio_adjust_up_kw": (cd, up_kw[None]),
                                 "portfolio_adjust_down_kw": (cd, np.zeros_like(up_kw)[None])}),
        "network": xr.Dataset({"p_trafo_overload": (("time", "trafo"), np.zeros((nt, 1))),
                               "v_min_pu": (cd + ("phase",), np.where(solved[..., None], v_min, np.nan)[None])}),
        "sample_stats": xr.Dataset({"converged": (cd, solved[None])}),
        "constant_data": xr.Dataset(coords={"agent": ["x"], "bus": ["b1", "b2"]}),
    })


def test_a_collapsed_feeder_row_withholds_what_would_look_fine():
    n = 800
    solved = np.zeros((n, 2), bool)
    solved[:2] = True  # 2 of 800 draws have load flows in every half-hour
    v = np.full((n, 2, 3), 0.40)
    row = fleet_row(_tree(v, solved, np.ones((n, 2))))
    assert np.isnan(row["v_min_pu_p05"])  # not 0.40 pu from the 2 solved draws
    assert np.isnan(row["turn_up_kwh_mean"]) and np.isnan(row["turn_down_kwh_mean"])
    assert row["p_draws_without_solution"] == pytest.approx(798 / 800)
    assert "99.8 %" in row["caveat"] and "withheld" in row["caveat"]
    assert row["p_congested_horizon"] == pytest.approx(798 / 800)


def test_a_feeder_with_few_unsolved_draws_counts_them_as_collapse():
    n = 100
    rng = np.random.default_rng(1)
    lowest = rng.uniform(0.90, 1.0, n)
    v = np.repeat(np.repeat(lowest[:, None, None], 2, axis=1), 3, axis=2) + np.array([0.0, 0.01, 0.02])
    solved = np.ones((n, 2), bool)
    solved[7, 1] = False  # one draw without a solution in its second half-hour
    up = np.tile([1.0, 3.0], (n, 1))
    up[7] = 100.0
    row = fleet_row(_tree(v, solved, up))
    # 5 % quantile of 100 draws (inverted CDF): the 5th lowest, the unsolved draw counting lowest of all
    others = np.sort(np.delete(lowest, 7))
    assert row["v_min_pu_p05"] == pytest.approx(others[3])
    assert row["turn_up_kwh_mean"] == pytest.approx((1.0 + 3.0) * 0.5)  # over the 99 solved draws
    assert "1.0 %" in row["caveat"] and "collapse" in row["caveat"]



def test_a_run_does_not_overwrite_another_feeders_finished_study(finished):
    enwl = shared_path("enwl", "networks", "network_1", "Feeder_1")
    with pytest.raises(ConfigError, match="finished study of another feeder"):
        engine.run_study(enwl, "default", draws=4, periods=2, seed=3, out=finished)
    assert open_study(finished).attrs["feeder"] == "ieee_eu_lv"


def _plant(partial: Path, victim: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        (partial / name).unlink(missing_ok=True)
        (partial / name).symlink_to(victim / f"precious-{i % 3}.txt")


def _intact(victim: Path) -> bool:
    return (sorted(p.name for p in victim.iterdir()) == [f"precious-{i}.txt" for i in range(3)]
            and all((victim / f"precious-{i}.txt").read_text() == "keep me" for i in range(3)))


def test_links_left_inside_partial_are_removed_not_followed(tmp_path, monkeypatch, ieee):
    """Links planted where a study writes its lock, manifest, stream and chunk files, for a new
    study and for a resumed one: nothing is written through them, a linked chunk is not read."""
    victim = _victim(tmp_path)
    out = tmp_path / "o"
    (out / PARTIAL_DIR).mkdir(parents=True)
    args = {"draws": 2 * engine.CHUNK_DRAWS, "periods": 2, "seed": 3, "jobs": 1, "out": out}
    _plant(out / PARTIAL_DIR, victim, ["lock", "manifest.tmp", "result.nc.part", ".chunk-00000.tmp-1",
                                       "chunk-00001.h5"])
    monkeypatch.setattr(Checkpoint, "finish", lambda self: self.release())  # keep .partial as after a crash
    engine.run_study(ieee, "default", **args)
    monkeypatch.undo()
    assert _intact(victim)
    (out / RESULT_FILE).unlink()
    _plant(out / PARTIAL_DIR, victim, ["lock", "result.nc.part", "chunk-00000.h5"])
    tree = engine.run_study(ieee, "default", resume=True, **args)
    assert _intact(victim)
    assert tree.attrs["chunks_resumed"] == 1  # chunk 1 read; the linked chunk 0 is not a chunk: computed
    assert not (out / RESULT_FILE).is_symlink()
