"""Questions asked of a study result: probabilities with their Monte Carlo error, quantiles.

Every function takes the ``xarray.DataTree`` of :func:`bayesflex.run_study`
(or :func:`bayesflex.study.results.open_study`) and returns a ``pandas.DataFrame``,
so that the CLI can print it as a table, CSV or JSON.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from bayesflex.core.checks import not_among
from bayesflex.core.intervals import quantile_interval, wilson_interval
from bayesflex.errors import ConfigError
from bayesflex.priors.registry import labels
from bayesflex.study.results import mcse, study_effective_draws

__all__ = ["BLOCK_DRAWS", "above_service", "adjustment_quantiles", "cause_text", "causes",
           "congestion_probability", "draw_block", "draw_blocks", "flexibility_at_risk", "flexibility_summary",
           "half_hour", "n_draws", "portfolio_position", "predictive", "product_at_risk", "technology_names",
           "top_agents", "with_interval"]
__all__ += ["adjustment_reason", "adjustment_reasons", "match_name"]

_WHERE = ("bus", "line", "phase", "time", "trafo")

#: draws read at a time by the reductions over per-draw arrays of every agent (or bus) and phase:
#: at 500 draws one float32 block of the default study is 500 x 96 x 55 x 3 x 4 B = 32 MB, so
#: memory stays bounded whatever the number of draws (10,000 draws: 630 MB per array if read whole)
BLOCK_DRAWS = 500


def draw_blocks(da: xr.DataArray | xr.Dataset, size: int = BLOCK_DRAWS):
    """``(chain, draws)`` pairs covering ``da``'s chains and draws in order, at most ``size``
    draws at a time: ``da.isel(chain=chain, draw=draws)`` reads one block of a lazily
    opened study, never the whole array."""
    if size < 1:
        raise ConfigError(f"block size {size!r} must be a positive number of draws")
    n = da.sizes["draw"]
    for c in range(da.sizes["chain"]):
        for a in range(0, n, size):
            yield c, slice(a, min(n, a + size))


def n_draws(tree: xr.DataTree) -> int:
    h = tree["heuristic"]
    return int(h.sizes["chain"] * h.sizes["draw"])


def with_interval(df: pd.DataFrame, column: str, n: float, prefix: str | None = None) -> pd.DataFrame:
    """``df`` with the Monte Carlo standard error and 95 % Wilson interval of the probability
    in ``column`` estimated from ``n`` effective draws: columns ``{prefix}mcse``, ``{prefix}lo``,
    ``{prefix}hi`` (``prefix`` defaults to ``column + "_"``)."""
    prefix = f"{column}_" if prefix is None else prefix
    p = df[column].to_numpy(float)
    lo, hi = wilson_interval(p, n)
    return df.assign(**{f"{prefix}mcse": mcse(p, n), f"{prefix}lo": lo, f"{prefix}hi": hi})


def predictive(tree: xr.DataTree) -> xr.Dataset:
    """The agent power draws (``prior_predictive`` or ``posterior_predictive``)."""
    for g in ("posterior_predictive", "prior_predictive"):
        if g in tree.children:
            return tree[g].to_dataset()
    raise ConfigError("study result has no prior_predictive or posterior_predictive group")


def above_service(tree: xr.DataTree) -> int | None:
    """Agent-half-hours (over all draws) whose drawn net power exceeds the agent's service
    capacity: 0 for plausible priors; None for a result that does not record it."""
    for g in ("posterior", "prior"):  # the draws' parameters and states (ArviZ's groups)
        if g in tree.children and "n_above_service" in tree[g]:
            return int(tree[g]["n_above_service"].sum())
    return None


def half_hour(times, value, what: str = "time") -> pd.Timestamp:
    """``value`` as one of the study's half-hours ``times``; a clear error otherwise."""
    times = pd.to_datetime(times)
    try:
        t = pd.Timestamp(str(value))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{what} {str(value)!r} is not a date-time (e.g. '{times[0]:%Y-%m-%d %H:%M}')") from err
    if t not in times:
        raise ConfigError(f"{what} {str(value)!r} is not a half-hour of the study "
                          f"({times[0]:%Y-%m-%d %H:%M} .. {times[-1]:%Y-%m-%d %H:%M}, every 30 min)")
    return t


def _pick(da, dim: str, value, what: str):
    """Select ``value`` (one or a list) along ``dim``; a clear error naming what is allowed."""
    if value is None:
        return da
    wanted = [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    if dim == "time":
        return da.sel(time=[np.datetime64(half_hour(da.time.values, w, what)) for w in wanted])
    names = da[dim].values
    return da.sel({dim: [match_name(names, w, what) for w in wanted]})


def match_name(names, value, what: str) -> str:
    """``value`` as one of ``names`` (agents, buses, lines...): as spelt, else ignoring case.

    An unknown name is a :class:`~bayesflex.errors.ConfigError` naming ``what`` (the option or
    argument), the value, the closest names (:func:`bayesflex.core.checks.did_you_mean`) and the first
    names allowed."""
    names = [str(n) for n in names]
    value = str(value)
    if value in names:
        return value
    same = [n for n in names if n.casefold() == value.casefold()]
    if len(same) == 1:
        return same[0]
    if same:
        raise ConfigError(f"{what} {value!r} matches {', '.join(same)} when case is ignored: give one as spelt")
    raise ConfigError(f"{what} {not_among([value], names, 'in the study')}")


def congestion_probability(tree: xr.DataTree, by: str = "bus", *, phase=None, time=None,
                           kind: str = "any", top: int | None = None) -> pd.DataFrame:
    """Probability of congestion, with its Monte Carlo standard error and 95 % Wilson interval
    (columns ``mcse``, ``lo``, ``hi``; over the study's effective draws).

    ``by``: "bus" (under-/over-voltage per time, bus and phase; ``kind`` "under",
    "over" or "any" = the larger), "line" (overload per time and line),
    "trafo" (transformer overload per time and transformer), "phase" (any limit on the phase,
    per time), "time" (any limit, any phase).  Rows are sorted by probability
    (highest first), cut to ``top`` rows if given.
    """
    net, summ = tree["network"], tree["summary"]
    n = study_effective_draws(tree)
    if by == "bus":
        if kind not in ("under", "over", "any"):
            raise ConfigError(f"kind {kind!r} unknown (allowed: under, over, any)")
        if kind == "any":
            da = xr.concat([net["p_undervoltage"], net["p_overvoltage"]], "kind").max("kind")
        else:
            da = net[f"p_{kind}voltage"]
        da = _pick(_pick(da, "phase", phase, "phase"), "time", time, "time")
    elif by == "line":
        da = _pick(net["p_overload"], "time", time, "time")
    elif by == "trafo":
        da = _pick(net["p_trafo_overload"], "time", time, "time")
    elif by == "phase":
        da = _pick(_pick(summ["p_congested"], "phase", phase, "phase"), "time", time, "time")
    elif by == "time":
        da = _pick(summ["p_congested_any"], "time", time, "time")
    else:
        raise ConfigError(f"by {by!r} unknown (allowed: {', '.join(_WHERE)})")
    df = da.rename("probability").to_dataframe().reset_index()
    df = df[[c for c in df.columns if c not in ("kind",)]]
    df = with_interval(df, "probability", n, prefix="")
    df = df.sort_values("probability", ascending=False, kind="stable")
    return (df.head(top) if top else df).reset_index(drop=True)


def adjustment_quantiles(tree: xr.DataTree, agent: str, *, q=(0.5, 0.9, 0.95), time=None) -> pd.DataFrame:
    """Quantiles over draws of one agent's turn-up and turn-down, per phase and time (kW),
    with the probability that it is asked to move at all (its MC error and 95 % Wilson interval),
    the mean kW when it is, and the ``reason`` (:func:`adjustment_reason`)."""
    agent = match_name(tree["heuristic"].agent.values, agent, "agent")
    names = [n for n in ("adjust_up_kw", "adjust_down_kw", "adjust_target_phase") if n in tree["heuristic"]]
    h = _pick(tree["heuristic"].to_dataset()[names], "agent", agent, "agent")
    h = _pick(h, "time", time, "time").isel(agent=0)
    phases = tree["constant_data"]["agent_phases"].sel(agent=agent).values
    h = h.isel(phase=np.flatnonzero(phases))
    n = study_effective_draws(tree)
    rows = []
    for name, side in (("adjust_up_kw", "up"), ("adjust_down_kw", "down")):
        da = h[name].stack(sample=("chain", "draw"))
        qs = da.quantile(list(q), dim="sample")
        moved = da > 0
        p = moved.mean("sample")
        when = (da.where(moved).mean("sample")).fillna(0.0)
        relieved = _relieved_counts(h, moved)  # (target phase, time, phase) draws, or None
        for ph in da.phase.values:
            for t in da.time.values:
                row = {"agent": agent, "phase": str(ph), "time": pd.Timestamp(t), "direction": side,
                       "p_adjusted": float(p.sel(phase=ph, time=t)),
                       "kw_when_adjusted": float(when.sel(phase=ph, time=t))}
                row |= {f"q{qq:g}_kw": float(qs.sel(quantile=qq, phase=ph, time=t)) for qq in q}
                if relieved is not None:
                    row["reason"] = adjustment_reason(str(ph), relieved.sel(phase=ph, time=t).values)
                rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    out = with_interval(df, "p_adjusted", n)  # p_adjusted_mcse, _lo, _hi beside p_adjusted
    return out[[*df.columns[:5], "p_adjusted_mcse", "p_adjusted_lo", "p_adjusted_hi", *df.columns[5:]]]


#: the phases, in the order of the codes of ``heuristic/adjust_target_phase``
PHASES = ("a", "b", "c")


def _relieved_counts(h: xr.Dataset, moved: xr.DataArray) -> xr.DataArray | None:
    """Draws, among those ``moved``, whose adjustment relieved phase a, b, c: ``(target, time, phase)``;
    None for a result that does not record it (an older bayesflex)."""
    if "adjust_target_phase" not in h:
        return None
    target = h["adjust_target_phase"].stack(sample=("chain", "draw"))
    return xr.concat([(moved & (target == j)).sum("sample") for j in range(len(PHASES))], "target")


def adjustment_reason(phase: str, relieved) -> str:
    """Why an agent is moved on ``phase``, from ``relieved`` (3,): the draws in which its move
    relieved the violation of phase a, b, c (``heuristic/adjust_target_phase``).

    "on the congested phase" where the violation relieved is on the agent's own phase; "relief of
    phase b (neutral shift)" where it is on another: the heuristic moves the agents whose power
    on their own phase moves the worst violated quantity most, and on a four-wire feeder loading
    one phase shifts the neutral point, which raises (or lowers) the other phases' voltages.
    Mixed draws are counted: "relief of phase b (neutral shift) in 12 of 15 draws; on the
    congested phase in 3"; "" where the agent is not moved."""
    counts = {j: int(c) for j, c in enumerate(relieved) if c > 0}
    if not counts:
        return ""
    words = {j: "on the congested phase" if PHASES[j] == phase else f"relief of phase {PHASES[j]} (neutral shift)"
             for j in counts}
    order = sorted(counts, key=lambda j: (-counts[j], j))
    if len(order) == 1:
        return words[order[0]]
    total = sum(counts.values())
    first, *rest = order
    return "; ".join([f"{words[first]} in {counts[first]} of {total} draws",
                      *(f"{words[j]} in {counts[j]}" for j in rest)])


def flexibility_at_risk(tree: xr.DataTree, confidence: float = 0.9, *, direction: str = "up",
                        time=None) -> pd.DataFrame:
    """Portfolio turn-up or turn-down (kW) deliverable with at least ``confidence``,
    in each half-hour on its own: the (1 - confidence) quantile over draws of what the
    portfolio can sell against its planned position after network adjustments
    (:func:`bayesflex.study.results.deliverable`) with its 95 % order-statistic interval,
    beside its mean and the portfolio power.  A figure offered in *every* half-hour of a
    window is a joint quantile: :func:`product_at_risk`."""
    da = _deliverable(tree, direction)
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence {confidence!r} must lie strictly between 0 and 1")
    h = tree["heuristic"]
    da = _pick(da, "time", time, "time").stack(sample=("chain", "draw"))
    pos = _pick(h["portfolio_p_kw"], "time", time, "time").stack(sample=("chain", "draw"))
    lo, hi = quantile_interval(da.transpose("sample", "time").values, 1 - confidence, axis=0)
    return pd.DataFrame({
        "time": pd.to_datetime(da.time.values),
        "direction": direction,
        "confidence": confidence,
        "deliverable_kw": da.quantile(1 - confidence, dim="sample").values,
        "deliverable_kw_lo": lo, "deliverable_kw_hi": hi,
        "mean_kw": da.mean("sample").values,
        "portfolio_p_kw_median": pos.median("sample").values,
    })


def _deliverable(tree: xr.DataTree, direction: str) -> xr.DataArray:
    if direction not in ("up", "down"):
        raise ConfigError(f"direction {direction!r} unknown (allowed: up, down)")
    h = tree["heuristic"]
    name = f"portfolio_deliverable_{direction}_kw"
    if name not in h:
        raise ConfigError("this study was run without headroom; rerun it with headroom")
    return h[name]


def product_at_risk(tree: xr.DataTree, direction: str, kw: float, *, start, end=None,
                    confidence=(0.5, 0.9, 0.95)) -> pd.DataFrame:
    """A market product: turn-``direction`` of ``kw`` kW in every half-hour from
    ``start`` to ``end`` (inclusive; default: ``start`` alone).

    Per draw, the portfolio delivers the lowest, over the product's half-hours,
    of what it can sell against its planned position after network adjustments
    (:func:`bayesflex.study.results.deliverable`).  One row per ``confidence``:
    ``commitment_kw``, the most that can be committed with at least that
    confidence (the (1 - c) quantile of the delivery); and, the same in every
    row, the probability of delivering the ``kw`` asked, with its Monte Carlo
    error and 95 % Wilson interval, the delivery's mean and its 5/50/95 % quantiles.
    ``commitment_kw_lo``/``_hi``: the commitment's 95 % order-statistic interval."""
    da = _deliverable(tree, direction)
    try:
        kw = float(kw)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"kw {kw!r} is not a number") from err
    if not kw >= 0:
        raise ConfigError(f"kw {kw!r}: the product's power must be a non-negative number of kW")
    conf = [float(c) for c in np.atleast_1d(confidence)]
    if not all(0 < c < 1 for c in conf):
        raise ConfigError(f"confidence {confidence!r}: every level must lie strictly between 0 and 1")
    t0 = half_hour(da.time.values, start, "start")
    t1 = half_hour(da.time.values, end if end is not None else start, "end")
    if t1 < t0:
        raise ConfigError(f"end {t1:%Y-%m-%d %H:%M} is before start {t0:%Y-%m-%d %H:%M}")
    window = da.sel(time=slice(t0, t1))
    delivered = window.min("time").values.ravel()
    p = float((delivered >= kw - 1e-9).mean())
    n = min(study_effective_draws(tree), delivered.size)
    q05, q50, q95 = np.quantile(delivered, [0.05, 0.5, 0.95])
    lo, hi = wilson_interval(p, n)
    common = {"direction": direction, "kw": kw, "start": t0, "end": t1, "half_hours": window.sizes["time"],
              "p_deliver": p, "p_deliver_mcse": float(mcse(p, n)), "p_deliver_lo": float(lo),
              "p_deliver_hi": float(hi), "mean_kw": float(delivered.mean()), "q05_kw": q05, "q50_kw": q50,
              "q95_kw": q95}
    commit = np.quantile(delivered, 1 - np.asarray(conf))
    c_lo, c_hi = quantile_interval(delivered, 1 - np.asarray(conf))
    return pd.DataFrame([{"confidence": c, "commitment_kw": float(k), "commitment_kw_lo": float(a),
                          "commitment_kw_hi": float(b), "meets_kw": bool(k >= kw - 1e-9), **common}
                         for c, k, a, b in zip(conf, commit, c_lo, c_hi)])


def portfolio_position(tree: xr.DataTree) -> dict | None:
    """The planned portfolio of a study with positions: number of agents, the lowest and
    highest P_T over the horizon and the widest bounds (kW); None without positions."""
    s = tree["summary"]
    if "portfolio_position_p_kw" not in s:
        return None
    pt = s["portfolio_position_p_kw"].values
    return {"agents": tree["positions"].sizes["agent"], "p_min_kw": float(pt.min()), "p_max_kw": float(pt.max()),
            "lb_min_kw": float(s["portfolio_position_p_lb_kw"].min()),
            "ub_max_kw": float(s["portfolio_position_p_ub_kw"].max())}


def flexibility_summary(tree: xr.DataTree) -> pd.DataFrame:
    """Per confidence level of the study's summary, portfolio turn-up and turn-down (kW):

    ``up_joint_kw`` (``_lo``, ``_hi``: its 95 % interval) what is delivered in *every*
    half-hour of the horizon with that confidence (the quantile of each draw's lowest
    half-hour: a joint figure); ``up_lowest_half_hour_kw`` and ``up_median_half_hour_kw``
    the lowest and the median over the half-hours of the per-half-hour figures, each
    half-hour taken on its own (the lowest is *not* deliverable in every half-hour with
    that confidence: the half-hours' shortfalls fall in different draws)."""
    s = tree["summary"]
    rows = []
    for c in s.confidence.values:
        row = {"confidence": float(c)}
        for side in ("up", "down"):
            per = s[f"flex_{side}_kw"].sel(confidence=c).values
            row |= {f"{side}_joint_kw": _joint(s, side, c, ""), f"{side}_joint_kw_lo": _joint(s, side, c, "_lo"),
                    f"{side}_joint_kw_hi": _joint(s, side, c, "_hi"),
                    f"{side}_lowest_half_hour_kw": per.min(), f"{side}_median_half_hour_kw": np.median(per)}
        rows.append(row)
    return pd.DataFrame(rows)


def _joint(s: xr.Dataset, side: str, c: float, suffix: str) -> float:
    name = f"flex_{side}_joint_kw{suffix}"
    return float(s[name].sel(confidence=c)) if name in s else np.nan  # NaN: a study from before joint figures


def draw_block(da: xr.DataArray, c: int, draws: slice, dims: tuple[str, ...], **sel) -> np.ndarray:
    """One block of draws of a per-draw array as numpy, dimensions in the order ``dims``."""
    return da.isel(chain=c, draw=draws, **sel).transpose(*dims).values


def top_agents(tree: xr.DataTree, k: int = 10, *, block: int = BLOCK_DRAWS) -> pd.DataFrame:
    """The agents most often asked to move: probability (over draws) of at
    least one adjustment in the horizon, with its MC error, the probability
    per half-hour, the mean turn-down and turn-up (kW) in the half-hours where
    the agent is adjusted, and how often it ranks first for a violation.
    (``p_adjusted_in_horizon_lo``/``_hi``: its 95 % Wilson interval.)

    Read ``block`` draws at a time (counts and float64 sums accumulated), so
    memory does not grow with the number of draws."""
    h = tree["heuristic"]
    n_agent = h.sizes["agent"]
    dims = ("draw", "time", "agent", "phase")
    any_h = np.zeros(n_agent, np.int64)  # draws with at least one adjustment in the horizon
    count = np.zeros(n_agent, np.int64)  # (draw, half-hour) cells with an adjustment
    first = np.zeros(n_agent, np.int64)  # (draw, half-hour) cells ranked first on some phase
    up_sum, dn_sum = np.zeros(n_agent), np.zeros(n_agent)
    for c, s in draw_blocks(h, block):
        up = np.nansum(draw_block(h["adjust_up_kw"], c, s, dims), axis=-1)  # (draw, time, agent)
        dn = np.nansum(draw_block(h["adjust_down_kw"], c, s, dims), axis=-1)
        moved = (up > 0) | (dn > 0)
        any_h += moved.any(axis=1).sum(axis=0)
        count += moved.sum(axis=(0, 1))
        up_sum += up.sum(axis=(0, 1), dtype=np.float64)
        dn_sum += dn.sum(axis=(0, 1), dtype=np.float64)
        del up, dn, moved
        first += (draw_block(h["sensitivity_rank"], c, s, dims) == 1).any(axis=-1).sum(axis=(0, 1))
    n = n_draws(tree)
    cells = n * h.sizes["time"]
    p_any = any_h / n
    with np.errstate(invalid="ignore", divide="ignore"):
        up = np.where(count > 0, up_sum / count, 0.0)
        dn = np.where(count > 0, dn_sum / count, 0.0)
    df = pd.DataFrame({
        "agent": [str(a) for a in h.agent.values],
        "p_adjusted_in_horizon": p_any,
        "p_adjusted_per_half_hour": count / cells,
        "down_kw_when_adjusted": dn, "up_kw_when_adjusted": up, "p_ranked_first": first / cells,
    })
    df = with_interval(df, "p_adjusted_in_horizon", min(n, study_effective_draws(tree)))
    df = df.sort_values(["p_adjusted_in_horizon", "p_adjusted_per_half_hour"], ascending=False, kind="stable")
    return df.head(k).reset_index(drop=True)


def adjustment_reasons(tree: xr.DataTree, *, block: int = BLOCK_DRAWS) -> pd.DataFrame | None:
    """Why the heuristic moves agents, over the whole study: one row per direction and reason
    (:func:`adjustment_reason`: "on the congested phase", "relief of phase b (neutral shift)"),
    with ``moves`` (agent-phase half-hours moved, over all draws), ``not_congested`` (of those, on
    a phase within its limits at the planned powers of that draw and half-hour), ``share`` of
    the direction's moves and ``kw`` (their sum).  None for a result that does not record it.
    Read ``block`` draws at a time."""
    h = tree["heuristic"]
    if "adjust_target_phase" not in h:
        return None
    dims = ("draw", "time", "agent", "phase")
    n_ph = len(PHASES)
    moves = np.zeros((2, n_ph, n_ph), np.int64)  # (direction, own phase, phase relieved)
    calm = np.zeros_like(moves)
    kw = np.zeros((2, n_ph, n_ph))
    for c, sl in draw_blocks(h, block):
        target = draw_block(h["adjust_target_phase"], c, sl, dims)
        free = ~draw_block(h["congested"], c, sl, ("draw", "time", "phase")).astype(bool)[:, :, None, :]
        for i, name in enumerate(("adjust_up_kw", "adjust_down_kw")):
            v = draw_block(h[name], c, sl, dims)
            for own in range(n_ph):
                for j in range(n_ph):
                    hit = (v[..., own] > 0) & (target[..., own] == j)
                    moves[i, own, j] += hit.sum()
                    calm[i, own, j] += (hit & free[..., own]).sum()
                    kw[i, own, j] += v[..., own][hit].sum(dtype=np.float64)
    rows = []
    for i, side in enumerate(("up", "down")):
        total = moves[i].sum()
        same = np.eye(n_ph, dtype=bool)
        groups = [("on the congested phase", same)]
        groups += [(f"relief of phase {PHASES[j]} (neutral shift)", ~same & (np.arange(n_ph) == j)[None, :])
                   for j in range(n_ph)]
        for reason, mask in groups:
            m = int(moves[i][mask].sum())
            if m:
                rows.append({"direction": side, "reason": reason, "moves": m,
                             "not_congested": int(calm[i][mask].sum()), "share": m / total,
                             "kw": float(kw[i][mask].sum())})
    return pd.DataFrame(rows, columns=["direction", "reason", "moves", "not_congested", "share", "kw"])




def technology_names() -> dict[str, str]:
    """How the causes of congestion name the technologies (``heuristic/cause_share``'s
    ``technology``): each technology's label (:func:`bayesflex.priors.registry.labels`), and
    the planned positions."""
    return {**labels(), "position": "planned positions"}


_VIOLATION_NAMES = {"undervoltage": "under-voltage", "overvoltage": "over-voltage", "overload": "line overload",
                    "trafo_overload": "transformer overload"}


def causes(tree: xr.DataTree, *, time=None, phase=None, top: int | None = None, agents: int = 3) -> pd.DataFrame:
    """What causes congestion: per half-hour and phase with a congested draw,
    the mean share of the phase's worst violation each technology causes
    (one column per technology the study has; the columns sum to 1), over the
    ``draws`` congested draws with a load flow (a share over 3 draws is
    rougher than one over 300: ``share_mcse_max`` is the largest Monte Carlo
    error of a share in the row), ``relief`` (<= 0) the part of that push
    the components pushing the other way take back (``relief_from`` says
    which: PV under an evening under-voltage, or load on another phase raising
    this phase's voltage through the neutral), the kinds of ``violation``
    and the ``agents`` causing most.  Beside them the probability of
    congestion on the phase with its error.  Rows sorted by that probability,
    highest first, cut to ``top`` rows if given.  See
    :func:`bayesflex.grid.heuristic.cause_shares` for the attribution.
    """
    h = tree["heuristic"]
    if "cause_share" not in h:
        raise ConfigError("this study holds no causes of congestion (written by an older bayesflex); run it again")
    ds = h.to_dataset()[["cause_share", "cause_share_mcse", "cause_relief_share", "cause_agent_share",
                         "cause_draws", "cause_violation_draws"]]
    p = tree["summary"]["p_congested"]
    present = [str(k) for k in ds.technology.values
               if (ds.cause_share.sel(technology=k) > 0).any() or (ds.cause_relief_share.sel(technology=k) < 0).any()]
    ds = _pick(_pick(ds, "phase", phase, "phase"), "time", time, "time")
    n = study_effective_draws(tree)
    names = [str(a) for a in ds.agent.values]
    names_of = technology_names()
    rows = []
    for t in ds.time.values:
        for ph in ds.phase.values:
            at = ds.sel(time=t, phase=ph)
            d = int(at.cause_draws)
            if d == 0:
                continue
            pc = float(p.sel(time=t, phase=ph))
            kinds = at.cause_violation_draws
            a_share = at.cause_agent_share.values
            order = np.argsort(-a_share, kind="stable")[:agents]
            lo, hi = wilson_interval(pc, n)
            row = {"time": pd.Timestamp(t), "phase": str(ph), "p_congested": pc, "p_congested_mcse": float(mcse(pc, n)),
                   "p_congested_lo": float(lo), "p_congested_hi": float(hi), "draws": d,
                   "violation": ", ".join(f"{_VIOLATION_NAMES[str(v)]} {int(kinds.sel(violation=v))}"
                                          for v in kinds.violation.values if int(kinds.sel(violation=v)) > 0)}
            row |= {k: float(at.cause_share.sel(technology=k)) for k in present}
            relief = {k: float(at.cause_relief_share.sel(technology=k)) for k in present}
            row["relief"] = sum(relief.values())
            row["relief_from"] = ", ".join(f"{100 * -v:.0f} % {names_of.get(k, k)}"
                                           for k, v in sorted(relief.items(), key=lambda kv: kv[1]) if v <= -0.005)
            row["share_mcse_max"] = float(at.cause_share_mcse.sel(technology=present).max()) if d > 1 else np.nan
            row["agents"] = ", ".join(f"{names[i]} {100 * a_share[i]:.0f} %" for i in order if a_share[i] > 0)
            rows.append(row)
    cols = ["time", "phase", "p_congested", "p_congested_mcse", "p_congested_lo", "p_congested_hi", "draws", "violation", *present, "relief",
            "relief_from", "share_mcse_max", "agents"]
    df = pd.DataFrame(rows, columns=cols)
    df = df.sort_values(["p_congested", "time"], ascending=[False, True], kind="stable")
    return (df.head(top) if top else df).reset_index(drop=True)


def cause_text(row, *, least: float = 0.01) -> str:
    """One row of :func:`causes` in words: "61 % EV, 27 % heat pumps, 12 % baseload", the
    technologies causing at least ``least`` of the violation, largest first; the two
    technologies pushing the other way most, when they take back at least ``least``, after a
    semicolon."""
    names = technology_names()
    shares = {k: float(row[k]) for k in names if k in row and np.isfinite(row[k])}
    shown = sorted((k for k, v in shares.items() if v >= least), key=lambda k: -shares[k])
    words = [f"{100 * shares[k]:.0f} % {names[k]}" for k in shown]
    rest = sum(v for k, v in shares.items() if k not in shown)
    if rest >= least / 2:
        words.append(f"{100 * rest:.0f} % other")
    text = ", ".join(words)
    if float(row["relief"]) <= -least and row.get("relief_from"):
        text += f"; offset by {', '.join(str(row['relief_from']).split(', ')[:2])}"  # the two largest
    return text
