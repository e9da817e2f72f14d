"""The market decision's chance constraint: iterated scenario discarding against the exact programme.

`bf.decide` meets "at most `risk` of the draws fall short in some half-hour" by iterated
scenario discarding (bayesflex/aggregator/decide.py), because the exact programme -- a binary per draw
-- does not close in minutes at 1,000 draws and 96 half-hours.  This bench measures what the
heuristic gives up, on instances small enough for HiGHS to solve the exact programme: the
default study's deliverable flexibility (a study folder given as argument, e.g. the output
of `bayesflex run`), `markets/uk.toml`, windows of `--periods` half-hours and the first
`--draws` draws, at several risks.  Both are tuned at the risk itself (no calibration).

Run:  python bench/market_decision.py reports/ieee_eu_lv_default [--draws 200] [--periods 8]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bayesflex.aggregator.decide import (
    DIRECTIONS,
    _discard,
    _program,
    _terms,
    deliverable_draws,
    parse_objective,
)
from bayesflex.aggregator.markets import load_markets, local_clock
from bayesflex.study.files import open_study
from bayesflex.study.schema import RESULT_FILE


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study")
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--periods", type=int, default=8)
    ap.add_argument("--risks", default="0.05,0.1,0.2")
    ap.add_argument("--time-limit", type=float, default=300.0)
    ap.add_argument("--refine", type=float, default=0.0, help="seconds for the shortlist's exact programme")
    args = ap.parse_args(argv)
    tree = open_study(Path(args.study) / RESULT_FILE)
    D, times = deliverable_draws(tree)
    markets = load_markets("uk")
    tz = markets.timezone
    weights = parse_objective("profit")
    print(f"{'window':<12} {'risk':>5} {'exact':>8} {'heuristic':>9} {'ratio':>6} {'exact s':>8} {'heur. s':>8}  "
          "exact status")
    ratios = []
    for start in range(32, len(times) - args.periods + 1, 2 * args.periods):  # evening and night windows
        sl = slice(start, start + args.periods)
        Dw = {d: D[d][: args.draws, sl] for d in DIRECTIONS}
        tw = times[sl]
        terms = _terms(markets, local_clock(tw, tz)[0])
        for risk in (float(r) for r in args.risks.split(",")):
            m = math.floor(risk * args.draws + 1e-9)
            cap = {d: np.sort(Dw[d], axis=0)[m] for d in DIRECTIONS}
            t0 = time.perf_counter()
            _, exact = _program(markets, Dw, tw, tz, terms, weights, np.zeros(args.draws, bool), 0.95, None,
                                args.time_limit, 1e-6, cap=cap, binaries=m)
            t1 = time.perf_counter()
            _, heur = _discard(markets, Dw, tw, tz, terms, weights, risk, 0.95, None, args.time_limit, 1e-6,
                               refine_s=args.refine)
            t2 = time.perf_counter()
            r = heur["objective"] / exact["objective"] if exact["objective"] > 0 else float("nan")
            if exact["optimal"]:
                ratios.append(r)
            print(f"{str(tw[0])[5:16]:<12} {risk:5.2f} {exact['objective']:8.4f} {heur['objective']:9.4f} {r:6.3f} "
                  f"{t1 - t0:8.1f} {t2 - t1:8.1f}  {exact['status'][:40]}")
    if ratios:
        print(f"heuristic / exact optimum over {len(ratios)} solved instances: median {np.median(ratios):.3f}, "
              f"lowest {min(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
