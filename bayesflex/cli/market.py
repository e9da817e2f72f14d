"""``bayesflex market DIR``: the market decision on a finished study, its files and its report section.

Writes into DIR only: ``market.csv`` (one row per product and block with a
commitment, local times), ``market.json`` (the decision, its risk in sample and
on fresh draws, the solver's facts, the inputs with their SHA-256),
``market_positions.csv`` (the planned positions with every commitment called,
in the format ``bayesflex run --positions`` reads, to re-check the plan
against the network) and the report's market section (``report.html`` is
rebuilt).  The fresh draws are another study of the same inputs with another
seed: ``--fresh DIR2``, or run here into ``DIR/market_fresh``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bayesflex.aggregator.coordination import confirmation_seed
from bayesflex.aggregator.decide import decide, verdict_text
from bayesflex.aggregator.market_report import MARKET_JSON, market_section
from bayesflex.aggregator.markets import load_markets
from bayesflex.analysis.report import write_report
from bayesflex.core.intervals import format_probability
from bayesflex.errors import ConfigError
from bayesflex.grid.heuristic import Limits
from bayesflex.io.feeders import load_feeder
from bayesflex.priors.config import parse_priors
from bayesflex.study.engine import run_study
from bayesflex.study.files import file_sha256, open_study
from bayesflex.study.positions import Positions, read_positions, uncontrolled_kw, write_positions
from bayesflex.study.schema import RESULT_FILE

MARKET_CSV = "market.csv"
MARKET_POSITIONS = "market_positions.csv"
FRESH_DIR = "market_fresh"


def cmd_market(args) -> int:
    markets = load_markets(args.markets)  # a bad markets file fails before any work
    risk = _risk(args.risk)
    alpha, limit = _cvar(args.cvar)
    directory = Path(args.dir)
    directory = directory.parent if directory.suffix == ".nc" else directory
    tree = open_study(directory / RESULT_FILE)
    if args.fresh is not None:
        fresh = open_study(Path(args.fresh) / RESULT_FILE if Path(args.fresh).is_dir() else args.fresh)
    else:
        fresh = fresh_study(tree, directory / FRESH_DIR, jobs=args.jobs)
    print("deciding the commitments ...", file=sys.stderr, flush=True)
    dec = decide(tree, markets, objective=args.objective, risk=risk, cvar_alpha=alpha, cvar_limit_gbp=limit,
                 fresh=fresh, seed=int(tree.attrs.get("seed", 0)), calibrate=not args.no_calibrate)
    summary = dec.summary()
    summary["study_sha256"] = file_sha256(directory / RESULT_FILE)
    summary["fresh_seed"] = int(fresh.attrs.get("seed", -1))
    table = dec.table()
    blocks = _local_table(table, dec.timezone).assign(start_utc=[t.strftime("%Y-%m-%dT%H:%MZ") for t in table.start],
                                                      end_utc=[t.strftime("%Y-%m-%dT%H:%MZ") for t in table.end])
    summary["commitments"] = blocks.to_dict(orient="records")
    summary["capacity_kw"] = {d: dec.capacity_kw(d).round(3).tolist() for d in ("up", "down")}
    summary["stack_groups"] = [[dec.markets.products[k].name for k in g] for g in dec.markets.stack_groups()]
    summary["times_utc"] = [t.strftime("%Y-%m-%dT%H:%MZ") for t in dec.times]
    summary["timezone"] = dec.timezone
    summary["profit_hist"] = _hist(dec.in_sample.value["profit"], dec.fresh.value["profit"])
    pos = market_positions(tree, dec)

    write_positions(pos, directory / MARKET_POSITIONS)
    blocks.to_csv(directory / MARKET_CSV, index=False, float_format="%.6g")
    text = json.dumps(summary, indent=1, default=_plain)
    (directory / MARKET_JSON).write_text(text + "\n")
    # the report's section from the decision as written (not read back and re-hashed from the folder)
    report = write_report(tree, directory, sections=tuple(market_section(tree, json.loads(text))))
    _print(dec, summary, table)
    print(f"wrote {directory / MARKET_CSV}, {directory / MARKET_JSON}, {directory / MARKET_POSITIONS} and "
          f"{report}")
    print(f"re-check the plan against the network: bayesflex run --positions {directory / MARKET_POSITIONS} ...")
    return 0


def _risk(text: str) -> float | None:
    if str(text).lower() in ("none", "off", "no"):
        return None
    try:
        r = float(text)
    except ValueError:
        raise ConfigError(f"--risk {text!r}: a share of draws such as 0.05, or none") from None
    if not 0 <= r < 1:
        raise ConfigError(f"--risk {text}: a share of draws in [0, 1), or none")
    return r


def _cvar(text: str | None) -> tuple[float, float | None]:
    if text is None:
        return 0.95, None
    try:
        a, gbp = (float(v) for v in str(text).split(":"))
    except ValueError:
        raise ConfigError(f"--cvar {text!r}: ALPHA:GBP, e.g. 0.95:5 (the mean of the worst 5 % of draws' "
                          "shortfall cost at most 5 GBP)") from None
    if not (0 < a < 1 and gbp >= 0):
        raise ConfigError(f"--cvar {text!r}: ALPHA strictly between 0 and 1, GBP >= 0")
    return a, gbp


def _plain(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return None if not math.isfinite(v) else float(v)
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    return str(v)


def _hist(a: np.ndarray, b: np.ndarray, bins: int = 30) -> dict:
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    return {"edges": edges.round(4).tolist(), "in_sample": np.histogram(a, edges)[0].tolist(),
            "fresh": np.histogram(b, edges)[0].tolist()}


def _local_table(df: pd.DataFrame, tz: str) -> pd.DataFrame:
    out = df.copy()
    for c in ("start", "end"):
        out[c] = pd.DatetimeIndex(out[c]).tz_localize("UTC").tz_convert(tz).strftime("%Y-%m-%d %H:%M %Z") \
            if len(out) else out[c]
    return out


def _print(dec, s: dict, table: pd.DataFrame) -> None:
    ins, fr = s["in_sample"], s["fresh"]
    print(f"markets: {dec.markets.name} ({dec.markets.origin}); objective: "
          + ", ".join(f"{k} x {w:g}" for k, w in dec.weights.items())
          + ("" if dec.risk is None else f"; risk: at most {100 * dec.risk:g} % of draws short in some half-hour"))
    if dec.solver.get("calibration"):
        held = "which held the risk on held-out draws" if dec.solver["calibration_held"] else \
            "the lowest tried, and even it did not hold the risk on held-out draws"
        print(f"  tuned at {100 * dec.solver['in_sample_risk']:.2g} % in sample, {held} (commitments fall short "
              "more often on draws they were not tuned on)")
    if table.empty:
        print("no commitment: nothing can be sold within the risk")
    else:
        for name, g in table.groupby("product", sort=False):
            kwh = float((g.kw * g.half_hours * 0.5).sum())
            print(f"  {name:<12} {g.direction.iloc[0]:<5} {len(g):3d} blocks, up to {g.kw.max():.1f} kW, "
                  f"{kwh:.0f} kWh committed")
    for label, e in (("tuning draws", ins), ("fresh draws", fr)):
        if e is None:
            continue
        p = format_probability(e["p_shortfall"], e["p_shortfall_lo"], e["p_shortfall_hi"], e["draws"])
        print(f"  {label:<13} P(short in some half-hour) {p}; expected profit {e['profit_mean']:.2f} "
              f"+/- {e['profit_mcse']:.2f} GBP (5-95 %: {e['profit_q05']:.2f} to {e['profit_q95']:.2f}); "
              f"shortfall {e['shortfall_kwh_mean']:.2f} kWh, cost {e['shortfall_cost_gbp_mean']:.2f} GBP")
    if fr is not None and dec.risk is not None:
        print(f"  on fresh draws the risk limit {verdict_text(fr, dec.risk)}")


def fresh_study(tree, out: Path, *, jobs: int = -1):
    """Another study of ``tree``'s inputs with another seed (:func:`bayesflex.aggregator.coordination.confirmation_seed`),
    the same draws, written into ``out``; its inputs read again from where the study recorded them and
    checked against their SHA-256 (a changed file is an error, never a silent other study)."""
    a = tree.attrs
    seed = confirmation_seed(int(a["seed"]))
    if (out / RESULT_FILE).exists():
        old = open_study(out / RESULT_FILE)
        if int(old.attrs.get("seed", -1)) == seed and old.attrs.get("feeder_sha256") == a.get("feeder_sha256") \
                and old.attrs.get("priors_sha256") == a.get("priors_sha256") \
                and old.attrs.get("positions_sha256", "") == a.get("positions_sha256", "") \
                and int(old.attrs.get("draws", 0)) == int(a["draws"]):
            print(f"fresh draws: {out} (seed {seed}, already run)", file=sys.stderr)
            return old
    if int(a.get("conditioned", 0)):
        raise ConfigError("this study was conditioned on meter readings: run the same command with another --seed "
                          "and give its folder as --fresh DIR2")
    ratings = a.get("line_ratings_from") or None
    origin = a["feeder_origin"]
    try:
        feeder = load_feeder(origin if Path(origin).exists() else a["feeder"], ratings=ratings)
    except ConfigError as err:
        raise ConfigError(f"fresh draws: the study's feeder cannot be read again ({err}); give --fresh DIR2") from None
    if feeder.sha256 != a["feeder_sha256"]:
        raise ConfigError(f"fresh draws: the feeder {origin} has changed since the study (SHA-256 differs); give "
                          "--fresh DIR2, a study of the same inputs with another seed")
    import tomllib

    text = a["priors_toml"]
    priors = parse_priors(tomllib.loads(text), origin=a.get("priors_origin", "priors"), text=text, name=a["priors"])
    positions = None
    if a.get("positions_origin"):
        p = Path(a["positions_origin"])

        if not p.is_file() or file_sha256(p) != a.get("positions_sha256"):
            raise ConfigError(f"fresh draws: the positions file {p} is missing or changed since the study; give "
                              "--fresh DIR2")
        positions = read_positions(p, agents=tuple(feeder.agents), tz=a.get("timezone"))
    times = pd.DatetimeIndex(tree["summary"]["time"].values)
    print(f"fresh draws: running {int(a['draws'])} draws with seed {seed} into {out} ...", file=sys.stderr,
          flush=True)
    return run_study(feeder, priors, draws=int(a["draws"]), seed=seed, jobs=jobs, out=out,
                     start=times[0].strftime("%Y-%m-%dT%H:%M+00:00"), periods=len(times),
                     limits=Limits(float(a["v_min_pu"]), float(a["v_max_pu"]), float(a["loading_max_pu"])),
                     method=str(a["sensitivity_method"]), positions=positions, timezone=a.get("timezone"),
                     command=f"bayesflex market (fresh draws for {a.get('command', '')})")


def market_positions(tree, dec):
    """The planned positions with every commitment called (the network's worst case): each
    half-hour's committed turn-down (turn-up) is taken from the agents in proportion to the room
    each has below (above) its planned position.  A study without positions plans each agent at
    its draws' mean controllable power (what the priors' flexible technologies draw), with the
    mean bounds."""
    times = dec.times
    if "positions" in tree:
        ps = tree["positions"]
        agents = tuple(str(a) for a in ps.agent.values)
        p, lb, ub = (ps[k].values.astype(float) for k in ("p_kw", "p_lb_kw", "p_ub_kw"))
        origin = "planned positions with the market commitments called"
    else:
        pp = tree["prior_predictive"] if "prior_predictive" in tree else tree["posterior_predictive"]
        agents = tuple(str(a) for a in pp.agent.values)
        unc = uncontrolled_kw(pp)

        def mean(name):
            return (pp[name] - unc).sum("phase").mean(("chain", "draw")).transpose("time", "agent").values

        p, lb, ub = mean("p_kw"), mean("p_lb_kw"), mean("p_ub_kw")
        lb, ub = np.minimum(lb, p), np.maximum(ub, p)
        origin = "the draws' mean controllable power with the market commitments called"
    new = p.copy()
    for d, room in (("down", p - lb), ("up", ub - p)):
        c = dec.capacity_kw(d)[:, None]
        total = room.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(total > 0, room / total, 0.0)
        move = np.minimum(c * share, room)
        new = new - move if d == "down" else new + move
    return Positions(agents, pd.DatetimeIndex(times), new, lb, ub, np.full_like(new, np.nan), origin)
