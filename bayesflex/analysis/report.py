"""``report.html``: one self-contained file a risk committee can read, trust and rebuild.

Everything in it comes from the study's ``result.nc`` alone (its groups and
provenance attributes), so ``bayesflex report DIR`` rebuilds the same file;
only the line saying when the report was made differs.  Figures are PNG,
embedded as base64 data URIs: the file has no outside references.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from bayesflex.analysis import maps
from bayesflex.analysis.interactive import interactive_map_html
from bayesflex.analysis.query import adjustment_reasons, predictive
from bayesflex.analysis.summary import NO_SPREAD, AgentRisk, ModelUncertainty, Study, Summary, summarise
from bayesflex.core.intervals import format_percent
from bayesflex.core.outdir import fresh
from bayesflex.core.timefmt import zone_note
from bayesflex.errors import ConfigError
from bayesflex.priors.check import ENWL, compare, enwl_house_days, season_of, weekday_kw
from bayesflex.study.files import open_study

__all__ = ["REPORT_FILE", "build_report", "write_report"]

REPORT_FILE = "report.html"
#: the one line that differs between two builds of the same study's report
CREATED_PREFIX = '<p class="created">report created '
_DPI = 90

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; } pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto;
font-size: 0.82em; } code { background: #f4f4f4; padding: 0 0.2em; } .created, .muted { color: #777; font-size: 0.85em; }
.warn { color: #a40; }
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def figure_html(fig, caption: str, name: str) -> str:
    return (f'<figure id="fig-{name}"><img alt="{html.escape(caption)}" src="data:image/png;base64,{_png(fig)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def table_html(rows: list[tuple], header: tuple[str, ...] | None = None) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    for r in rows:
        cells = []
        for v in r:
            num = isinstance(v, (int, float, np.floating, np.integer))
            cells.append(f'<td class="num">{html.escape(str(v))}</td>' if num else f"<td>{html.escape(str(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _effective(st: Study) -> str:
    return "" if st.effective_draws >= st.draws else (
        f" over {st.effective_draws:.0f} effective draws: the posterior's smallest bulk effective sample "
        "size, since the draws share its MCMC samples")


def build_report(tree: xr.DataTree, *, created_at: str | None = None, sections: tuple[str, ...] = (),
                 summary: Summary | None = None) -> str:
    """The report's HTML, from a study's tree alone; ``sections``: HTML of later stages (the market
    decision made on it, :mod:`bayesflex.aggregator.market_report`), placed before the inputs;
    ``summary``: the study's headline (:func:`~bayesflex.analysis.summary.summarise`), if at hand."""
    sm = summary if summary is not None else summarise(tree)
    a, st = tree.attrs, sm.study
    created = created_at or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    parts = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
             f"<title>bayesflex study: {html.escape(st.feeder)}, {html.escape(st.priors)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>Congestion risk: feeder {html.escape(st.feeder)}, priors {html.escape(st.priors)}</h1>",
             f"<p>{st.draws} draws ({st.kind}) of every agent's power, {st.half_hours} half-hours from "
             f"{st.when(st.start, '%A %d %B %Y %H:%M')}; seed {st.seed}. Every probability is given with "
             f"its 95 % interval (Wilson score interval{_effective(st)}); a probability of none of the draws is "
             "not zero but below the interval's upper bound. Quantiles carry 95 % order-statistic intervals; "
             f"{html.escape(st.zone_note)}.</p>",
             f"{CREATED_PREFIX}{html.escape(created)}; study created {html.escape(a['created_at'])}</p>"]
    parts += _headline_section(sm)
    parts += _diagnostics_section(sm, a)
    parts += _basis_section(tree)

    # -- figures
    parts.append("<h2>Where and when</h2>")
    try:
        parts.append(figure_html(maps.feeder_map(tree), "Probability of a bus voltage outside limits (per phase) and of a "
                             "line overload, each bus's and line's worst half-hour, on the fixed scale of every "
                             "map; the buses and lines most at risk named with their 95 % interval.", "map-worst"))

        parts.append("<h3>Interactive map</h3>" + interactive_map_html(tree))
        if sm.worst_half_hours:
            t = pd.Timestamp(sm.worst_half_hours[0].time)
            parts.append(figure_html(maps.feeder_map(tree, time=t), f"The same at the worst half-hour, {st.when(t)}.",
                                 "map-worst-half-hour"))
    except ConfigError as err:
        parts.append(f"<p class='warn'>No map: {html.escape(str(err))}</p>")
    parts.append(figure_html(maps.congestion_heatmap(tree), "Probability of a bus voltage outside limits by half-hour "
                         "and bus, per phase, on the maps' scale.", "heatmap"))
    parts.append(figure_html(maps.voltage_fan_chart(tree), "Lowest and highest bus voltage per phase: median, 50 % and "
                         "90 % bands over draws.", "voltage-fan"))
    parts.append(figure_html(maps.trafo_fan_chart(tree), "Transformer loading: median, 50 % and 90 % bands over "
                         "draws.", "trafo-fan"))
    parts += _causes_section(sm)
    parts.append("<h2>Agents and flexibility</h2>")
    parts.append(figure_html(maps.adjustment_figure(tree, 8, top=_agents_frame(sm.agents)), "Adjustments the network "
                         "heuristic asks of the agents most often adjusted.", "adjustments"))
    if sm.agents:
        parts.append(table_html([(r.agent, r.adjusted.text, f"{r.down_kw_when_adjusted:.2f}",
                                  f"{r.up_kw_when_adjusted:.2f}", f"{r.p_ranked_first:.5f}") for r in sm.agents],
                                ("agent", "P(adjusted in the horizon)", "turn-down kW when adjusted",
                                 "turn-up kW when adjusted", "P(ranked first, per half-hour)")))
    parts += _reasons_section(tree)
    if "portfolio_headroom_up_kw" in tree["heuristic"]:
        parts.append(figure_html(maps.flexibility_figure(tree), "Flexibility at risk: portfolio turn-up and turn-down "
                             "deliverable after network limits, against the confidence of delivering it.",
                             "flexibility"))
        parts.append(_headroom_note(st))

    # -- inputs and reproduction
    versions = json.loads(a.get("versions", "{}"))
    rows = [("feeder", f"{a['feeder']} ({a['feeder_origin']})"), ("feeder SHA-256", a["feeder_sha256"]),
            ("priors", f"{a['priors']} ({a.get('priors_origin', '')})"), ("priors SHA-256", a["priors_sha256"]),
            ("seed", a["seed"]), ("draws", a["draws"]), ("draws per chunk", a["chunk_draws"]),
            ("limits", f"{a['v_min_pu']}–{a['v_max_pu']} pu; loading {a['loading_max_pu']:g} pu"),
            ("sensitivity method", a["sensitivity_method"]), ("headroom", a["headroom_definition"]),
            ("bayesflex", a["bayesflex_version"])]
    rows += [(k, v) for k, v in sorted(versions.items())]
    parts += sections
    parts += ["<h2>Inputs and reproduction</h2>", table_html(rows, ("input", "value"))]
    parts += _priors_check_section(tree)
    cmd = a.get("command") or ""
    if cmd:
        parts.append(f"<p>Reproduce the numbers with the same versions:</p><pre>{html.escape(cmd)}</pre>"
                     f"<p>Rebuild this report from the result file: <code>bayesflex report DIR</code>.</p>")
    parts.append(f"<p>The priors file as used:</p><pre>{html.escape(a.get('priors_toml', ''))}</pre>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _headline_section(sm: Summary) -> list[str]:
    """The probability of congestion per phase and on any phase, the part the agents cannot resolve,
    its spread over the priors' parameters, the worst half-hours, the portfolio and its flexibility."""
    st = sm.study
    rows = [(f"phase {ph}", p.text) for ph, p in sm.congested.items()]
    if sm.congested_any is not None:
        rows.append(("any phase", sm.congested_any.text))
    if sm.unresolved is not None:
        rows.append(("any phase, not resolvable by the agents' flexibility", sm.unresolved.text))
    parts = ["<h2>Headline</h2><p>Probability that the feeder is congested (a bus voltage outside "
             f"{st.v_min_pu}–{st.v_max_pu} pu, a line or the transformer above {st.loading_max_pu:g} × "
             "its rating, or no load-flow solution) at least once in the horizon:</p>",
             table_html(rows, ("where", "probability"))]
    parts += _model_uncertainty_section(sm.model_uncertainty)
    if sm.worst_half_hours:
        parts.append("<p>Worst half-hours:</p>" + table_html(
            [(st.when(r.time), r.probability.text) for r in sm.worst_half_hours],
            ("half-hour", "P(congestion, any phase)")))
    pos = sm.portfolio
    if pos is not None:
        parts.append(f"<p>Portfolio: {pos.agents} agents with planned positions; P<sub>T</sub> from "
                     f"{pos.p_min_kw:.1f} to {pos.p_max_kw:.1f} kW over the horizon, bounds "
                     f"{pos.lb_min_kw:.1f} to {pos.ub_max_kw:.1f} kW.</p>")
    if sm.flexibility is not None:
        rows = [(f"P{100 * f.confidence:.0f}", f.up_joint.text, f.down_joint.text, f"{f.up_lowest_half_hour_kw:.1f}",
                 f"{f.up_median_half_hour_kw:.1f}", f"{f.down_lowest_half_hour_kw:.1f}",
                 f"{f.down_median_half_hour_kw:.1f}") for f in sm.flexibility]
        parts.append("<p>Portfolio flexibility sellable against the planned position after network limits "
                     "(kW), with the confidence given. <b>In every half-hour</b> is a joint figure: the quantile "
                     f"over draws of each draw's lowest half-hour, so it is delivered in all {st.half_hours} "
                     "half-hours at once with that confidence (95 % order-statistic interval in brackets). The "
                     "per-half-hour figures take each half-hour on its own: their lowest is <i>not</i> deliverable "
                     "in every half-hour with that confidence, since the half-hours fall short in different draws.</p>"
                     + table_html(rows, ("confidence", "turn-up in every half-hour", "turn-down in every half-hour",
                                         "turn-up, lowest half-hour on its own", "turn-up, median half-hour",
                                         "turn-down, lowest half-hour on its own", "turn-down, median half-hour")))
        parts.append(_headroom_note(st))
    return parts


def _diagnostics_section(sm: Summary, a) -> list[str]:
    """The checks the numbers rest on, and the conditioning's convergence for a posterior."""
    st, c = sm.study, sm.checks
    rows = [("draws × half-hours", f"{st.draws} × {st.half_hours} = {c.cases:,}"),
            ("agent-half-hours whose drawn power exceeds the agent's service capacity (must be 0)",
             "not recorded (a study from before the bounded baseload)" if c.above_service is None else c.above_service),
            ("load flows without a solution (counted as congested)", c.no_solution),
            ("congested (draw, half-hour) cases, out of draws × half-hours", f"{c.congested_cases:,}"),
            ("of which the agents' flexibility cannot resolve", f"{c.unresolved_cases:,}"),
            ("widest 95 % interval of a bus/line/transformer probability",
             f"{100 * c.widest_interval:.2f} percentage points"),
            ("interval of a probability p", f"Wilson score interval over {st.effective_draws:g} effective draws; "
                                            f"Monte Carlo standard error √(p(1 − p)/{st.effective_draws:g})")]
    diag = ["<h2>Diagnostics</h2>", table_html(rows, ("check", "value"))]
    if st.conditioned:
        ok = bool(a.get("conditioning_ok", 0))
        d = json.loads(a.get("conditioning_diagnostics", "{}") or "{}")
        diag.append(f"<p class='{'' if ok else 'warn'}'>Conditioned on observations (SHA-256 "
                    f"<code>{html.escape(a.get('observations_sha256', ''))}</code>, agents "
                    f"{html.escape(a.get('observed_agents', ''))}): R-hat ≤ 1.01 and bulk ESS ≥ 400 for every "
                    f"parameter: {'yes' if ok else 'NO'}.</p>")
        if d:
            diag.append(table_html([(k, f"{v.get('r_hat', float('nan')):.4f}", f"{v.get('ess_bulk', float('nan')):.0f}")
                                for k, v in sorted(d.items())], ("parameter", "R-hat", "bulk ESS")))
    return diag


def _agents_frame(agents: tuple[AgentRisk, ...]) -> pd.DataFrame:
    """The summary's agents as the table :func:`~bayesflex.analysis.maps.adjustment_figure` takes."""
    return pd.DataFrame({"agent": [r.agent for r in agents],
                         "p_adjusted_in_horizon": [r.adjusted.p for r in agents],
                         "p_adjusted_in_horizon_lo": [r.adjusted.lo for r in agents],
                         "p_adjusted_in_horizon_hi": [r.adjusted.hi for r in agents]})


def _model_uncertainty_section(mu: ModelUncertainty | None, k: int = 6) -> list[str]:
    """The headline's dependence on the priors' uncertain parameters (bayesflex.study.uncertainty)."""
    if mu is None:
        return []
    sp, lo, hi = mu.spread, mu.spread_lo, mu.spread_hi
    rows = [(p.name, f"{p.theta_low:.3g}", f"{p.theta_high:.3g}", f"{format_percent(p.p_low)} %",
             f"{format_percent(p.p_high)} %", f"{p.margin_effect_pu:+.4f}") for p in mu.parameters[:k]]
    return [
        "<h3>Model uncertainty beside Monte Carlo error</h3>"
        "<p>The interval above is Monte Carlo error: how well these draws pin down the probability the priors "
        "imply. The priors' own parameters are uncertain too (each draw has its own population-level "
        "parameters, drawn from their priors). Over that uncertainty the probability of congestion on any phase "
        f"in the horizon {_spread_words(mu)} (10–90 % of P(congested | parameters) "
        f"over the draws, median {format_percent(sp[1])} %; 95 % bootstrap intervals "
        f"{format_percent(lo[0])}–{format_percent(hi[0])} % and {format_percent(lo[-1])}–{format_percent(hi[-1])} % "
        "for the ends). Estimated from these draws without further load flows: "
        "each draw's worst margin to a limit is regressed on its parameters (first order; they explain "
        f"{100 * mu.r2:.0f} % of its variance), and the margins are moved as if "
        "a parameter sat at its 10 % or 90 % quantile. A parameter that moves the headline a lot is worth "
        "measuring better, and worth checking by running the study with it fixed.</p>",
        table_html(rows, ("parameter, most influential first", "its 10 % quantile", "its 90 % quantile",
                          "P(congested) at its 10 %", "P(congested) at its 90 %", "worst margin moves (pu)"))]


def _headroom_note(st: Study) -> str:
    """What "headroom" means in this study (the result's ``headroom_definition``)."""
    text = st.headroom_definition
    return f"<p class='muted'>Headroom: {html.escape(text)}.</p>" if text else ""


def _basis_section(tree: xr.DataTree) -> list[str]:
    """"What these numbers rest on": the time zone, the source, the transformers, the line ratings,
    the limits and the headroom definition, from the result's attributes and ``constant_data``."""
    a, cd = tree.attrs, tree["constant_data"]
    rows = [("times", f"stored in UTC, shown in local time: {zone_note(tree)}"
             + ("" if "timezone" in a else " (this result names no time zone)"))]
    if "source_r_ohm" in cd:
        vn, vm = float(a["source_vn_kv"]), float(a["source_vm_pu"])
        rows.append(("source voltage set-point",
                     f"{vm:.3f} pu of {vn:g} kV ({vm * vn:.2f} kV line to line); every bus voltage rests on it"))
        rows.append(("source impedance", _source_impedance(cd, vn)))
        for t in cd.trafo.values:
            rows.append((f"transformer {t}", _trafo_text(cd.sel(trafo=t))))
    else:
        rows.append(("source and transformers", "not recorded (a result from an older bayesflex)"))
    rows.append(("line ratings", _ratings_text(tree)))
    limits = (f"bus voltage {a['v_min_pu']}–{a['v_max_pu']} pu (phase to neutral); line and transformer current "
              f"above {a['loading_max_pu']:g} × rating")
    rows.append(("limits", limits))
    rows.append(("headroom", a.get("headroom_definition", "not recorded")))
    return ["<h2>What these numbers rest on</h2>",
            "<p>The feeder model as given; change any of these and the probabilities change with it.</p>",
            table_html(rows, ("what", "as used"))]


def _source_impedance(cd, vn_kv: float) -> str:
    """The source's sequence impedances with their short-circuit power vn²/|Z| (MVA)."""
    r, x = cd["source_r_ohm"].values, cd["source_x_ohm"].values

    def z(k: int) -> str:
        if not np.isfinite(r[k]):
            return "none (no path)"
        mag = math.hypot(r[k], x[k])
        return f"{r[k]:.4g} + j{x[k]:.4g} Ω ({f'{vn_kv**2 / mag:.4g} MVA' if mag else 'ideal'})"

    pos = ("none: an ideal source in the positive sequence (it holds its voltage whatever the load)"
           if r[1] == 0 and x[1] == 0 else z(1))
    return f"positive sequence {pos}; negative {z(2)}; zero {z(0)} (short-circuit power vn²/|Z|)"


def _trafo_text(t) -> str:
    tap = float(t.trafo_tap_percent)
    tap = "tap at neutral" if tap == 0 else f"tap {tap:+.3g} % on the {t.trafo_tap_side.item()} winding"
    return (f"{float(t.trafo_sn_kva):g} kVA, {float(t.trafo_vn_hv_kv):g}/{float(t.trafo_vn_lv_kv):g} kV, "
            f"vk {float(t.trafo_vk_percent):.3g} %; {tap}; LV voltage at no load {float(t.trafo_v_lv_no_load_pu):.3f} pu")


def _ratings_text(tree: xr.DataTree) -> str:
    a, cd = tree.attrs, tree["constant_data"]
    n = cd.sizes["line"]
    if "line_rating_defaulted" not in cd:
        return f"{n} lines; whether any rating is a default is not recorded (a result from an older bayesflex)"
    on = cd["line_rating_defaulted"].values.astype(bool)
    amps = " / ".join(f"{v:g} A" for v in sorted(set(cd["line_i_max_a"].values[on])))
    text = (f"{int(on.sum())} of {n} lines use OpenDSS's default {amps} rating (their line codes give no "
            f"normamps: {', '.join(sorted({str(c) for c in cd['line_code'].values[on]}))}); their overload "
            "probabilities rest on it" if on.any() else f"all {n} lines have the rating their model gives")
    set_ = json.loads(a.get("line_ratings_set", "{}") or "{}")
    if set_:
        text += (f"; set per line code from {a.get('line_ratings_from', '?')}: "
                 + ", ".join(f"{k} {v:g} A" for k, v in sorted(set_.items())))
    return text


def _spread_words(mu: ModelUncertainty) -> str:
    if mu.zero:
        return f"stays at <b>0 %</b> throughout ({NO_SPREAD})"
    return f"ranges <b>{format_percent(mu.spread[0])}–{format_percent(mu.spread[-1])} %</b>"


def _causes_section(sm: Summary) -> list[str]:
    """What causes the congestion of the most congested half-hour phases."""
    if sm.causes is None:
        return []
    out = ["<h2>What causes the congestion</h2>"]
    if not sm.causes:
        return out + ["<p>No draw is congested: there is nothing to attribute.</p>"]
    out.append(
        "<p>For every congested draw, half-hour and phase, the phase's worst violation is shared out among the "
        "agents' technologies: each technology's power (kW, from no load) times the violated quantity's "
        "sensitivity to that agent (the one the heuristic ranks agents by), counting what pushes into the "
        "violation (load for an under-voltage, generation for an over-voltage, flow in the overloaded "
        "direction). The shares sum to 100 % and are averaged over the congested draws counted beside them "
        "(fewer draws, rougher shares). What pushes the other way is shown apart, as the part of the push it "
        "takes back (PV in an evening under-voltage, or load on another phase raising this phase's voltage "
        "through the neutral). Reactive power is not shared out; the numbers are first order.</p>")
    out.append(table_html([(sm.study.when(r.time), r.phase, r.probability.text, r.draws, r.violation, r.text, r.agents)
                           for r in sm.causes],
                          ("half-hour", "phase", "P(congested)", "congested draws", "worst violation", "causes",
                           "agents causing most")))
    return out


def _reasons_section(tree: xr.DataTree) -> list[str]:
    """Why agents are moved on phases that are not congested: the neutral shift, in words and counts."""
    df = adjustment_reasons(tree)
    if df is None or df.empty:
        return []
    out = ['<h3 id="adjustment-reasons">Why agents are moved on phases that are not congested</h3>',
           ("<p>The heuristic moves, for the worst violation of a draw and half-hour, the agents whose power on "
            "their own phase moves the violated quantity most (its sensitivity to that power, from the load "
            "flow). On a four-wire feeder the phases are coupled through the neutral: load on phase a sends its "
            "current back through the neutral, which shifts the neutral point away from phase a and so raises "
            "the phase-to-neutral voltages of phases b and c. An agent on a phase within its limits can thus be "
            "asked to turn <em>up</em> to relieve an under-voltage on another phase (or down, to relieve an "
            "over-voltage there); such moves are marked <q>relief of phase b (neutral shift)</q> below and in "
            "<code>bayesflex query DIR adjustment --agent NAME</code> (column <code>reason</code>). The phase "
            "named is that of the violation the heuristic was relieving in the round that moved the agent most. "
            "Where a phase's violation cannot be resolved, every agent whose move helps at all is moved to its "
            "bound, however little it helps.</p>")]
    out.append(table_html([(("turn-up" if r.direction == "up" else "turn-down"), r.reason, int(r.moves),
                        int(r.not_congested), f"{100 * r.share:.1f} %", f"{r.kw:.1f}") for _, r in df.iterrows()],
                      ("direction", "reason", "agent-phase half-hours moved (all draws)",
                       "of which on a phase not congested", "share of the direction", "kW in all")))
    return out


def _priors_check_section(tree: xr.DataTree) -> list[str]:
    """The prior predictive check of the study's own household baseload draws against
    ENWL's households of the season (``bayesflex check-priors`` on these draws)."""
    head = "<h3>Household baseload against measured households</h3>"
    try:
        pp = predictive(tree)
    except ConfigError:
        return []
    if "p_base_kw" not in pp:
        return []
    day = weekday_kw(pp)
    if day is None:
        return [head, "<p>Not checked: the horizon holds no whole weekday to compare with ENWL's weekday "
                "profiles (run <code>bayesflex check-priors</code>).</p>"]
    start, p = day
    season = season_of(start)
    try:
        x = enwl_house_days(season)
    except ConfigError:
        return [head, f"<p>Not checked: ENWL's profiles are not at {html.escape(str(ENWL))} "
                "(run <code>bayesflex check-priors --against YOUR_READINGS</code>).</p>"]
    res = compare(x, p, reps=200, seed=0, data_label=f"ENWL {season}", model_label="this study")
    rows = []
    for k, r in res.table.iterrows():
        fmt = ".2g" if k.startswith("share") else ".3g"
        rows.append((k, f"{r['data']:{fmt}} ({r['data_lo']:{fmt}}–{r['data_hi']:{fmt}})", f"{r['model']:{fmt}}",
                     r["target"], "PASS" if r["ok"] else "MISS"))
    n_ok = int(res.table["ok"].sum())
    return [head, f"<p>The study's own draws of household baseload on {start:%A %d %B} (every agent of every "
            f"draw) against ENWL's 100 {season} households (one weekday each; 95 % bootstrap interval over "
            f"households): {n_ok} of {len(rows)} targets met. Figures and targets: "
            "<code>bayesflex check-priors</code>.</p>",
            table_html(rows, ("figure (kW unless a ratio or share)", "ENWL (95 % bootstrap)", "this study", "target",
                          ""))]


def write_report(study: str | Path | xr.DataTree, directory: str | Path | None = None, *,
                 sections: tuple[str, ...] = (), summary: Summary | None = None) -> Path:
    """Write ``report.html`` beside ``result.nc`` (or into ``directory``), with the HTML ``sections`` of
    later stages and the study's ``summary`` if at hand (:func:`build_report`)."""
    if isinstance(study, xr.DataTree):
        if directory is None:
            raise ConfigError("write_report needs a directory when given a tree")
        tree = study
    else:
        tree = open_study(study)
        p = Path(study)
        directory = directory or (p if p.is_dir() else p.parent)
    out = Path(directory) / REPORT_FILE
    text = build_report(tree, sections=sections, summary=summary)
    tmp = fresh(out.with_name(f".{REPORT_FILE}.partial"))
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written report stays behind
        raise
    return out

