"""Maps and the HTML report: reproducible, self-contained, and looked at in a real browser."""

from __future__ import annotations

import html
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from scipy.stats import binomtest

import bayesflex as bf
from bayesflex.analysis import maps
from bayesflex.analysis.report import CREATED_PREFIX, REPORT_FILE, build_report
from bayesflex.analysis.summary import summarise
from bayesflex.cli.main import main, print_summary
from bayesflex.study.files import open_study
from bayesflex.study.schema import RESULT_FILE

from .conftest import REPO

ARTIFACTS = Path(os.environ.get("BAYESFLEX_ARTIFACTS", REPO / "test-artifacts"))
RUN = ["run", "--draws", "20", "--periods", "6", "--start", "2026-01-14T17:00", "--seed", "9", "--jobs", "1"]


@pytest.fixture(scope="module")
def tight_feeder(tmp_path_factory) -> Path:
    """The default feeder with a strict 1.02 pu lower limit, so that a small
    study has violations on every phase for the maps and the report to show
    (households' baseload bounded by their fuses keep a real feeder above 0.96 pu)."""
    text = (REPO / "feeders" / "ieee_eu_lv.toml").read_text()
    assert text.count("v_min_pu = 0.94") == 1
    path = tmp_path_factory.mktemp("feeder") / "ieee_eu_lv_tight.toml"
    path.write_text(text.replace("v_min_pu = 0.94", "v_min_pu = 1.02").replace('name = "ieee_eu_lv"',
                                                                                  'name = "ieee_eu_lv_tight"'))
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory, tight_feeder) -> Path:
    out = tmp_path_factory.mktemp("study")
    assert main([*RUN, "--feeder", str(tight_feeder), "--out", str(out)]) == 0
    tree = open_study(out)
    assert tree.attrs["v_min_pu"] == 1.02
    assert (tree["network"]["p_undervoltage"].max(("time", "bus")) > 0).all()  # every phase has something to map
    assert float(tree["heuristic"]["adjust_down_kw"].sum() + tree["heuristic"]["adjust_up_kw"].sum()) > 0
    return out


@pytest.fixture(scope="module")
def tree(study) -> xr.DataTree:
    """The study, opened once (3 s each time on a busy machine); tests change copies only."""
    return open_study(study)


def _without_created(text: str) -> str:
    return re.sub(re.escape(CREATED_PREFIX) + r"[^<]*", CREATED_PREFIX, text)


def test_run_writes_a_self_contained_report(study):
    text = (study / REPORT_FILE).read_text()
    # every figure embedded, nothing fetched from outside
    assert text.count('src="data:image/png;base64,') == text.count("<img ") >= 6
    assert not re.search(r'(src|href)="(https?:|//)', text)
    for words in ("Headline", "Diagnostics", "Inputs and reproduction", "bayesflex run --draws 20",
                  "priors file as used", "load flows without a solution", "cannot resolve",
                  "exceeds the agent&#x27;s service capacity (must be 0)</td><td class=\"num\">0<",
                  "Not checked: the horizon holds no whole weekday"):
        assert words in text, words
    tree = open_study(study)
    assert tree.attrs["feeder_sha256"] in text and tree.attrs["priors_sha256"] in text


def test_report_states_what_the_numbers_rest_on(study):
    """The IEEE model as pandapower ships it: ext_grid at 1.05 pu of 11 kV, an 800 kVA 11/0.416 kV
    transformer, 905 cables with ratings; a January study prints GMT (= UTC)."""
    text = (study / REPORT_FILE).read_text()
    basis = text[text.index("What these numbers rest on"):text.index("Where and when")]
    for words in ("times in Europe/London (GMT)", "1.050 pu of 11 kV", "800 kVA, 11/0.416 kV",
                  "all 905 lines have the rating their model gives", "joint: every agent turns up"):
        assert words in basis, words
    assert "half-hours from Wednesday 14 January 2026 17:00 GMT" in text
    assert "Headroom: joint" in text[text.index("Portfolio flexibility"):]  # where flexibility is shown


def test_report_rebuilt_from_the_result_file_is_identical_but_for_its_timestamp(study, tmp_path, capsys):
    original = (study / REPORT_FILE).read_text()
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (RESULT_FILE, RESULT_FILE + ".sha256"):  # the result file alone, with its checksum
        shutil.copy(study / name, copy / name)
    assert main(["report", str(copy)]) == 0
    rebuilt = (copy / REPORT_FILE).read_text()
    assert rebuilt != original  # the creation line differs ...
    assert _without_created(rebuilt) == _without_created(original)  # ... and nothing else


def test_the_same_command_twice_gives_identical_numbers(study, tight_feeder, tmp_path):
    assert main([*RUN, "--feeder", str(tight_feeder), "--out", str(tmp_path)]) == 0
    a, b = open_study(study), open_study(tmp_path)
    for group in a.children:
        xr.testing.assert_identical(a[group].to_dataset(), b[group].to_dataset())
    same = {k for k in a.attrs if a.attrs[k] == b.attrs[k]}
    assert set(a.attrs) - same <= {"created_at", "command"}


def test_the_file_opens_with_xarray_and_arviz_without_bayesflex(study, tmp_path):
    """Read by xarray and ArviZ alone, the file's numbers hold together: each agent's power is the
    sum of its technologies', the summary's probability of congestion is the share of draws the
    per-draw flags call congested, and no bus is under-voltage in more draws than have their lowest
    voltage below the limit (strict 1.02 pu feeder).  And the file is netCDF-4 as its reference
    library reads it: xarray through netCDF-C (the netCDF4 engine, which also writes the summary
    groups) gives the tree h5netcdf gives (the large arrays are streamed through it), read in a
    process of its own as a user's would be (this one holds the file open through h5py; see
    ARCHITECTURE.md)."""
    pickled = tmp_path / "netcdf_c.pickle"
    code = (
        "import sys; sys.modules['bayesflex'] = None\n"
        "import json, pickle\n"
        "import arviz as az, numpy as np, xarray as xr\n"
        f"path = {str(study / RESULT_FILE)!r}\n"
        f"open({str(pickled)!r}, 'wb').write(pickle.dumps(xr.open_datatree(path, engine='netcdf4').load()))\n"
        "t = xr.open_datatree(path, engine='h5netcdf')\n"
        "idata = az.from_netcdf(path)\n"
        "pp = idata.prior_predictive\n"
        "parts = sum(pp[k] for k in pp.data_vars if k.startswith('p_') and k not in ('p_kw', 'p_lb_kw', 'p_ub_kw'))\n"
        "cong = t['heuristic']['congested'].mean(('chain', 'draw'))\n"
        "under = (t['network']['v_min_pu'] < t.attrs['v_min_pu'] + 1e-6).mean(('chain', 'draw'))\n"
        "print(json.dumps({'groups': sorted(idata.groups()), 'parts': sorted(k for k in pp.data_vars),\n"
        "                  'p_kw_minus_parts': float(abs(pp['p_kw'] - parts).max()),\n"
        "                  'p_congested_minus_share': float(abs(t['summary']['p_congested'] - cong).max()),\n"
        "                  'p_congested_max': float(t['summary']['p_congested'].max()),\n"
        "                  'p_under_bus_minus_any': float((t['network']['p_undervoltage'].max('bus') - under).max()),\n"
        "                  'p_under_any_max': float(under.max())}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert "prior_predictive" in got["groups"] and {"p_base_kw", "p_ev_kw", "p_pv_kw"} <= set(got["parts"])
    assert got["p_kw_minus_parts"] < 1e-4  # float32 sums of kW
    assert got["p_congested_minus_share"] < 1e-12 and got["p_congested_max"] > 0
    assert got["p_under_bus_minus_any"] <= 1e-12 and got["p_under_any_max"] > 0
    with xr.open_datatree(study / RESULT_FILE, engine="h5netcdf") as h:
        _same_tree(pickle.loads(pickled.read_bytes()), h.load())


def _same_tree(ours: xr.DataTree, reference: xr.DataTree) -> None:
    """Identical, and alike in what ``identical`` leaves out: the order of groups, variables and
    coordinates, dtypes, and the Python types of attribute values."""
    xr.testing.assert_identical(ours, reference)
    assert [n.path for n in ours.subtree] == [n.path for n in reference.subtree]
    for node in reference.subtree:
        a, b = ours[node.path].dataset, node.dataset
        assert list(a.variables) == list(b.variables) and list(a.coords) == list(b.coords), node.path
        for k, v in b.variables.items():
            assert a[k].dtype == v.dtype, (node.path, k)
            assert {n: type(x) for n, x in a[k].attrs.items()} == {n: type(x) for n, x in v.attrs.items()}
        assert {n: type(x) for n, x in a.attrs.items()} == {n: type(x) for n, x in b.attrs.items()}


def test_a_study_opens_as_xarray_reads_it_and_its_large_arrays_when_indexed(study, monkeypatch):
    """open_study reads the file through h5py (about five times faster than xarray's h5netcdf
    reader, which looks each HDF5 object up again by its path each time it asks anything of it):
    the tree is the one xarray reads; arrays above LAZY_ELEMENTS stay in the file until indexed."""
    from bayesflex.study import files
    from bayesflex.study.files import StoredArray

    reference = xr.open_datatree(study / RESULT_FILE, engine="h5netcdf")
    _same_tree(open_study(study), reference)
    monkeypatch.setattr(files, "LAZY_ELEMENTS", 1000)
    lazy = open_study(study)
    p_kw = lazy["prior_predictive"]["p_kw"].variable
    assert p_kw.size > 1000 and not p_kw._in_memory
    assert isinstance(p_kw._data.array, StoredArray)
    _same_tree(lazy, reference)


def test_the_reader_reads_what_xarray_writes_as_xarray_reads_it(tmp_path):
    """A file of every kind of netCDF-4 content xarray writes: nested groups seeing their parent's
    dimensions, a dimension without coordinates, a scalar, strings, times, booleans, missing
    values, a coordinate that is not an index, attributes of every type."""
    from bayesflex.study.files import read_tree

    t = pd.date_range("2026-01-14", periods=3, freq="30min")
    root = xr.Dataset({"scalar": ((), 2.5, {"units": "kW"})}, coords={"agent": ["A", "BB"]},
                      attrs={"text": "é", "n": 3, "x": 0.5, "values": [1, 2], "words": ["a", "b"], "flag": 1})
    child = xr.Dataset({"p_kw": (("time", "agent"), [[1.0, np.nan], [2, 3], [4, 5]], {"long_name": "power"}),
                        "ok": (("time",), [True, False, True]), "label": (("agent",), ["x", "yz"]),
                        "count": (("sample",), np.arange(4, dtype=np.int16))},
                       coords={"time": t, "agent_bus": ("agent", ["1", "22"])})
    grandchild = xr.Dataset({"v": (("agent", "time"), np.ones((2, 3), np.float32))})
    path = tmp_path / "every.nc"
    xr.DataTree.from_dict({"/": root, "/a": child, "/a/b": grandchild}).to_netcdf(path, engine="h5netcdf")
    _same_tree(read_tree(path), xr.open_datatree(path, engine="h5netcdf"))


def test_a_lazily_read_tree_pickles_from_anywhere_closes_and_unusual_files_are_xarray_s(tmp_path, monkeypatch):
    """What read_tree leaves to xarray it reads as xarray does: an unlimited dimension with a shorter
    variable (xarray pads it). A tree whose arrays stay in the file pickles by the file's absolute
    path (unpickled in another folder, it reads the same numbers), and closing it closes the file
    (the file can be written again)."""
    import pickle

    import h5netcdf

    from bayesflex.study import files
    from bayesflex.study.files import read_tree

    unlimited = tmp_path / "unlimited.nc"
    with h5netcdf.File(unlimited, "w") as f:
        f.dimensions["t"] = None
        f.resize_dimension("t", 4)
        f.create_variable("a", ("t",), float)[:] = np.arange(4.0)
        b = f.create_variable("b", ("t",), float, fillvalue=-9.0)
        b._h5ds.resize((2,))
        b._h5ds[:] = [7.0, 8.0]
    _same_tree(read_tree(unlimited), xr.open_datatree(unlimited, engine="h5netcdf"))

    monkeypatch.setattr(files, "LAZY_ELEMENTS", 10)
    path = tmp_path / "lazy.nc"
    xr.Dataset({"f": (("x",), np.arange(50.0))}).to_netcdf(path, engine="h5netcdf")
    monkeypatch.chdir(tmp_path)
    tree = read_tree(Path("lazy.nc"))
    sent = pickle.dumps(tree)
    monkeypatch.chdir("/")
    assert float(pickle.loads(sent)["f"].sum()) == float(np.arange(50.0).sum())
    tree.close()
    xr.Dataset({"g": 1.0}).to_netcdf(path, engine="h5netcdf")  # a file still open here could not be truncated


#: the maps' scale, written out by hand: (label, lowest probability in the bin), last bin first
SCALE_BY_HAND = (("≥ 20 %", 0.20), ("5–20 %", 0.05), ("1–5 %", 0.01), ("< 1 %", 1e-300), ("0 draws", 0.0))


def _bin_by_hand(p: float) -> str:
    return next(label for label, lowest in SCALE_BY_HAND if p >= lowest)


def _colour_by_hand(p: float) -> str:
    return maps.P_COLOURS[maps.P_LABELS.index(_bin_by_hand(p))]


def _with_network(tree: xr.DataTree, **arrays) -> xr.DataTree:
    """A copy of the tree with some of its network probabilities replaced."""
    t = tree.copy()
    net = tree["network"].to_dataset()
    for k, v in arrays.items():
        net[k] = (net[k].dims, np.asarray(v, float))
    t["network"] = xr.DataTree(net)
    return t


def test_the_probability_scale_has_fixed_bins_in_percent():
    p = [0.0, np.nan, 1e-6, 0.001, 0.0099, 0.01, 0.0499, 0.05, 5 / 100, 0.1999, 0.2, 0.999, 1.0]
    assert [maps.P_LABELS[i] for i in maps.probability_bin(p)] == [_bin_by_hand(np.nan_to_num(v)) for v in p]
    cmap = maps.P_CMAP  # the figures' colours are the same bins, also for 0.02 + 0.03 = 0.049999999999999996
    assert [to_hex(cmap(maps.P_NORM(v))) for v in [*np.nan_to_num(p), 0.02 + 0.03]] == \
        [_colour_by_hand(v) for v in np.nan_to_num(p)] + [_colour_by_hand(0.05)]
    assert maps.P_LABELS[maps.probability_bin(0.02 + 0.03)] == "5–20 %"
    assert maps.P_LABELS == ("0 draws", "< 1 %", "1–5 %", "5–20 %", "≥ 20 %")
    assert len(set(maps.P_COLOURS)) == 5  # "0 draws" is not the colour of "< 1 %"
    assert maps.scale_title("under-voltage") == "P(under-voltage) per half-hour, %"


def test_maps_have_a_panel_per_phase_one_overload_panel_and_a_legend_in_percent(tree, tmp_path):
    fig = maps.feeder_map(tree)
    assert isinstance(fig, Figure)
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["phase a", "phase b", "phase c", "lines"]
    (legend,) = fig.legends
    assert legend.get_title().get_text() == "P(violation) per half-hour, %"
    assert [t.get_text() for t in legend.get_texts()] == list(maps.P_LABELS)
    assert "1.02" in fig._suptitle.get_text() and "1.1" in fig._suptitle.get_text()
    one = maps.feeder_map(tree, phase="b", time=str(tree["summary"].time.values[2]), kind="undervoltage")
    assert len(one.axes) == 1 and one.legends[0].get_title().get_text() == "P(under-voltage) per half-hour, %"
    for phase in (None, "a"):  # line overload has no phase: one panel, whatever the phase asked
        over = maps.feeder_map(tree, kind="overload", phase=phase)
        assert [ax.get_title().split(":")[0] for ax in over.axes] == ["lines"]
        assert over.legends[0].get_title().get_text() == "P(overload) per half-hour, %"
    for name, f in (("map.png", fig), ("map.svg", one), ("heat.png", maps.congestion_heatmap(tree)),
                    ("trafo.png", maps.trafo_fan_chart(tree)), ("volt.png", maps.voltage_fan_chart(tree)),
                    ("adj.png", maps.adjustment_figure(tree)), ("flex.png", maps.flexibility_figure(tree))):
        f.savefig(tmp_path / name)
        assert (tmp_path / name).stat().st_size > 5_000, name
    with pytest.raises(bf.ConfigError, match="not a half-hour of the study"):
        maps.feeder_map(tree, time="2031-01-01 00:00")
    with pytest.raises(bf.ConfigError, match="allowed: a, b, c"):
        maps.feeder_map(tree, phase="d")


def _coloured(ax):
    """The one collection of an axes whose colours come from probabilities."""
    (c,) = [c for c in ax.collections if c.get_array() is not None]
    c.update_scalarmappable()
    return c


def test_map_colours_follow_the_probabilities(tree):
    """The buses drawn in colour on a phase are exactly those with a non-zero
    probability there, each in the colour of its bin."""
    fig = maps.feeder_map(tree, kind="undervoltage", phase="a")
    p = tree["network"]["p_undervoltage"].sel(phase="a").max("time").values
    c = _coloured(fig.axes[0])
    got = np.asarray(c.get_array())
    assert (p > 0).sum() >= 3
    np.testing.assert_allclose(np.sort(got), np.sort(p[p > 0]))
    assert [to_hex(rgba) for rgba in c.get_facecolors()] == [_colour_by_hand(v) for v in got]


def test_the_scale_is_the_same_whatever_the_study_so_a_rare_event_looks_rare(tree):
    """A 1-in-1,000 bus is drawn in the "< 1 %" colour, not the darkest one, and a probability
    keeps its colour between a quiet study and one thirty times worse (the old scale stretched
    to each study's maximum)."""
    pu = tree["network"]["p_undervoltage"].values
    rare = np.zeros_like(pu)
    rare[0, 5, 0] = 0.001
    quiet, worse = _with_network(tree, p_undervoltage=rare), _with_network(tree, p_undervoltage=np.minimum(30 * pu, 1))
    c = _coloured(maps.feeder_map(quiet, kind="undervoltage", phase="a").axes[0])
    assert [to_hex(rgba) for rgba in c.get_facecolors()] == [_colour_by_hand(0.001)] == ["#fed976"]
    a = _coloured(maps.feeder_map(tree, kind="undervoltage").axes[0])
    b = _coloured(maps.feeder_map(worse, kind="undervoltage").axes[0])
    v = np.array([0.001, 0.02, 0.07, 0.3, 1.0])
    np.testing.assert_array_equal(a.to_rgba(v), b.to_rgba(v))
    heat = maps.congestion_heatmap(worse, phase="a").axes[0].images[0]
    assert [to_hex(heat.to_rgba(x)) for x in [0.0, *v]] == [_colour_by_hand(x) for x in [0.0, *v]]


def test_the_buses_most_at_risk_are_named_with_their_interval(tree):
    n = tree.attrs["draws"]
    for ph in ("a", "b", "c"):
        p = tree["network"]["p_undervoltage"].sel(phase=ph).max("time")
        texts = [t.get_text() for t in maps.feeder_map(tree, kind="undervoltage", phase=ph).axes[0].texts]
        assert 1 <= len(texts) <= 4, texts
        named = {}
        for t in texts:
            m = re.fullmatch(r"bus (\S+)\n(\d+(?:\.\d+)?) % \[(\d+(?:\.\d+)?), (\d+(?:\.\d+)?)\]", t)
            assert m, t
            named[m[1]] = [float(v) for v in m.groups()[1:]]
        top = float(p.max())
        assert any(float(p.sel(bus=b)) == top for b in named)  # the likeliest bus is among them
        for b, (pct, lo, hi) in named.items():
            q = float(p.sel(bus=b))
            assert q >= top / 2 and pct == pytest.approx(100 * q, abs=0.051) and lo < pct < hi
            assert (lo, hi) == pytest.approx([100 * v for v in binomtest(round(q * n), n).proportion_ci(
                method="wilson")], rel=0.03)


def test_buses_without_coordinates_are_left_out_with_a_note(tree):
    p = tree["network"]["p_undervoltage"].sel(phase="a").max("time")
    gone = [str(b) for b in p.bus.values[p.values > 0][:2]]
    cd = tree["constant_data"].to_dataset()
    cd["bus_x"] = cd["bus_x"].where(~cd.bus.isin(gone))
    t = tree.copy()
    t["constant_data"] = xr.DataTree(cd)
    fig = maps.feeder_map(t, kind="undervoltage", phase="a")
    assert f"2 of {p.sizes['bus']} buses have no coordinates and are not drawn ({', '.join(gone)})" in \
        fig._suptitle.get_text()
    assert len(_coloured(fig.axes[0]).get_array()) == int((p > 0).sum()) - 2


def test_a_feeder_without_coordinates_gets_a_clear_error_and_the_report_says_so(study):
    tree = open_study(study)
    cd = tree["constant_data"].to_dataset()
    cd["bus_x"] = cd["bus_x"] * np.nan
    tree["constant_data"] = xr.DataTree(cd)
    with pytest.raises(bf.ConfigError, match="has no bus coordinates"):
        maps.feeder_map(tree)
    assert "No map: feeder" in build_report(tree)


def test_map_command_writes_png_and_svg(study, tmp_path, capsys):
    assert main(["map", str(study), "--phase", "a", "--out", str(tmp_path / "a.svg")]) == 0
    assert (tmp_path / "a.svg").read_text().lstrip().startswith("<?xml")
    assert main(["map", str(study), "--heatmap", "--out", str(tmp_path / "h.png")]) == 0
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["map", str(study), "--out", str(tmp_path / "m.pdf")]) == 2
    assert ".png or .svg" in capsys.readouterr().err


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium not found (Debian package 'chromium'; .ci/run installs it)")


def test_report_renders_in_headless_chromium(study):
    """As a person sees it: every figure loads with a non-zero size, the console
    stays clean, and a screenshot is kept in test-artifacts/."""
    exe = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    errors = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((study / REPORT_FILE).resolve().as_uri())
            page.wait_for_load_state("load")
            figs = page.eval_on_selector_all(
                "figure", "fs => fs.map(f => { const i = f.querySelector('img'); const r = i.getBoundingClientRect();"
                " return [f.id, i.complete, i.naturalWidth, i.naturalHeight, r.width, r.height]; })")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    ids = [f[0] for f in figs]
    for expected in ("fig-map-worst", "fig-heatmap", "fig-voltage-fan", "fig-trafo-fan", "fig-adjustments",
                     "fig-flexibility"):
        assert expected in ids
    for fid, complete, nw, nh, w, h in figs:
        assert complete and nw > 100 and nh > 100 and w > 100 and h > 50, fid
    assert (ARTIFACTS / "report.png").stat().st_size > 50_000


def _renamed_bus(tree: xr.DataTree, old: str, new: str) -> xr.DataTree:
    """A copy of the tree in which bus ``old`` is called ``new`` everywhere it is named."""
    t = tree.copy()
    for g in ("constant_data", "network"):
        ds = t[g].to_dataset()
        ds = ds.assign_coords(bus=[new if str(b) == old else str(b) for b in ds.bus.values])
        for k in ("agent_bus", "line_from_bus", "line_to_bus"):
            if k in ds:
                ds[k] = ds[k].copy(data=np.array([new if str(b) == old else str(b) for b in ds[k].values], object))
        t[g] = xr.DataTree(ds)
    return t


def test_interactive_map_data_says_what_the_tree_holds(tree):
    """Every placed bus and line once; the likeliest bus-phase's hover text gives its probability,
    its Wilson interval and its worst half-hour; a bus lists the agents the feeder connects there."""
    from bayesflex.analysis.interactive import map_data

    d = map_data(tree)
    cd, n = tree["constant_data"], tree.attrs["draws"]
    assert sorted(b[0] for b in d["buses"]) == sorted(str(b) for b in cd.bus.values)
    assert len(d["lines"]) == cd.sizes["line"]
    pu = tree["network"]["p_undervoltage"]
    at = pu.argmax(...)
    bus, ph, t = str(pu.bus[at["bus"]].item()), int(at["phase"]), pd.Timestamp(pu.time[at["time"]].item())
    row = next(r for r in d["buses"] if r[0] == bus)
    q = float(pu.max())
    lo, hi = binomtest(round(q * n), n).proportion_ci(method="wilson")
    text = d["strings"][row[9 + ph]]
    assert text.startswith(f"phase {'abc'[ph]}: under-voltage {100 * q:.1f} % [") and f"at {t:%a %H:%M}" in text
    assert re.search(r"\[([\d.]+), ([\d.]+)\]", text).groups() == (f"{100 * lo:.2g}" if lo < 0.01 else
                                                                  f"{100 * lo:.1f}", f"{100 * hi:.1f}")
    agent, where = str(cd.agent.values[0]), str(cd["agent_bus"].values[0])
    row = next(r for r in d["buses"] if r[0] == where)
    assert d["strings"][row[12]].startswith("agents here: ") and agent in d["strings"][row[12]]


def test_interactive_map_keeps_hostile_names_as_text(tree):
    import json

    from bayesflex.analysis.interactive import interactive_map_html

    evil = "</script><script>document.title='pwned'</script>&amp;<!--"
    fragment = interactive_map_html(_renamed_bus(tree, str(tree["constant_data"]["agent_bus"].values[0]), evil))
    assert fragment.count("</script>") == 2 and "<!--" not in fragment  # the two script elements' own ends
    data = json.loads(re.search(r'<script type="application/json" class="bf-data">(.*?)</script>', fragment,
                                re.DOTALL).group(1))
    assert evil in [b[0] for b in data["buses"]]


def test_interactive_map_hovers_in_headless_chromium(study, tree, tmp_path):
    """In the report as written by ``bayesflex run``: a real mouse hover on the likeliest bus
    shows its name and its probability with an interval; choosing phase c colours exactly the
    buses with a probability on phase c; a bus named like markup stays text; no console error."""
    exe = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    from bayesflex.analysis.interactive import interactive_map_html

    p = maps.voltage_probability(tree).max("time")
    evil = "<img src=x onerror=\"document.title='pwned'\">"
    errors = []
    likeliest = ".bf-imap svg > g:nth-of-type(4) circle"  # the top layer, drawn in order of probability
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: (errors.append(f"dialog {d.message}"), d.dismiss()))
            page.goto((study / REPORT_FILE).resolve().as_uri())
            page.wait_for_load_state("load")
            name = page.locator(likeliest).last.get_attribute("data-name")
            page.locator(likeliest).last.hover(timeout=5000)
            tip = page.inner_text(".bf-tip")
            page.locator(".bf-imap").screenshot(path=str(ARTIFACTS / "interactive_map.png"))
            page.check(".bf-imap input[value='2']")
            fills = page.eval_on_selector_all(".bf-imap circle",
                                              "cs => cs.map(c => [c.dataset.name, c.getAttribute('fill')])")
            hostile = tmp_path / "hostile.html"  # the same map with the likeliest bus renamed
            hostile.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><title>ok</title></head><body>"
                               + interactive_map_html(_renamed_bus(tree, name, evil)) + "</body></html>")
            page.goto(hostile.as_uri())
            page.wait_for_load_state("load")
            page.locator(likeliest).last.hover(timeout=5000)
            evil_tip, title = page.inner_text(".bf-tip"), page.title()
        finally:
            browser.close()
    assert errors == []
    assert float(p.sel(bus=name).max()) == float(p.max())
    assert tip.startswith(f"bus {name}\n"), tip
    assert re.search(r"\d % \[\d+(\.\d+)?, \d+(\.\d+)?\] at \w{3} \d\d:\d\d", tip), tip
    on_c = {str(b) for b in p.bus.values[p.sel(phase="c").values > 0]}
    assert on_c and {b for b, f in fills if f != maps.P_COLOURS[0]} == on_c
    assert evil_tip.startswith(f"bus {evil}\n") and title == "ok"


@pytest.mark.parametrize("block", [1, 3, 7, 500])
def test_agent_reductions_read_blocks_of_draws_and_equal_the_whole_arrays(study, block):
    """top_agents and the adjustment figure's data read a block of draws at a time; whatever
    the block (one draw, an uneven last block, every draw at once) they equal the same
    statistics computed here on the whole arrays."""
    from bayesflex.analysis.query import top_agents

    tree = open_study(study)
    h = tree["heuristic"]
    up = h["adjust_up_kw"].values[0].astype(np.float64).sum(axis=-1)  # (draw, time, agent)
    dn = h["adjust_down_kw"].values[0].astype(np.float64).sum(axis=-1)
    first = (h["sensitivity_rank"].values[0] == 1).any(axis=-1)
    moved = (up > 0) | (dn > 0)
    assert moved.any() and first.any()
    count = moved.sum(axis=(0, 1))
    agents = [str(a) for a in h.agent.values]
    df = top_agents(tree, len(agents), block=block)
    assert sorted(df.agent) == sorted(agents)
    assert (np.diff(df.p_adjusted_in_horizon) <= 0).all()
    df = df.set_index("agent").loc[agents]
    np.testing.assert_array_equal(df.p_adjusted_in_horizon, moved.any(axis=1).mean(axis=0))
    np.testing.assert_array_equal(df.p_adjusted_per_half_hour, moved.mean(axis=(0, 1)))
    np.testing.assert_array_equal(df.p_ranked_first, first.mean(axis=(0, 1)))
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(df.up_kw_when_adjusted, np.where(count > 0, up.sum(axis=(0, 1)) / count, 0),
                                   rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(df.down_kw_when_adjusted, np.where(count > 0, dn.sum(axis=(0, 1)) / count, 0),
                                   rtol=1e-6, atol=1e-9)
    some = [a for a in reversed(agents) if count[agents.index(a)] > 0][:4] + [agents[0]]  # not in feeder order
    got = maps._adjustments_when_adjusted(h, some, block=block)
    for a, g in zip(some, got):
        j = agents.index(a)
        np.testing.assert_allclose(g, (up[:, :, j] - dn[:, :, j])[moved[:, :, j]], rtol=1e-6, atol=1e-6)
    with pytest.raises(bf.ConfigError, match="not in the study"):
        maps._adjustments_when_adjusted(h, ["no-such-agent"])


# ----------------------------------------------------------------------------
# the summary: one model of the headline, printed and shown in the report
# ----------------------------------------------------------------------------
def _wilson(k: int, n: int) -> tuple[float, float]:
    ci = binomtest(int(k), n).proportion_ci(confidence_level=0.95, method="wilson")
    return ci.low, ci.high


def test_the_summary_is_the_per_draw_counts_and_the_printout_and_report_show_the_same(study, tree):
    """The headline against counts made here from the per-draw variables (scipy's Wilson interval),
    and every probability of it in the same words in ``bayesflex run``'s printout and report.html."""
    sm = summarise(tree)
    h = tree["heuristic"]
    cong = h["congested"].values[0].astype(bool)  # (draw, time, phase)
    n = cong.shape[0]
    assert sm.study.draws == n == sm.study.effective_draws  # a prior study: every draw counts
    any_t = cong.any(axis=2)  # (draw, time)
    unres = any_t & ~h["resolved"].values[0].astype(bool)
    for i, ph in enumerate("abc"):
        k = cong[:, :, i].any(axis=1).sum()
        assert sm.congested[ph].p == k / n
        assert (sm.congested[ph].lo, sm.congested[ph].hi) == pytest.approx(_wilson(k, n), abs=1e-9)
    assert sm.congested_any.p == any_t.any(axis=1).sum() / n and sm.unresolved.p == unres.any(axis=1).sum() / n
    assert (sm.checks.congested_cases, sm.checks.unresolved_cases) == (any_t.sum(), unres.sum())
    assert sm.checks.no_solution == (~tree["sample_stats"]["converged"].values).sum()
    per_time = np.sort(any_t.mean(axis=0))[::-1]
    np.testing.assert_array_equal([r.probability.p for r in sm.worst_half_hours], per_time[per_time > 0][:5])
    moved = ((h["adjust_up_kw"].values[0] > 0) | (h["adjust_down_kw"].values[0] > 0)).any(axis=(1, 3)).mean(axis=0)
    p_agent = dict(zip(map(str, h.agent.values), moved))
    assert sm.agents and all(r.adjusted.p == p_agent[r.agent] for r in sm.agents)
    listed = {r.agent for r in sm.agents}
    assert min(r.adjusted.p for r in sm.agents) >= max(v for a, v in p_agent.items() if a not in listed)

    buf = io.StringIO()
    print_summary(tree, buf)
    printed, report = buf.getvalue(), (study / REPORT_FILE).read_text()
    both = [*sm.congested.values(), sm.congested_any, sm.unresolved, *(r.probability for r in sm.worst_half_hours),
            *(r.adjusted for r in sm.agents[:5]), *(r.probability for r in sm.causes[:3])]
    for e in both:
        assert e.text in printed and html.escape(e.text) in report, e.text


# ----------------------------------------------------------------------------
# why agents are moved on phases that are not congested (issue 15)
# ----------------------------------------------------------------------------
PHASES = ("a", "b", "c")


def _calm_turn_ups(tree):
    """(draw, time, agent, phase) of every turn-up on a phase within its limits at the planned powers."""
    h = tree["heuristic"]
    up = h["adjust_up_kw"].values[0]
    calm = ~h["congested"].values[0].astype(bool)[:, :, None, :]
    return np.nonzero((up > 0) & calm)


def test_report_explains_moves_on_phases_that_are_not_congested(study):
    tree = open_study(study)
    h = tree["heuristic"]
    calm_up = _calm_turn_ups(tree)[0].size
    assert calm_up, "the tight study turns agents up on phases that are not congested"
    text = (study / REPORT_FILE).read_text()
    assert 'id="adjustment-reasons"' in text and "shifts the neutral point" in text
    rows = re.findall(r"<tr><td>(turn-up|turn-down)</td><td>([^<]+)</td><td class=\"num\">(\d+)</td>"
                      r"<td class=\"num\">(\d+)</td>", text)
    got = {(side, reason): (int(m), int(calm)) for side, reason, m, calm in rows}
    up, dn = h["adjust_up_kw"].values[0] > 0, h["adjust_down_kw"].values[0] > 0
    # the counts as the arrays give them: every move, and the turn-ups on calm phases
    assert sum(m for (side, _), (m, _) in got.items() if side == "turn-up") == up.sum()
    assert sum(m for (side, _), (m, _) in got.items() if side == "turn-down") == dn.sum()
    assert sum(c for (side, _), (_, c) in got.items() if side == "turn-up") == calm_up
    # a turn-up on a calm phase relieves another phase: never "on the congested phase" for a phase
    # that stays calm in every round
    assert all(r.startswith("relief of phase") for (side, r), (m, c) in got.items() if side == "turn-up" and c == m)


def test_query_adjustment_gives_the_reason_hides_unmoved_rows_and_honours_top(study, capsys):
    tree = open_study(study)
    h = tree["heuristic"]
    cong = h["congested"].values[0].astype(bool)
    up = h["adjust_up_kw"].values[0]
    # rows with a move, per agent: (phase, half-hour, direction) where some draw moves it
    moved = sum((h[k] > 0).any(("chain", "draw")).sum(("time", "phase")) for k in ("adjust_up_kw", "adjust_down_kw"))
    d, t, a, ph = _calm_turn_ups(tree)
    # a turn-up made in one draw only, where one phase alone is congested, by an agent moved more than
    # once: the reason must name that phase
    once = [i for i in range(d.size) if (up[:, t[i], a[i], ph[i]] > 0).sum() == 1 and cong[d[i], t[i]].sum() == 1
            and int(moved[a[i]]) > 1]
    assert once, "the tight study has a turn-up for a single congested phase"
    i = once[0]
    agent = str(h.agent.values[a[i]])
    assert main(["query", str(study), "adjustment", "--agent", agent.lower(), "--top", "0", "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    df = pd.read_csv(io.StringIO(out))
    cells = int(moved.sel(agent=agent))
    n_rows = 2 * h.sizes["time"] * int(tree["constant_data"]["agent_phases"].sel(agent=agent).sum())
    assert len(df) == cells > 1 and (df.p_adjusted > 0).all() and (df.agent == agent).all()
    assert f"{n_rows - len(df)} of {n_rows} rows hidden" in err
    assert df.p_adjusted.is_monotonic_decreasing
    utc = pd.to_datetime(df.time, utc=True).dt.tz_localize(None)  # CSV times are local, with their offset
    row = df[(df.phase == PHASES[ph[i]]) & (utc == pd.Timestamp(h.time.values[t[i]]))
             & (df.direction == "up")]
    congested = PHASES[int(np.flatnonzero(cong[d[i], t[i]])[0])]
    assert list(row.reason) == [f"relief of phase {congested} (neutral shift)"]
    assert main(["query", str(study), "adjustment", "--agent", agent, "--top", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:2] == ["agent", "phase"] and "reason" in lines[0] and len(lines) == 3
    assert f"{len(df) - 1} more rows with a move not shown (--top 0 shows them all)" in lines[2]


def test_adjustment_quantiles_are_the_quantiles_of_the_agent_draws(tree):
    """adjustment_quantiles against numpy on the per-draw turn-up and turn-down of the agent moved
    most often: its quantiles over the 20 draws, the share of draws that move it (with the Wilson
    interval of that count, as scipy computes it) and the mean kW of those that do."""
    from bayesflex.analysis.query import adjustment_quantiles

    h = tree["heuristic"]
    down = h["adjust_down_kw"].values[0].astype(float)  # (draw, time, agent, phase)
    a = int(np.argmax((down > 0).sum(axis=(0, 1, 3))))
    agent = str(h.agent.values[a])
    ph = int(np.flatnonzero(tree["constant_data"]["agent_phases"].values[a])[0])  # single-phase houses
    df = adjustment_quantiles(tree, agent, q=(0.5, 0.9, 0.95))
    assert (df.agent == agent).all() and set(df.phase) == {PHASES[ph]} and len(df) == 2 * h.sizes["time"]
    n = down.shape[0]
    for side in ("up", "down"):
        x = h[f"adjust_{side}_kw"].values[0, :, :, a, ph].astype(float)  # (draw, time)
        rows = df[df.direction == side].sort_values("time")
        for q in (0.5, 0.9, 0.95):
            np.testing.assert_allclose(rows[f"q{q:g}_kw"], np.quantile(x, q, axis=0), rtol=1e-6, atol=1e-9)
        k = (x > 0).sum(axis=0)
        np.testing.assert_array_equal(rows.p_adjusted, k / n)
        np.testing.assert_allclose(rows.kw_when_adjusted, np.where(k > 0, (x * (x > 0)).sum(axis=0)
                                                                   / np.maximum(k, 1), 0.0), rtol=1e-6)
        for (_, r), kk in zip(rows.iterrows(), k, strict=True):
            ci = binomtest(int(kk), n).proportion_ci(method="wilson")
            assert (r.p_adjusted_lo, r.p_adjusted_hi) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert (down[:, :, a, ph] > 0).sum() >= 3  # the quantiles above are of an agent that moves


def test_congestion_by_phase_counts_the_congested_draws(tree):
    """The probability of congestion by phase (what `query congestion --by phase` prints), on a study
    congested on every phase: each row is the count of draws whose per-draw flag says congested,
    over the draws, with that count's Wilson interval."""
    from bayesflex.analysis.query import congestion_probability

    df = congestion_probability(tree, by="phase")
    cong = tree["heuristic"]["congested"]
    n = cong.sizes["draw"]
    counts = cong.sum(("chain", "draw")).to_series()
    assert len(df) == counts.size and (counts > 0).groupby(level="phase").any().all()
    for _, r in df.iterrows():
        k = int(counts.loc[(pd.Timestamp(r.time), r.phase)])
        ci = binomtest(k, n).proportion_ci(method="wilson")
        assert (r.probability, r.lo, r.hi) == pytest.approx((k / n, ci.low, ci.high), abs=1e-6)
