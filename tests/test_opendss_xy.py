"""Bus coordinates of OpenDSS feeders: ENWL's XY_Position.csv beside Master.dss, or the script's
Buscoords file; read as safely as the script, bad rows named by file and line."""

from __future__ import annotations

import csv
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import bayesflex as bf
from bayesflex.errors import FeederError
from bayesflex.io import opendss as _opendss

from .conftest import fifo_nobody_opens, shared_path

SMALL = ("enwl", "networks", "network_5", "Feeder_1")  # 131 buses, loads in 0.2 s


def _csv_rows(path: Path) -> list[tuple[str, float, float]]:
    with path.open(newline="") as f:
        return [(r["Node"], float(r["X"]), float(r["Y"])) for r in csv.DictReader(f)]


@pytest.fixture
def folder(tmp_path) -> Path:
    dst = tmp_path / "model" / "Feeder_1"
    shutil.copytree(shared_path(*SMALL), dst)
    return dst


def _write_xy(folder: Path, text: str) -> None:
    (folder / "XY_Position.csv").write_text(text)


def test_enwl_feeder_gets_the_coordinates_of_its_csv():
    """Every row of the file, read here with the csv module, is the coordinate of the bus it names;
    the only bus without one is the transformer's HV side (ENWL's file does not place it)."""
    root = shared_path(*SMALL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f = bf.load_feeder(root / "Master.dss")
    assert not [w for w in caught if "XY_Position" in str(w.message)]  # (other warnings: line ratings)
    rows = _csv_rows(root / "XY_Position.csv")
    assert f.bus_xy is not None and len(rows) == f.n_bus - 1
    pos = {b: i for i, b in enumerate(f.buses)}
    for node, x, y in rows:
        assert tuple(f.bus_xy[pos[node.lower()]]) == (x, y), node
    missing = [f.buses[i] for i in np.flatnonzero(np.isnan(f.bus_xy).any(axis=1))]
    assert missing == [f.buses[f.source.bus]] == ["sourcebus"]


def test_a_large_enwl_feeder_as_well():
    root = shared_path("enwl", "networks", "network_1", "Feeder_1")
    f = bf.load_feeder(root)
    pos = {b: i for i, b in enumerate(f.buses)}
    rows = _csv_rows(root / "XY_Position.csv")
    for node, x, y in rows[:: len(rows) // 7]:  # a few, spread along the file
        np.testing.assert_array_equal(f.bus_xy[pos[node]], [x, y])


@pytest.mark.parametrize("line, words", [
    ("3,abc,4", "must be numbers"),
    ("3,nan,4", "finite"),
    ("3,1e999,4", "finite"),
    ("3,1", "Node,X,Y"),
    ("3,1,2,4", "Node,X,Y"),
    (",1,2", "Node,X,Y"),
    ("2,1,2", "placed again (first on line 3)"),
])
def test_a_bad_row_is_named_by_file_and_line(folder, line, words):
    rows = (folder / "XY_Position.csv").read_text().splitlines()
    _write_xy(folder, "\n".join(rows[:5] + [line] + rows[5:]) + "\n")
    with pytest.raises(FeederError) as e:
        bf.load_feeder(folder)
    assert "XY_Position.csv:6" in str(e.value) and words in str(e.value), str(e.value)


@pytest.mark.parametrize("text, words", [("Bus,East,North\n1,2,3\n", "header"), ("", "empty"),
                                         (b"Node,X,Y\n1,\xff,3\n", "UTF-8")])
def test_a_file_that_is_not_enwl_coordinates_is_an_error(folder, text, words):
    p = folder / "XY_Position.csv"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(FeederError, match=words):
        bf.load_feeder(folder)


def test_buses_without_coordinates_are_nan_and_unknown_rows_a_warning(folder):
    rows = (folder / "XY_Position.csv").read_text().splitlines()
    kept = [r for r in rows if not r.startswith(("7,", "8,"))]
    _write_xy(folder, "\n".join(kept + ["no_such_bus,1,2"]) + "\n")
    with pytest.warns(UserWarning, match="1 row.*no_such_bus"):
        f = bf.load_feeder(folder)
    missing = sorted(f.buses[i] for i in np.flatnonzero(np.isnan(f.bus_xy).any(axis=1)))
    assert missing == ["7", "8", "sourcebus"]


def test_the_file_must_be_a_regular_file_inside_the_folder(folder, tmp_path):
    outside = tmp_path / "outside.csv"
    outside.write_text("Node,X,Y\n1,0,0\n")
    (folder / "XY_Position.csv").unlink()
    (folder / "XY_Position.csv").symlink_to(outside)
    with pytest.raises(FeederError, match="XY_Position.csv.*outside the feeder"):
        bf.load_feeder(folder)
    (folder / "XY_Position.csv").unlink()
    # opened without blocking, then refused: no hang
    with fifo_nobody_opens(folder / "XY_Position.csv"), \
            pytest.raises(FeederError, match="XY_Position.csv.*not a regular file"):
        bf.load_feeder(folder)


def test_the_file_is_size_limited_and_counted_in_the_checksum(folder, monkeypatch):
    before = bf.load_feeder(folder).sha256
    _write_xy(folder, (folder / "XY_Position.csv").read_text() + "\n")  # one more (blank) line: same buses
    assert bf.load_feeder(folder).sha256 != before
    monkeypatch.setattr(_opendss, "_MAX_XY_BYTES", 1000)
    with pytest.raises(FeederError, match="XY_Position.csv.*larger than"):
        bf.load_feeder(folder)


def test_buscoords_of_the_script_come_first(folder):
    """A model that places its buses itself (OpenDSS's Buscoords: bus, x, y) keeps its own."""
    (folder / "coords.txt").write_text("1, 10, 20\n2, 11.5, -3\n")
    with (folder / "Master.dss").open("a") as f:
        f.write("\nBuscoords coords.txt\n")
    g = bf.load_feeder(folder)
    pos = {b: i for i, b in enumerate(g.buses)}
    np.testing.assert_array_equal(g.bus_xy[[pos["1"], pos["2"]]], [[10, 20], [11.5, -3]])
    assert np.isnan(g.bus_xy).any(axis=1).sum() == g.n_bus - 2
