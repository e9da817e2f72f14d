"""The causes of congestion (heuristic.cause_shares, heuristic/cause_*): shares of the worst
violation by technology and agent, where the answer is known without the sensitivities.

Known answers: with one agent on a phase, every technology of that agent moves the
violated quantity through the same sensitivity, so a technology's share is its power
over the power of everything pushing the same way, whatever the sensitivity is; with
phases not coupled (no mutual impedance), a phase's violation is caused by its own
agents only.  PV can only raise a voltage and load only lower it (one house at the end
of a line from an ideal source), so an over-voltage there is PV's alone.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import bayesflex as bf
from bayesflex.analysis.query import cause_text, causes
from bayesflex.cli.main import main, print_summary
from bayesflex.grid.feeder import Source
from bayesflex.grid.heuristic import Limits, cause_shares
from bayesflex.priors.registry import components
from bayesflex.study import engine
from bayesflex.study.engine import CHUNK_DRAWS, StudyOptions, run_study
from bayesflex.study.files import open_study
from bayesflex.study.schema import causes as cause_names


# ----------------------------------------------------------------------------
# small feeders and prior sets
# ----------------------------------------------------------------------------
def _star(houses: dict[str, str], z_ohm: complex, mutual: float = 0.0) -> bf.Feeder:
    """An ideal source and one service line per house; ``houses`` maps a name to its phase.
    ``mutual`` couples the phases (a fraction of the self impedance); 0 decouples them."""
    z = np.full((3, 3), mutual * z_ohm)
    np.fill_diagonal(z, z_ohm)
    names = tuple(houses)
    n = len(names)
    ph = np.array([[p == c for c in "abc"] for p in houses.values()])
    feeder = bf.Feeder.build(
        name="star", origin="tests/test_causes.py", f_hz=50.0, buses=("src", *names), bus_vn_kv=[0.416] * (n + 1),
        lines=tuple(f"to_{h}" for h in names), line_from=[0] * n, line_to=list(range(1, n + 1)),
        line_z_ohm=[z] * n, line_y_s=np.zeros((n, 3, 3)), line_i_max_a=[1e4] * n, trafos=(),
        source=Source(bus=0, vm_pu=1.0, va_degree=0.0, z1_ohm=0j, z2_ohm=1e-6 + 0j, z0_ohm=1e-6 + 0j),
        agents=names, agent_bus=list(range(1, n + 1)), agent_phases=ph,
        agent_p_kw=ph * 1.0, agent_q_kvar=ph * 0.3,
    )
    bf.validate_feeder(feeder)
    return feeder


def _priors(directory, name: str, techs: dict[str, float]) -> str:
    """The shipped default priors with only baseload and ``techs`` (technology -> penetration)."""
    from bayesflex.priors import load_priors

    text = load_priors("default").text
    keep = []
    for part in re.split(r"(?m)^(?=\[)", text):
        head = re.match(r"\[(\w+)\]", part)
        if head is None or head.group(1) in ("horizon", "site", "baseload"):
            keep.append(part)
        elif head.group(1) in techs:
            part, n = re.subn(r"(?m)^penetration = [0-9.]+", f"penetration = {techs[head.group(1)]}", part)
            assert n == 1, f"no penetration in [{head.group(1)}]"
            keep.append(part)
    path = directory / f"{name}.toml"
    path.write_text("".join(keep))
    return str(path)


def _draws(study: xr.DataTree, name: str) -> np.ndarray:
    """A component, summed over phases: (draw, time, agent) kW."""
    return study["prior_predictive"][name].values[0].astype(float).sum(axis=-1)


# ----------------------------------------------------------------------------
# the kernel
# ----------------------------------------------------------------------------
def test_kernel_shares_what_pushes_and_shows_what_pushes_back():
    """Under-voltage (sign -1), load lowers the voltage (S < 0): c = -S P."""
    s = np.array([[-0.01, -0.02]])  # (1 scenario, 2 agents), pu per kW
    p = np.zeros((1, 3, 2))  # (scenario, technology: base, pv, ev; agent)
    p[0, :, 0] = [1.0, -2.0, 3.0]
    p[0, 0, 1] = 1.0
    push, relief = cause_shares(s, np.array([-1]), p)
    # pushing: base a0 0.01, ev a0 0.03, base a1 0.02 (total 0.06); pv a0 takes back 0.02
    np.testing.assert_allclose(push[0], [[1 / 6, 1 / 3], [0, 0], [1 / 2, 0]], rtol=1e-12)
    np.testing.assert_allclose(relief[0], [[0, 0], [-1 / 3, 0], [0, 0]], rtol=1e-12)
    assert push.sum() == pytest.approx(1.0)
    # over-voltage at the same state: PV is the only cause, the loads take back
    push, relief = cause_shares(s, np.array([1]), p)
    np.testing.assert_allclose(push[0], [[0, 0], [1, 0], [0, 0]])
    # PV pushes 0.02; the loads take back 0.01, 0.03 and 0.02 of it: more than all of it
    np.testing.assert_allclose(relief[0], [[-1 / 2, -1], [0, 0], [-3 / 2, 0]])


def test_kernel_leaves_nothing_to_attribute_as_nan():
    s = np.array([[-0.01], [-0.01], [np.nan], [0.0]])
    p = np.ones((4, 2, 1))
    push, relief = cause_shares(s, np.array([0, -1, -1, -1]), p)
    assert np.isnan(push[0]).all()  # nothing violated
    np.testing.assert_allclose(push[1, :, 0], [0.5, 0.5])
    assert np.isnan(push[2]).all() and np.isnan(relief[2]).all()  # no sensitivity
    assert np.isnan(push[3]).all()  # nothing pushes
    # an agent without power needs no sensitivity
    push, _ = cause_shares(np.array([[-0.01, np.nan]]), np.array([-1]), np.array([[[2.0, 0.0]]]))
    np.testing.assert_allclose(push[0], [[1.0, 0.0]])


# ----------------------------------------------------------------------------
# hand-made draws: only EVs can break phase a, only baseload phase b
# ----------------------------------------------------------------------------
def test_ev_only_undervoltage_is_the_evs_and_each_phase_its_own():
    fd = _star({"ev_home": "a", "plain": "b", "quiet": "c"}, 1.0 + 0.3j)  # phases not coupled
    n_d, n_t = 8, 2
    comp = {k: np.zeros((1, n_d, n_t, 3, 3), np.float32) for k in cause_names()[:-1]}
    charging = (np.arange(n_d) % 2 == 0)[:, None] & np.array([True, False])  # (draw, time)
    comp["ev"][0, :, :, 0, 0] = np.where(charging, 7.0, 0.0)  # 7 kW on a 1 ohm service: ~0.86 pu
    comp["baseload"][0, :, :, 0, 0] = 0.3  # alone: ~0.995 pu
    heavy = (np.arange(n_d) % 4 == 1)[:, None] & np.ones(n_t, bool)
    comp["baseload"][0, :, :, 1, 1] = np.where(heavy, 9.0, 0.5)
    comp["baseload"][0, :, :, 2, 2] = 0.4
    p = sum(comp.values())
    q = 0.3 * comp["baseload"]
    dims = ("chain", "draw", "time", "agent", "phase")
    ds = xr.Dataset({"p_kw": (dims, p), "q_kvar": (dims, q), "p_lb_kw": (dims, p), "p_ub_kw": (dims, p),
                     **{components()[k]: (dims, v) for k, v in comp.items()}},
                    coords={"agent": list(fd.agents)})
    out = engine._physics(fd, ds, StudyOptions(headroom=False))
    cong = out["congested"]  # (draw, time, phase)
    np.testing.assert_array_equal(cong[..., 0], charging)  # the set-up: EVs and only EVs break phase a
    np.testing.assert_array_equal(cong[..., 1], heavy)
    assert not cong[..., 2].any()
    n = out["cause_draws"]
    np.testing.assert_array_equal(n, cong.sum(axis=0))
    k = {t: i for i, t in enumerate(cause_names())}
    share = out["cause_share_sum"] / np.maximum(n, 1)[..., None]  # (time, phase, technology)
    # phase a, first half-hour: one agent, one sensitivity: EV 7 of the 7.3 kW that push
    np.testing.assert_allclose(share[0, 0, k["ev"]], 7.0 / 7.3, rtol=1e-6)
    np.testing.assert_allclose(share[0, 0, k["baseload"]], 0.3 / 7.3, rtol=1e-6)
    assert share[0, 0].sum() == pytest.approx(1.0)
    # phase b: baseload alone, the plain house alone
    np.testing.assert_allclose(share[:, 1, k["baseload"]], 1.0)
    agent = out["cause_agent_share_sum"] / np.maximum(n, 1)[:, None, :]
    np.testing.assert_allclose(agent[0, :, 0], [1, 0, 0])
    np.testing.assert_allclose(agent[:, :, 1], [[0, 1, 0]] * n_t)
    # decoupled phases (but for the source's 1e-6 ohm): nothing pushes back
    np.testing.assert_allclose(out["cause_relief_sum"], 0.0, atol=1e-6)
    assert (out["cause_violation_draws"][..., 0] == n).all()  # all under-voltage


# ----------------------------------------------------------------------------
# whole studies
# ----------------------------------------------------------------------------
def test_pv_overvoltage_is_pvs_alone_and_baseload_pushes_back(tmp_path):
    fd = _star({"roof": "a"}, 2.0 + 0.6j)
    pri = _priors(tmp_path, "pv_only", {"pv": 1.0})
    tree = run_study(fd, pri, draws=40, seed=3, start="2026-01-14 11:00", periods=4, headroom=False,
                     limits=Limits(v_min_pu=0.5, v_max_pu=1.01))
    h = tree["heuristic"]
    n = h["cause_draws"].sel(phase="a").values
    assert n.sum() >= 10, "the set-up needs over-voltages"
    assert (h["cause_violation_draws"].sel(phase="a", violation="overvoltage").values == n).all()
    on = n > 0
    share = h["cause_share"].sel(phase="a").values[on]
    np.testing.assert_allclose(share[:, cause_names().index("pv")], 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.delete(share, cause_names().index("pv"), axis=1), 0.0)
    # baseload takes back its kW over PV's: from the draws themselves
    base, pv = _draws(tree, "p_base_kw")[..., 0], _draws(tree, "p_pv_kw")[..., 0]
    cong = h["congested"].values[0, :, :, 0]
    expect = np.array([np.mean(-base[cong[:, t], t] / -pv[cong[:, t], t]) for t in np.flatnonzero(on)])
    got = h["cause_relief_share"].sel(phase="a", technology="baseload").values[on]
    np.testing.assert_allclose(got, expect, rtol=1e-5)
    assert np.isnan(h["cause_share"].sel(phase=["b", "c"]).values).all()  # nothing there


@pytest.fixture(scope="module")
def ev_dir(tmp_path_factory):
    """One house with an EV and baseload on a long service line, written to its folder."""
    tmp = tmp_path_factory.mktemp("ev")
    fd = _star({"house": "a"}, 1.0 + 0.3j)
    pri = _priors(tmp, "ev_only", {"ev": 1.0})
    run_study(fd, pri, draws=CHUNK_DRAWS + 10, seed=5, start="2026-01-14 16:00", periods=6,
              headroom=False, limits=Limits(v_min_pu=0.93), out=tmp / "study")
    return tmp / "study"


@pytest.fixture(scope="module")
def ev_study(ev_dir):
    return open_study(ev_dir)


def test_ev_and_baseload_share_an_undervoltage_by_their_power(ev_study):
    """One house: each technology's share is its kW over the house's, draw by draw."""
    h = ev_study["heuristic"]
    n = h["cause_draws"].sel(phase="a").values
    assert n.sum() >= 10, "the set-up needs under-voltages"
    base, ev = _draws(ev_study, "p_base_kw")[..., 0], _draws(ev_study, "p_ev_kw")[..., 0]
    cong = h["congested"].values[0, :, :, 0]
    np.testing.assert_array_equal(n, cong.sum(axis=0))
    on = np.flatnonzero(n)
    expect = np.array([np.mean(ev[cong[:, t], t] / (ev + base)[cong[:, t], t]) for t in on])
    got = h["cause_share"].sel(phase="a", technology="ev").values[on]
    np.testing.assert_allclose(got, expect, rtol=1e-5)
    assert (got > 0).all()  # every congested draw here has its EV charging
    total = h["cause_share"].sel(phase="a").values[on].sum(axis=1)
    np.testing.assert_allclose(total, 1.0, rtol=1e-12)
    np.testing.assert_allclose(h["cause_agent_share"].sel(phase="a", agent="house").values[on], 1.0)
    # the Monte Carlo error of a mean share: its sd over the draws / sqrt(n)
    t = on[np.argmax(n[on])]
    x = (ev / (ev + base))[cong[:, t], t]
    se = float(h["cause_share_mcse"].sel(phase="a", technology="ev").values[t])
    assert se == pytest.approx(x.std(ddof=1) / np.sqrt(len(x)), rel=1e-4)


def test_a_planned_position_is_a_cause_of_its_own(tmp_path):
    """With positions, an agent's power is its baseload (and PV) plus its position: what the
    components do not explain is the position's, and it shares an under-voltage by its kW."""
    fd = _star({"house": "a"}, 1.0 + 0.3j)
    times = pd.date_range("2026-01-14 18:00", periods=2, freq="30min")
    pos = pd.DataFrame({"agent": "house", "time": times, "p_kw": [7.0, 0.0], "p_lb_kw": 0.0, "p_ub_kw": 7.0})
    tree = run_study(fd, _priors(tmp_path, "base_only", {}), draws=20, seed=2, positions=pos, headroom=False)
    h = tree["heuristic"]
    n = h["cause_draws"].sel(phase="a").values
    cong = h["congested"].values[0, :, :, 0]
    assert n[0] == 20 and n[1] == cong[:, 1].sum() < 20  # 7 kW breaks the limit; the baseload alone rarely
    base = _draws(tree, "p_base_kw")[:, 0, 0]
    got = h["cause_share"].sel(phase="a", technology="position").values[0]
    assert got == pytest.approx(np.mean(7.0 / (7.0 + base)), rel=1e-5)
    assert float(h["cause_share"].sel(phase="a").isel(time=0).sum()) == pytest.approx(1.0)


def _coupled_study(jobs: int, backend: str | None = None):
    fd = _star({"h1": "a", "h2": "a", "h3": "b", "h4": "c"}, 0.5 + 0.15j, mutual=0.3)
    return run_study(fd, "default", draws=CHUNK_DRAWS + 10, seed=9, start="2026-01-14 16:30", periods=4,
                     headroom=False, limits=Limits(v_min_pu=0.97), jobs=jobs, backend=backend)


@pytest.fixture(scope="module")
def coupled():
    return _coupled_study(1)


def test_shares_sum_to_one_where_drawn_and_nan_elsewhere(coupled):
    h = coupled["heuristic"]
    n = h["cause_draws"].values
    cong = (h["congested"] & coupled["sample_stats"]["converged"]).sum(("chain", "draw")).transpose("time", "phase")
    np.testing.assert_array_equal(n, cong.values)
    assert n.sum() >= 20 and (n == 0).any(), "the set-up needs congested and calm half-hour phases"
    on = n > 0
    np.testing.assert_allclose(h["cause_share"].sum("technology").values[on], 1.0, rtol=1e-12)
    agent = h["cause_agent_share"].transpose("time", "phase", "agent").values
    np.testing.assert_allclose(agent[on].sum(axis=-1), 1.0, rtol=1e-12)
    assert np.isnan(h["cause_share"].values[~on]).all() and np.isnan(agent[~on]).all()
    assert (h["cause_share"].values[on] >= 0).all() and (h["cause_relief_share"].values[on] <= 0).all()
    np.testing.assert_array_equal(h["cause_violation_draws"].sum("violation").values, n)
    # coupled phases: load on one phase moves another's voltage, and some of it pushes back
    assert (h["cause_relief_share"].values[on] < 0).any()


@pytest.mark.parametrize("backend", [
    "threading",  # two chunks finishing in either order, summed in chunk order
    pytest.param("loky", marks=pytest.mark.slow),  # worker processes, as a study runs (~20 s to start them)
])
def test_parallel_equals_serial_for_the_causes(coupled, backend):
    par = _coupled_study(2, backend)
    keep = [k for k in coupled["heuristic"].data_vars if k.startswith("cause_")]
    assert len(keep) == 6
    xr.testing.assert_identical(par["heuristic"].to_dataset()[keep], coupled["heuristic"].to_dataset()[keep])


# ----------------------------------------------------------------------------
# what a user reads
# ----------------------------------------------------------------------------
def test_cause_text_reads_largest_first():
    row = pd.Series({"baseload": 0.12, "ev": 0.61, "heat_pump": 0.27, "pv": 0.0, "relief": -0.05,
                     "relief_from": "5 % PV"})
    assert cause_text(row) == "61 % EV, 27 % heat pumps, 12 % baseload; offset by 5 % PV"


def test_query_causes_prints_the_files_shares_and_names_what_is_allowed(ev_study, ev_dir, capsys):
    d = str(ev_dir)
    assert main(["query", d, "causes", "--format", "csv", "--top", "0"]) == 0
    df = pd.read_csv(io.StringIO(capsys.readouterr().out))
    h = ev_study["heuristic"]
    assert len(df) == int((h["cause_draws"] > 0).sum())
    for _, r in df.iterrows():
        at = h.sel(time=pd.Timestamp(r.time).tz_convert("UTC").tz_localize(None), phase=r.phase)  # printed local
        assert r.draws == int(at["cause_draws"])
        assert r.ev == pytest.approx(float(at["cause_share"].sel(technology="ev")))
        assert r.agents.startswith("house 100 %")
    assert "heat_pump" not in df.columns  # a technology the study does not have
    assert df.p_congested.is_monotonic_decreasing
    assert main(["query", d, "causes", "--phase", "a", "--time", str(df.time.iloc[0])]) == 0
    table = capsys.readouterr().out
    assert "ev" in table and "baseload" in table and len(table.strip().splitlines()) == 2
    assert main(["query", d, "causes", "--time", "2030-01-01"]) == 2
    assert "not a half-hour of the study" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["query", d, "causes", "--phase", "d"])
    assert "choose from 'a', 'b', 'c'" in capsys.readouterr().err
    buf = io.StringIO()
    print_summary(ev_study, buf)
    assert re.search(r"what causes congestion.*\n  \w{3} \d\d:\d\d GMT, phase a \([\d.]+ % \[[\d.]+, [\d.]+\]\): \d+ % EV, "
                     r"\d+ % baseload \(\d+ draws?\)",
                     buf.getvalue())


def test_an_older_result_without_causes_gets_a_clear_error(ev_study):
    tree = ev_study.copy()
    tree["heuristic"] = tree["heuristic"].to_dataset().drop_vars(
        [k for k in tree["heuristic"].data_vars if k.startswith("cause_")])
    with pytest.raises(bf.BayesflexError, match="no causes of congestion"):
        causes(tree)
    buf = io.StringIO()
    print_summary(tree, buf)  # the rest of the summary still prints
    assert "what causes congestion" not in buf.getvalue()


def test_report_has_a_causes_section(ev_study):
    from bayesflex.analysis.report import build_report

    text = build_report(ev_study, created_at="x")
    assert "<h2>What causes the congestion</h2>" in text
    assert re.search(r"<td>\d+ % EV, \d+ % baseload</td>", text)
