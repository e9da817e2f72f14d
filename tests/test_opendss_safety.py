"""OpenDSS models are programs: a model received from a third party must not run a shell
command, write or read files outside its folder, or move the working directory.

Each attack is appended to a copy of a real ENWL feeder (network_1/Feeder_1); after each
case the working directory is unchanged and no file appeared anywhere under the test's
folder (the feeder, a sibling "outside" folder the attacks aim at, and the cwd).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import struct
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from bayesflex.errors import FeederError
from bayesflex.io import opendss as _opendss
from bayesflex.io.opendss import _resolve_word, feeder_from_opendss

from .conftest import fifo_nobody_opens, shared_path

FEEDER = ("enwl", "networks", "network_1", "Feeder_1")
SECRET = "TOPSECRET-do-not-echo-7f3a"


@dataclasses.dataclass
class Case:
    root: Path  # tmp_path
    folder: Path  # the feeder copy
    outside: Path  # a folder outside the feeder's tree (attack target)
    cwd: Path  # the working directory during the test

    def listing(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*"))

    def append(self, *lines: str, file: str = "Master.dss") -> int:
        """Append lines to a file of the model; return the line number of the first."""
        path = self.folder / file
        text = path.read_text()
        if not text.endswith("\n"):
            text += "\n"
        first = len(text.splitlines()) + 1
        path.write_text(text + "\n".join(lines) + "\n")
        return first


@pytest.fixture(scope="module")
def reference() -> object:
    return feeder_from_opendss(shared_path(*FEEDER), name="Feeder_1")


@pytest.fixture
def case(tmp_path, monkeypatch) -> Case:
    folder = tmp_path / "model" / "Feeder_1"
    shutil.copytree(shared_path(*FEEDER), folder)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(f"{SECRET}\nNew Line.x bus1=1 bus2=2\n")
    (outside / "floats.bin").write_bytes(struct.pack("<4f", 111, 222, 333, 444))  # read as values if opened
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return Case(tmp_path, folder, outside, cwd)


def _load(case: Case):
    """Load the copy; the cwd must be unchanged and no file created, whatever happens."""
    before = case.listing()
    try:
        return feeder_from_opendss(case.folder, name="Feeder_1")
    finally:
        assert Path(os.getcwd()) == case.cwd
        assert case.listing() == before


def _refused(case: Case, line: int, *words: str, file: str = "Master.dss") -> str:
    with pytest.raises(FeederError) as e:
        _load(case)
    msg = str(e.value)
    assert f"{file}:{line}" in msg, msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    assert SECRET not in msg
    return msg


def _same(a, b) -> None:
    for f in dataclasses.fields(a):
        if f.name in ("sha256", "origin"):
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y)
        else:
            assert x == y, f.name


def test_a_model_reached_through_a_linked_folder_loads_as_itself(case, reference):
    """A data folder mounted or linked elsewhere (/data -> /mnt/data) is still one folder tree."""
    link = case.root / "linked"
    link.symlink_to(case.folder.parent)
    _same(feeder_from_opendss(link / "Feeder_1", name="Feeder_1"), reference)


def test_set_editor_and_fileedit_run_no_shell(case):
    marker = case.outside / "pwned"
    line = case.append(f"Set Editor=\"/bin/sh -c 'touch {marker}'\"", "FileEdit Master.dss")
    _refused(case, line, "editor", "not allowed")
    assert not marker.exists()


def test_fileedit_alone_is_refused(case):
    line = case.append("FileEdit Master.dss")
    _refused(case, line, "fileedit", "editor")


def test_save_circuit_writes_nothing(case):
    line = case.append(f"Save Circuit Dir={case.outside / 'saved'}")
    _refused(case, line, "save", "writes files")
    assert not (case.outside / "saved").exists()


def test_solve_and_export_are_skipped_and_write_nothing(case, reference):
    case.append("Solve", f"Export Voltages {case.outside / 'x.csv'}")
    _same(_load(case), reference)
    assert not (case.outside / "x.csv").exists()


@pytest.mark.parametrize("command", ["Set DataPath={outside}", "CD {outside}", "Set casename=x datapath={outside}"])
def test_working_directory_cannot_be_moved(case, command):
    line = case.append(command.format(outside=case.outside))
    _refused(case, line)


@pytest.mark.parametrize("word, full", [("Redir", "redirect"), ("Sho", "show"), ("Expo", "export"), ("Solv", "solve"),
                                        ("FileEd", "fileedit"), ("Sa", "save"), ("c", "compile"), ("~", "~")])
def test_words_resolve_as_the_engine_does(word, full):
    import opendssdirect as dss

    names = [dss.Executive.Command(i).lower() for i in range(1, dss.Executive.NumCommands() + 1)]
    assert _resolve_word(word, names) == full


@pytest.mark.parametrize("command, outcome", [
    ("Redir {secret}", "outside"),
    ("Sho voltages", None),
    ("Expo voltages {outside}/v.csv", None),
    ("Solv", None),
    ("FileEd Master.dss", "fileedit"),
    ("Sa circuit dir={outside}/s", "save"),
    ("Se editor=/bin/true", "editor"),  # "se" is "select": skipped, never executed
    ("Set Edi=/bin/true", "editor"),
    ("Set da={outside}", "datapath"),
])
def test_abbreviations_are_judged_as_what_the_engine_would_run(case, reference, command, outcome):
    line = case.append(command.format(secret=case.outside / "secret.txt", outside=case.outside))
    if outcome is None or command.startswith("Se "):
        _same(_load(case), reference)
    else:
        _refused(case, line, outcome)
    assert sorted(p.name for p in case.outside.iterdir()) == ["floats.bin", "secret.txt"]


def test_redirect_to_an_absolute_file_is_refused(case):
    line = case.append("Redirect /etc/hostname")
    msg = _refused(case, line, "/etc/hostname", "outside")
    hostname = Path("/etc/hostname").read_text().strip() if Path("/etc/hostname").exists() else ""
    assert not hostname or hostname not in msg.replace("/etc/hostname", "")


def test_redirect_up_the_tree_does_not_echo_the_file(case):
    line = case.append("Redirect ../../outside/secret.txt")
    _refused(case, line, "outside")


def test_symlink_in_the_tree_pointing_outside(case):
    (case.folder / "Extra.txt").symlink_to(case.outside / "secret.txt")
    line = case.append("Redirect Extra.txt")
    _refused(case, line, "link")


@pytest.mark.parametrize("target, kind", [("/dev/zero", "outside"), ("zero.txt", "outside"),
                                          ("pipe.txt", "not a regular file"), ("sub", "not a regular file")])
def test_redirect_to_devices_pipes_and_folders(case, target, kind):
    (case.folder / "zero.txt").symlink_to("/dev/zero")
    os.mkfifo(case.folder / "pipe.txt")
    (case.folder / "sub").mkdir()
    line = case.append(f"Redirect {target}")
    _refused(case, line, kind)


@pytest.mark.parametrize("value", ["(file=/etc/passwd)", "[file=/etc/passwd]", '"dblfile=../../outside/secret.txt"',
                                   "(sngFile = /etc/passwd)", "(file=LineCode.txt)"])
def test_file_values_are_refused(case, value):
    line = case.append(f"Edit LineCode.4c_70 rmatrix={value}")
    _refused(case, line, "'=' inside a value")


#: the engine reads any prefix of sngfile/dblfile (and longer words starting with them) as a file
ABBREVIATED = ["(s={f})", "(sn={f})", "(sng={f})", "(sngf={f})", "(d={f})", "(db={f})", "(dbl={f})", "(dblf={f})",
               "(sngfilex={f})", "(dblfileyz={f})", "[s={f}]", "{{d={f}}}", '"s={f}"', "'d={f}'", "(S = {f})",
               "(1 2 s={f})"]


@pytest.mark.parametrize("value", ABBREVIATED)
@pytest.mark.parametrize("command", ["Edit Line.LINE1 seasons=4 ratings={v}", "Edit LineCode.4c_70 rmatrix={v}",
                                     "Set voltagebases={v}", "New Line.L9 bus1=1 bus2=9 linecode=4c_70 length=1 "
                                                             "units=m normamps={v}"])
def test_abbreviated_file_references_in_values_are_refused(case, value, command):
    line = case.append(command.format(v=value.format(f=case.outside / "floats.bin")))
    _refused(case, line, "'=' inside a value")


@pytest.mark.parametrize("value", ["(d={f})", "(s={f})", "(dblf={f})", "(file={f})"])
def test_a_fifo_named_in_a_value_is_never_opened(case, value):
    with fifo_nobody_opens(case.outside / "fifo") as opened:
        line = case.append(f"Edit Line.LINE1 seasons=2 ratings={value.format(f=case.outside / 'fifo')}")
        _refused(case, line, "'=' inside a value")
    assert not opened.is_set(), "the engine opened a file outside the model's folder"


@pytest.mark.parametrize("props", ["seasons=2 ratings=[400 500]", "Seasons=1 Ratings=[300]", "rat=[1 2] sea=2"])
def test_ratings_and_seasons_are_dropped(case, reference, props):
    """Unused by the reader (it takes normamps); OpenDSS's own Save writes them for every line."""
    case.append(f"Edit Line.LINE1 {props}", f"Edit LineCode.4c_70 {props}", f"Edit Transformer.TR1 {props}")
    _same(_load(case), reference)


def test_unsupported_elements_are_refused_not_dropped(case):
    line = case.append("New Capacitor.C1 Bus1=1 phases=3 kvar=100")
    _refused(case, line, "Capacitor.C1", "not supported")


@pytest.mark.parametrize("command", ["? Line.LINE1.length", "Var @x=/etc/passwd", "Line.LINE1.length=5",
                                     "Open Line.LINE1 1", "BatchEdit Line..* length=1", "Dump Line.LINE1 debug",
                                     "New object=Generator.g1 bus1=1 kw=10", "Edit LINE1 length=3", "Set voltagebases"])
def test_other_commands_are_refused(case, command):
    line = case.append(command)
    _refused(case, line)


def test_skipped_classes_and_continuations(case, reference):
    case.append("New Loadshape.S1 npts=2 mult=(file=/etc/passwd)", "~ useactual=no", "New Monitor.M1 Line.LINE1 1",
                "BatchEdit LoadShape..* useactual=no", "Set mode=daily number=1 stepsize=1m", "Calcvoltagebases")
    _same(_load(case), reference)


def test_missing_load_shape_file_warns_and_loads(case, reference):
    (case.folder / "LoadShapes.txt").unlink()
    line = case.append("Redirect LoadShapes.txt")
    with pytest.warns(UserWarning, match=f"Master.dss:{line}.*LoadShapes.txt"):
        got = _load(case)
    _same(got, reference)


def test_missing_network_file_is_an_error(case):
    line = case.append("Redirect Lines2.txt")
    _refused(case, line, "Lines2.txt", "no such file")


def test_checksum_names_the_exact_model(case, reference):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = _load(case)
    assert len(first.sha256) == 64 and first.sha256 == reference.sha256
    loads = case.folder / "Loads.dss"
    loads.write_text(loads.read_text() + "! a comment changes the model's bytes\n")
    assert _load(case).sha256 != first.sha256


def _fails(case: Case, *words: str) -> str:
    with pytest.raises(FeederError) as e:
        _load(case)
    msg = str(e.value)
    for w in words:
        assert w.lower() in msg.lower(), msg
    return msg


# --- an engine crash on a one-line model
@pytest.mark.parametrize("props", ["wire=foo", "h=10", "x=1", "units=ft", "cond=1 wire=foo", "nconds=0 h=1",
                                   "nconds=-1 x=1", "cncable=foo", "like=nothing x=1", "Wire=foo nconds=3"])
def test_linegeometry_conductor_before_nconds_is_refused(case, props):
    line = case.append(f"New LineGeometry.g {props}")
    _refused(case, line, "nconds")


def test_linegeometry_continued_after_nconds_loads(case, reference):
    case.append("New WireData.w gmrac=0.01 rac=0.1 diam=1 runits=km gmrunits=cm radunits=cm",
                "New LineGeometry.g nconds=3 nphases=3", "~ cond=1 wire=w x=0 h=10 units=m",
                "~ cond=2 wire=w x=1 h=10", "Edit LineGeometry.g cond=3 wire=w x=2 h=10")
    _same(_load(case), reference)


def test_linegeometry_continuation_before_nconds_is_refused(case):
    line = case.append("New LineGeometry.g nphases=3", "~ x=1")
    _refused(case, line + 1, "nconds")


fork_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                               reason="the child must inherit this test's monkeypatch (fork)")


@fork_only
def test_an_engine_crash_is_a_feeder_error(case, monkeypatch):
    """Were a crashing command to get through, only the child process dies."""
    monkeypatch.setattr(_opendss, "_PER_CONDUCTOR", set())
    case.append("New LineGeometry.g wire=foo")
    _fails(case, "crashed", "signal 11", str(case.folder / "Master.dss"))


@fork_only
def test_a_stuck_engine_is_stopped(case, monkeypatch):
    monkeypatch.setattr(_opendss, "_TIMEOUT_S", 2.0)
    monkeypatch.setattr(_opendss, "_run_script", lambda *a: time.sleep(120))
    t = time.perf_counter()
    _fails(case, "did not finish within 2 s")
    assert time.perf_counter() - t < 30


@fork_only
def test_a_runaway_allocation_is_a_feeder_error(case, monkeypatch):
    monkeypatch.setattr(_opendss, "_MEMORY_BYTES", 256 * 2**20)
    monkeypatch.setattr(_opendss, "_run_script", lambda *a: bytearray(4 * 2**30))
    _fails(case, "out of memory")


def test_the_callers_engine_is_left_alone(case, reference):
    import opendssdirect as dss

    dss.Text.Command("clear")
    dss.Text.Command("new circuit.callers_own")
    _same(_load(case), reference)
    assert dss.Circuit.Name() == "callers_own"
    dss.Text.Command("clear")


# --- what changes the network while the reader would not see it
@pytest.mark.parametrize("commands, element", [
    (["Edit Line.LINE5 enabled=no"], "Line.line5"),
    (["Edit Load.LOAD1 enabled=no"], "Load.load1"),
    (["Edit Load.LOAD1 ena=false"], "Load.load1"),
    (["Edit Load.LOAD1 Enabled=N"], "Load.load1"),
    (["Edit Transformer.TR1 enabled=no"], "Transformer.tr1"),
    (["Edit Vsource.Source enabled=no"], "Vsource.source"),
    (["New Load.LOADX like=LOAD1 enabled=no"], "Load.loadx"),
    (["Edit Line.LINE5 enabled=no", "New Line.LINEX like=LINE5 bus1=5 bus2=6"], "Line.linex"),
])
def test_disabled_elements_are_refused(case, commands, element):
    case.append(*commands)
    _fails(case, element, "disabled elements are not supported")


@pytest.mark.parametrize("command", ["Edit Load.LOAD2 bus1=47.2.3", "Edit Load.LOAD2 bus1=47.2.2",
                                     "Edit Load.LOAD2 phases=3 bus1=47.3", "Edit Load.LOAD2 bus1=47.4"])
def test_a_load_not_wye_to_neutral_is_refused(case, command):
    case.append(command)
    _fails(case, "Load.load2", "not supported")


# --- memory and size while reading
def test_files_have_a_total_size_cap(case, monkeypatch):
    monkeypatch.setattr(_opendss, "_MAX_TOTAL_BYTES", 2 * 2**20)
    (case.folder / "Comments.txt").write_bytes(b"!a\n" * (2**20 // 3 * 2))  # 2 MB of comments
    line = case.append("Redirect Comments.txt")
    _refused(case, line, "Comments.txt", "in total")


@fork_only
def test_many_comment_lines_read_in_little_memory_and_time(case, monkeypatch):
    monkeypatch.setattr(_opendss, "_MEMORY_BYTES", 200 * 2**20)  # 32 MB of lines once took 0.96 GB
    (case.folder / "Comments.txt").write_bytes(b"!a\n" * (32 * 2**20 // 3))
    case.append("Redirect Comments.txt")
    t = time.perf_counter()
    _load(case)
    assert time.perf_counter() - t < 60
