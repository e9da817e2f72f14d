"""The report's market section: what was offered where, and how it did on its own and on fresh draws.

``bayesflex market`` writes ``market.json`` beside the study; :func:`sections` turns it into the
HTML that :func:`bayesflex.analysis.report.write_report` places in the study's report, when it was
decided on the result that is there now.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import xarray as xr

from bayesflex.aggregator.decide import verdict_text
from bayesflex.analysis.maps import market_figure
from bayesflex.analysis.report import figure_html, table_html
from bayesflex.core.intervals import format_probability
from bayesflex.study.files import file_sha256
from bayesflex.study.schema import RESULT_FILE

__all__ = ["MARKET_JSON", "market_for", "market_section", "sections"]

#: the decision's summary, beside the study's result.nc
MARKET_JSON = "market.json"


def sections(tree: xr.DataTree, directory: str | Path) -> tuple[str, ...]:
    """The market section of the report of the study in ``directory`` (none without a market decision
    made on this very result)."""
    m = market_for(Path(directory))
    return () if m is None else tuple(market_section(tree, m))


def market_for(directory: Path) -> dict | None:
    """``market.json`` of the folder when it was decided on the result that is there now."""
    f = directory / MARKET_JSON
    if not (f.is_file() and (directory / RESULT_FILE).is_file()):
        return None
    try:
        market = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return market if market.get("study_sha256") == file_sha256(directory / RESULT_FILE) else None


def market_section(tree: xr.DataTree, m: dict) -> list[str]:
    """What to offer where: the commitments, the risk of falling short in and out of sample, the
    distribution of the profit, and a figure of the commitments over the deliverable flexibility."""
    ins, fr = m["in_sample"], m.get("fresh")
    obj = ", ".join(f"{k} &times; {w:g}" for k, w in m["objective"].items())
    risk = "none" if m["risk"] is None else f"at most {100 * m['risk']:g} % of draws short in some half-hour"
    parts = ["<h2>Markets: what to offer where</h2>",
             f"<p>Markets {html.escape(m['markets'])} (<code>{html.escape(m['markets_origin'])}</code>); objective "
             f"{obj}; risk limit {risk}"
             + (f", CVaR<sub>{m['cvar_alpha']:g}</sub> of the shortfall cost at most {m['cvar_limit_gbp']:g} GBP"
                if m.get("cvar_limit_gbp") is not None else "") + ". The commitments maximise the expected "
             "objective over the study's joint draws of what the portfolio can deliver (a stochastic programme "
             "solved with HiGHS); they are then judged on fresh draws, another study of the same inputs with seed "
             f"{m.get('fresh_seed')}.</p>"]
    cal = m["solver"].get("calibration") or []
    if cal:
        parts.append(f"<p>Commitments tuned to fall short in {100 * m['risk']:g} % of their own draws fell short in "
                     f"{100 * cal[0]['held_out_p_shortfall']:.1f} % of held-out draws, so they were tuned at "
                     f"{100 * m['solver']['in_sample_risk']:.2g} % in sample, "
                     + ("the largest share that held the limit on held-out draws" if m["solver"].get("calibration_held")
                        else "the lowest share tried; even it did not hold the limit on held-out draws")
                     + " (two-fold cross-validation).</p>")
    rows = []
    for name in dict.fromkeys(r["product"] for r in m["commitments"]):
        rs = [r for r in m["commitments"] if r["product"] == name]
        kw = [r["kw"] for r in rs]
        rows.append((name, rs[0]["direction"], rs[0]["kind"], f"{sum(r['half_hours'] for r in rs)} in {len(rs)} blocks",
                     f"{rs[0]['start']} .. {rs[-1]['end']}", f"{min(kw):.1f} to {max(kw):.1f}",
                     f"{sum(r['kw'] * r['half_hours'] * 0.5 for r in rs):.0f}",
                     f"{sum(r['value_if_delivered_gbp'] for r in rs):.2f}"))
    if rows:
        parts.append(table_html(rows, ("product", "direction", "kind", "half-hours", "first .. last", "kW",
                                   "kWh committed", "value if delivered, GBP"))
                     + "<p>Every block, its times and kW: <code>market.csv</code> beside this report.</p>")
    else:
        parts.append("<p>No commitment: nothing can be sold within the risk limit.</p>")
    risk_rows = []
    for label, e in (("draws it was tuned on", ins), ("fresh draws", fr)):
        if e is None:
            continue
        cv = next((v for k, v in e.items() if k.startswith("shortfall_cost_cvar")), float("nan"))
        risk_rows.append((label, format_probability(e["p_shortfall"], e["p_shortfall_lo"], e["p_shortfall_hi"],
                                                    e["draws"]),
                          f"{e['profit_mean']:.2f} ± {e['profit_mcse']:.2f}",
                          f"{e['profit_q05']:.2f} to {e['profit_q95']:.2f}", f"{e['shortfall_kwh_mean']:.2f}",
                          f"{cv:.2f}"))
    parts.append(table_html(risk_rows, ("judged on", "P(short in some half-hour)", "expected profit, GBP (± MC "
                                    "error)", "profit 5-95 %", "shortfall, kWh", "CVaR of shortfall cost, GBP")))
    if fr is not None and m["risk"] is not None:
        parts.append(f"<p>On fresh draws the risk limit {html.escape(verdict_text(fr, m['risk']))}.</p>")
    parts.append(figure_html(market_figure(tree, m), "Commitments per product and half-hour (bars) over what the "
                         "portfolio can deliver (lines: 5 % and 50 % quantiles over draws; down below the axis); "
                         "right: the profit over draws, tuning and fresh.", "market"))
    parts.append("<p>Not modelled: prices that move with the weather (and so with demand), the rebound's own "
                 "network effect (the energy drawn back later is not load-flowed), gate closures and sequential "
                 "clearing. Re-check the plan against the network: <code>bayesflex run --positions "
                 "DIR/market_positions.csv</code> (every commitment called).</p>")
    return parts
