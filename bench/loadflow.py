"""Load-flow speed: bayesflex against pandapower.runpp_3ph, an OpenDSS solve loop
and power-grid-model, measured in the same run on the IEEE European LV feeder.

Each scenario is the on-peak snapshot with every agent-phase scaled by a
seeded random factor in [0, 3].  bayesflex computes all bus voltages and all
line and transformer currents of every scenario, reduced to violation
statistics (min/max voltage per phase, max line and transformer loading):
``full=False``.  The full-output figure (every bus voltage and line current
returned) is printed too.

    python bench/loadflow.py [--scenarios 100000] [--pandapower 30] [--opendss 300] [--pgm 20000]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
import warnings

import numpy as np

import bayesflex as bf


def scenarios(feeder, n, seed=1):
    f = np.random.default_rng(seed).uniform(0, 3, size=(n, feeder.n_agent, 3))
    return feeder.agent_p_kw * f, feeder.agent_q_kvar * f


def bench_bayesflex(feeder, n, full, repeat=3):
    """Median over ``repeat`` timed calls, after a warm-up call of the same size."""
    p, q = scenarios(feeder, n)
    res = bf.solve_loadflow(feeder, p, q, full=full)  # warm-up: model built and cached, memory touched
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        res = bf.solve_loadflow(feeder, p, q, full=full)
        times.append(time.perf_counter() - t)
    assert res.converged.all()
    return n / float(np.median(times)), res


def bench_pandapower(feeder, n):
    """runpp_3ph on the network as shipped (sn_mva = 100, default options),
    loads written column-wise, so that the time is pandapower's own."""
    import pandapower as pp
    import pandapower.networks as pn

    net = pn.ieee_european_lv_asymmetric("on_peak_566")
    load = net.asymmetric_load
    assert list(load["name"]) == list(feeder.agents)
    p, q = scenarios(feeder, n)
    cols_p, cols_q = [f"p_{ph}_mw" for ph in "abc"], [f"q_{ph}_mvar" for ph in "abc"]
    pp.runpp_3ph(net)  # warm-up (numba compilation)
    v = []
    t = time.perf_counter()
    for k in range(n):
        load[cols_p] = p[k] / 1e3
        load[cols_q] = q[k] / 1e3
        pp.runpp_3ph(net)
        res = net.res_bus_3ph[["vm_a_pu", "vm_b_pu", "vm_c_pu"]].to_numpy()
        assert net.converged and np.isfinite(res).all()
        v.append(res)
    dt = time.perf_counter() - t
    return n / dt, np.array(v)


def bench_opendss(n):
    """OpenDSS (opendssdirect) solving the IEEE European LV feeder's own ``Master.dss`` in a loop:
    each scenario sets every load's kW and kvar, solves (snapshot, to 1e-10 as bayesflex, loads at
    constant power throughout) and reads every node's voltage.  Returns solves/s and, for the sanity
    check, each scenario's lowest node voltage against bayesflex's on the same model."""
    import re
    import tempfile
    from pathlib import Path

    import opendssdirect as dss

    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "ieee_eu_lv" / "opendss"
    feeder = bf.load_feeder(folder / "Master.dss")
    p, q = scenarios(feeder, n)
    p_load, q_load = p.sum(axis=2), q.sum(axis=2)  # single-phase loads: the power of their one phase
    # Master.dss without its load shapes (their CSV files are not shipped) and monitors
    master = (folder / "Master.dss").read_text()
    master = master[:master.index("Redirect LineCode.txt")] + "\n".join(
        [f'Redirect "{folder / name}"' for name in ("LineCode.txt", "Lines.txt", "Transformers.txt")]
        + [re.sub(r"\s+Yearly=\S+", "", line) for line in (folder / "Loads.txt").read_text().splitlines()]
        + ["Set voltagebases=[11 .416]", "Calcvoltagebases"])
    cwd = os.getcwd()  # OpenDSS changes the working directory
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "Master.dss").write_text(master)
        try:
            dss.Text.Command("clear")
            dss.Text.Command(f'compile "{Path(tmp) / "Master.dss"}"')
        finally:
            os.chdir(cwd)
    for cmd in ("set mode=snapshot", "set tolerance=1e-10", "set maxiterations=100",
                "batchedit load..* vminpu=0.5 vmaxpu=1.5"):
        dss.Text.Command(cmd)
    names = [a.lower() for a in feeder.agents]
    assert sorted(names) == sorted(x.lower() for x in dss.Loads.AllNames())
    lowest = np.empty(n)
    t = time.perf_counter()
    for k in range(n):
        for j, name in enumerate(names):
            dss.Loads.Name(name)
            dss.Loads.kW(p_load[k, j])
            dss.Loads.kvar(q_load[k, j])
        dss.Solution.Solve()
        assert dss.Solution.Converged()
        lowest[k] = np.min(dss.Circuit.AllBusMagPu())
    dt = time.perf_counter() - t
    ours = bf.solve_loadflow(feeder, p, q).v_pu.min(axis=(1, 2))
    return n / dt, float(np.abs(lowest - ours).max())


def pgm_model(feeder):
    """The feeder in power-grid-model (asymmetric), its source made stiff (sk=1e10)
    because PGM's source has a positive-sequence impedance and pandapower's has not."""
    from power_grid_model import ComponentType, DatasetType, initialize_array
    from power_grid_model.enum import LoadGenType, WindingType

    from bayesflex.grid.sequence import phase_to_sequence_matrix

    nb, nl = feeder.n_bus, feeder.n_line
    node = initialize_array(DatasetType.input, ComponentType.node, nb)
    node["id"] = np.arange(nb)
    node["u_rated"] = feeder.bus_vn_kv * 1e3
    line = initialize_array(DatasetType.input, ComponentType.line, nl)
    zs = np.array([phase_to_sequence_matrix(z) for z in feeder.line_z_ohm])
    line["id"] = nb + np.arange(nl)
    line["from_node"], line["to_node"] = feeder.line_from, feeder.line_to
    line["from_status"] = line["to_status"] = 1
    line["r1"], line["x1"], line["r0"], line["x0"] = zs[:, 1, 1].real, zs[:, 1, 1].imag, zs[:, 0, 0].real, zs[:, 0, 0].imag
    line["c1"] = line["c0"] = line["tan1"] = line["tan0"] = 0.0
    line["i_n"] = feeder.line_i_max_a
    t = feeder.trafos[0]
    tr = initialize_array(DatasetType.input, ComponentType.transformer, 1)
    tr["id"] = nb + nl
    tr["from_node"], tr["to_node"], tr["from_status"], tr["to_status"] = t.hv_bus, t.lv_bus, 1, 1
    tr["u1"], tr["u2"], tr["sn"] = t.vn_hv_kv * 1e3, t.vn_lv_kv * 1e3, t.sn_kva * 1e3
    tr["uk"], tr["pk"] = t.vk_percent / 100, t.vkr_percent / 100 * t.sn_kva * 1e3
    tr["i0"], tr["p0"] = 0.0, 0.0
    tr["winding_from"], tr["winding_to"], tr["clock"] = WindingType.delta, WindingType.wye_n, 1
    tr["tap_side"], tr["tap_pos"], tr["tap_min"], tr["tap_max"], tr["tap_nom"], tr["tap_size"] = 0, 0, 0, 0, 0, 0
    src = initialize_array(DatasetType.input, ComponentType.source, 1)
    src["id"], src["node"], src["status"] = nb + nl + 1, feeder.source.bus, 1
    src["u_ref"], src["u_ref_angle"], src["sk"], src["rx_ratio"], src["z01_ratio"] = feeder.source.vm_pu, 0, 1e10, 0.1, 1
    load = initialize_array(DatasetType.input, ComponentType.asym_load, feeder.n_agent)
    load["id"] = nb + nl + 2 + np.arange(feeder.n_agent)
    load["node"], load["status"], load["type"] = feeder.agent_bus, 1, LoadGenType.const_power
    load["p_specified"], load["q_specified"] = feeder.agent_p_kw * 1e3, feeder.agent_q_kvar * 1e3
    data = {ComponentType.node: node, ComponentType.line: line, ComponentType.transformer: tr,
            ComponentType.source: src, ComponentType.asym_load: load}
    return data, load["id"]


def bench_pgm(feeder, n):
    from power_grid_model import (
        CalculationMethod,
        ComponentType,
        DatasetType,
        PowerGridModel,
        initialize_array,
    )

    data, load_ids = pgm_model(feeder)
    model = PowerGridModel(data)
    p, q = scenarios(feeder, n)
    upd = initialize_array(DatasetType.update, ComponentType.asym_load, (n, feeder.n_agent))
    upd["id"] = load_ids
    upd["status"] = 1
    upd["p_specified"], upd["q_specified"] = p * 1e3, q * 1e3
    kw = dict(symmetric=False, calculation_method=CalculationMethod.newton_raphson, error_tolerance=1e-10,
              output_component_types={ComponentType.node: ["u_pu"]}, threading=os.cpu_count() or 1)
    model.calculate_power_flow(update_data={ComponentType.asym_load: upd[:50]}, **kw)  # warm-up
    t = time.perf_counter()
    out = model.calculate_power_flow(update_data={ComponentType.asym_load: upd}, **kw)
    dt = time.perf_counter() - t
    return n / dt, out[ComponentType.node]["u_pu"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", type=int, default=100_000, help="bayesflex batch size")
    ap.add_argument("--full", type=int, default=5_000, help="batch size for the full-output figure")
    ap.add_argument("--pandapower", type=int, default=30, help="runpp_3ph calls")
    ap.add_argument("--opendss", type=int, default=300, help="OpenDSS solves")
    ap.add_argument("--pgm", type=int, default=20_000, help="power-grid-model batch size (0 to skip)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    feeder = bf.load_feeder("ieee_eu_lv")
    print(f"feeder: {feeder!r}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"numpy {np.__version__}, bayesflex {bf.__version__}")
    t = time.perf_counter()
    _ = feeder.model
    print(f"model build (assemble, factorise, {feeder.model.n_load_nodes} load nodes): {time.perf_counter() - t:.2f} s")

    rate_red, red = bench_bayesflex(feeder, args.scenarios, full=False)
    rate_full, full = bench_bayesflex(feeder, args.full, full=True)
    rate_pp, v_pp = bench_pandapower(feeder, args.pandapower)
    err = np.abs(full.v_pu[: args.pandapower] - v_pp).max()
    rate_dss, dss_err = bench_opendss(args.opendss)
    rows = [
        ("bayesflex, reductions (full=False)", args.scenarios, rate_red),
        ("bayesflex, all voltages + currents (full=True)", args.full, rate_full),
        ("pandapower runpp_3ph loop", args.pandapower, rate_pp),
        ("OpenDSS solve loop (opendssdirect, to 1e-10)", args.opendss, rate_dss),
    ]
    if args.pgm:
        try:
            rate_pgm, u_pgm = bench_pgm(feeder, args.pgm)
            rows.append(("power-grid-model asym batch (NR, all threads)", args.pgm, rate_pgm))
            # like for like: PGM's Dyn transformer has no zero-sequence magnetising
            # branch (pandapower's version of this feeder has mag0_percent = 100)
            same = feeder.replace(trafos=[dataclasses.replace(t, mag0_percent=np.inf) for t in feeder.trafos])
            k = min(args.pgm, 200)
            p, q = scenarios(feeder, k)
            pgm_err = np.abs(bf.solve_loadflow(same, p, q).v_pu - u_pgm[:k]).max()
        except ImportError:
            rate_pgm = None
            print("power-grid-model not installed (pip install power-grid-model): skipped")
    print()
    print(f"{'solver':<50}{'scenarios':>10}{'solves/s':>12}")
    for name, n, rate in rows:
        print(f"{name:<50}{n:>10}{rate:>12,.0f}")
    print()
    print(f"ratio bayesflex (reductions) / pandapower: {rate_red / rate_pp:,.0f}x")
    print(f"ratio bayesflex (full)       / pandapower: {rate_full / rate_pp:,.0f}x")
    print(f"ratio bayesflex (reductions) / OpenDSS: {rate_red / rate_dss:,.0f}x")
    if args.pgm and rate_pgm:
        print(f"ratio bayesflex (reductions) / power-grid-model: {rate_red / rate_pgm:,.1f}x")
        print(f"sanity: max |dV| vs power-grid-model {pgm_err:.1e} pu on the same network "
              "(transformer without zero-sequence magnetising branch, as PGM models it)")
    print(f"sanity: lowest voltage vs OpenDSS on its own Master.dss, {args.opendss} timed scenarios: "
          f"max |dV| {dss_err:.1e} pu")
    print(f"sanity: max |dV| vs pandapower on the {args.pandapower} timed scenarios: {err:.1e} pu "
          "(pandapower as shipped stops early: sn_mva = 100, see tests/test_loadflow_pandapower.py)")
    mem = red.v_min_pu.nbytes + red.v_max_pu.nbytes + red.loading_max_pu.nbytes + red.trafo_loading_pu.nbytes
    print(f"reduction results for {args.scenarios} scenarios: {mem / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
