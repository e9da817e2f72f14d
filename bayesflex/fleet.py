"""Fleet studies: one study per feeder, and the feeders ranked by congestion risk.

``bayesflex run --feeders DIR_OR_GLOB`` (:func:`run_fleet`) finds the feeders
(feeder ``.toml`` or pandapower ``.json`` files, OpenDSS ``.dss`` masters, or
folders holding a ``Master.dss`` such as the ENWL networks' ``Feeder_N``),
runs the same study on each into ``OUT/<feeder>/result.nc`` (with its
``report.html``), and writes ``OUT/fleet.csv`` and ``OUT/fleet.png``: one row
per feeder, the riskiest first.

With several workers (``--jobs``, every core by default) the feeders are studied side by
side, one per worker process, the largest first.

A feeder that cannot be loaded or studied does not stop the fleet: its row
says ``failed`` and why, and the others go on.  With ``resume`` a finished
feeder is not studied again and an unfinished one continues from its last
finished chunk, so a nightly fleet run killed part-way picks up where it stopped.
"""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import effective_n_jobs

from bayesflex.analysis.report import REPORT_FILE, write_report
from bayesflex.core.intervals import format_probability, wilson_interval
from bayesflex.core.outdir import fresh, inside, safe_name
from bayesflex.core.timefmt import fmt_time
from bayesflex.errors import BayesflexError, ConfigError, OutputError
from bayesflex.io.feeders import load_feeder
from bayesflex.priors import load_priors
from bayesflex.study.engine import release_pool, run_study
from bayesflex.study.results import mcse, study_effective_draws
from bayesflex.study.schema import RESULT_FILE

__all__ = ["FLEET_FILE", "find_feeders", "fleet_row", "run_fleet"]

FLEET_FILE = "fleet.csv"
_SUFFIXES = (".toml", ".json", ".dss")
#: the ranking: most likely congested first, then most likely unresolved, then the worst half-hour
RANK_BY = ["p_congested_horizon", "p_unresolved_horizon", "p_congested_worst_half_hour"]


def find_feeders(spec: str | Path) -> dict[str, Path]:
    """The feeders a folder or glob names, as ``{unique name: path}`` in sorted order.

    A folder is searched recursively for feeder files and OpenDSS feeder
    folders (those holding ``Master.dss``; a folder that is one is the only
    feeder).  A glob (``"enwl/networks/*/Feeder_*"``) is expanded as is.
    Names are the paths relative to what the feeders share, joined by ``_``.
    """
    p = Path(spec)
    if p.is_dir():
        if _is_dss_folder(p):
            found = [p]
        else:
            files = [q for q in p.rglob("*") if q.is_file()]
            dss = {q.parent for q in files if q.name.lower() == "master.dss"}
            found = sorted(dss | {q for q in files if q.suffix.lower() in (".toml", ".json")
                                  and dss.isdisjoint(q.parents)})
    else:
        found = [Path(q) for q in sorted(glob.glob(str(spec), recursive=True))]
        found = [q for q in found if q.is_dir() and _is_dss_folder(q) or q.is_file() and q.suffix.lower() in _SUFFIXES]
    if not found:
        raise ConfigError(f"--feeders {spec}: no feeders found (looked for feeder .toml, pandapower .json, "
                          "OpenDSS .dss files and folders holding Master.dss)")
    return _names(found)


def _is_dss_folder(p: Path) -> bool:
    return any(q.name.lower() == "master.dss" for q in p.iterdir()) if p.is_dir() else False


def _names(paths: list[Path]) -> dict[str, Path]:
    """Unique, safe folder names (:func:`~bayesflex.core.outdir.safe_name`): what a file is called
    never decides where a result is written."""
    paths = [q.resolve() for q in paths]
    if len(paths) == 1:
        raw = {paths[0]: paths[0].stem if paths[0].is_file() else paths[0].name}
    else:
        root = Path(os.path.commonpath(paths))
        raw = {q: "_".join(q.relative_to(root).with_suffix("").parts if q.is_file() else q.relative_to(root).parts)
               for q in paths}
    out: dict[str, Path] = {}
    for q, name in raw.items():
        name = base = safe_name(name)
        k = 2
        while name in out:  # two names that differ only in unsafe characters
            name, k = f"{base}_{k}", k + 1
        out[name] = q
    return out


def fleet_row(tree) -> dict:
    """One feeder's figures for the fleet table, from its study (small arrays only)."""
    s, h = tree["summary"], tree["heuristic"]
    n = int(tree.attrs["draws"])
    n_eff = study_effective_draws(tree)
    cong = h["congested"].values[0]  # (draw, time, phase)
    any_h = float(cong.any(axis=(1, 2)).mean())
    unres = float((~h["resolved"].values[0]).any(axis=1).mean())
    (any_lo, any_hi), (unres_lo, unres_hi) = wilson_interval(any_h, n_eff), wilson_interval(unres, n_eff)
    per_t = s["p_congested_any"].values
    worst_t = int(np.argmax(per_t))
    p_tr = tree["network"]["p_trafo_overload"].values
    v_min = tree["network"]["v_min_pu"].values[0]  # (draw, time, phase)
    solved = tree["sample_stats"]["converged"].values[0].astype(bool)  # (draw, time)
    all_solved = solved.all(axis=1)
    p_unsolved = float(1 - all_solved.mean())
    # a half-hour without a load-flow solution is a collapse: lower than any voltage
    lowest = np.where(solved[..., None], v_min, -np.inf).min(axis=(1, 2))
    v05 = float(np.quantile(lowest, 0.05, method="inverted_cdf"))
    down = h["portfolio_adjust_down_kw"].values[0].sum(axis=1) * 0.5  # kWh per draw
    up = h["portfolio_adjust_up_kw"].values[0].sum(axis=1) * 0.5
    enough = all_solved.mean() >= 0.5  # the heuristic's figures mean something only where it had load flows
    caveat = ""
    if p_unsolved > 0:
        caveat = (f"no load-flow solution in some half-hour of {100 * p_unsolved:.1f} % of draws (counted as "
                  "congested and overloaded); v_min_pu_p05 " + ("withheld (5 % of draws or more collapse)"
                                                                 if not np.isfinite(v05) else "counts them as collapse")
                  + "; turn-up/down means " + ("over the fully solved draws" if enough else
                                               "withheld (fewer than half the draws fully solved)"))
    return {
        "agents": int(tree["constant_data"].sizes["agent"]), "buses": int(tree["constant_data"].sizes["bus"]),
        "draws": n,
        "p_congested_horizon": any_h, "p_congested_horizon_mcse": float(mcse(any_h, n_eff)),
        "p_congested_horizon_lo": float(any_lo), "p_congested_horizon_hi": float(any_hi),
        "worst_phase": str(s.phase.values[int(np.argmax(s["p_congested_horizon"].values))]),
        "p_congested_worst_half_hour": float(per_t[worst_t]),
        "worst_half_hour": fmt_time(s.time.values[worst_t], tree, "%Y-%m-%d %H:%M"),  # local, zone named
        "p_unresolved_horizon": unres, "p_unresolved_horizon_mcse": float(mcse(unres, n_eff)),
        "p_unresolved_horizon_lo": float(unres_lo), "p_unresolved_horizon_hi": float(unres_hi),
        "p_trafo_overload_max": float(p_tr.max()) if p_tr.size else 0.0,
        "p_nonconverged": float(s["p_nonconverged"].values.max()),
        "p_draws_without_solution": p_unsolved,
        "v_min_pu_p05": v05 if np.isfinite(v05) else float("nan"),
        "turn_down_kwh_mean": float(down[all_solved].mean()) if enough else float("nan"),
        "turn_up_kwh_mean": float(up[all_solved].mean()) if enough else float("nan"),
        "caveat": caveat,
    }


def run_fleet(feeders, priors="default", *, out: str | Path, resume: bool = False, report: bool = True,
              progress: bool | None = None, log=None, **study) -> pd.DataFrame:
    """Run one study per feeder into ``out/<feeder>``; write and return the ranked fleet table.

    ``feeders``: a folder or glob (:func:`find_feeders`) or ``{name: path}``.
    ``log``: called with one line per feeder as it finishes (for a night's log).
    ``study``: :func:`bayesflex.run_study` arguments (draws, seed, jobs, backend...).

    With at least two feeders per worker (``jobs``; on this machine: no ``scheduler``, the loky
    backend), the feeders are the parallel tasks: each worker studies one feeder at a time, in
    one process (loaded, its network model built, its chunks computed and its report written
    there), the largest feeders (by the size of their model files) first, so that small ones
    fill the end.  With fewer, the feeders go one after another, each on every worker: one
    feeder much slower than the others (congested throughout, say) would otherwise leave the
    other workers idle.  The numbers are the same either way (a study's numbers do not depend on
    its workers), and so is the table (ranked by its figures, then by name).
    """
    from tqdm.auto import tqdm

    found = feeders if isinstance(feeders, dict) else find_feeders(feeders)
    pr = load_priors(priors) if isinstance(priors, (str, Path)) else priors
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(name, path, inside(out, safe_name(name))) for name, path in found.items()]
    jobs = study.get("jobs", 1)
    parallel = (study.get("scheduler") is None and study.get("backend") in (None, "loky")
                and 1 < effective_n_jobs(jobs) <= len(tasks) / 2)
    rows = []

    def take(row: dict, seconds: float) -> None:
        rows.append(row)
        bar.update()
        if log is not None:
            what = ("P(congested in horizon) " + format_probability(row["p_congested_horizon"],
                                                                    row["p_congested_horizon_lo"],
                                                                    row["p_congested_horizon_hi"], row["draws"])
                    if row["status"] == "ok" else f"FAILED: {row['error']}")
            log(f"[{len(rows)}/{len(found)}] {row['feeder']}: {what} ({seconds:.1f} s)")

    with tqdm(total=len(tasks), desc="fleet", unit="feeder",
              disable=(not progress) if progress is not None else None) as bar:
        if parallel:
            from joblib import Parallel, delayed
            from joblib.externals.loky.process_executor import TerminatedWorkerError

            tasks.sort(key=lambda t: -_files_size(Path(t[1])))
            try:
                for row, seconds in Parallel(n_jobs=jobs, return_as="generator_unordered")(
                        delayed(_study_feeder)(name, path, where, pr, resume, report, False, dict(study, jobs=1))
                        for name, path, where in tasks):
                    take(row, seconds)
            except TerminatedWorkerError:  # a worker process died (out of memory, a crash in a library): the
                release_pool()  # feeders without a row go one after another below, where such a crash is one row
        finished = {row["feeder"] for row in rows}
        for name, path, where in tasks:
            if name not in finished:
                take(*_study_feeder(name, path, where, pr, resume, report, progress, study))
    table = rank(pd.DataFrame(rows))
    _write_csv(table, out / FLEET_FILE)
    if (table.status == "ok").any():
        plot_fleet(table, out / "fleet.png")
    return table


def _study_feeder(name: str, path: Path, where: Path, priors, resume: bool, report: bool, progress,
                  study: dict) -> tuple[dict, float]:
    """One feeder's study, report and fleet row, and the seconds they took.  A feeder that cannot be
    loaded or studied gives a row that says ``failed`` and why; a full or read-only output folder
    (:class:`OutputError`) stops the fleet, as every other feeder would fail the same way."""
    row = {"feeder": name, "path": str(path), "status": "ok", "error": ""}
    t0 = time.perf_counter()
    try:
        fd = load_feeder(path).replace(name=name)
        tree = run_study(fd, priors, out=where, resume=resume, progress=progress, **study)
        rep = where / REPORT_FILE
        if report and not (resume and rep.exists() and rep.stat().st_mtime >= (where / RESULT_FILE).stat().st_mtime):
            write_report(tree, where)
        row |= fleet_row(tree)
    except OutputError:
        raise
    except BayesflexError as err:
        row |= {"status": "failed", "error": " ".join(str(err).split())}
    except Exception as err:  # noqa: BLE001 - a bug or a broken file the loaders missed: the other feeders go on
        row |= {"status": "failed", "error": f"{type(err).__name__}: {' '.join(str(err).split())}"}
    return row, time.perf_counter() - t0


def _files_size(path: Path) -> int:
    """Bytes of a feeder's model file, or of the model files (``.dss``, ``.txt``) in its folder, not
    its spreadsheets: the order in which a parallel fleet takes the feeders (largest first), without
    loading them all first."""
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.iterdir() if p.is_file() and p.suffix.lower() in (".dss", ".txt"))
        return path.stat().st_size
    except OSError:
        return 0


def rank(table: pd.DataFrame) -> pd.DataFrame:
    """Riskiest first (:data:`RANK_BY`, feeder name on ties); failed feeders last."""
    for k in RANK_BY:
        if k not in table:
            table[k] = np.nan
    ok = table[table.status == "ok"].sort_values(RANK_BY + ["feeder"], ascending=[False] * len(RANK_BY) + [True],
                                                 kind="stable")
    bad = table[table.status != "ok"].sort_values("feeder")
    out = pd.concat([ok, bad], ignore_index=True)
    out.insert(0, "rank", np.where(out.status == "ok", np.arange(1, len(out) + 1), 0))
    return out


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    tmp = fresh(path.with_name(f".{path.name}.tmp"))
    table.to_csv(tmp, index=False, float_format="%.6g")
    os.replace(tmp, path)


def plot_fleet(table: pd.DataFrame, path: Path, top: int = 40) -> Path:
    """Horizontal bars: each feeder's probability of congestion in the horizon with its 95 % Wilson
    interval, riskiest on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table[table.status == "ok"].head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 1.4 + 0.28 * len(t)))
    y = np.arange(len(t))
    p = t.p_congested_horizon.to_numpy()
    if "p_congested_horizon_lo" in t:
        err = 100 * np.vstack([p - t.p_congested_horizon_lo.to_numpy(), t.p_congested_horizon_hi.to_numpy() - p])
    else:  # a fleet.csv from before the intervals: the interval from the draws
        lo, hi = wilson_interval(p, t.draws.to_numpy(float))
        err = 100 * np.vstack([p - lo, hi - p])
    ax.barh(y, 100 * p, xerr=err, color="#c0392b", alpha=0.85, label="congested at least once", error_kw={"lw": 0.8})
    ax.barh(y, 100 * t.p_unresolved_horizon, color="#2c3e50", height=0.4, label="not resolvable by the agents")
    ax.set_yticks(y, t.feeder)
    ax.set_xlabel("probability in the horizon, % (error bars: 95 % Wilson interval)")
    ax.set_xlim(0, 100)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"feeders ranked by congestion risk ({len(t)} of {int((table.status == 'ok').sum())} shown)",
                 fontsize=10)
    fig.tight_layout()
    tmp = fresh(path.with_name(f".{path.name}.tmp.png"))
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
