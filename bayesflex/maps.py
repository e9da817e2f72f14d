"""Figures of a study: congestion-probability maps, heatmaps, fan charts, flexibility at risk.

Every function takes the study's ``xarray.DataTree`` (nothing else: the
feeder's coordinates and topology travel in its ``constant_data`` group) and
returns a ``matplotlib.figure.Figure``; nothing touches pyplot's global state.
Save with ``fig.savefig("map.png")`` or ``.svg``.
"""

from __future__ import annotations

import matplotlib
import matplotlib.cm
import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.collections import LineCollection
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure

from .errors import ConfigError
from .intervals import format_probability, quantile_interval, wilson_interval
from .query import BLOCK_DRAWS, draw_block, draw_blocks, half_hour, n_draws
from .results import study_effective_draws
from .timefmt import fmt_time, local_axis, zone_note

__all__ = ["adjustment_figure", "congestion_heatmap", "feeder_map", "flexibility_figure", "trafo_fan_chart",
           "voltage_fan_chart"]

KINDS = ("any", "undervoltage", "overvoltage", "overload")
#: YlOrRd without its palest fifth, so that a small probability still shows against white;
#: zero is drawn grey (lines) or not at all (buses, heatmap cells)
CMAP = ListedColormap(matplotlib.colormaps["YlOrRd"](np.linspace(0.2, 1.0, 256)),
                      name="YlOrRd_visible").with_extremes(bad="white")
QUANTILE_BANDS = ((0.05, 0.95), (0.25, 0.75))


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


def _bus_probability(tree, kind: str, t) -> xr.DataArray:
    net = tree["network"]
    if kind == "undervoltage":
        da = net["p_undervoltage"]
    elif kind == "overvoltage":
        da = net["p_overvoltage"]
    else:
        da = xr.concat([net["p_undervoltage"], net["p_overvoltage"]], "k").max("k")
    return _pick_time(da, t)  # (bus, phase)


def feeder_map(tree: xr.DataTree, *, kind: str = "any", phase: str | None = None, time=None) -> Figure:
    """The feeder drawn from its coordinates, one panel per phase: buses coloured
    by the probability of a voltage violation on that phase, lines by the
    probability of overload, at ``time`` (a half-hour) or the worst over the
    horizon.  ``kind``: "any", "undervoltage", "overvoltage" or "overload"."""
    if kind not in KINDS:
        raise ConfigError(f"kind {kind!r} unknown (allowed: {', '.join(KINDS)})")
    cd = tree["constant_data"]
    x, y = cd["bus_x"].values, cd["bus_y"].values
    if not np.isfinite(x).any():
        raise ConfigError(f"feeder {tree.attrs['feeder']!r} has no bus coordinates: no map can be drawn")
    t, when = _when(tree, time)
    phases = _phases(phase)
    pos = {str(b): i for i, b in enumerate(cd.bus.values)}
    fr = np.array([pos[str(b)] for b in cd["line_from_bus"].values])
    to = np.array([pos[str(b)] for b in cd["line_to_bus"].values])
    segs = np.stack([np.c_[x[fr], y[fr]], np.c_[x[to], y[to]]], axis=1)
    p_line = _pick_time(tree["network"]["p_overload"], t).values if kind in ("any", "overload") else \
        np.zeros(len(fr))
    p_bus = _bus_probability(tree, kind, t) if kind != "overload" else None
    vmax = max(1.0 / n_draws(tree), float(np.nanmax(p_line)) if len(p_line) else 0.0,
               float(p_bus.max()) if p_bus is not None else 0.0)  # the colours span the data
    norm = Normalize(0.0, vmax)
    fig = Figure(figsize=(5.2 * len(phases) + 0.8, 5.6), layout="constrained")
    axes = fig.subplots(1, len(phases), squeeze=False)[0]
    src = pos[str(cd["source_bus"].item())]
    cm = CMAP
    for ax, ph in zip(axes, phases):
        hot = p_line > 0
        ax.add_collection(LineCollection(segs[~hot], colors="0.75", linewidths=0.8, zorder=1))
        if hot.any():
            ax.add_collection(LineCollection(segs[hot], colors=cm(norm(p_line[hot])), linewidths=2.5, zorder=2))
        if p_bus is not None:
            pb = p_bus.sel(phase=ph).values
            on = pb > 0
            ax.scatter(x[on], y[on], c=pb[on], cmap=CMAP, norm=norm, s=22, edgecolors="0.2", linewidths=0.3,
                       zorder=3)
        for hv, lv in zip(cd["trafo_hv_bus"].values, cd["trafo_lv_bus"].values):
            i, j = pos[str(hv)], pos[str(lv)]
            ax.plot([x[i], x[j]], [y[i], y[j]], color="black", linestyle=":", linewidth=1, zorder=1)
        ax.plot(x[src], y[src], marker="^", color="black", markersize=11, zorder=4, linestyle="none",
                label="transformer / source")
        ax.set_title(f"phase {ph}")
        ax.set_aspect("equal", adjustable="datalim")
        ax.autoscale_view()
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="lower left", fontsize=8, frameon=False)
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=CMAP)
    cb = fig.colorbar(sm, ax=list(axes), shrink=0.85)
    cb.set_label("probability" + (" (bus: voltage, line: overload)" if kind == "any" else f" of {kind}"))
    what = {"any": "voltage or thermal violation", "undervoltage": "under-voltage", "overvoltage": "over-voltage",
            "overload": "line overload"}[kind]
    fig.suptitle(f"{tree.attrs['feeder']}: probability of {what}, {when}\n{_limits_text(tree)}", fontsize=10)
    return fig


def congestion_heatmap(tree: xr.DataTree, *, kind: str = "any", phase: str | None = None) -> Figure:
    """Probability of a voltage violation by half-hour (x) and bus (y), one panel
    per phase; only buses with a non-zero probability at some half-hour are
    drawn, in feeder order."""
    if kind not in ("any", "undervoltage", "overvoltage"):
        raise ConfigError(f"kind {kind!r} unknown for a voltage heatmap (allowed: any, undervoltage, overvoltage)")
    phases = _phases(phase)
    net = tree["network"]
    if kind == "any":
        da = xr.concat([net["p_undervoltage"], net["p_overvoltage"]], "k").max("k")
    else:
        da = net[f"p_{kind}"]
    times = pd.to_datetime(da.time.values)
    fig = Figure(figsize=(10, 2.6 + 2.4 * len(phases)), layout="constrained")
    axes = fig.subplots(len(phases), 1, squeeze=False)[:, 0]
    vmax = max(1.0 / n_draws(tree), float(da.max()))
    im = None
    for ax, ph in zip(axes, phases):
        m = da.sel(phase=ph).transpose("bus", "time").values
        rows = np.flatnonzero(m.max(axis=1) > 0)
        ax.set_title(f"phase {ph}: {len(rows)} of {m.shape[0]} buses ever outside limits", fontsize=9)
        if rows.size == 0:
            ax.text(0.5, 0.5, "no violation in any draw", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        im = ax.imshow(np.ma.masked_equal(m[rows], 0.0), aspect="auto", cmap=CMAP, vmin=0, vmax=vmax, interpolation="nearest",
                       extent=(-0.5, len(times) - 0.5, len(rows) - 0.5, -0.5))
        step = max(1, len(times) // 12)
        ax.set_xticks(range(0, len(times), step), [fmt_time(t, tree) for t in times[::step]], fontsize=7,
                      rotation=30)
        labels = [str(b) for b in da.bus.values[rows]]
        ystep = max(1, len(rows) // 15)
        ax.set_yticks(range(0, len(rows), ystep), labels[::ystep], fontsize=7)
        ax.set_ylabel("bus")
    if im is not None:
        fig.colorbar(im, ax=list(axes), shrink=0.9).set_label("probability")
    fig.suptitle(f"probability of a voltage violation by half-hour and bus ({kind}); {_limits_text(tree)}; "
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
        raise ConfigError(f"agent {agents[idx.index(-1)]!r} not in the study")
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
    ``top``: :func:`bayesflex.query.top_agents` of this tree, if already at hand."""
    from .query import top_agents

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
    against its planned position after network limits (:func:`bayesflex.results.deliverable`),
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
