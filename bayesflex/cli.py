"""Command line: ``bayesflex run``.

Until the probabilistic study engine lands, ``run`` is a deterministic
48-hour half-hourly load-flow run on a feeder with standard household
profiles (see :mod:`bayesflex.timeseries`).  It prints the minimum and
maximum voltage per phase, the worst line and transformer loading, and the
half-hours outside limits, and writes the time series to ``DIR/result.nc``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__
from .errors import BayesflexError


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bayesflex", description="Probabilistic risk engine for LV networks")
    ap.add_argument("--version", action="version", version=f"bayesflex {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="48-hour half-hourly load-flow run on a feeder")
    run.add_argument("--feeder", default="ieee_eu_lv", help="feeder name or path (default: ieee_eu_lv)")
    run.add_argument("--start", default="2026-01-14", help="first half-hour, e.g. 2026-01-14 (a winter weekday)")
    run.add_argument("--periods", type=int, default=96, help="number of half-hours (default: 96 = 48 h)")
    run.add_argument("--seed", type=int, default=1, help="seed of the per-household scale factors")
    run.add_argument("--out", default=None, help="output folder (default: reports/<feeder>)")
    return ap


def _cmd_run(args) -> int:
    from .feeder import load_feeder
    from .timeseries import profile_run

    if args.periods < 1:
        raise BayesflexError(f"--periods must be at least 1, got {args.periods}")
    t0 = time.perf_counter()
    feeder = load_feeder(args.feeder)
    t1 = time.perf_counter()
    ds = profile_run(feeder, start=args.start, periods=args.periods, seed=args.seed)
    t2 = time.perf_counter()
    out = Path(args.out) if args.out else Path("reports") / feeder.name
    out.mkdir(parents=True, exist_ok=True)
    path = out / "result.nc"
    ds.to_netcdf(path, engine="h5netcdf")

    lo, hi = feeder.v_min_pu, feeder.v_max_pu
    print(f"bayesflex {__version__}: {feeder!r}")
    print(f"{args.periods} half-hours from {ds.time.values[0]}: {ds.attrs['profile']}, seed {args.seed}")
    print(f"feeder loaded in {t1 - t0:.1f} s; {args.periods} load flows in {t2 - t1:.2f} s "
          f"({int(ds.converged.sum())} converged)")
    print()
    print(f"{'phase':<6}{'min V [pu]':>11}  {'when':<17}{'bus':<8}{'max V [pu]':>11}  {'when':<17}")
    for ph in ds.phase.values:
        vmin, vmax = ds.v_min_pu.sel(phase=ph), ds.v_max_pu.sel(phase=ph)
        i = int(np.argmin(np.nan_to_num(vmin.values, nan=np.inf)))
        j = int(np.argmax(np.nan_to_num(vmax.values, nan=-np.inf)))
        print(f"{ph:<6}{float(vmin[i]):>11.4f}  {str(ds.time.values[i])[:16]:<17}"
              f"{str(ds.v_min_bus.sel(phase=ph).values[i]):<8}{float(vmax[j]):>11.4f}  {str(ds.time.values[j])[:16]:<17}")
    k = int(np.argmax(np.nan_to_num(ds.loading_max_pu.values, nan=-np.inf)))
    print(f"worst line loading: {float(ds.loading_max_pu[k]):.3f} pu on {ds.loading_max_line.values[k]} "
          f"at {str(ds.time.values[k])[:16]}")
    print(f"worst transformer loading: {float(np.nanmax(ds.trafo_loading_pu.values)):.3f} pu")
    under = (ds.v_min_pu < lo).any("phase")
    over = (ds.v_max_pu > hi).any("phase")
    overload = (ds.loading_max_pu > 1) | (ds.trafo_loading_pu > 1)
    bad = under | over | overload | ~ds.converged
    print(f"half-hours outside limits ({lo}-{hi} pu, ratings): {int(bad.sum())} of {args.periods}"
          + (f" (under-voltage {int(under.sum())}, over-voltage {int(over.sum())}, overload "
             f"{int(overload.sum())}, not converged {int((~ds.converged).sum())})" if bad.any() else ""))
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
    except BayesflexError as e:
        print(f"bayesflex: error: {e}", file=sys.stderr)
        return 2
    return 1  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
