"""An interactive feeder map for ``report.html``: inline SVG and a small script, no library.

:func:`interactive_map_html` returns one self-contained HTML fragment: the
map's data as JSON, the script that draws it as SVG (zoom with the buttons,
Ctrl + wheel or the wheel once the map is clicked; drag to pan), a phase
selector and the legend of the maps' fixed probability scale
(:data:`bayesflex.analysis.maps.P_LABELS`).  Hovering a bus or a line shows its name,
its probability per phase with the 95 % interval
(:func:`bayesflex.core.intervals.format_probability`) in its worst half-hour, the
agents connected there and the agents causing most of the phase's worst
violation then (``heuristic/cause_agent_share``).

Why not plotly: its JavaScript alone is about 4.6 MB a report; this fragment
is some 100 kB for a 900-bus feeder and needs no package.  Every text comes
from Python (the probabilities are formatted here, not in the browser) and is
shown with ``textContent``: a bus named ``</script><script>...`` stays text.
"""

from __future__ import annotations

import functools
import html
import json
import math

import numpy as np
import xarray as xr

from bayesflex.analysis import maps
from bayesflex.core.intervals import format_probability, wilson_interval
from bayesflex.core.timefmt import local
from bayesflex.study.results import study_effective_draws

__all__ = ["interactive_map_html"]

_CAUSE_AGENTS = 3  # agents named as causing most of a violation


class _Strings:
    """A table of distinct texts: most buses share theirs, so each is sent once."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        return self.index.setdefault(text, len(self.index))

    def table(self) -> list[str]:
        return list(self.index)


def _half_hours(times, tree: xr.DataTree) -> list[str]:
    """The half-hours as the site's local time with the zone named, ``"Wed 18:00 GMT"``."""
    return list(local(times, tree).strftime("%a %H:%M %Z"))


@functools.lru_cache(maxsize=4096)
def _prob(p: float, n: float) -> str:
    lo, hi = wilson_interval(p, n)
    return format_probability(p, float(lo), float(hi), n)


def _phase_text(ph: str, pu: np.ndarray, po: np.ndarray, times: list[str], n: int) -> str:
    """One bus-phase: P(under-voltage) and P(over-voltage) in each one's worst half-hour."""
    parts = []
    for what, p in (("under-voltage", pu), ("over-voltage", po)):
        k = int(np.argmax(p))
        if p[k] > 0:
            parts.append(f"{what} {_prob(float(p[k]), n)} at {times[k]}")
    if not parts:
        return f"phase {ph}: outside limits in {_prob(0.0, n)}"
    return f"phase {ph}: " + "; ".join(parts)


def _cause_texts(tree: xr.DataTree, strings: _Strings) -> dict[tuple[int, str], int]:
    """Per (half-hour index, phase) with congested draws: the agents causing most of the
    phase's worst violation, as an index into ``strings``."""
    h = tree["heuristic"]
    if "cause_agent_share" not in h:
        return {}
    share = h["cause_agent_share"].transpose("time", "agent", "phase").values
    draws = h["cause_draws"].transpose("time", "phase").values
    agents = [str(a) for a in h.agent.values]
    times = _half_hours(h.time.values, tree)
    out = {}
    for ti, pi in zip(*np.nonzero(draws)):
        s = share[ti, :, pi]
        top = [i for i in np.argsort(-s, kind="stable")[:_CAUSE_AGENTS] if s[i] > 0]
        if top:
            ph = "abc"[pi]
            d = int(draws[ti, pi])
            out[(int(ti), ph)] = strings(
                f"causing most of phase {ph}'s worst violation at {times[ti]} ({d} congested "
                f"draw{'s' if d != 1 else ''}): " + ", ".join(f"{agents[i]} {100 * s[i]:.0f} %" for i in top))
    return out


def _rounder(x: np.ndarray, y: np.ndarray, ok: np.ndarray):
    """Round coordinates to a 100,000th of the drawing's extent (metres or degrees alike)."""
    ext = float(max(np.ptp(x[ok]), np.ptp(y[ok]), 1e-12))
    digits = max(0, 5 - math.floor(math.log10(ext)))
    return lambda v: round(float(v), digits)


def map_data(tree: xr.DataTree) -> dict:
    """What the interactive map draws and says, all texts formatted: buses with coordinates
    (name, x, y, probability bin per phase, hover texts) and lines between them."""
    x, y, ok = maps.bus_coordinates(tree)
    n = study_effective_draws(tree)  # a posterior's draws count as its effective sample size
    cd, net = tree["constant_data"], tree["network"]
    times = _half_hours(net.time.values, tree)
    strings = _Strings()
    causes = _cause_texts(tree, strings)
    pu = net["p_undervoltage"].transpose("bus", "phase", "time").values
    po = net["p_overvoltage"].transpose("bus", "phase", "time").values
    p_any = maps.voltage_probability(tree).transpose("bus", "phase", "time").values
    worst_t = p_any.argmax(axis=-1)  # (bus, phase)
    p_worst = p_any.max(axis=-1)
    bins = maps.probability_bin(p_worst).tolist()
    names = [str(b) for b in cd.bus.values]
    agents_at: dict[str, list[str]] = {}
    for a, b, phs in zip(cd.agent.values, cd["agent_bus"].values, cd["agent_phases"].values):
        agents_at.setdefault(str(b), []).append(f"{a} ({', '.join(p for p, on in zip('abc', phs) if on)})")
    r = _rounder(x, y, ok)
    buses = []
    for i in np.flatnonzero(ok):
        at = agents_at.get(names[i])
        row = [names[i], r(x[i]), r(-y[i]), *bins[i], *(round(float(v), 6) for v in p_worst[i]),
               *(strings(_phase_text(ph, pu[i, j], po[i, j], times, n)) for j, ph in enumerate("abc")),
               strings("agents here: " + (", ".join(at) if at else "none")),
               *(causes.get((int(worst_t[i, j]), ph), -1) if p_worst[i, j] > 0 else -1 for j, ph in enumerate("abc"))]
        buses.append(row)
    pos = {b: k for k, b in enumerate(names)}
    drawn = {int(i): k for k, i in enumerate(np.flatnonzero(ok))}  # bus index -> row in ``buses``
    p_line = net["p_overload"].transpose("line", "time").values
    line_t = p_line.argmax(axis=1) if p_line.size else np.zeros(len(p_line), int)
    line_p = p_line.max(axis=1) if p_line.size else np.zeros(len(p_line))
    line_bins = maps.probability_bin(line_p).tolist()
    lines = []
    for j, (name, fb, tb, amps) in enumerate(zip(cd.line.values, cd["line_from_bus"].values, cd["line_to_bus"].values,
                                                 cd["line_i_max_a"].values)):
        a, b = pos[str(fb)], pos[str(tb)]
        if a not in drawn or b not in drawn:
            continue
        p = float(line_p[j])
        when = f" at {times[line_t[j]]}" if p > 0 else ""
        tip = strings(f"P(overload, worst phase) {_prob(p, n)}{when}")
        lines.append([str(name), drawn[a], drawn[b], line_bins[j], round(p, 6), tip, float(f"{amps:.4g}")])
    src = pos[str(cd["source_bus"].item())]
    if src not in drawn:  # ENWL places the transformer's LV side only
        lvs = [pos[str(b)] for b in cd["trafo_lv_bus"].values if pos[str(b)] in drawn]
        src = lvs[0] if lvs else None
    return {"feeder": str(tree.attrs.get("feeder", "")), "n": n, "labels": list(maps.P_LABELS),
            "colours": list(maps.P_COLOURS), "title": maps.scale_title("violation"), "strings": strings.table(),
            "buses": buses, "lines": lines,
            "source": drawn.get(src) if src is not None else None}


def _json_for_script(obj) -> str:
    """JSON that cannot end the ``<script>`` element it sits in, whatever the names hold."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def interactive_map_html(tree: xr.DataTree) -> str:
    """The study's feeder as an interactive map: an HTML fragment (no outside references) for
    ``report.html``.  Raises :class:`~bayesflex.errors.ConfigError` when no bus has coordinates."""
    data = map_data(tree)
    legend = "".join(f'<span class="bf-sw"><i style="background:{c}"></i>{html.escape(lab)}</span>'
                     for c, lab in zip(maps.P_COLOURS, maps.P_LABELS))
    phases = "".join(f'<label><input type="radio" name="bf-phase" value="{v}"{" checked" if v == "w" else ""}>'
                     f"{html.escape(t)}</label>" for v, t in (("w", "worst of a, b, c"), ("0", "a"), ("1", "b"),
                                                                ("2", "c")))
    note = maps.unplaced_note(tree, maps.bus_coordinates(tree)[2])
    return (
        f'<div class="bf-imap"><style>{_CSS}</style>'
        f'<div class="bf-bar"><span>colour buses by phase: {phases}</span>'
        '<span><button type="button" data-zoom="1.5" title="zoom in">+</button>'
        '<button type="button" data-zoom="0.6667" title="zoom out">&minus;</button>'
        '<button type="button" data-zoom="0" title="whole feeder">reset</button></span>'
        '<span class="bf-hint">hover a bus or line; drag to pan; Ctrl + wheel (or wheel after a click) to zoom</span>'
        "</div>"
        '<div class="bf-stage"><svg xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-label="feeder {html.escape(data["feeder"])}: probability of a violation at every bus and line">'
        '</svg><div class="bf-tip" role="status" hidden></div></div>'
        f'<div class="bf-legend"><div><b>{html.escape(data["title"])}</b> (buses: voltage outside limits on the '
        f"phase; lines: overload; each one's worst half-hour)</div>{legend}</div>"
        + (f'<p class="bf-note">{html.escape(note)}</p>' if note else "")
        + f'<script type="application/json" class="bf-data">{_json_for_script(data)}</script>'
        f"<script>{_JS}</script></div>"
    )


_CSS = """
.bf-imap { margin: 1em 0 2em; font-size: 0.9em; }
.bf-imap .bf-bar { display: flex; flex-wrap: wrap; gap: 0.4em 1.4em; align-items: center; margin-bottom: 0.4em; }
.bf-imap .bf-bar label { margin-left: 0.6em; } .bf-imap .bf-hint { color: #777; font-size: 0.9em; }
.bf-imap button { min-width: 2.2em; margin-right: 0.2em; }
.bf-imap .bf-stage { position: relative; border: 1px solid #ccc; height: 620px; overflow: hidden; background: #fff; }
.bf-imap svg { width: 100%; height: 100%; display: block; touch-action: none; cursor: grab; user-select: none; }
.bf-imap svg.bf-drag { cursor: grabbing; } .bf-imap circle.bf-hot { stroke: #000; stroke-width: 2.5px; }
.bf-imap .bf-tip { position: absolute; max-width: 430px; background: rgba(255,255,255,0.96); border: 1px solid #888;
  border-radius: 4px; padding: 0.4em 0.6em; font-size: 0.85em; line-height: 1.35; pointer-events: none;
  box-shadow: 0 1px 4px rgba(0,0,0,0.25); z-index: 2; }
.bf-imap .bf-tip div:first-child { font-weight: bold; } .bf-imap .bf-tip .bf-sel { font-weight: bold; }
.bf-imap .bf-tip .bf-sub { color: #555; }
.bf-imap .bf-legend { margin-top: 0.4em; } .bf-imap .bf-sw { margin-right: 1.2em; white-space: nowrap; }
.bf-imap .bf-sw i { display: inline-block; width: 1.1em; height: 0.8em; border: 1px solid #555;
  margin-right: 0.3em; vertical-align: -0.05em; }
.bf-imap .bf-note { color: #777; font-size: 0.85em; }
"""

# The drawing script: reads its JSON, builds the SVG, handles hover, phase, zoom and pan.
# Bus rows: [name, x, y, bin a, b, c, p a, b, c (worst half-hour), text a, b, c, agents, cause a, b, c]
# (texts are indices into ``strings``, -1 none); line rows: [name, from row, to row, bin, p, text, rating A].
_JS = r"""
(function () {
  var NS = "http://www.w3.org/2000/svg";
  document.querySelectorAll(".bf-imap").forEach(function (root) {
    if (root.dataset.ready) return;
    root.dataset.ready = "1";
    var d = JSON.parse(root.querySelector(".bf-data").textContent);
    var svg = root.querySelector("svg"), tip = root.querySelector(".bf-tip"), stage = root.querySelector(".bf-stage");
    var S = d.strings, B = d.buses, L = d.lines, phase = "w", active = false;
    var xs = B.map(function (b) { return b[1]; }), ys = B.map(function (b) { return b[2]; });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    var pad = 0.04 * Math.max(x1 - x0, y1 - y0, 1e-9);
    var home = [x0 - pad, y0 - pad, x1 - x0 + 2 * pad, y1 - y0 + 2 * pad], vb = home.slice();
    function el(tag, attrs) {
      var e = document.createElementNS(NS, tag);
      for (var k in attrs) e.setAttribute(k, attrs[k]);
      return e;
    }
    // layers, bottom up: lines no draw overloads, buses no draw takes outside limits, the other lines, the
    // other buses (so that a short line at risk is not hidden under the dots of its ends), the source
    var gl0 = el("g", {}), gb0 = el("g", {}), gl = el("g", {}), gb = el("g", {}), gs = el("g", {});
    [gl0, gb0, gl, gb, gs].forEach(function (g) { svg.appendChild(g); });
    L.map(function (l, i) { return i; }).sort(function (i, j) { return L[i][4] - L[j][4]; }).forEach(function (j) {
      var l = L[j], a = B[l[1]], b = B[l[2]];
      var e = el("line", {x1: a[1], y1: a[2], x2: b[1], y2: b[2], stroke: d.colours[l[3]],
                          "stroke-width": l[3] ? 4 : 1.6, "vector-effect": "non-scaling-stroke",
                          "stroke-linecap": "round", "data-line": j});
      (l[3] ? gl : gl0).appendChild(e);
    });
    var circles = B.map(function (b, i) {
      return el("circle", {cx: b[1], cy: b[2], "data-bus": i, "data-name": b[0], "stroke-width": 0.8,
                           "vector-effect": "non-scaling-stroke"});
    });
    function worst(b) { return b[6] >= b[7] && b[6] >= b[8] ? 0 : (b[7] >= b[8] ? 1 : 2); }
    function sel(b) { return phase === "w" ? worst(b) : +phase; }
    function binOf(b) { return b[3 + sel(b)]; }
    function paint() {
      var order = B.map(function (b, i) { return i; });
      order.sort(function (i, j) { return binOf(B[i]) - binOf(B[j]) || B[i][6 + sel(B[i])] - B[j][6 + sel(B[j])]; });
      order.forEach(function (i) {
        var c = circles[i], k = binOf(B[i]);
        c.setAttribute("fill", d.colours[k]);
        c.setAttribute("stroke", k ? "#333" : "none");
        c.setAttribute("data-r", k ? 4.5 : 1.8);
        (k ? gb : gb0).appendChild(c);  // the likeliest last, on top
      });
      resize();
    }
    if (d.source !== null) {
      var s = B[d.source];
      gs.appendChild(el("path", {d: "", fill: "#000", "data-src": "1", "data-x": s[1], "data-y": s[2]}));
    }
    function resize() {
      var k = 1 / Math.min(svg.clientWidth / vb[2] || 1, svg.clientHeight / vb[3] || 1);
      circles.forEach(function (c) { c.setAttribute("r", c.getAttribute("data-r") * k); });
      gs.querySelectorAll("path").forEach(function (p) {
        var x = +p.getAttribute("data-x"), y = +p.getAttribute("data-y"), h = 9 * k;
        p.setAttribute("d", "M" + x + "," + (y - h) + "L" + (x - h) + "," + (y + h * 0.7) + "L" + (x + h) + "," +
                       (y + h * 0.7) + "Z");
      });
    }
    function view() { svg.setAttribute("viewBox", vb.join(" ")); resize(); }
    function zoom(f, cx, cy) {
      if (!f) { vb = home.slice(); view(); return; }
      var r = svg.getBoundingClientRect(), m = svg.getScreenCTM().inverse();
      var pt = svg.createSVGPoint();
      pt.x = cx === undefined ? r.left + r.width / 2 : cx; pt.y = cy === undefined ? r.top + r.height / 2 : cy;
      var q = pt.matrixTransform(m);
      vb = [q.x - (q.x - vb[0]) / f, q.y - (q.y - vb[1]) / f, vb[2] / f, vb[3] / f];
      view();
    }
    root.querySelectorAll("button[data-zoom]").forEach(function (b) {
      b.addEventListener("click", function () { zoom(+b.getAttribute("data-zoom")); });
    });
    root.querySelectorAll("input[name=bf-phase]").forEach(function (r) {
      r.addEventListener("change", function () { phase = r.value; paint(); });
    });
    svg.addEventListener("wheel", function (e) {
      if (!(active || e.ctrlKey || e.metaKey)) return;
      e.preventDefault();
      zoom(e.deltaY < 0 ? 1.25 : 0.8, e.clientX, e.clientY);
    }, {passive: false});
    var drag = null;
    svg.addEventListener("pointerdown", function (e) {
      active = true;
      drag = {x: e.clientX, y: e.clientY, vb: vb.slice()};
      svg.classList.add("bf-drag");
    });
    window.addEventListener("pointermove", function (e) {
      if (!drag) return;
      var m = svg.getScreenCTM(), k = m ? m.a : 1;
      vb[0] = drag.vb[0] - (e.clientX - drag.x) / k; vb[1] = drag.vb[1] - (e.clientY - drag.y) / k;
      view();
    });
    window.addEventListener("pointerup", function () { drag = null; svg.classList.remove("bf-drag"); });
    function named(kind, name) {  // as bayesflex.analysis.maps.named
      return name.toLowerCase().indexOf(kind) === 0 ? name : kind + " " + name;
    }
    function line(text, cls) {
      var e = document.createElement("div");
      e.textContent = text;
      if (cls) e.className = cls;
      tip.appendChild(e);
    }
    var hot = null;
    function show(e) {
      var t = e.target, i;
      tip.textContent = "";
      if (hot && hot !== t) { hot.classList.remove("bf-hot"); hot = null; }
      if (t.hasAttribute("data-bus")) { hot = t; t.classList.add("bf-hot"); }
      if (t.hasAttribute("data-bus")) {
        var b = B[+t.getAttribute("data-bus")];
        var k = sel(b);
        line(named("bus", b[0]));
        for (i = 0; i < 3; i++) line(S[b[9 + i]], i === k ? "bf-sel" : "");
        line(S[b[12]], "bf-sub");
        if (b[13 + k] >= 0) line(S[b[13 + k]], "bf-sub");
      } else if (t.hasAttribute("data-line")) {
        var l = L[+t.getAttribute("data-line")];
        line(named("line", l[0]));
        line(S[l[5]], "bf-sel");
        line("from " + named("bus", B[l[1]][0]) + " to " + named("bus", B[l[2]][0]) + ", rating " + l[6] + " A",
             "bf-sub");
      } else { tip.hidden = true; return; }
      var r = stage.getBoundingClientRect(), x = e.clientX - r.left + 14, y = e.clientY - r.top + 14;
      tip.hidden = false;
      if (x + tip.offsetWidth > r.width) x = Math.max(0, e.clientX - r.left - 14 - tip.offsetWidth);
      if (y + tip.offsetHeight > r.height) y = Math.max(0, e.clientY - r.top - 14 - tip.offsetHeight);
      tip.style.left = x + "px"; tip.style.top = y + "px";
    }
    svg.addEventListener("mouseover", show);
    svg.addEventListener("mousemove", function (e) { if (!tip.hidden && !drag) show(e); });
    svg.addEventListener("mouseleave", function () {
      tip.hidden = true;
      if (hot) { hot.classList.remove("bf-hot"); hot = null; }
    });
    window.addEventListener("resize", resize);
    svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
    paint();
    view();
  });
})();
"""
