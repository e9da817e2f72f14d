"""Command line: ``bayesflex run`` (a probabilistic study), ``query``, ``map``, ``report`` and ``coordinate``
(the DSO-aggregator loop on a contracts file).

``bayesflex run`` with no arguments runs the default study: the IEEE European
LV feeder, ``priors/default.toml``, 1,000 draws over 96 half-hours.  It writes
``reports/<feeder>_<priors>/result.nc`` and ``report.html`` and prints what a
DSO planner and an aggregator look at first.  ``bayesflex query DIR`` answers questions of a
finished study.  Errors in what the user gave are printed in one line, with
exit status 2 and no traceback.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bayesflex.core.outdir import result_file
from bayesflex.core.versions import __version__
from bayesflex.errors import BayesflexError, ConfigError, OutputError

if TYPE_CHECKING:  # pandas is imported where a table is printed: checking the arguments needs none of it
    import pandas as pd


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bayesflex", description="Probabilistic risk engine for LV networks")
    ap.add_argument("--version", action="version", version=f"bayesflex {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a probabilistic congestion study",
                         description="Sample agent powers, run the load flow and the network heuristic for "
                                     "every draw and half-hour, and write DIR/result.nc.")
    run.add_argument("--feeder", default="ieee_eu_lv", help="feeder name or path (default: ieee_eu_lv)")
    run.add_argument("--priors", default="default", help="prior set name or path (default: default)")
    run.add_argument("--draws", type=int, default=1000, help="number of draws (default: 1000)")
    run.add_argument("--seed", type=int, default=1, help="seed; same inputs and seed give identical numbers")
    run.add_argument("--jobs", type=int, default=-1, help="parallel workers, -1 = every core (default); "
                                                          "the numbers do not depend on it")
    run.add_argument("--observations", default=None, help="meter readings (CSV/NetCDF) to condition on")
    run.add_argument("--ev-states", default=None, help="EV state logs (CSV) to condition on")
    run.add_argument("--start", default=None, help="first half-hour, local time of the site (--timezone), e.g. "
                                                   "'2026-07-15 00:00', or with a UTC offset (default: the priors "
                                                   "file's)")
    run.add_argument("--timezone", default=None, metavar="ZONE",
                     help="the site's IANA time zone, e.g. Europe/London (default: the priors' [site] timezone): "
                          "times are stored in UTC and printed, and --start read, in it")
    run.add_argument("--ratings", default=None, metavar="FILE",
                     help="line ratings per line code: a TOML file with a [line_i_max_a] table (line code = "
                          "amperes), e.g. for OpenDSS models whose line codes give no normamps (default 400 A)")
    run.add_argument("--periods", type=int, default=None, help="half-hours (default: the priors file's, 96)")
    run.add_argument("--positions", default=None, help="the aggregator's planned positions (CSV/NetCDF: agent, time, "
                                                       "p_kw, p_lb_kw, p_ub_kw[, offer_price])")
    run.add_argument("--method", default="analytic", choices=("analytic", "perturb"),
                     help="sensitivity method of the heuristic (default: analytic)")
    run.add_argument("--full-voltages", action="store_true", help="keep every bus voltage of every draw")
    run.add_argument("--out", default=None, help="output folder (default: reports/<feeder>_<priors>, or "
                                                 "reports/fleet_<priors> with --feeders)")
    run.add_argument("--feeders", default=None, metavar="DIR_OR_GLOB",
                     help="run the study on every feeder found here (feeder .toml/.json, OpenDSS .dss or folders "
                          "with Master.dss), one result each in OUT/<feeder>, and rank them in OUT/fleet.csv")
    run.add_argument("--resume", action="store_true",
                     help="continue an unfinished study in OUT from its last finished chunk (a finished one is "
                          "kept); without, an unfinished study there is discarded")
    run.add_argument("--backend", default=None, help="joblib backend: loky (default), threading, or dask "
                                                     "(a dask.distributed cluster; see --scheduler)")
    run.add_argument("--scheduler", default=None, metavar="ADDRESS",
                     help="with --backend dask: a running scheduler, e.g. tcp://10.0.0.5:8786 (default: a local "
                          "cluster of --jobs processes)")

    c = sub.add_parser("check-priors", help="check a prior set's household baseload against smart-meter readings",
                       description="Prior predictive check: draw the household baseload of PRIORS and set its "
                                   "quantiles, evening peaks, ADMD curve and shares beyond physical limits beside "
                                   "measured households (ENWL's by default), with the data's bootstrap intervals. "
                                   "Writes a table and a figure; exit status 1 when a target is missed.")
    c.add_argument("priors", nargs="?", default="default", help="prior set name or path (default: default)")
    c.add_argument("--against", default=None, metavar="FILE",
                   help="your readings: tidy CSV (agent,time,p_kw) or NetCDF p_kw(agent,time), as 'run "
                        "--observations' reads them; naive times are local in the priors' [site] timezone "
                        "(default: ENWL's 100 households of the horizon's season)")
    c.add_argument("--season", default=None, choices=("winter", "summer"),
                   help="ENWL season (default: by the horizon's month, April-September summer)")
    c.add_argument("--feeder", default="ieee_eu_lv", help="feeder whose agents are drawn (default: ieee_eu_lv)")
    c.add_argument("--draws", type=int, default=1000, help="draws (default: 1000)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", default=None, help="folder for check_priors.csv and check_priors.png "
                                               "(default: reports/check_<priors>)")

    r = sub.add_parser("report", help="rebuild DIR/report.html from DIR/result.nc",
                       description="Rebuild the study's self-contained HTML report from its result file alone.")
    r.add_argument("dir", help="study folder (or its result.nc)")

    m = sub.add_parser("map", help="draw a congestion-probability map of a study",
                       description="The feeder coloured by the probability of violations, one panel per phase.")
    m.add_argument("dir", help="study folder (or its result.nc)")
    m.add_argument("--kind", default="any", choices=("any", "undervoltage", "overvoltage", "overload"))
    m.add_argument("--phase", default=None, choices=("a", "b", "c"), help="one phase (default: all three)")
    m.add_argument("--time", default=None, help="a half-hour in the site's local time, e.g. '2026-01-14 19:00' "
                                                "(default: the worst over the horizon)")
    m.add_argument("--heatmap", action="store_true", help="probability by half-hour and bus instead of the map")
    m.add_argument("--out", default=None, help="output file, .png or .svg (default: DIR/map_<kind>.png)")
    m.add_argument("--dpi", type=int, default=120)

    mk = sub.add_parser("market", help="decide what to offer in which market, at what risk",
                        description="Choose the commitments per market product and half-hour that maximise the "
                                    "expected objective over the study's draws of deliverable flexibility, within a "
                                    "risk of falling short; judge them on fresh draws (another seed); write "
                                    "DIR/market.csv, DIR/market.json, DIR/market_positions.csv and a section of "
                                    "DIR/report.html.")
    mk.add_argument("dir", help="study folder (or its result.nc)")
    mk.add_argument("--markets", default="uk", help="market set name or path (default: uk, markets/uk.toml)")
    mk.add_argument("--objective", default="profit",
                    help="profit, carbon, affordability, or weights such as profit=1,carbon=0.05 (GBP per kg CO2)")
    mk.add_argument("--risk", default="0.05", help="largest share of draws allowed to fall short in some half-hour "
                                                   "(default 0.05), or none")
    mk.add_argument("--cvar", default=None, metavar="ALPHA:GBP",
                    help="also keep the CVaR at ALPHA of the shortfall cost under GBP, e.g. 0.95:5")
    mk.add_argument("--fresh", default=None, metavar="DIR2",
                    help="a study of the same inputs with another seed, to judge the commitments on (default: run "
                         "one into DIR/market_fresh)")
    mk.add_argument("--jobs", type=int, default=-1, help="workers for the fresh study (default: every core)")
    mk.add_argument("--no-calibrate", action="store_true",
                    help="tune at the risk itself, not at the in-sample risk that holds it on held-out draws")

    co = sub.add_parser("coordinate", help="run the two-stage DSO-aggregator coordination on a contracts file",
                        description="Stage 1: each aggregator of CONTRACTS schedules its devices for cost (its "
                                    "market commitment, unless the file gives one); stage 2: the DSO studies the "
                                    "schedules and limits the devices wherever P(congestion) is not bounded below "
                                    "--risk, the aggregators re-plan, until secure; the final schedules are "
                                    "checked on fresh draws. Writes rounds.csv, positions.csv, coordination.json "
                                    "and report.html into --out.")
    co.add_argument("--contracts", required=True, help="aggregator contracts: name of contracts/<name>.toml, or a "
                                                       "path (e.g. two_area)")
    co.add_argument("--feeder", default=None, help="feeder name or path (default: the contracts file's "
                                                   "[contracts] feeder)")
    co.add_argument("--priors", default=None, help="prior set name or path, the uncontrollable demand and PV "
                                                   "(default: the contracts file's [contracts] priors)")
    co.add_argument("--risk", type=float, default=0.05, help="accepted P(congestion) per half-hour (default 0.05)")
    co.add_argument("--draws", type=int, default=200, help="tuning draws of each round's study (default: 200)")
    co.add_argument("--seed", type=int, default=1, help="seed; same inputs and seed give identical numbers")
    co.add_argument("--jobs", type=int, default=-1, help="parallel workers, -1 = every core (default)")
    co.add_argument("--confirm-draws", type=int, default=None, help="fresh draws confirming the verdict (default: "
                                                                    "ceil(50 / risk), 1000 at 0.05)")
    co.add_argument("--max-rounds", type=int, default=12, help="rounds of limits and re-plans at most (default 12)")
    co.add_argument("--method", default="central", choices=("central", "distributed"),
                    help="the aggregators' optimisation: one LP, or Dantzig-Wolfe over the devices (same optimum)")
    co.add_argument("--out", default=None, help="output folder (default: reports/coordinate_<contracts>)")

    q = sub.add_parser("query", help="ask a finished study a question",
                       description="Probabilities (with Monte Carlo error) and quantiles from DIR/result.nc.")
    q.add_argument("dir", help="study folder (or its result.nc)")
    q.add_argument("what", nargs="?", default="congestion",
                   choices=("congestion", "adjustment", "flexibility", "product", "agents", "causes"),
                   help="congestion probability (default), an agent's adjustment quantiles, portfolio "
                        "flexibility at risk per half-hour, a market product's delivery (--direction, --kw, "
                        "--start, --end), the agents most often adjusted, or what causes congestion per "
                        "half-hour and phase (shares by technology and agent; --time, --phase)")
    q.add_argument("--by", default="bus", choices=("bus", "line", "phase", "time", "trafo"),
                   help="congestion: where (default: bus)")
    q.add_argument("--kind", default="any", choices=("any", "under", "over"), help="congestion by bus: voltage side")
    q.add_argument("--phase", default=None, choices=("a", "b", "c"))
    q.add_argument("--time", default=None, help="a half-hour in the site's local time (as the tables print it), "
                                                "e.g. '2026-01-14 18:00'")
    q.add_argument("--agent", default=None, help="adjustment: the agent")
    q.add_argument("--quantiles", default="0.5,0.9,0.95", help="adjustment: quantiles (default 0.5,0.9,0.95)")
    q.add_argument("--confidence", default=None,
                   help="flexibility: confidence (default 0.9); product: levels (default 0.5,0.9,0.95)")
    q.add_argument("--direction", default="up", choices=("up", "down"), help="flexibility, product: direction")
    q.add_argument("--kw", type=float, default=None, help="product: the power offered, kW")
    q.add_argument("--start", default=None, help="product: first half-hour, local time, e.g. '2026-01-14 17:00'")
    q.add_argument("--end", default=None, help="product: last half-hour (default: --start)")
    q.add_argument("--top", type=int, default=20, help="congestion, adjustment, agents, causes: rows to show "
                                                       "(default 20; 0 = all)")
    q.add_argument("--format", default="table", choices=("table", "csv", "json"))
    return ap


# ----------------------------------------------------------------------------
# run
# ----------------------------------------------------------------------------
def _check_run_args(args) -> None:
    """What ``run`` was given that can be judged without reading a file: before any file is read,
    and before the heavy imports (:mod:`bayesflex.core.checks` needs only the standard library)."""
    from bayesflex.core.checks import check_backend, check_horizon

    if args.draws < 1:
        raise ConfigError(f"--draws {args.draws}: must be at least 1")
    if args.jobs == 0 or args.jobs < -1:
        raise ConfigError(f"--jobs {args.jobs}: give a positive number of workers, or -1 for every core")
    if args.seed < 0:
        raise ConfigError(f"--seed {args.seed}: must be 0 or more")
    check_horizon(args.start, args.periods, label="--{} ")
    check_backend(args.backend, args.scheduler, registered=False)
    if args.timezone is not None:
        from bayesflex.core.tables import zone

        zone(args.timezone, "--timezone")
    if args.ratings is not None and args.feeders is not None:
        raise ConfigError("--ratings applies to one --feeder; for --feeders give each feeder a TOML with its "
                          "[line_i_max_a] table")


def _check_run_files(args) -> None:
    """The files ``run`` is to read are there, and ``--out`` can be written: before reading any of them
    (a priors file's contents are checked next, without PyMC; the feeder's network after it)."""
    from bayesflex.core.checks import check_input_file, resolve_feeder, resolve_priors
    from bayesflex.core.outdir import check_writable

    resolve_priors(args.priors)
    if args.feeders is None:
        resolve_feeder(args.feeder)
    elif not any(c in args.feeders for c in "*?[") and not Path(args.feeders).exists():
        raise ConfigError(f"--feeders {args.feeders}: no such folder (give a folder of feeders or a glob)")
    for option, path in (("--observations", args.observations), ("--ev-states", args.ev_states),
                         ("--positions", args.positions), ("--ratings", args.ratings)):
        check_input_file(path, option)
    if args.out is not None:
        check_writable(args.out)


def _cmd_run(args, argv) -> int:
    _check_run_args(args)
    _check_run_files(args)
    from bayesflex.analysis.report import write_report
    from bayesflex.analysis.summary import summarise
    from bayesflex.core.outdir import as_output_error
    from bayesflex.io.feeders import load_feeder
    from bayesflex.priors import load_priors
    from bayesflex.study.engine import check_options, local_start, run_study, with_timezone
    from bayesflex.study.schema import RESULT_FILE

    t0 = time.perf_counter()
    command = "bayesflex " + " ".join(shlex.quote(a) for a in argv)
    study = {"draws": args.draws, "seed": args.seed, "jobs": args.jobs, "observations": args.observations,
             "ev_states": args.ev_states, "start": args.start, "periods": args.periods, "method": args.method,
             "full_voltages": args.full_voltages, "command": command, "positions": args.positions,
             "backend": args.backend, "scheduler": args.scheduler, "timezone": args.timezone}
    # what run_study checks before reading anything (a study no feeder could fit in memory), before any feeder
    check_options(**{k: v for k, v in study.items() if k not in ("observations", "ev_states", "positions")})
    priors = load_priors(args.priors)
    local_start(args.start, with_timezone(priors, args.timezone), "--start")  # before the feeder is read
    if args.feeders is not None:
        return _run_fleet(args, priors, study, t0)
    feeder = load_feeder(args.feeder, ratings=args.ratings)
    out = Path(args.out) if args.out else default_out(feeder, priors.name)
    try:
        tree = run_study(feeder, priors, out=out, resume=args.resume, **study)
    except KeyboardInterrupt:
        _saved(out)
        raise
    t1 = time.perf_counter()
    summary = summarise(tree)  # once, for the report and the printout
    try:
        report = write_report(tree, out, summary=summary)
    except OSError as err:
        raise as_output_error(out / "report.html", err) from None
    print_summary(summary, sys.stdout)
    resumed = int(tree.attrs.get("chunks_resumed", 0))
    print(f"\n{args.draws} draws in {t1 - t0:.1f} s" + (f" ({resumed} finished chunks of "
          f"{tree.attrs['chunk_draws']} draws resumed, not recomputed)" if resumed else "")
          + f"; wrote {out / RESULT_FILE} and {report}")
    print(f"ask more: bayesflex query {out} [congestion|adjustment|flexibility|product|agents|causes] --help")
    return 0


def default_out(feeder, priors_name: str) -> Path:
    """``reports/<feeder>_<priors>``: one folder under ``reports``, whatever the names hold, and
    one per feeder path (:func:`~bayesflex.core.outdir.default_label`)."""
    from bayesflex.core.outdir import default_label, safe_name

    return Path("reports") / f"{default_label(feeder)}_{safe_name(priors_name)}"


def _saved(out: Path) -> None:
    from bayesflex.study.checkpoint import PARTIAL_DIR, kept_chunks

    n = kept_chunks(out)
    if n:
        print(f"bayesflex: {n} finished chunks are kept in {out / PARTIAL_DIR}; run the same command with "
              "--resume to continue", file=sys.stderr)


def _run_fleet(args, priors, study: dict, t0: float) -> int:
    from bayesflex.core.outdir import safe_name
    from bayesflex.fleet import FLEET_FILE, find_feeders, run_fleet

    found = find_feeders(args.feeders)
    out = Path(args.out) if args.out else Path("reports") / f"fleet_{safe_name(priors.name)}"
    print(f"fleet: {len(found)} feeders from {args.feeders}, priors {priors.name}, {args.draws} draws each; "
          f"results in {out}/<feeder>/", flush=True)
    table = run_fleet(found, priors, out=out, resume=args.resume, log=lambda line: print(line, flush=True), **study)
    ok = table[table.status == "ok"]
    print(f"\nfeeders ranked by congestion risk (probability [95 % interval]; {len(ok)} of {len(table)} "
          "studied):")
    print(f"  {'rank':>4}  {'feeder':<24}{'congested in horizon':>26}{'unresolvable':>26}  worst half-hour")
    for _, r in ok.head(15).iterrows():
        print(f"  {r['rank']:>4}  {r.feeder:<24}{_row_prob(r, 'p_congested_horizon'):>26}"
              f"{_row_prob(r, 'p_unresolved_horizon'):>26}  "
              f"{r.worst_half_hour} ({100 * r.p_congested_worst_half_hour:.1f} %)")
    if len(ok) > 15:
        print(f"  ... {len(ok) - 15} more in {out / FLEET_FILE}")
    for _, r in (ok[ok.caveat.fillna("").astype(bool)] if "caveat" in ok else ok.iloc[:0]).iterrows():
        print(f"  NOTE {r.feeder}: {r.caveat}")
    bad = table[table.status != "ok"]
    for _, r in bad.iterrows():
        print(f"  FAILED {r.feeder}: {r.error}")
    print(f"\n{len(table)} feeders in {time.perf_counter() - t0:.1f} s; wrote {out / FLEET_FILE} and "
          f"{out / 'fleet.png'}" if len(ok) else f"\nwrote {out / FLEET_FILE}")
    if len(bad):
        print(f"bayesflex: {len(bad)} of {len(table)} feeders failed (see {out / FLEET_FILE})", file=sys.stderr)
        return 1
    return 0


def _prob(p: float, lo: float, hi: float, n: float | None = None) -> str:
    """A probability with its 95 % interval, as everywhere in bayesflex (bayesflex.core.intervals)."""
    from bayesflex.core.intervals import format_probability

    return format_probability(p, lo, hi, n)  # imported here: the command line's checks run without scipy


def _row_prob(r, column: str = "probability", n: float | None = None) -> str:
    """The probability in ``r[column]`` with its interval (columns ``lo``/``hi`` or ``column_lo``/``column_hi``)."""
    lo, hi = ("lo", "hi") if column == "probability" else (f"{column}_lo", f"{column}_hi")
    return _prob(r[column], r[lo], r[hi], n)


def print_summary(study, f) -> None:
    """The short summary of a study a person reads first: its :class:`~bayesflex.analysis.summary.Summary`
    (``study``, or built from ``study``'s tree) in words."""
    from bayesflex.analysis.summary import Summary, summarise

    sm = study if isinstance(study, Summary) else summarise(study)
    st = sm.study
    source = "" if st.source_vm_pu is None else f"; source {st.source_vm_pu:.3f} pu of {st.source_vn_kv:g} kV"
    print(f"bayesflex {st.bayesflex_version}: feeder {st.feeder}, priors {st.priors} ({st.kind}), {st.draws} draws, "
          f"{st.half_hours} half-hours from {st.when(st.start, '%Y-%m-%d %H:%M')}, seed {st.seed}{source}", file=f)
    eff = ("" if st.effective_draws >= st.draws else
           f"; {st.effective_draws:.0f} effective draws (the posterior's smallest bulk ESS)")
    print(f"limits {st.v_min_pu}-{st.v_max_pu} pu, loading {st.loading_max_pu} pu; "
          f"probabilities with their 95 % Monte Carlo interval [Wilson]{eff}; {st.zone_note}", file=f)
    print("\nprobability of congestion at least once in the horizon:", file=f)
    for ph, p in sm.congested.items():
        print(f"  phase {ph}:   {p.text}", file=f)
    if sm.congested_any is not None:
        print(f"  any phase: {sm.congested_any.text}", file=f)
    for line in model_uncertainty_lines(sm.model_uncertainty):
        print("    " + line, file=f)
    if sm.unresolved is not None:
        print(f"  the agents' flexibility cannot resolve it, at least once: {sm.unresolved.text}", file=f)
    _print_checks(sm.checks, f)
    print("\nworst half-hours (any phase):" + ("  none congested in any draw" if not sm.worst_half_hours else ""),
          file=f)
    for r in sm.worst_half_hours:
        print(f"  {st.when(r.time)}  {r.probability.text}", file=f)
    print("\nbuses most at risk (voltage, worst half-hour):" + ("" if sm.buses else "  none"), file=f)
    for r in sm.buses:
        print(f"  bus {r.element:<8} phase {r.phase}  {r.probability.text}  at {st.when(r.time)}", file=f)
    if sm.more_buses:
        print(f"  (and {sm.more_buses} more bus-phases at the same probability)", file=f)
    print("\nlines most at risk (overload, worst half-hour):" + ("" if sm.lines else "  none"), file=f)
    for r in sm.lines:
        print(f"  {r.element:<10} {r.probability.text}  at {st.when(r.time)}", file=f)
    if sm.more_lines:
        print(f"  (and {sm.more_lines} more lines at the same probability)", file=f)
    if sm.trafo is not None:
        print(f"  transformer overload, worst transformer and half-hour: {sm.trafo.text}", file=f)
    agents = sm.agents[:5]
    print("\nagents most often adjusted (at least once in the horizon):" + ("" if agents else "  none"), file=f)
    for r in agents:
        print(f"  {r.agent:<10} {r.adjusted.text}   when adjusted: "
              f"turn-down {r.down_kw_when_adjusted:.2f} kW, turn-up {r.up_kw_when_adjusted:.2f} kW", file=f)
    _print_causes(sm, f)
    pos = sm.portfolio
    if pos is not None:
        print(f"\nportfolio: {pos.agents} agents with positions; planned P_T {pos.p_min_kw:.1f} .. "
              f"{pos.p_max_kw:.1f} kW over the horizon, bounds {pos.lb_min_kw:.1f} .. {pos.ub_max_kw:.1f} kW", file=f)
    if sm.flexibility is not None:
        _print_flexibility(sm.flexibility, f)
        if st.headroom_definition:
            print(f"  headroom: {st.headroom_definition}", file=f)


def _print_checks(c, f) -> None:
    """Agent-half-hours drawn above a service's capacity (when recorded), and load flows without a
    solution (when there are any)."""
    if c.above_service is not None:
        warn = "" if c.above_service == 0 else "  <- should be 0: the priors draw more than a service can carry"
        print(f"  plausibility: agent-half-hours whose drawn power exceeds the agent's service capacity: "
              f"{c.above_service}{warn}", file=f)
    if c.no_solution:
        print(f"  load flows without a solution (counted as congested): {c.no_solution} of {c.cases:,} "
              "draw-half-hours", file=f)


def model_uncertainty_lines(mu, k: int = 3) -> list[str]:
    """The headline's spread over the priors' parameter uncertainty
    (a :class:`~bayesflex.analysis.summary.ModelUncertainty`), in lines of words (none: not
    screened); :mod:`bayesflex.study.uncertainty` says how it is estimated."""
    from bayesflex.analysis.summary import NO_SPREAD
    from bayesflex.core.intervals import format_percent as pct

    if mu is None:
        return []
    sp = mu.spread
    spread = f"0 % throughout ({NO_SPREAD})" if mu.zero else f"{pct(sp[0])}-{pct(sp[-1])} %"
    lines = [(f"over the priors' parameter uncertainty: {spread} (10-90 % of P(congested | parameters) over the "
              f"draws; first order, the parameters explain {100 * mu.r2:.0f} % of the worst margin's variance)")]
    for i, par in enumerate(mu.parameters[:k]):
        lines.append(f"{'most influential:' if i == 0 else '':<18}{par.name:<26} "
                     f"{pct(par.p_low):>5} % at its 10 % quantile, {pct(par.p_high):>5} % "
                     f"at its 90 % (worst margin {par.margin_effect_pu:+.4f} pu)")
    return lines


def _print_flexibility(rows, f) -> None:
    print("\nportfolio flexibility sellable against the plan after network limits (kW):", file=f)
    print(f"  in every half-hour of the horizon at once (joint: each draw's lowest half-hour; 95 % interval)\n"
          f"    {'confidence':<10}{'turn-up':>20}{'turn-down':>20}", file=f)
    for r in rows:
        print(f"    P{100 * r.confidence:<9.0f}{r.up_joint.text:>20}{r.down_joint.text:>20}", file=f)
    print("  each half-hour on its own: lowest / median over the half-hours (not deliverable in all at once)", file=f)
    for r in rows:
        print(f"    P{100 * r.confidence:<9.0f}{r.up_lowest_half_hour_kw:>11.1f} / {r.up_median_half_hour_kw:<6.1f}"
              f"{r.down_lowest_half_hour_kw:>11.1f} / {r.down_median_half_hour_kw:<6.1f}", file=f)


def _print_causes(sm, f, k: int = 3) -> None:
    """The causes of the ``k`` most congested half-hour phases, in words."""
    if sm.causes is None:
        return
    print("\nwhat causes congestion, most congested half-hours (mean share of the phase's worst violation over "
          "its congested draws):" + ("" if sm.causes else "  none congested"), file=f)
    for r in sm.causes[:k]:
        print(f"  {sm.study.when(r.time)}, phase {r.phase} ({r.probability.text}): {r.text} ({r.draws} "
              f"draw{'s' if r.draws != 1 else ''})", file=f)


# ----------------------------------------------------------------------------
# query
# ----------------------------------------------------------------------------
def _cmd_query(args) -> int:
    result_file(args.dir)  # a wrong folder is said at once, before the imports below
    import pandas as pd

    from bayesflex.analysis import query
    from bayesflex.core.timefmt import local_frame
    from bayesflex.study.files import open_study

    if args.top < 0:
        raise ConfigError(f"--top {args.top}: give a number of rows to show, or 0 for all")
    tree = open_study(args.dir)
    _local_args(tree, args, "time", "start", "end")
    top = args.top or None
    note = ""
    if args.what == "congestion":
        df = query.congestion_probability(tree, args.by, phase=args.phase, time=args.time, kind=args.kind, top=top)
    elif args.what == "adjustment":
        if not args.agent:
            agents = [str(a) for a in tree["heuristic"].agent.values]
            raise ConfigError(f"query adjustment needs --agent (one of: {', '.join(agents[:8])}, ...)")
        try:
            qs = tuple(float(x) for x in args.quantiles.split(","))
        except ValueError as err:
            raise ConfigError(f"--quantiles {args.quantiles!r}: give numbers in (0, 1), e.g. 0.5,0.9") from err
        if not all(0 <= x <= 1 for x in qs):
            raise ConfigError(f"--quantiles {args.quantiles!r}: every quantile must lie in [0, 1]")
        agent = query.match_name(tree["heuristic"].agent.values, args.agent, "--agent")
        df, note = _adjusted_rows(query.adjustment_quantiles(tree, agent, q=qs, time=args.time), top)
    elif args.what == "flexibility":
        conf = _levels(args.confidence or "0.9")
        if len(conf) != 1:
            raise ConfigError(f"--confidence {args.confidence!r}: flexibility takes one level")
        df = query.flexibility_at_risk(tree, conf[0], direction=args.direction, time=args.time)
    elif args.what == "product":
        if args.kw is None or args.start is None:
            raise ConfigError("query product needs --kw and --start (and --end for more than one half-hour), "
                              "e.g. --direction up --kw 20 --start '2026-01-14 17:00' --end '2026-01-14 18:30'")
        df = query.product_at_risk(tree, args.direction, args.kw, start=args.start, end=args.end,
                                   confidence=_levels(args.confidence or "0.5,0.9,0.95"))
    elif args.what == "causes":
        df = query.causes(tree, time=args.time, phase=args.phase, top=top)
    else:
        df = query.top_agents(tree, top or len(tree["heuristic"].agent))
    df = local_frame(df, tree, text=args.format == "table")  # times local with the zone: text, or ISO with offset
    if args.format == "csv":
        df.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        print(df.to_json(orient="records", date_format="iso", double_precision=10))
    elif not df.empty or not note:
        with pd.option_context("display.max_rows", None, "display.width", 160):
            print(df.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    if note:  # a table keeps it beside the rows; CSV and JSON keep stdout to the data
        print(note, file=sys.stdout if args.format == "table" else sys.stderr)
    return 0


def _local_args(tree, args, *names: str) -> None:
    """The half-hours given as ``--time``/``--start``/``--end`` (local time of the study's site, or
    with a UTC offset) as the stored UTC half-hours the query functions take."""
    from bayesflex.core.timefmt import local_half_hour

    given = {name: getattr(args, name, None) for name in names}
    for name, value in given.items():
        if value is not None:
            setattr(args, name, str(local_half_hour(tree, value, f"--{name}")))
    if given.get("start") is not None and given.get("end") is not None and args.end < args.start:  # ISO: sortable
        raise ConfigError(f"--end {given['end']!r} is before --start {given['start']!r}")


def _adjusted_rows(df: pd.DataFrame, top: int | None) -> tuple[pd.DataFrame, str]:
    """An agent's adjustment rows worth reading: those where it is moved in some draw, most
    likely first, at most ``top``; and a note of how many rows were left out, and why."""
    moved = df[df.p_adjusted > 0].sort_values(["p_adjusted", "kw_when_adjusted"], ascending=False, kind="stable")
    shown = moved.head(top) if top else moved
    words = []
    if len(moved) < len(df):
        words.append(f"{len(df) - len(moved)} of {len(df)} rows hidden: the agent is not moved there in any draw")
    if len(shown) < len(moved):
        words.append(f"{len(moved) - len(shown)} more rows with a move not shown (--top 0 shows them all)")
    if moved.empty and len(df):
        words = [f"{df.agent.iloc[0]} is not moved in any draw at these {len(df)} phase-half-hours and directions"]
    return shown.reset_index(drop=True), "; ".join(words)


def _levels(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in str(text).split(","))
    except ValueError as err:
        raise ConfigError(f"--confidence {text!r}: give numbers in (0, 1), e.g. 0.9 or 0.5,0.9") from err


def _cmd_report(args) -> int:
    result_file(args.dir)
    from bayesflex.aggregator.market_report import sections
    from bayesflex.analysis.report import write_report
    from bayesflex.study.files import open_study

    tree = open_study(args.dir)
    directory = Path(args.dir) if Path(args.dir).is_dir() else Path(args.dir).parent
    path = write_report(tree, directory, sections=sections(tree, directory))
    print(f"wrote {path}")
    return 0


#: what ``map --heatmap`` draws (bus voltages by half-hour: :func:`bayesflex.analysis.maps.congestion_heatmap`)
HEATMAP_KINDS = ("any", "undervoltage", "overvoltage")


def _cmd_map(args) -> int:
    result_file(args.dir)
    from bayesflex.analysis import maps
    from bayesflex.study.files import open_study

    if args.heatmap and args.kind not in HEATMAP_KINDS:
        raise ConfigError(f"--kind {args.kind} with --heatmap: the heatmap shows bus voltages (allowed with --heatmap: "
                          f"{', '.join(HEATMAP_KINDS)}); for line overload draw the map without --heatmap, or ask "
                          f"'bayesflex query {args.dir} congestion --by line'")
    if args.heatmap and args.time is not None:
        raise ConfigError(f"--time {args.time!r} with --heatmap: the heatmap shows every half-hour of the study; "
                          "leave out --time, or draw the map of that half-hour without --heatmap")
    tree = open_study(args.dir)
    _local_args(tree, args, "time")
    if args.heatmap:
        fig = maps.congestion_heatmap(tree, kind=args.kind, phase=args.phase)
    else:
        fig = maps.feeder_map(tree, kind=args.kind, phase=args.phase, time=args.time)
    d = Path(args.dir) if Path(args.dir).is_dir() else Path(args.dir).parent
    out = Path(args.out) if args.out else d / f"{'heatmap' if args.heatmap else 'map'}_{args.kind}.png"
    if out.suffix.lower() not in (".png", ".svg"):
        raise ConfigError(f"--out {out}: give a .png or .svg file")
    fig.savefig(out, dpi=args.dpi)
    print(f"wrote {out}")
    return 0


def _cmd_check_priors(args) -> int:
    from bayesflex.core.outdir import safe_name
    from bayesflex.priors import load_priors
    from bayesflex.priors.check import check_priors, figure

    if args.draws < 1:
        raise ConfigError(f"--draws {args.draws}: must be a positive whole number")
    if args.seed < 0:
        raise ConfigError(f"--seed {args.seed}: must be a whole number >= 0")
    pri = load_priors(args.priors)
    out = Path(args.out) if args.out else Path("reports") / f"check_{safe_name(pri.name)}"
    res = check_priors(pri, against=args.against, feeder=args.feeder, draws=args.draws, seed=args.seed,
                       season=args.season)
    print(f"household baseload of priors {pri.name!r} ({args.draws} draws x the feeder's agents, first weekday) "
          f"against {res.data_label} ({res.house_days} house-days)")
    print(res.markdown())
    out.mkdir(parents=True, exist_ok=True)
    res.table.to_csv(out / "check_priors.csv", index_label="figure")
    print(f"wrote {out / 'check_priors.csv'} and {figure(res, out / 'check_priors.png')}")
    if not res.ok:
        print(f"missed: {', '.join(res.misses)}", file=sys.stderr)
    return 0 if res.ok else 1


# ----------------------------------------------------------------------------
# coordinate
# ----------------------------------------------------------------------------
def _check_coordinate_args(args) -> None:
    """What ``coordinate`` was given that needs no file: before any is read or anything heavy imported."""
    if not 0 < args.risk < 1:
        raise ConfigError(f"--risk {args.risk:g}: must lie strictly between 0 and 1 (e.g. 0.05)")
    for option, value, low in (("--draws", args.draws, 1), ("--seed", args.seed, 0),
                               ("--max-rounds", args.max_rounds, 0), ("--confirm-draws", args.confirm_draws, 1)):
        if value is not None and value < low:
            raise ConfigError(f"{option} {value}: must be a whole number >= {low}")
    if args.jobs == 0 or args.jobs < -1:
        raise ConfigError(f"--jobs {args.jobs}: give a positive number of workers, or -1 for every core")


def _cmd_coordinate(args, argv) -> int:
    _check_coordinate_args(args)
    from bayesflex.core.checks import resolve_contracts, resolve_feeder, resolve_priors
    from bayesflex.core.outdir import check_writable, safe_name

    path = resolve_contracts(args.contracts)
    if args.out is not None:
        check_writable(args.out)
    header = _contracts_header(path)
    names = {}
    for option, key in (("--feeder", "feeder"), ("--priors", "priors")):
        names[key] = getattr(args, key) or header.get(key)
        if not isinstance(names[key], str):
            raise ConfigError(f"{option}: not given, and {path} names no {key} ([contracts] {key} = \"...\")")
    resolve_feeder(names["feeder"])
    resolve_priors(names["priors"])
    from bayesflex.aggregator.contracts import load_contracts
    from bayesflex.aggregator.coordination import coordinate
    from bayesflex.aggregator.coordination_report import write_coordination
    from bayesflex.io.feeders import load_feeder
    from bayesflex.priors import load_priors

    t0 = time.perf_counter()
    priors = load_priors(names["priors"])
    feeder = load_feeder(names["feeder"])
    import pandas as pd

    times = pd.date_range(priors.start, periods=priors.periods, freq="30min", tz="UTC").tz_convert(
        priors.timezone or "UTC")  # the study's half-hours; the contracts' daily profiles follow the local clock
    contracts = load_contracts(path, feeder=feeder, times=times)
    out = Path(args.out) if args.out else Path("reports") / f"coordinate_{safe_name(contracts.name)}"
    check_writable(out)
    devices = sum(len(a.devices) for a in contracts.aggregators)
    print(f"coordinate: contracts {contracts.name} ({len(contracts.aggregators)} aggregators, {devices} devices), "
          f"feeder {feeder.name}, priors {priors.name}; {len(times)} half-hours; risk {args.risk:g}, "
          f"{args.draws} tuning draws a round, seed {args.seed}", flush=True)

    def on_round(r) -> None:
        peaks = ", ".join(f"{t.name} {p:.3f}" for t, p in zip(feeder.trafos, r.trafo_peak_pu))
        what = f"round {r.index}" if r.seed == args.seed else f"round {r.index} on {r.draws} fresh draws"
        print(f"  {what}: worst P(congestion) {r.worst()}, {len(r.over_risk(args.risk))} half-hour(s) over the risk; "
              f"expected peak {peaks} pu; {r.limits} limits; off commitment {sum(r.shortfall_kwh.values()):.1f} kWh; "
              f"{time.perf_counter() - t0:.0f} s", flush=True)

    res = coordinate(feeder, priors, contracts.aggregators, contracts.price_per_kwh, risk=args.risk, draws=args.draws,
                     seed=args.seed, max_rounds=args.max_rounds, method=args.method,
                     imbalance_price_per_kwh=contracts.imbalance_price_per_kwh, jobs=args.jobs,
                     confirm_draws=args.confirm_draws, commitment_kw=contracts.commitment_kw, on_round=on_round)
    _print_coordination(res, contracts)
    inputs = {"feeder": {"name": feeder.name, "path": str(feeder.origin), "sha256": feeder.sha256},
              "priors": {"name": priors.name, "path": str(priors.origin), "sha256": priors.sha256},
              "contracts": {"name": contracts.name, "path": contracts.origin, "sha256": contracts.sha256}}
    command = "bayesflex " + " ".join(shlex.quote(a) for a in argv)
    paths = write_coordination(res, contracts, out, inputs, command=command)
    print(f"\n{len(res.rounds)} studies of {args.draws} draws and one of {res.confirmation.draws} in "
          f"{time.perf_counter() - t0:.0f} s; wrote {', '.join(str(p) for p in paths.values())}")
    print(f"check the final schedules: bayesflex run --feeder {shlex.quote(names['feeder'])} --priors "
          f"{shlex.quote(names['priors'])} --positions {shlex.quote(str(paths['positions']))}")
    return 0


def _contracts_header(path: Path) -> dict:
    """The ``[contracts]`` table (feeder, priors) read without the heavy imports; a file that is not
    TOML gives none here, and its error when it is loaded."""
    import tomllib

    try:
        header = tomllib.loads(path.read_text()).get("contracts", {})
    except (OSError, ValueError):
        return {}
    return header if isinstance(header, dict) else {}


def _print_coordination(res, contracts) -> None:
    """The rounds table, the verdict, the transformers before and after, the cost and the commitments."""
    import pandas as pd

    from bayesflex.aggregator.coordination_report import transformers

    table = res.table()
    keep = ["round", "sample", "draws", "p_congested_max", "p_congested_max_hi", "half_hours_over_risk", "limits"]
    keep += [c for c in table.columns if c.startswith("peak_pu[")] + ["device_cost", "imbalance_cost",
                                                                       "shortfall_kwh"]
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print("\n" + table[keep].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"\n{'SECURE' if res.secure else 'NOT SECURE'}: {res.outcome}")
    for tr in transformers(res):
        p = {k: _prob(d["p"], d["lo"], d["hi"], d["draws"]) for k, d in tr.items() if k.startswith("p_overload")}
        print(f"transformer {tr['transformer']}: expected peak {tr['peak_pu_before']:.3f} -> {tr['peak_pu_after']:.3f} "
              f"pu ({100 * tr['peak_reduction']:.1f} % lower); P95 {tr['peak_p95_pu_before']:.3f} -> "
              f"{tr['peak_p95_pu_after']:.3f} pu; P(overload), worst half-hour: stage 1 {p['p_overload_before']}, "
              f"final {p['p_overload_after']} (tuning draws), {p['p_overload_after_fresh']} (fresh draws)")
    cur = contracts.currency
    print(f"contracted customers' electricity cost {100 * res.customer_cost_increase():+.1f} % (devices "
          f"{sum(s.cost for s in res.first.values()):.2f} -> {sum(s.cost for s in res.final.values()):.2f} {cur}, "
          f"their own demand and PV {res.uncontrolled_cost:.2f} {cur})")
    for _, c in res.commitments().iterrows():
        print(f"aggregator {c.aggregator}: commitment kept in {c.half_hours_kept} of {c.half_hours} half-hours; "
              f"{c.short_kwh:.1f} kWh short ({c.short_limited_kwh:.1f} where the DSO limited its devices), "
              f"{c.long_kwh:.1f} kWh long; imbalance {c.imbalance_cost:.2f} {cur}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args, argv)
        if args.command == "query":
            return _cmd_query(args)
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "map":
            return _cmd_map(args)
        if args.command == "market":
            from bayesflex.cli.market import cmd_market

            return cmd_market(args)
        if args.command == "check-priors":
            return _cmd_check_priors(args)
        if args.command == "coordinate":
            return _cmd_coordinate(args, argv)
    except BrokenPipeError:  # the reader went away (``| head``): not an output error; entry() ends quietly
        raise
    except BayesflexError as e:
        print(f"bayesflex: error: {e}", file=sys.stderr)
        if isinstance(e, OutputError) and e.failed_write:
            _STATE["hard_exit"] = True
        return 2
    except OSError as e:  # a write the study could not make (disk full, read-only): one line, no traceback
        from bayesflex.core.outdir import as_output_error

        e = as_output_error(getattr(e, "filename", None) or "the output folder", e)
        print(f"bayesflex: error: {e}", file=sys.stderr)
        _STATE["hard_exit"] = True
        return 2
    except KeyboardInterrupt:
        print("bayesflex: interrupted", file=sys.stderr)
        return 130
    return 1  # pragma: no cover


#: set by main when a write failed part-way (not when it was refused before it began): HDF5 objects
#: left from a failed write may crash the interpreter as it frees them at exit, so the command ends
#: without that clean-up (our files are closed or deleted; the worker pool is shut down first)
_STATE = {"hard_exit": False}


#: exit status when the reader of our output went away, as a shell reports a process ended by SIGPIPE
EXIT_BROKEN_PIPE = 128 + 13


def entry() -> None:  # pragma: no cover - the console script; tests call main()
    """The ``bayesflex`` command."""
    try:
        code = main()
        sys.stdout.flush()  # here, not at exit: a reader gone by then is also a quiet end
    except BrokenPipeError:  # ``bayesflex query ... | head``: the reader has what it wanted
        _quiet_stdout()
        sys.exit(EXIT_BROKEN_PIPE)
    # The engine is in sys.modules if a study ran (importing it here would take ~2.5 s for nothing)
    engine = sys.modules.get("bayesflex.study.engine")
    if _STATE["hard_exit"]:
        # the worker pool shut down, else loky's tracker reports its semaphores as leaked; without a
        # garbage collection, which could free the failed write's HDF5 objects
        if engine is not None:
            engine.release_pool(collect=False)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    loky = sys.modules.get("joblib.externals.loky.reusable_executor")
    if engine is not None and getattr(loky, "_executor", None) is not None:
        engine.release_pool()  # the idle workers end now (0.3 s), not by loky's hand at exit (1.6 s); left
        # alone they would hold our output pipe open for loky's idle timeout (300 s) after we are gone
    # Python's finalisation would then free every object one by one: some 1.5 s after a study (PyMC's
    # and PyTensor's graphs).  Our files are closed; the exit handlers run, the output is flushed, and
    # the process ends without it.
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of what is still buffered
    cannot fail again on the closed pipe (Python's documented recipe for SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    entry()
