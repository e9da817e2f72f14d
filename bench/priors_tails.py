"""Household baseload tails: bayesflex prior draws against ENWL's measured households.

    python bench/priors_tails.py                      # default priors (winter) vs Winter_Load_Profiles.csv
    python bench/priors_tails.py --priors summer      # summer priors vs Summer_Load_Profiles.csv
    python bench/priors_tails.py --npz draws.npz      # any model's draws: array "p_kw" (draw, house, 48)

Prints the target table of the baseload-tail issue (14): each figure of the
data (100 ENWL households, one day each, 5-minute kW averaged to half-hours)
with its bootstrap 95 % interval (households resampled), the same figure of
the model's draws and PASS/MISS against the target.  The figures and targets
are those of ``bayesflex check-priors`` (:mod:`bayesflex.priors.check`, whose
docstring defines them); this script adds ``--npz`` to judge draws of any
model.  Draws: the ``ieee_eu_lv`` feeder's 55 households, the first whole
weekday of the horizon.  About 20 s.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from bayesflex.priors.check import ENWL, compare, read_enwl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--priors", default="default", help="prior set (default: default = winter)")
    ap.add_argument("--season", choices=("winter", "summer"), help="ENWL file (default: summer for "
                    "priors named summer*, else winter)")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=300, help="bootstrap resamples of the households")
    ap.add_argument("--profiles", type=Path, default=ENWL, help="folder of the ENWL profile CSVs")
    ap.add_argument("--npz", type=Path, help="evaluate these draws instead: array p_kw (draw, house, 48)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    season = args.season or ("summer" if Path(args.priors).stem.startswith("summer") else "winter")
    path = args.profiles / f"{season.capitalize()}_Load_Profiles.csv"
    if not path.exists():
        sys.exit(f"{path}: not found (give --profiles, the folder of shared/data/enwl/profiles)")
    x = read_enwl(path)
    t = time.perf_counter()
    if args.npz:
        p = np.load(args.npz)["p_kw"]
        label = args.npz.stem
    else:
        import bayesflex as bf
        from bayesflex.priors.check import model_day

        p = model_day(bf.load_feeder("ieee_eu_lv"), bf.load_priors(args.priors), args.draws, args.seed)
        label = f"bayesflex {args.priors}"
    print(f"data: {path.name}, {x.shape[0]} households x 48 half-hours; model {p.shape[0]} x {p.shape[1]} house-days")
    print(compare(x, p, reps=args.reps, seed=args.seed, data_label="data", model_label=label).markdown())
    print(f"({time.perf_counter() - t:.1f} s)")


if __name__ == "__main__":
    main()
