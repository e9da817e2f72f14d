"""Figures of a study: congestion-probability maps, heatmaps, fan charts, flexibility at risk.

Every function takes the study's ``xarray.DataTree`` (nothing else: the
feeder's coordinates and topology travel in its ``constant_data`` group) and
returns a ``matplotlib.figure.Figure``; nothing touches pyplot's global state.
Save with ``fig.savefig("map.png")`` or ``.svg``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.collections import LineCollection
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from bayesflex.analysis.query import BLOCK_DRAWS, draw_block, draw_blocks, half_hour, n_draws, top_agents
from bayesflex.core.checks import not_among
from bayesflex.core.intervals import format_probability, quantile_interval, wilson_interval
from bayesflex.core.timefmt import fmt_time, local_axis, zone_note
from bayesflex.errors import ConfigError
from bayesflex.study.results import study_effective_draws

__all__ = ["P_COLOURS", "P_EDGES", "P_LABELS", "adjustment_figure", "bus_coordinates", "congestion_heatmap",
           "feeder_map", "flexibility_figure", "named", "probability_bin", "scale_title", "trafo_fan_chart",
           "unplaced_note", "voltage_fan_chart", "voltage_probability"]

KINDS = ("any", "undervoltage", "overvoltage", "overload")
QUANTILE_BANDS = ((0.05, 0.95), (0.25, 0.75))

#: the one probability scale of every map, heatmap and study (a probability per half-hour):
#: fixed bins, so that a 1-in-1,000 event looks rare and two studies compare at a glance.
#: A bin holds p with P_EDGES[i-1] <= p < P_EDGES[i]; no draw at all is a bin of its own.
P_EDGES = (0.01, 0.05, 0.20)
P_LABELS = ("0 draws", "< 1 %", "1–5 %", "5–20 %", "≥ 20 %")
#: grey for "0 draws", then ColorBrewer YlOrRd (colour-blind safe, prints in grey scale)
P_COLOURS = ("#d4d4d4", "#fed976", "#fd8d3c", "#e31a1c", "#67000d")
P_CMAP = ListedColormap(P_COLOURS, name="bayesflex_probability")
#: rounding a probability may not move it across an edge: 0.02 + 0.03 is 0.049999999999999996 in floating point
_EDGE_TOLERANCE = 1e-9
#: probabilities to colours: BoundaryNorm on the bins, as :func:`probability_bin` draws them (the top edge above 1
#: so that p = 1 is in the last bin)
P_NORM = BoundaryNorm((0.0, 1e-12, *(e * (1 - _EDGE_TOLERANCE) for e in P_EDGES), 1.0 + 1e-9), len(P_COLOURS))
_TOPOLOGY = "#bdbdbd"  # lines drawn only to show the feeder's shape (not coloured by a probability)
_LABELS_PER_PANEL = 4


def probability_bin(p) -> np.ndarray:
    """Index into ``P_LABELS``/``P_COLOURS`` of each probability: 0 for no draw, then the bins
    of ``P_EDGES`` (``p`` a fraction in [0, 1]; NaN counts as 0)."""
    p = np.nan_to_num(np.asarray(p, float), nan=0.0)
    edges = np.asarray(P_EDGES) * (1 - _EDGE_TOLERANCE)  # as P_NORM
    return np.where(p > 0, 1 + np.searchsorted(edges, p, side="right"), 0)


def scale_title(what: str) -> str:
    """The title of the probability legend: what it is the probability of, per half-hour, in %."""
    return f"P({what}) per half-hour, %"


def _legend(fig: Figure, what: str) -> None:
    handles = [Patch(facecolor=c, edgecolor="0.35", linewidth=0.5, label=lab) for c, lab in zip(P_COLOURS, P_LABELS)]
    fig.legend(handles=handles, title=scale_title(what), loc="outside right center", fontsize=8, title_fontsize=8,
               frameon=False)


def _limits_text(tree: xr.DataTree) -> str:
    a = tree.attrs
    return (f"limits: V < {a['v_min_pu']} pu, V > {a['v_max_pu']} pu, "
            f"I > {a['loading_max_pu']:g} x rating; {n_draws(tree)} draws")


def _when(tree: xr.DataTree, time) -> tuple[np.datetime64 | None, str]:
    if time is None:
        return None, "worst half-hour of the horizon"
    t = half_hour(tree["summary"].time.values, time)  # a stored (UTC) half-hour; printed in local time
    return np.datetime64(t), fmt_time(t, tree, "%a %d %b %H:%M")


def _pick_time(da: xr.DataArray, t) -> xr.DataArray:
    return da.max("time") if t is None else da.sel(time=t)


def _phases(phase) -> list[str]:
    if phase is None:
        return ["a", "b", "c"]
    if phase not in ("a", "b", "c"):
        raise ConfigError(f"phase {phase!r} unknown (allowed: a, b, c)")
    return [phase]


def voltage_probability(tree: xr.DataTree, kind: str = "any") -> xr.DataArray:
    """P(bus voltage outside limits) per (time, bus, phase): under- or over-voltage, or either
    ("any": their sum, exact because one draw cannot be both at one bus and half-hour)."""
    net = tree["network"]
    if kind == "undervoltage":
        return net["p_undervoltage"]
    if kind == "overvoltage":
        return net["p_overvoltage"]
    return (net["p_undervoltage"] + net["p_overvoltage"]).clip(max=1.0)


_VOLTAGE_WHAT = {"any": "voltage outside limits", "undervoltage": "under-voltage", "overvoltage": "over-voltage"}


def bus_coordinates(tree: xr.DataTree) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bus x, y and whether each bus has coordinates; a ConfigError if no bus has any."""
    cd = tree["constant_data"]
    x, y = cd["bus_x"].values.astype(float), cd["bus_y"].values.astype(float)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        raise ConfigError(f"feeder {tree.attrs['feeder']!r} has no bus coordinates: no map can be drawn")
    return x, y, ok


def unplaced_note(tree: xr.DataTree, ok: np.ndarray) -> str:
    """Which buses the map leaves out for want of coordinates ('' when none)."""
    missing = [str(b) for b in tree["constant_data"].bus.values[~ok]]
    if not missing:
        return ""
    names = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    one = len(missing) == 1
    return (f"{len(missing)} of {ok.size} buses {'has' if one else 'have'} no coordinates and "
            f"{'is' if one else 'are'} not drawn ({names})")


def named(kind: str, name) -> str:
    """"bus 12", "line LINE3": a name with its kind, unless the name already says it ("line1")."""
    name = str(name)
    return name if name.lower().startswith(kind) else f"{kind} {name}"


def _label_most_at_risk(ax, xy: np.ndarray, p: np.ndarray, tie: np.ndarray, names, what: str, n: int,
                        k: int = _LABELS_PER_PANEL) -> list[int]:
    """Label up to ``k`` of the items (buses or line midpoints at ``xy``) most at risk with their
    name and probability (95 % interval): the highest ``p`` first (ties: larger ``tie``), only
    those at least half as likely as the likeliest, each label set off away from the drawing's
    centre and kept clear of the labels already placed.  Returns the indices labelled."""
    fin = np.isfinite(xy).all(axis=1)
    cand = np.flatnonzero((p > 0) & fin)
    if cand.size == 0:
        return []
    cand = cand[p[cand] >= 0.5 * p[cand].max()]
    cand = cand[np.lexsort((-tie[cand], -p[cand]))]
    lo_xy, hi_xy = xy[fin].min(axis=0), xy[fin].max(axis=0)
    size = max(float((hi_xy - lo_xy).max()), 1e-9)  # a panel shows about this much either way
    centre = (lo_xy + hi_xy) / 2
    boxes: list[tuple[float, float, float, float]] = []
    picked: list[int] = []
    lo, hi = wilson_interval(p, n)
    for i in cand:
        text = f"{named(what, names[i])}\n{format_probability(float(p[i]), float(lo[i]), float(hi[i]), n)}"
        d = xy[i] - centre
        d = d / (np.hypot(*d) or 1.0)
        at = xy[i] + 0.09 * size * d
        # the label's box in data units (7 pt text on a ~5 inch panel: 0.016 of the panel a character, with the box)
        w, h = 0.016 * size * max(map(len, text.split("\n"))), 0.09 * size
        x0 = at[0] if d[0] >= 0 else at[0] - w
        y0 = at[1] if d[1] >= 0 else at[1] - h
        box = (x0, y0, x0 + w, y0 + h)
        if any(box[0] < q[2] and q[0] < box[2] and box[1] < q[3] and q[1] < box[3] for q in boxes):
            continue
        if any(np.hypot(*(xy[i] - xy[j])) < 0.08 * size for j in picked):
            continue
        boxes.append(box)
        picked.append(int(i))
        ax.annotate(text, xy[i], xytext=tuple(at), textcoords="data", fontsize=7, zorder=6,
                    ha="left" if d[0] >= 0 else "right", va="bottom" if d[1] >= 0 else "top",
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.6", "lw": 0.5, "alpha": 0.9},
                    arrowprops={"arrowstyle": "-", "color": "0.3", "lw": 0.6})
        if len(picked) == k:
            break
    return picked


def _draw_frame(ax, tree: xr.DataTree, x, y, ok) -> None:
    """The transformer (dotted) and the source marker; at the transformer's LV bus when the
    source bus has no coordinates (ENWL's files place the LV side only)."""
    cd = tree["constant_data"]
    pos = {str(b): i for i, b in enumerate(cd.bus.values)}
    for hv, lv in zip(cd["trafo_hv_bus"].values, cd["trafo_lv_bus"].values):
        i, j = pos[str(hv)], pos[str(lv)]
        if ok[i] and ok[j]:
            ax.plot([x[i], x[j]], [y[i], y[j]], color="black", linestyle=":", linewidth=1, zorder=1)
    src = pos[str(cd["source_bus"].item())]
    if not ok[src]:
        lvs = [pos[str(b)] for b in cd["trafo_lv_bus"].values if ok[pos[str(b)]]]
        src = lvs[0] if lvs else None
    if src is not None:
        ax.plot(x[src], y[src], marker="^", color="black", markersize=10, zorder=5, linestyle="none",
                label="transformer / source")
        ax.legend(loc="lower left", fontsize=7, frameon=False)
    ax.set_aspect("equal", adjustable="datalim")
    ax.autoscale_view()
    ax.set_xticks([])
    ax.set_yticks([])


def _segments(tree: xr.DataTree, x, y, ok) -> tuple[np.ndarray, np.ndarray]:
    cd = tree["constant_data"]
    pos = {str(b): i for i, b in enumerate(cd.bus.values)}
    fr = np.array([pos[str(b)] for b in cd["line_from_bus"].values], int)
    to = np.array([pos[str(b)] for b in cd["line_to_bus"].values], int)
    segs = np.stack([np.c_[x[fr], y[fr]], np.c_[x[to], y[to]]], axis=1).reshape(-1, 2, 2)
    return segs, ok[fr] & ok[to]


def _voltage_panel(ax, tree, x, y, ok, segs, drawn, p: np.ndarray, tie: np.ndarray, title: str) -> None:
    n = study_effective_draws(tree)  # the intervals' draws (a posterior's effective sample size)
    ax.add_collection(LineCollection(segs[drawn], colors=_TOPOLOGY, linewidths=0.7, zorder=1))
    zero = ok & ~(p > 0)
    ax.scatter(x[zero], y[zero], c=P_COLOURS[0], s=3, linewidths=0, zorder=2)
    on = ok & (p > 0)
    order = np.flatnonzero(on)[np.argsort(p[on], kind="stable")]  # the likeliest drawn last, on top
    ax.scatter(x[order], y[order], c=p[order], cmap=P_CMAP, norm=P_NORM, s=20, edgecolors="0.25", linewidths=0.35,
               zorder=3)
    _label_most_at_risk(ax, np.c_[x, y], np.where(ok, p, 0), tie, tree["constant_data"].bus.values, "bus", n)
    ax.set_title(title + ("" if on.any() else f"\nno bus in any draw: {_zero_text(tree)}"), fontsize=9)


def _line_panel(ax, tree, segs, drawn, p: np.ndarray, title: str) -> None:
    n = study_effective_draws(tree)
    hot = drawn & (p > 0)
    ax.add_collection(LineCollection(segs[drawn & ~hot], colors=P_COLOURS[0], linewidths=0.9, zorder=1))
    order = np.flatnonzero(hot)[np.argsort(p[hot], kind="stable")]
    if order.size:
        ax.add_collection(LineCollection(segs[order], array=p[order], cmap=P_CMAP, norm=P_NORM, linewidths=3.0,
                                         zorder=2))
    mid = segs.mean(axis=1)
    _label_most_at_risk(ax, mid, np.where(drawn, p, 0), np.zeros(len(p)), tree["constant_data"].line.values, "line",
                        n)
    ax.set_title(title + ("" if hot.any() else f"\nno line in any draw: {_zero_text(tree)}"), fontsize=9)


def _zero_text(tree) -> str:
    """'0 of n draws (< x %, 95 %)': what no violation in any draw says."""
    _, hi = wilson_interval(0.0, study_effective_draws(tree))
    return format_probability(0.0, 0.0, float(hi), n_draws(tree))


def feeder_map(tree: xr.DataTree, *, kind: str = "any", phase: str | None = None, time=None) -> Figure:
    """The feeder drawn from its coordinates on the one fixed probability scale (``P_LABELS``).

    Voltage: one panel per phase, buses coloured by the probability that their voltage on
    that phase is outside limits (``kind`` "undervoltage", "overvoltage" or "any": either).
    Overload: one panel (a line's loading is its worst phase), lines coloured by P(overload).
    "any" draws both.  At ``time`` (a half-hour) or each bus's and line's worst half-hour.
    The buses and lines most at risk are labelled with their name and 95 % interval; buses
    without coordinates are left out, and the figure says which."""
    if kind not in KINDS:
        raise ConfigError(f"kind {kind!r} unknown (allowed: {', '.join(KINDS)})")
    x, y, ok = bus_coordinates(tree)
    t, when = _when(tree, time)
    when = "each one's worst half-hour" if t is None else when
    phases = _phases(phase) if kind != "overload" else []
    segs, drawn = _segments(tree, x, y, ok)
    panels = len(phases) + (kind in ("any", "overload"))
    rows, cols = (2, 2) if panels == 4 else (1, panels)
    fig = Figure(figsize=(5.0 * cols + 2.2, 4.9 * rows + 0.7), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    if phases:
        pv = voltage_probability(tree, kind)
        p_bus = _pick_time(pv, t)
        tie = pv.sum("time")  # among equally likely buses, label the one at risk in more half-hours
        what = _VOLTAGE_WHAT[kind]
        for ax, ph in zip(axes, phases):
            _voltage_panel(ax, tree, x, y, ok, segs, drawn, p_bus.sel(phase=ph).values, tie.sel(phase=ph).values,
                           f"phase {ph}: P({what}) at each bus")
            _draw_frame(ax, tree, x, y, ok)
    if kind in ("any", "overload"):
        ax = axes[len(phases)]
        p_line = _pick_time(tree["network"]["p_overload"], t).values
        _line_panel(ax, tree, segs, drawn, p_line, "lines: P(overload), worst phase")
        _draw_frame(ax, tree, x, y, ok)
    what = {"any": "bus voltage outside limits (buses) or overload (lines)", "overload": "line overload"}.get(
        kind, _VOLTAGE_WHAT.get(kind, kind))
    _legend(fig, {"any": "violation", "overload": "overload"}.get(kind, _VOLTAGE_WHAT.get(kind, kind)))
    note = unplaced_note(tree, ok)
    fig.suptitle(f"{tree.attrs['feeder']}: probability of {what}, {when}\n{_limits_text(tree)}"
                 + (f"\n{note}" if note else ""), fontsize=10)
    return fig


def congestion_heatmap(tree: xr.DataTree, *, kind: str = "any", phase: str | None = None) -> Figure:
    """Probability of a voltage violation by half-hour (x) and bus (y), one panel per phase, on
    the maps' fixed scale; only buses outside limits in some draw and half-hour are drawn, in
    feeder order."""
    if kind not in ("any", "undervoltage", "overvoltage"):
        raise ConfigError(f"kind {kind!r} unknown for a voltage heatmap (allowed: any, undervoltage, overvoltage)")
    phases = _phases(phase)
    da = voltage_probability(tree, kind)
    times = pd.to_datetime(da.time.values)
    fig = Figure(figsize=(11, 2.6 + 2.4 * len(phases)), layout="constrained")
    axes = fig.subplots(len(phases), 1, squeeze=False)[:, 0]
    for ax, ph in zip(axes, phases):
        m = da.sel(phase=ph).transpose("bus", "time").values
        rows = np.flatnonzero(m.max(axis=1) > 0)
        ax.set_title(f"phase {ph}: {len(rows)} of {m.shape[0]} buses ever outside limits", fontsize=9)
        if rows.size == 0:
            ax.text(0.5, 0.5, "no violation in any draw", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ax.imshow(m[rows], aspect="auto", cmap=P_CMAP, norm=P_NORM, interpolation="nearest",
                  extent=(-0.5, len(times) - 0.5, len(rows) - 0.5, -0.5))
        step = max(1, len(times) // 12)
        ax.set_xticks(range(0, len(times), step), [fmt_time(t, tree) for t in times[::step]], fontsize=7,
                      rotation=30)
        labels = [str(b) for b in da.bus.values[rows]]
        ystep = max(1, len(rows) // 15)
        ax.set_yticks(range(0, len(rows), ystep), labels[::ystep], fontsize=7)
        ax.set_ylabel("bus")
    _legend(fig, _VOLTAGE_WHAT[kind])
    fig.suptitle(f"probability of {_VOLTAGE_WHAT[kind]} by half-hour and bus; {_limits_text(tree)}; "
                 f"{zone_note(tree)}", fontsize=10)
    return fig


def _fan(ax, times, draws: np.ndarray, color: str, label: str) -> None:
    """Quantile bands over draws (axis 0) against time."""
    for (lo, hi), alpha in zip(QUANTILE_BANDS, (0.2, 0.4)):
        q = np.nanquantile(draws, [lo, hi], axis=0)
        ax.fill_between(times, q[0], q[1], color=color, alpha=alpha, linewidth=0,
                        label=f"{label} {100 * lo:.0f}-{100 * hi:.0f} %")
    ax.plot(times, np.nanmedian(draws, axis=0), color=color, linewidth=1.2, label=f"{label} median")


def trafo_fan_chart(tree: xr.DataTree) -> Figure:
    """Transformer loading over the horizon, one panel per transformer: median
    and 50 % / 90 % bands over draws, the rating, and the probability of
    overload in the worst half-hour."""
    net = tree["network"]
    times = pd.to_datetime(net.time.values)
    names = [str(t) for t in net.trafo.values]
    fig = Figure(figsize=(10, 1 + 3 * max(len(names), 1)), layout="constrained")
    axes = fig.subplots(max(len(names), 1), 1, sharex=True, squeeze=False)[:, 0]
    if not names:
        axes[0].text(0.5, 0.5, "this feeder has no transformer", ha="center", va="center")
        return fig
    for ax, name in zip(axes, names):
        load = net["trafo_loading_pu"].sel(trafo=name).values.reshape(-1, len(times))
        _fan(ax, times, load, "tab:blue", "loading")
        ax.axhline(tree.attrs["loading_max_pu"], color="tab:red", linestyle="--", linewidth=1, label="rating")
        p = float(net["p_trafo_overload"].sel(trafo=name).max())
        lo, hi = wilson_interval(p, study_effective_draws(tree))
        ax.set_ylabel("current / rated (pu)")
        ax.set_ylim(bottom=0)
        ax.set_title(f"transformer {name}: P(overload) in its worst half-hour "
                     f"{format_probability(p, float(lo), float(hi), n_draws(tree))}", fontsize=10)
        local_axis(ax, tree, label=ax is axes[-1])
    axes[0].legend(fontsize=8, ncol=3, loc="upper left")
    return fig


def voltage_fan_chart(tree: xr.DataTree) -> Figure:
    """Lowest and highest bus voltage per phase over the horizon (median, 50 % and
    90 % bands over draws), with the limits."""
    net = tree["network"]
    times = pd.to_datetime(net.time.values)
    fig = Figure(figsize=(10, 7.5), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    for ax, ph in zip(axes, ("a", "b", "c")):
        vmin = net["v_min_pu"].sel(phase=ph).values.reshape(-1, len(times))
        vmax = net["v_max_pu"].sel(phase=ph).values.reshape(-1, len(times))
        _fan(ax, times, vmin, "tab:blue", "lowest")
        _fan(ax, times, vmax, "tab:orange", "highest")
        for lim in (tree.attrs["v_min_pu"], tree.attrs["v_max_pu"]):
            ax.axhline(lim, color="tab:red", linestyle="--", linewidth=1)
        ax.set_ylabel(f"phase {ph}: V (pu)")
        local_axis(ax, tree, label=ax is axes[-1])
    axes[0].legend(fontsize=7, ncol=3, loc="lower left")
    fig.suptitle(f"bus voltages per phase over the horizon (source bus excluded); {_limits_text(tree)}",
                 fontsize=10)
    return fig


def _adjustments_when_adjusted(h: xr.Dataset | xr.DataTree, agents: list[str], *,
                               block: int = BLOCK_DRAWS) -> list[np.ndarray]:
    """Per agent, its net adjustment (turn-up less turn-down, summed over phases, kW) in every
    (draw, half-hour) where it is adjusted, in draw order; read a block of draws at a time."""
    idx = [int(i) for i in h.indexes["agent"].get_indexer(agents)]
    if min(idx, default=0) < 0:
        raise ConfigError(f"agent {not_among(agents, h.indexes['agent'], 'in the study')}")
    parts: list[list[np.ndarray]] = [[] for _ in agents]
    dims = ("agent", "draw", "time", "phase")
    for c, s in draw_blocks(h, block):
        up = np.nansum(draw_block(h["adjust_up_kw"], c, s, dims, agent=idx), axis=-1)
        dn = np.nansum(draw_block(h["adjust_down_kw"], c, s, dims, agent=idx), axis=-1)
        for j in range(len(agents)):  # (draw, time) of agent j
            moved = (up[j] > 0) | (dn[j] > 0)
            parts[j].append(up[j][moved] - dn[j][moved])
    return [np.concatenate(p) if p else np.zeros(0, np.float32) for p in parts]


def adjustment_figure(tree: xr.DataTree, k: int = 8, *, top=None) -> Figure:
    """For the ``k`` agents most often adjusted: the distribution of their turn-down
    and turn-up (kW per half-hour when adjusted), with how often they are adjusted.
    ``top``: :func:`bayesflex.analysis.query.top_agents` of this tree, if already at hand."""
    top = (top_agents(tree, k) if top is None else top).head(k)
    top = top[top.p_adjusted_in_horizon > 0]
    fig = Figure(figsize=(10, 1.2 + 0.45 * max(len(top), 2)), layout="constrained")
    ax = fig.subplots()
    if top.empty:
        ax.text(0.5, 0.5, "no agent is adjusted in any draw", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    labels = list(top.agent)
    data = _adjustments_when_adjusted(tree["heuristic"], labels)
    ax.boxplot(data[::-1], orientation="horizontal", tick_labels=labels[::-1], whis=(5, 95), showfliers=True,
               flierprops={"markersize": 2})
    ax.axvline(0, color="0.5", linewidth=0.8)
    for i, (_, r) in enumerate(top[::-1].iterrows()):
        ax.annotate(f"P = {format_probability(r.p_adjusted_in_horizon, r.p_adjusted_in_horizon_lo, r.p_adjusted_in_horizon_hi)}",
                    (1.0, i + 1),
                    xycoords=("axes fraction", "data"), xytext=(4, 0), textcoords="offset points", fontsize=7,
                    va="center")
    ax.set_xlabel("adjustment when adjusted (kW per half-hour): turn-down < 0 < turn-up")
    ax.set_title("agents most often adjusted (P: at least once in the horizon); boxes 25-75 %, whiskers 5-95 %",
                 fontsize=10)
    return fig


def flexibility_figure(tree: xr.DataTree) -> Figure:
    """The aggregator's flexibility at risk: portfolio turn-up and turn-down it can sell
    against its planned position after network limits (:func:`bayesflex.study.results.deliverable`),
    against the confidence of delivering it: in every half-hour of the horizon at once (the
    quantile of each draw's lowest half-hour, with its 95 % order-statistic band) and in the
    median half-hour taken on its own."""
    h = tree["heuristic"]
    conf = np.linspace(0.5, 0.99, 50)
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax = fig.subplots()
    for side, color in (("up", "tab:green"), ("down", "tab:purple")):
        name = f"portfolio_deliverable_{side}_kw"
        if name not in h:
            continue
        tot = h[name].values.reshape(-1, h.sizes["time"])
        joint = tot.min(axis=1)  # each draw's lowest half-hour
        lo, hi = quantile_interval(joint, 1 - conf)
        ax.fill_between(100 * conf, np.where(np.isfinite(lo), lo, 0), np.where(np.isfinite(hi), hi, np.nan),
                        color=color, alpha=0.15, linewidth=0)
        ax.plot(100 * conf, np.quantile(joint, 1 - conf), color=color, linewidth=2,
                label=f"turn-{side}, in every half-hour at once (95 % band)")
        ax.plot(100 * conf, np.median(np.quantile(tot, 1 - conf, axis=0), axis=1), color=color, linestyle="--",
                label=f"turn-{side}, median half-hour on its own")
    ax.set_xlabel("confidence of delivering (%)  (P50 ... P99)")
    ax.set_ylabel("portfolio flexibility deliverable (kW)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"flexibility at risk: what the portfolio can commit after network limits "
                 f"({n_draws(tree)} draws)", fontsize=10)
    return fig


def _kw_of(market: dict, name: str, direction: str, start: pd.DatetimeIndex) -> np.ndarray:
    """The kW a product commits per half-hour of the study, from ``market.json``'s commitments."""
    kw = np.zeros(len(start))
    for r in market["commitments"]:
        if r["product"] == name and r["direction"] == direction:
            i = start.get_loc(pd.Timestamp(r["start_utc"]).tz_localize(None))
            kw[i:i + int(r["half_hours"])] = r["kw"]
    return kw


def market_figure(tree: xr.DataTree, market: dict) -> Figure:
    """The market decision (``market.json``): left, the kW committed per product and half-hour,
    stacked (turn-up above the axis, turn-down below; products that stack overlap), over what the portfolio can deliver (5 % and
    50 % quantiles over draws); right, the profit over the draws it was tuned on and fresh ones."""
    h = tree["heuristic"]
    times = pd.DatetimeIndex(h.time.values)
    x = times.to_pydatetime()
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax, hx = fig.subplots(1, 2, width_ratios=(3, 1))
    sign = {"up": 1.0, "down": -1.0}
    base = {"up": np.zeros(len(times)), "down": np.zeros(len(times))}
    colors = dict(zip(dict.fromkeys(r["product"] for r in market["commitments"]),
                      ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                       "tab:olive", "tab:cyan", "tab:gray")))
    start = pd.DatetimeIndex(pd.to_datetime(market["times_utc"], utc=True)).tz_localize(None)
    groups = market.get("stack_groups") or [[n] for n in colors]
    for group in groups:  # products that stack sell the same kW: their bars overlap, the group adds its largest
        for d in ("up", "down"):
            top = np.zeros(len(times))
            for name in sorted((n for n in group if n in colors), key=lambda n: -_kw_of(market, n, d, start).max()):
                kw = _kw_of(market, name, d, start)
                if kw.any():
                    ax.bar(x, sign[d] * kw, bottom=sign[d] * base[d], width=0.9 / 48, align="edge",
                           color=colors[name], label=f"{name} ({d})" + (", stacked" if len(group) > 1 else ""))
                    top = np.maximum(top, kw)
            base[d] += top
    for d, color in (("up", "tab:green"), ("down", "tab:purple")):
        name = f"portfolio_deliverable_{d}_kw"
        if name in h:
            q = np.quantile(h[name].values.reshape(-1, len(times)), [0.05, 0.5], axis=0)
            ax.plot(x, sign[d] * q[0], color=color, linewidth=1.5, label=f"deliverable turn-{d}, 5 %")
            ax.plot(x, sign[d] * q[1], color=color, linewidth=1, linestyle="--", label=f"deliverable turn-{d}, 50 %")
    ax.axhline(0, color="black", linewidth=0.6)
    local_axis(ax, tree)
    ax.set_ylabel("kW (turn-up above, turn-down below)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    ax.set_title("commitments per product over the deliverable flexibility", fontsize=10)
    hist = market["profit_hist"]
    edges = np.asarray(hist["edges"])
    for key, color, label in (("in_sample", "tab:blue", "tuning draws"), ("fresh", "tab:orange", "fresh draws")):
        counts = np.asarray(hist[key], float)
        if counts.sum():
            hx.stairs(counts / counts.sum(), edges, color=color, label=label, linewidth=1.5)
    hx.set_xlabel("profit over the horizon (GBP)")
    hx.set_ylabel("share of draws")
    hx.legend(fontsize=7)
    hx.grid(alpha=0.3)
    hx.set_title("profit over draws", fontsize=10)
    return fig
