"""Scale: the default study at 1,000 and 10,000 draws, its time and peak memory.

Each size runs ``bayesflex run --draws N --out TMP`` (ieee_eu_lv,
priors/default.toml, 96 half-hours, every core) as a user runs it, in a fresh
process, while a thread samples with psutil, every 0.2 s, the resident set
size (RSS) of the whole process tree -- the CLI's process and its joblib/loky
workers -- and of the main process alone.  Printed per size: wall time
(imports, PyMC's compilation, the study, ``report.html`` and the summary), time
per draw, the study alone and the report plus summary (from the CLI's own
"N draws in X s" line), the CPU time of the process tree (user + system of the
CLI and the workers it reaped: other load on the machine does not inflate it
as it does the wall time), peak total RSS, peak main RSS, the size of
``result.nc``; then the time ratios between the largest and the smallest size
(linear in draws: the ratio of the draws, 10 for 10,000 / 1,000) and whether
every peak is within the budget (4 GB).  RSS summed over processes counts
shared pages (libraries) once per process: the total is an upper bound.

Then the main process's share, in this process (``--chunks``, default 8, after
one to warm up): a worker's whole task per chunk of 50 draws (draws, load flows,
heuristic, headroom, its chunk file written; ``engine._run_chunk`` as the
workers run it) against what the main process then does for that chunk
(unpickling what the worker sent, ``FileStore.add``: the small arrays kept, the
large ones copied compressed into the result file).  Their ratio is how many
workers one main process keeps up with (goal: 200, i.e. main-process time per
chunk <= 0.5 % of a worker's).

Then the scaling with workers (``--scaling SMALL LARGE``, default 300 900): the same study on a
local dask cluster of 1 and of 2 worker processes (``--backend dask --jobs 1|2``, one thread each)
and, in the same run, on loky with 1 and 2 workers, each at both sizes; from the study's own time
(the CLI's "N draws in X s", which leaves out the imports and the report) the throughput beyond
the start-up, (LARGE - SMALL) / (its time at LARGE - at SMALL) draws/s (the workers' imports and
PyMC's compilation are paid once whatever the size), and that of 2 workers against 1 (goal: 90 %
of linear, 1.8 x).  On a machine of 2 cores the main process shares them with the 2 workers.

    python bench/scale.py [--draws 1000 10000] [--jobs -1] [--limit-gb 4] [--trace rss.csv] [--chunks 8]
                          [--scaling 300 900]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil


def _rss(proc: psutil.Process) -> tuple[int, int]:
    """RSS of ``proc`` and of ``proc`` plus all its descendants (bytes)."""
    try:
        main = proc.memory_info().rss
        kids = proc.children(recursive=True)
    except psutil.Error:
        return 0, 0
    total = main
    for k in kids:
        try:
            total += k.memory_info().rss
        except psutil.Error:  # a worker that has just exited
            pass
    return main, total


def run_cli(draws: int, jobs: int, out: Path, interval: float, trace=None, extra: tuple[str, ...] = ()) -> dict:
    exe = Path(sys.executable).with_name("bayesflex")
    cmd = [str(exe), "run", "--draws", str(draws), "--jobs", str(jobs), "--out", str(out), *extra]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = psutil.Process(popen.pid)
    peak = {"main": 0, "total": 0, "at": 0.0}

    def watch():
        while popen.poll() is None:
            main, total = _rss(proc)
            if trace is not None:
                trace.write(f"{draws},{time.perf_counter() - t0:.2f},{main / 1e6:.0f},{total / 1e6:.0f}\n")
            peak["main"] = max(peak["main"], main)
            if total > peak["total"]:
                peak["total"], peak["at"] = total, time.perf_counter() - t0
            time.sleep(interval)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    text, _ = popen.communicate()
    wall = time.perf_counter() - t0
    th.join()
    # the CLI's CPU time and its workers' (loky's workers are reaped by the CLI as it exits)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if popen.returncode:
        raise SystemExit(f"bayesflex run --draws {draws} failed ({popen.returncode}):\n{text}")
    m = re.search(r"(\d+) draws in ([\d.]+) s", text)
    study = float(m.group(2)) if m else float("nan")
    return {"draws": draws, "wall": wall, "cpu": cpu, "study": study, "peak_total": peak["total"],
            "peak_main": peak["main"], "peak_at": peak["at"], "file": (out / "result.nc").stat().st_size}


def main_process_share(chunks: int) -> dict:
    """Seconds per chunk: a worker's task and the main process's work on its result (medians)."""
    import pickle

    import numpy as np

    from bayesflex.io.feeders import load_feeder
    from bayesflex.priors import load_priors
    from bayesflex.study import engine
    from bayesflex.study.checkpoint import Checkpoint, study_fingerprint
    from bayesflex.study.store import FileStore

    fd, pr = load_feeder("ieee_eu_lv"), load_priors("default")
    fd.model  # built once, as the workers receive it
    opts = engine.StudyOptions(limits=engine.Limits(v_min_pu=fd.v_min_pu, v_max_pu=fd.v_max_pu))
    n, rows = engine.CHUNK_DRAWS, engine.CHUNK_DRAWS
    draws = n * (chunks + 1)
    worker, main = [], []
    with tempfile.TemporaryDirectory(prefix="bayesflex-share-") as tmp:
        fp = study_fingerprint(fd, pr, None, draws=draws, seed=1, opts=opts, chunk_draws=n)
        ck = Checkpoint(tmp, fp, chunks + 1, rows=rows)
        store = FileStore(draws, "prior", fd.buses, ck.stream_path, chunk_draws=n)
        for c in range(chunks + 1):
            t = time.perf_counter()
            part = engine._run_chunk(fd, pr, c, n, 1, opts, (str(ck.dir), ck.sha256, c * n, (c + 1) * n, rows))
            sent = pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)
            t1 = time.perf_counter()
            store.add(pickle.loads(sent), c * n, (c + 1) * n)
            t2 = time.perf_counter()
            if c:  # the first compiles PyTensor's draws and creates the result file
                worker.append(t1 - t)
                main.append(t2 - t1)
        store.discard()
        ck.release()
    return {"worker": float(np.median(worker)), "main": float(np.median(main)), "sent": len(sent)}


def worker_scaling(sizes: tuple[int, int], interval: float) -> list[dict]:
    """The study (the CLI's "N draws in X s": sampling, load flows, heuristic, headroom, writing;
    not the imports or the report) at two sizes with 1 and with 2 workers, on a local dask cluster
    (``--backend dask``) and on loky (the default) in the same run."""
    rows = []
    for backend in ("dask", "loky"):
        for jobs in (1, 2):
            for draws in sizes:
                with tempfile.TemporaryDirectory(prefix=f"bayesflex-scaling-{backend}-{jobs}-") as tmp:
                    r = run_cli(draws, jobs, Path(tmp), interval, extra=("--backend", backend))
                rows.append({"backend": backend, "jobs": jobs} | r)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draws", type=int, nargs="*", default=[1000, 10000],
                    help="study sizes, run in this order (none: skip)")
    ap.add_argument("--jobs", type=int, default=-1)
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between memory samples")
    ap.add_argument("--limit-gb", type=float, default=4.0, help="memory budget for the whole process tree")
    ap.add_argument("--chunks", type=int, default=8, help="chunks timed for the main process's share (0: skip)")
    ap.add_argument("--scaling", type=int, nargs=2, default=(300, 900), metavar=("SMALL", "LARGE"),
                    help="the two sizes of the 1- and 2-worker runs (dask and loky) for the scaling figure "
                         "(0 0: skip)")
    ap.add_argument("--trace", type=Path, default=None,
                    help="also write every memory sample to this CSV (draws, seconds, main MB, tree MB)")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / 1e9:.1f} GB RAM, Python {platform.python_version()}", flush=True)
    rows = []
    trace = args.trace.open("w", buffering=1) if args.trace else None
    if trace is not None:
        trace.write("draws,seconds,main_rss_mb,tree_rss_mb\n")
    for n in args.draws:
        with tempfile.TemporaryDirectory(prefix=f"bayesflex-scale-{n}-") as tmp:
            r = run_cli(n, args.jobs, Path(tmp), args.interval, trace)
        rows.append(r)
        print(f"{n:>7,} draws: {r['wall']:7.1f} s wall, {1e3 * r['wall'] / n:6.1f} ms/draw "
              f"(study {r['study']:.1f} s, report and summary {r['wall'] - r['study']:.1f} s), "
              f"CPU {r['cpu']:.0f} s = {1e3 * r['cpu'] / n:.1f} ms/draw; "
              f"peak RSS {r['peak_total'] / 1e9:.2f} GB process tree (at {r['peak_at']:.0f} s), "
              f"{r['peak_main'] / 1e9:.2f} GB main process; result.nc {r['file'] / 1e6:,.0f} MB", flush=True)
    lo, hi = (min(rows, key=lambda r: r["draws"]), max(rows, key=lambda r: r["draws"])) if rows else (None, None)
    if rows and hi["draws"] > lo["draws"]:
        k = hi["draws"] / lo["draws"]
        print(f"time {hi['draws']:,} / {lo['draws']:,} draws: {hi['wall'] / lo['wall']:.2f} "
              f"(linear: {k:g}; study alone {hi['study'] / lo['study']:.2f}; CPU time {hi['cpu'] / lo['cpu']:.2f}); "
              f"per draw {hi['wall'] / hi['draws'] / (lo['wall'] / lo['draws']):.2f} x")
    if rows:
        worst = max(r["peak_total"] for r in rows)
        ok = worst <= args.limit_gb * 1e9
        print(f"peak RSS of the process tree {worst / 1e9:.2f} GB: {'within' if ok else 'OVER'} "
              f"the {args.limit_gb:g} GB budget")
    if any(args.scaling):
        small, large = args.scaling
        sc = worker_scaling((small, large), args.interval)
        for backend in ("dask", "loky"):
            rate = {}
            for j in (1, 2):
                lo_, hi_ = (next(r for r in sc if r["backend"] == backend and r["jobs"] == j and r["draws"] == d)
                            for d in (small, large))
                rate[j] = (large - small) / (hi_["study"] - lo_["study"])  # draws per second, start-up left out
                print(f"{backend}, {j} worker{'s' if j > 1 else ''}: {small} draws {lo_['study']:.1f} s, {large} "
                      f"draws {hi_['study']:.1f} s: {rate[j]:.1f} draws/s beyond the start-up "
                      f"(start-up {lo_['study'] - small / rate[j]:.1f} s)", flush=True)
            print(f"{backend}: 2 workers give {rate[2] / rate[1]:.2f} x the throughput of 1 "
                  f"({50 * rate[2] / rate[1]:.0f} % of linear; goal >= 90 %)", flush=True)
    if args.chunks:
        r = main_process_share(args.chunks)
        print(f"per chunk of 50 draws (median of {args.chunks}): worker {r['worker']:.2f} s, main process "
              f"{1e3 * r['main']:.0f} ms ({100 * r['main'] / r['worker']:.1f} % of the worker's; it receives "
              f"{r['sent'] / 1e6:.1f} MB): one main process keeps up with {r['worker'] / r['main']:.0f} workers "
              "(goal: 200)")


if __name__ == "__main__":
    main()
