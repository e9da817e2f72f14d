"""A fleet of real feeders: ``run_fleet`` (the feeders side by side, one per worker process)
against the same studies one feeder after another, each on every worker (what a fleet did
before), in the same run, on the 29 ENWL feeders by default.

Both write every feeder's result and report into a temporary folder; the bench checks that the
two give the same fleet table, and prints the wall time of each, their ratio, and the feeders
that took longest on their worker.

    python bench/fleet.py [--draws 1000] [--jobs -1] [--feeders GLOB] [--no-peer]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

from bayesflex.analysis.report import write_report
from bayesflex.fleet import find_feeders, fleet_row, rank, run_fleet
from bayesflex.io.feeders import load_feeder
from bayesflex.priors import load_priors
from bayesflex.study.engine import run_study

ENWL = Path(__file__).resolve().parents[2] / "shared" / "data" / "enwl" / "networks"


def one_after_another(found: dict, priors, out: Path, **study) -> pd.DataFrame:
    """The peer: each feeder's study on every worker, then its report, feeder after feeder."""
    rows = []
    for name, path in found.items():
        tree = run_study(load_feeder(path).replace(name=name), priors, out=out / name, progress=False, **study)
        write_report(tree, out / name)
        rows.append({"feeder": name, "path": str(path), "status": "ok", "error": ""} | fleet_row(tree))
    return rank(pd.DataFrame(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=-1)
    ap.add_argument("--feeders", default=str(ENWL), help="folder or glob of feeders (default: the ENWL networks)")
    ap.add_argument("--no-peer", action="store_true", help="time the fleet only")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    found = find_feeders(args.feeders)
    priors = load_priors("default")
    study = {"draws": args.draws, "jobs": args.jobs}
    print(f"{len(found)} feeders from {args.feeders}; {args.draws} draws x 96 half-hours each; jobs={args.jobs}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="bayesflex-fleet-") as tmp:
        lines = []
        t = time.perf_counter()
        fleet = run_fleet(found, priors, out=Path(tmp) / "fleet", log=lines.append, progress=False, **study)
        t_fleet = time.perf_counter() - t
        print(f"run_fleet (feeders side by side): {t_fleet:.1f} s wall, {(fleet.status == 'ok').sum()} of "
              f"{len(fleet)} feeders studied")
        slowest = sorted(lines, key=lambda line: -float(line.rsplit("(", 1)[1].split()[0]))[:5]
        print("  longest on their worker:\n    " + "\n    ".join(slowest))
        if not args.no_peer:
            t = time.perf_counter()
            peer = one_after_another(found, priors, Path(tmp) / "peer", **study)
            t_peer = time.perf_counter() - t
            print(f"one feeder after another, each on every worker: {t_peer:.1f} s wall")
            print(f"ratio: {t_peer / t_fleet:.2f}x")
            cols = [c for c in peer.columns if c != "error"]
            same = fleet[cols].reset_index(drop=True).equals(peer[cols].reset_index(drop=True))
            print(f"same fleet table: {same}")


if __name__ == "__main__":
    main()
