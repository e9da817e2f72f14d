"""The default study end to end, against the same study's load flows in pandapower.

1. ``bayesflex run`` (ieee_eu_lv, priors/default.toml, 1,000 draws, 96
   half-hours, every core) as a user runs it, in a fresh process: wall time
   including imports and PyMC's compilation, and the peak memory of the
   process tree (main process plus workers, sampled from /proc every 0.1 s).
2. pandapower ``runpp_3ph`` on a sample of the study's own (draw, half-hour)
   scenarios, timed per solve and extrapolated to (a) the study's base load
   flows alone (draws x half-hours: what any load-flow loop needs at the very
   least) and (b) every load flow bayesflex solved (base, both headroom
   products and the heuristic's re-solves).

    python bench/study.py [--draws 1000] [--jobs -1] [--pandapower 40]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np


def _tree_pss_bytes(pid: int) -> int:
    """Proportional set size of ``pid`` and all its descendants (Linux /proc):
    shared pages (libraries, copy-on-write) are counted once, not per process."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(ln.split()[1]) for ln in f if ln.startswith("Pss:")) * 1024
        except (OSError, StopIteration, ValueError):
            pass
        todo += children.get(p, [])
    return total


def run_cli(draws: int, jobs: int, out: Path) -> tuple[float, float, str]:
    exe = Path(sys.executable).with_name("bayesflex")
    cmd = [str(exe), "run", "--draws", str(draws), "--jobs", str(jobs), "--out", str(out)]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def watch():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_pss_bytes(proc.pid))
            time.sleep(0.1)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    text, _ = proc.communicate()
    wall = time.perf_counter() - t
    th.join()
    if proc.returncode:
        raise SystemExit(f"bayesflex run failed ({proc.returncode}):\n{text}")
    return wall, peak[0] / 1e9, text


def pandapower_per_solve(tree, n: int, seed: int = 0) -> tuple[float, float]:
    """Seconds per runpp_3ph on ``n`` of the study's scenarios (network as shipped),
    and the largest voltage difference to the study's own minimum voltage."""
    import pandapower as pp
    import pandapower.networks as pn

    import bayesflex as bf

    feeder = bf.load_feeder(tree.attrs["feeder"])
    net = pn.ieee_european_lv_asymmetric("on_peak_566")
    load = net.asymmetric_load
    assert list(load["name"]) == list(feeder.agents)
    pred = tree["prior_predictive"]
    rng = np.random.default_rng(seed)
    d = rng.integers(0, pred.sizes["draw"], n)
    t = rng.integers(0, pred.sizes["time"], n)
    p = pred["p_kw"].values[0][d, t].astype(float)  # (n, agent, phase)
    q = pred["q_kvar"].values[0][d, t].astype(float)
    vmin = tree["network"]["v_min_pu"].values[0][d, t]
    cols_p, cols_q = [f"p_{ph}_mw" for ph in "abc"], [f"q_{ph}_mvar" for ph in "abc"]
    pp.runpp_3ph(net)  # warm-up
    diffs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        for k in range(n):
            load[cols_p] = p[k] / 1e3
            load[cols_q] = q[k] / 1e3
            pp.runpp_3ph(net)
            vm = np.stack([net.res_bus_3ph[f"vm_{ph}_pu"].to_numpy() for ph in "abc"], axis=1)
            vm = np.delete(vm, feeder.source.bus, axis=0)
            diffs.append(np.abs(np.nanmin(vm, axis=0) - vmin[k]).max())
        per = (time.perf_counter() - t0) / n
    return per, float(np.nanmax(diffs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=-1)
    ap.add_argument("--pandapower", type=int, default=40, help="scenarios solved by pandapower")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        wall, peak_gb, text = run_cli(args.draws, args.jobs, Path(tmp))
        from bayesflex.study.files import open_study

        tree = open_study(tmp)
        n_t = tree["heuristic"].sizes["time"]
        base = args.draws * n_t
        rounds = int(tree["sample_stats"]["rounds"].values.sum())
        everything = 3 * base + rounds  # positions, turn-up and turn-down products, heuristic re-solves (base)
        last = [ln for ln in text.splitlines() if "draws in" in ln]
        print(f"bayesflex run, {args.draws} draws x {n_t} half-hours, jobs={args.jobs}: {wall:.1f} s wall "
              f"(imports and compilation included), peak memory {peak_gb:.2f} GB (process tree, PSS)")
        print(f"  {last[0].strip() if last else ''}")
        per, dv = pandapower_per_solve(tree, args.pandapower)
        print(f"pandapower runpp_3ph: {1 / per:.1f} solves/s on {args.pandapower} of the study's scenarios "
              f"(max |dV_min| to bayesflex {dv:.1e} pu)")
        for what, n in (("base load flows only", base), ("every load flow bayesflex solved", everything)):
            t_pp = n * per
            print(f"  {what} ({n:,}): pandapower {t_pp / 3600:.1f} h extrapolated, bayesflex's whole study "
                  f"{wall:.0f} s: ratio {t_pp / wall:,.0f}x")
        print("  (pandapower's figure has no heuristic, sampling or output at all; the ratio is conservative)")


if __name__ == "__main__":
    main()
