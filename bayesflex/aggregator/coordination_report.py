"""What ``bayesflex coordinate`` writes: the rounds, the final schedules as positions, the verdict and a report.

Into the output folder only (:func:`bayesflex.core.outdir.inside`):

* ``rounds.csv`` -- :meth:`Coordination.table`: one row per study, the tuning
  rounds then the final schedules on fresh draws;
* ``positions.csv`` -- the final schedules as planned positions, the format
  ``bayesflex run --positions`` reads (:func:`bayesflex.study.positions.write_positions`);
* ``coordination.json`` -- the verdict, the figures before and after per
  transformer, the customers' cost, the commitments, and the inputs with
  their SHA-256 (:func:`summary`);
* ``report.html`` -- a self-contained page of the same, with a figure of
  each transformer's loading before and after (:func:`build_html`).
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from bayesflex.aggregator.coordination import Coordination
from bayesflex.analysis.report import CSS, figure_html, table_html
from bayesflex.core.intervals import format_probability, wilson_interval
from bayesflex.core.outdir import fresh, inside
from bayesflex.core.timefmt import fmt_time, local_axis, zone_note
from bayesflex.core.versions import __version__
from bayesflex.study.positions import write_positions

__all__ = ["POSITIONS_FILE", "REPORT_FILE", "ROUNDS_FILE", "SUMMARY_FILE", "build_html", "loading_figure", "summary",
           "write_coordination"]

ROUNDS_FILE = "rounds.csv"
POSITIONS_FILE = "positions.csv"
SUMMARY_FILE = "coordination.json"
REPORT_FILE = "report.html"


def _worst(p: np.ndarray, n: int) -> dict:
    """The highest of the probabilities ``p`` (over half-hours) with its 95 % Wilson interval."""
    k = int(np.argmax(p))
    lo, hi = wilson_interval(p[k], n)
    return {"p": float(p[k]), "lo": float(lo), "hi": float(hi), "draws": int(n), "half_hour": k}


def transformers(res: Coordination) -> list[dict]:
    """Per transformer: expected and P95 peak loading before (stage 1) and after (the final schedules,
    on the tuning draws and on fresh ones), and the worst half-hour's P(overload) in each study."""
    first, last, conf = res.rounds[0], res.rounds[-1], res.confirmation
    out = []
    for i, name in enumerate(res.trafos):
        out.append({"transformer": name,
                    "peak_pu_before": float(first.trafo_peak_pu[i]), "peak_pu_after": float(last.trafo_peak_pu[i]),
                    "peak_pu_after_fresh": float(conf.trafo_peak_pu[i]),
                    "peak_reduction": float(1 - last.trafo_peak_pu[i] / first.trafo_peak_pu[i]),
                    "peak_p95_pu_before": float(first.trafo_peak_p95_pu[i]),
                    "peak_p95_pu_after": float(last.trafo_peak_p95_pu[i]),
                    "peak_p95_pu_after_fresh": float(conf.trafo_peak_p95_pu[i]),
                    "p_overload_before": _worst(first.p_trafo_overload[:, i], first.draws),
                    "p_overload_after": _worst(last.p_trafo_overload[:, i], last.draws),
                    "p_overload_after_fresh": _worst(conf.p_trafo_overload[:, i], conf.draws)})
    return out


def summary(res: Coordination, contracts, inputs: dict, *, command: str = "", created_at: str | None = None) -> dict:
    """The coordination in a JSON-able dict: verdict, per-transformer figures, cost, commitments, inputs."""
    first_cost = sum(s.cost for s in res.first.values())
    final_cost = sum(s.cost for s in res.final.values())
    conf = res.confirmation
    return {
        "bayesflex_version": __version__,
        "created_at": created_at or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "verdict": {"secure": bool(res.secure), "secure_in_sample": bool(res.secure_in_sample),
                    "outcome": res.outcome, "risk": res.risk,
                    "p_congested_worst_tuning": _worst(res.rounds[-1].p_congested, res.rounds[-1].draws),
                    "p_congested_worst_fresh": _worst(conf.p_congested, conf.draws),
                    "rounds": len(res.rounds) - 1, "tuning_draws": res.rounds[-1].draws,
                    "tuning_seed": res.rounds[-1].seed, "fresh_draws": conf.draws, "fresh_seed": conf.seed},
        "transformers": transformers(res),
        "cost": {"currency": contracts.currency, "devices_before": first_cost, "devices_after": final_cost,
                 "customers_own_demand_and_pv": res.uncontrolled_cost,
                 "customers_increase": res.customer_cost_increase(),
                 "imbalance": sum(s.imbalance_cost for s in res.final.values())},
        "commitments": res.commitments().to_dict(orient="records"),
        "limits": int(res.rounds[-1].limits),
        "inputs": inputs,
    }


def loading_figure(res: Coordination):
    """Each transformer's loading per half-hour: stage 1 on the tuning draws and the final schedules on
    the fresh draws, median with the 5-95 % band, against the rating."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tree = res.confirm_tree
    t = pd.to_datetime(tree["summary"].time.values)
    k = len(res.trafos)
    fig, axes = plt.subplots(k, 1, figsize=(9, 2.6 * k + 0.6), sharex=True, squeeze=False)
    before, after = res.rounds[0].trafo_loading_q_pu, res.confirmation.trafo_loading_q_pu
    for i, (ax, name) in enumerate(zip(axes[:, 0], res.trafos)):
        for q, colour, label in ((before, "#c0392b", f"stage 1 ({res.rounds[0].draws} tuning draws)"),
                                 (after, "#1f6fb2", f"final ({res.confirmation.draws} fresh draws)")):
            ax.fill_between(t, q[0, :, i], q[2, :, i], color=colour, alpha=0.18, step="mid", linewidth=0)
            ax.step(t, q[1, :, i], where="mid", color=colour, linewidth=1.4, label=f"{label}: median, 5-95 %")
        ax.axhline(1.0, color="#333", linestyle="--", linewidth=1, label="rating")
        ax.set_ylabel("loading (pu)")
        ax.set_title(name, fontsize=10, loc="left")
        ax.grid(alpha=0.3)
        local_axis(ax, tree, label=i == k - 1)
    axes[0, 0].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def _pct(x: float) -> str:
    return f"{100 * x:+.1f} %"


def _verdict_html(outcome: str) -> str:
    """The outcome with its verdict ("secure", "not secure after 12 rounds", ...) in bold."""
    head, sep, rest = outcome.partition(": ")
    return f"<b>{html.escape(head[:1].upper() + head[1:])}</b>{sep}{html.escape(rest)}"


def build_html(res: Coordination, contracts, info: dict) -> str:
    """The report page, from the coordination and its :func:`summary`."""
    import matplotlib.pyplot as plt

    tree = res.confirm_tree
    v, cost = info["verdict"], info["cost"]
    cur = html.escape(cost["currency"])
    devices = sum(len(a.devices) for a in contracts.aggregators)
    verdict_class = "" if res.secure else "warn"  # the outcome says which and why
    parts = [(f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>bayesflex coordination: "
             f"{html.escape(contracts.name)}</title><style>{CSS}</style></head><body>"),
             f"<h1>DSO–aggregator coordination: contracts {html.escape(contracts.name)}</h1>",
             (f"<p>{len(contracts.aggregators)} aggregators, {devices} contracted devices, on feeder "
             f"{html.escape(tree.attrs['feeder'])} with priors {html.escape(tree.attrs['priors'])}; "
             f"{len(res.rounds) - 1} rounds of {v['tuning_draws']} tuning draws (seed {v['tuning_seed']}), the final "
             f"schedules confirmed on {v['fresh_draws']} fresh draws (seed {v['fresh_seed']}); accepted risk "
             f"{res.risk:g} per half-hour. Probabilities with their 95 % Wilson interval; "
             f"{html.escape(zone_note(tree))}.</p>"),
             f"<p class='created'>report created {html.escape(info['created_at'])}</p>",
             "<h2>Verdict</h2>",
             f"<p class='{verdict_class}'>{_verdict_html(res.outcome)}.</p>"]
    def prob(d):
        return format_probability(d["p"], d["lo"], d["hi"], d["draws"])

    rows = []
    for tr in info["transformers"]:
        rows.append((tr["transformer"], f"{tr['peak_pu_before']:.3f} → {tr['peak_pu_after']:.3f}",
                     f"{100 * tr['peak_reduction']:.1f} %", (f"{tr['peak_p95_pu_before']:.3f} → "
                     f"{tr['peak_p95_pu_after']:.3f}"), prob(tr["p_overload_before"]), prob(tr["p_overload_after"]),
                     prob(tr["p_overload_after_fresh"])))
    parts += ["<h2>Transformers before and after</h2>",
              ("<p>Peak loading: each draw's highest loading over the horizon, its mean and 95 % quantile over the "
              "tuning draws; P(overload): the worst half-hour's probability of a loading above the rating.</p>"),
              table_html(rows, ("transformer", "expected peak (pu)", "lower by", "P95 peak (pu)",
                            "P(overload), stage 1", "after, tuning draws", "after, fresh draws")),
              figure_html(loading_figure(res), "Transformer loading per half-hour: stage-1 schedules (red, tuning "
                      "draws) and the final schedules (blue, fresh draws); median and 5–95 % band over draws; "
                      "dashed: the rating.", "trafo-loading")]
    plt.close("all")
    parts += ["<h2>Customers' cost</h2>",
              table_html([("contracted devices", f"{cost['devices_before']:.2f} → {cost['devices_after']:.2f} {cur}"),
                      ("their own demand and PV (expected)", f"{cost['customers_own_demand_and_pv']:.2f} {cur}"),
                      ("contracted customers' electricity cost", _pct(cost["customers_increase"])),
                      ("aggregators' imbalance cost", f"{cost['imbalance']:.2f} {cur}")], ("", "value"))]
    rows = [(c["aggregator"], f"{c['half_hours_kept']} of {c['half_hours']}", c["half_hours_limited"],
             f"{c['short_kwh']:.1f}", f"{c['short_limited_kwh']:.1f}", f"{c['long_kwh']:.1f}",
             f"{c['imbalance_cost']:.2f}") for c in info["commitments"]]
    parts += ["<h2>Market commitments</h2>",
              ("<p>Each aggregator re-plans within the DSO's limits to keep its commitment, moving energy between "
              "its devices and half-hours in either area, and pays imbalance for what it cannot move: "
              "<i>short</i> is energy below the commitment (most of it where the DSO limited its devices), "
              "<i>long</i> the energy its devices still need, bought in other half-hours.</p>"),
              table_html(rows, ("aggregator", "half-hours kept", "half-hours limited", "short (kWh)",
                            "short where limited (kWh)", "long (kWh)", f"imbalance cost ({cur})"))]
    table = res.table()
    rows = []
    for _, r in table.iterrows():
        peaks = " / ".join(f"{r[f'peak_pu[{t}]']:.3f}" for t in res.trafos)
        rows.append((int(r["round"]), r["sample"], int(r["draws"]),
                     format_probability(r.p_congested_max, r.p_congested_max_lo, r.p_congested_max_hi, r.draws),
                     int(r.half_hours_over_risk), int(r.limits), peaks, f"{r.device_cost:.2f}",
                     f"{r.imbalance_cost:.2f}", f"{r.shortfall_kwh:.1f}"))
    worst = fmt_time(pd.to_datetime(tree["summary"].time.values)[v["p_congested_worst_fresh"]["half_hour"]], tree)
    parts += ["<h2>Rounds</h2>",
              ("<p>Each round studies the schedules on the same tuning draws; the DSO limits the contracted devices "
              "in every half-hour whose P(congestion) is not bounded below the risk, and the aggregators re-plan. "
              f"The last row is the final schedules on fresh draws (worst half-hour {html.escape(worst)}).</p>"),
              table_html(rows, ("round", "draws from", "draws", "worst P(congestion)", "half-hours over risk",
                            "limits", "expected peak (pu), " + " / ".join(res.trafos), f"device cost ({cur})",
                            f"imbalance cost ({cur})", "off commitment (kWh)"))]
    ins = [(k, f"{d.get('name', '')}", d.get("path", ""), d.get("sha256", "")) for k, d in info["inputs"].items()]
    parts += ["<h2>Inputs</h2>", table_html(ins, ("input", "name", "file", "SHA-256")),
              (f"<p class='muted'>bayesflex {html.escape(info['bayesflex_version'])}; "
              f"{html.escape(info.get('command', ''))}</p></body></html>")]
    return "\n".join(parts)


def write_coordination(res: Coordination, contracts, out: str | Path, inputs: dict, *,
                       command: str = "") -> dict[str, Path]:
    """Write the four files into ``out`` (created if needed); their paths by kind."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = summary(res, contracts, inputs, command=command)
    paths = {k: fresh(inside(out, name)) for k, name in (("rounds", ROUNDS_FILE), ("positions", POSITIONS_FILE),
                                                         ("summary", SUMMARY_FILE), ("report", REPORT_FILE))}
    res.table().to_csv(paths["rounds"], index=False)
    write_positions(res.positions, paths["positions"])
    paths["summary"].write_text(json.dumps(info, indent=2) + "\n")
    paths["report"].write_text(build_html(res, contracts, info))
    return paths
