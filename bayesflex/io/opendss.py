"""OpenDSS text models -> Feeder, through the DSS C-API engine (opendssdirect.py).

An OpenDSS script is a program: its commands can start an editor (``Set
Editor=...`` + ``FileEdit``), write files (``Save``, ``Export``, ``Dump``), move
the working directory (``CD``, ``Set DataPath``) and read any file
(``Redirect``, ``(file=...)`` values).  Models come from third parties, so this
reader never hands the script to the engine.  It reads the files itself, parses
every command and sends the engine only a rebuilt command it has checked:

* **Executed**: ``New``/``Edit`` (and ``More``/``M``/``~`` continuation lines) of
  the classes a network description needs (``Circuit``, ``Vsource``, ``Line``,
  ``LineCode``, ``Transformer``, ``Load`` and the data they may reference:
  ``WireData``, ``CNData``, ``TSData``, ``LineGeometry``, ``LineSpacing``,
  ``XfmrCode``); ``Set`` of ``voltagebases``, ``defaultbasefrequency``,
  ``basefrequency`` and ``earthmodel`` only (each ``a=b`` pair of a ``Set`` is
  checked); ``Clear``; ``Buscoords``/``LatLongCoords`` of a file.
* **Followed by this reader, never by the engine**: ``Redirect``/``Compile``.
* **Skipped, never executed** (not needed for a network; not executing them
  cannot have a side effect): solution, report and plot commands (``Solve``,
  ``CalcVoltageBases``, ``Show``, ``Export``, ``Plot``, ``Sample``, ``Reset``,
  ...), ``Set`` of study options (``mode``, ``number``, ``stepsize``, ...), and
  ``New``/``Edit``/``BatchEdit`` of load shapes, curves, spectra, monitors,
  meters and sensors (a load's ``yearly``/``daily``/``duty``/``growth``/
  ``cvrcurve``/``spectrum`` reference is dropped with them).
* **Refused** with a :class:`FeederError` naming file, line and command (its
  text cut to 80 characters): everything else.  That includes every command
  that touches files, the process or the engine (``FileEdit``, ``Save``,
  ``Dump``, ``CD``, ``DOScmd``, ``?``, ``Var``, ...), ``Set`` of any other option
  (``Editor``, ``DataPath``, ``Log``, ``Recorder``, ...), commands that change the
  network in ways this reader does not follow (``Open``, ``Disable``,
  ``AllocateLoads``, ...), and elements the reader would otherwise ignore
  while they change the physics (``Capacitor``, ``Reactor``, ``RegControl``,
  ``Generator``, ``PVSystem``, ``Storage``, ``Fuse``, ...: "not supported").

Words are resolved by the engine's own rule and lists, read from the engine at
run time: a command or ``Set`` option is the one whose name equals the word,
else the first in the engine's order that starts with it (so ``Redir``,
``Sho``, ``Expo``, ``FileEd`` are judged as what the engine would run); class
names must match exactly, as in the engine.

Values: no value may hold ``=``.  Inside ``(...)``, ``[...]``, ``{...}`` or quotes
the engine reads ``file=``, ``sngfile=``, ``dblfile=`` and any prefix or extension
of the last two (``s=``, ``d=``, ``sngf=``, ``dblfilex=``, ...) as a file to read
values from, anywhere on the machine (a FIFO hangs it).  A network description
gives its values, so no file reference is followed in a value, not even inside
the folder.  Property names are resolved by the engine's rule and its property
lists.  ``ratings``/``seasons`` (season ratings: arrays, possibly from files) are
dropped, not refused: the reader takes ``normamps`` and never reads them, and
OpenDSS's own ``Save`` writes them for every line, so refusing would reject
ordinary exported models.  A ``LineGeometry`` property that addresses a
conductor (``cond``, ``wire``, ``x``, ``h``, ``units``, ...) before a positive
``nconds=`` is refused: the engine crashes on it.

After the script: a disabled source, transformer, line or load (``enabled=no``,
``ena=false``, ``like=`` a disabled one, however spelled) is an error, because the
engine leaves it out and this reader would not; a load must connect its phases
(distinct, of 1, 2, 3) to the neutral 0 as the engine reports its nodes (a
1-phase load at ``bus.2.3`` between two phases is refused).

Files: a ``Redirect``/``Compile``/``Buscoords`` target is resolved against the
including file and must lie, after following symbolic links, inside the folder
holding the master file, be a regular file and hold at most 256 MB; all files
of a model together at most 512 MB.  Lines are decoded one at a time.  A missing
``Redirect`` target whose name says it holds load shapes or monitors is a
warning (model sets often lack them); any other missing one an error.  Error
messages name the file and the target as written, never what another file
holds.  Before running anything the engine is told not to open editors or
forms, run shell commands or change directory (restored afterwards); the
working directory is checked unchanged.  The feeder's ``sha256`` covers every
file read, in order, with its name relative to the folder.

Coordinates: ``Buscoords`` (the engine reads the file), else ENWL's
``XY_Position.csv`` beside the master file (header ``Node,X,Y``; read by this
reader under the same rules, at most 64 MB; a bad row is a :class:`FeederError`
naming file and line).  Buses without coordinates keep NaN: maps leave them out.

Process: the engine part runs in a child process (``fork`` on Linux, about 40 ms
more per model; ``spawn`` elsewhere) whose address space may grow by at most
min(8 GB, half the RAM) and which has 600 s.  A crash (signal), running out of
memory or time becomes a :class:`FeederError` naming the model; warnings raised
there are warned again in the caller; the caller's own engine state is left
alone.  In a daemonic process (which cannot start children) the reader runs in
process and warns.

Mapping to bayesflex:
* ``Vsource``: an ideal voltage behind its ``Z1``, ``Z2``, ``Z0``.
* ``Transformer``: 2 windings, Delta (HV) - grounded Wye (LV) only, i.e. Dyn.
  OpenDSS builds a three-phase transformer from three single-phase units, so
  its zero-sequence leakage equals the positive one (``vk0 = vk``) and it has
  no zero-sequence magnetising path of its own (``mag0_percent = inf``)
  unless ``%imag``/``%noloadloss`` give one.  ``leadlag=lag`` (the ANSI
  default) is a 30 degree shift (Dyn1), ``lead`` -30 degrees (Dyn11).
* ``Line``: three-phase, the engine's R/X/C matrices times length; rating
  ``NormAmps``.  A line whose line code (and the line itself) gives no
  ``normamps`` has OpenDSS's default 400 A: ``Feeder.line_rating_defaulted``
  says which (ENWL's models give none); ``load_feeder`` warns, and a feeder
  TOML's ``[line_i_max_a]`` table sets ratings per line code.
* ``Load``: one agent per load, wye, constant power (model 1).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import multiprocessing
import os
import re
import signal
import stat
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bayesflex.errors import FeederError
from bayesflex.grid.feeder import Feeder, Source, Transformer

#: largest script, coordinate or data file read [bytes]
_MAX_FILE_BYTES = 256 * 2**20
#: most bytes read for one model, all its files together
_MAX_TOTAL_BYTES = 512 * 2**20
#: ENWL's bus coordinate file, beside the master file (read when the script gives no Buscoords)
XY_FILE = "XY_Position.csv"
#: largest coordinate file of that kind read [bytes]: a million buses
_MAX_XY_BYTES = 64 * 2**20
#: wall-clock limit of the engine's child process [s]
_TIMEOUT_S = 600.0
#: memory the engine's child process may add to what it inherits [bytes]; None: min(8 GB, half the RAM)
_MEMORY_BYTES: int | None = None
_MAX_DEPTH = 32  # Redirect nesting

# --- what is executed, skipped or refused, by the engine's full (lower case) names
_EXEC_VERBS = {"new", "edit", "more", "m", "~", "set", "clear", "redirect", "compile", "buscoords",
               "latlongcoords"}
_SKIP_VERBS = {
    "//", "show", "solve", "plot", "reset", "sample", "calcvoltagebases", "setkvbase", "buildy", "get", "init",
    "export", "voltages", "currents", "powers", "seqvoltages", "seqcurrents", "seqpowers", "losses",
    "phaselosses", "cktlosses", "totals", "capacity", "classes", "userclasses", "zsc", "zsc10", "zscrefresh",
    "ysc", "puvoltages", "varvalues", "varnames", "makebuslist", "summary", "closedi", "visualize", "di_plot",
    "comparecases", "yearlycurves", "help", "about", "select", "next", "panel", "quit", "top", "vdiff",
    "estimate", "relcalc", "pstcalc", "nodediff", "nodelist", "reprocessbuses", "addbusmarker",
    "clearbusmarkers", "cleanup", "finishtimestep", "_initsnap", "_solvenocontrol", "_samplecontrols",
    "_docontrolactions", "_showcontrolqueue", "_solvedirect", "_solvepflow", "calcincmatrix",
    "calcincmatrix_o", "refine_buslevels", "calclaplacian", "exportoverloads", "exportvviolations", "zsc012",
    "allpceatbus", "allpdeatbus", "totalpowers", "giscoords", "comhelp", "wait", "solveall", "abort",
    "updatestorage",
}
_REFUSE_WHY = {
    **dict.fromkeys(("save", "dump", "fileedit", "formedit", "cd", "doscmd", "alignfile", "cvrtloadshapes",
                     "obfuscate", "uuids"), "reads or writes files, opens an editor or runs a program"),
    **dict.fromkeys(("open", "close", "enable", "disable", "reduce", "makeposseq", "interpolate", "rotate",
                     "rephase", "setbusxy", "distribute", "reconductor", "allocateloads", "setloadandgenkv",
                     "remove"), "changes the network in a way this reader does not follow (not supported)"),
    "?": "queries the engine; not part of a network description",
    **dict.fromkeys(("var", "variable"), "defines script variables (not supported)"),
    **dict.fromkeys(("newactor", "clearall", "clone", "connect", "disconnect"), "controls the engine"),
}
#: classes executed; their data is what the reader reads (or what lines/transformers reference)
_EXEC_CLASSES = {"circuit", "vsource", "line", "linecode", "transformer", "load", "wiredata", "cndata", "tsdata",
                 "linegeometry", "linespacing", "xfmrcode"}
#: classes skipped: time series, curves, meters (a load's reference to them is dropped)
_SKIP_CLASSES = {"loadshape", "tshape", "priceshape", "growthshape", "xycurve", "spectrum", "tcc_curve",
                 "monitor", "energymeter", "sensor"}
_SHAPE_PROPS = {"yearly", "daily", "duty", "growth", "cvrcurve", "spectrum"}
_EXEC_OPTIONS = {"voltagebases", "defaultbasefrequency", "basefrequency", "earthmodel"}
#: Set options that only steer solutions, reports or plots: skipped
_SKIP_OPTIONS = {
    "type", "element", "hour", "sec", "year", "frequency", "stepsize", "mode", "random", "number", "time", "class",
    "object", "circuit", "tolerance", "maxiterations", "h", "loadmodel", "loadmult", "normvminpu", "normvmaxpu",
    "emergvminpu", "emergvmaxpu", "%mean", "%stddev", "ldcurve", "%growth", "genkw", "genpf", "capkvar",
    "addtype", "allowduplicates", "zonelock", "ueweight", "lossweight", "ueregs", "lossregs", "algorithm",
    "trapezoidal", "autobuslist", "controlmode", "tracecontrol", "genmult", "defaultdaily", "defaultyearly",
    "allocationfactors", "cktmodel", "pricesignal", "pricecurve", "terminal", "harmonics", "maxcontroliter",
    "bus", "reduceoption", "%normal", "markercode", "nodewidth", "cfactors", "numallociterations",
    "markswitches", "switchmarkercode", "daisysize", "marktransformers", "transmarkercode", "transmarkersize",
    "loadshapeclass", "markcapacitors", "markregulators", "markpvsystems", "markstorage", "capmarkercode",
    "regmarkercode", "pvmarkercode", "storemarkercode", "capmarkersize", "regmarkersize", "pvmarkersize",
    "storemarkersize", "neglectloady", "markfuses", "fusemarkercode", "fusemarkersize", "markreclosers",
    "reclosermarkercode", "reclosermarkersize", "markrelays", "relaymarkercode", "relaymarkersize",
    "processtime", "totaltime", "steptime", "sampleenergymeters", "miniterations", "keepload", "zmag",
    "seasonrating", "seasonsignal", "linetypes", "longlinecorrection",
}
#: a missing Redirect target with such a name only holds time series or meters: a warning
_OPTIONAL_FILE = re.compile(r"loadshape|shape|monitor|meter|profile", re.IGNORECASE)
#: properties that take arrays (maybe from files) the reader does not use: dropped, never sent
_UNUSED_PROPS = {"ratings", "seasons"}
#: LineGeometry properties that address a conductor: the engine crashes on them before nconds=
_PER_CONDUCTOR = {"cond", "wire", "x", "h", "units", "cncable", "tscable", "wires", "cncables", "tscables",
                  "spacing"}
_CLOSE = {'"': '"', "'": "'", "(": ")", "[": "]", "{": "}"}
_UNSAFE_IN_PATH = set("\"'()[]{}")
_UNSAFE_CHAR = re.compile("[" + re.escape("".join(sorted(_UNSAFE_IN_PATH))) + "]")  # one of them, found at once
#: a word outside quotes and brackets: up to a blank, comma or '='
_BARE_WORD = re.compile(r"[^ \t,=]*")
#: control characters but the tab (the lines are already split at newlines)
_CONTROL_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_UNITS = ("none", "mi", "kft", "km", "m", "ft", "in", "cm", "mm")
#: properties a script must give (any one of each set), else the engine silently fills in its default
_NEEDS = {
    "line": ({"bus1"}, {"bus2"}),
    "linecode": ({"r1", "rmatrix"},),
    "load": ({"bus1"}, {"kw", "kva"}),
    "transformer": ({"xhl", "x12"}, {"kvs", "kv"}, {"kvas", "kva"}, {"buses", "bus"}),
}
_MAX_OHM_PER_KM = 1e3
#: the rating OpenDSS gives a line whose line code has no ``normamps`` [A]
OPENDSS_DEFAULT_AMPS = 400.0
#: km per length unit, by the engine's unit code (0: none)
_KM_PER_UNIT = (math.nan, 1.609344, 0.3048, 1.0, 1e-3, 0.3048e-3, 0.0254e-3, 1e-5, 1e-6)


class _Refused(Exception):
    """A command this reader does not run; the caller adds file and line."""


@dataclass
class _Reading:
    """What reading a script has gathered: the engine's word lists, the files read and their digest."""

    root: Path
    commands: list[str]
    options: list[str]
    classes: set[str]
    props: dict[str, list[str]]  # per executed class, its property names in the engine's order
    max_file: int = _MAX_FILE_BYTES
    max_total: int = _MAX_TOTAL_BYTES
    total: int = 0  # bytes read so far
    digest: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    seen: set[Path] = field(default_factory=set)
    nconds: dict[str, bool] = field(default_factory=dict)  # LineGeometry name -> nconds= given

    def record(self, path: Path, data: bytes) -> None:
        self.digest.update(f"{path.relative_to(self.root).as_posix()}\0{len(data)}\0".encode())
        self.digest.update(data)


def _resolve_word(word: str, names: list[str]) -> str | None:
    """The engine's rule (TCommandList.GetCommand): the name equal to the word, else the first
    name in the engine's order that starts with it."""
    w = word.lower()
    if w in names:
        return w
    return next((n for n in names if n.startswith(w)), None) if w else None


def _engine_names(dss) -> tuple[list[str], list[str], set[str], dict[str, list[str]]]:
    """The engine's commands, Set options, classes and, per executed class, property names (read
    from one element of each class made in an empty circuit, cleared afterwards)."""
    ex = dss.Executive
    commands = [ex.Command(i).lower() for i in range(1, ex.NumCommands() + 1)]
    options = [ex.Option(i).lower() for i in range(1, ex.NumOptions() + 1)]
    classes = {c.lower() for c in dss.Basic.Classes()} | {"circuit"}
    props = {}
    dss.Text.Command("clear")
    dss.Text.Command("new circuit.bayesflex_probe")
    for cls in sorted(_EXEC_CLASSES):
        kind, obj = ("vsource", "source") if cls in ("circuit", "vsource") else (cls, "bayesflex_probe")
        if obj == "bayesflex_probe":
            dss.Text.Command(f"new {kind}.{obj}")
        dss.Circuit.SetActiveClass(kind)
        dss.ActiveClass.Name(obj)
        props[cls] = [p.lower() for p in dss.Element.AllPropertyNames()]
    dss.Text.Command("clear")
    return commands, options, classes, props


def _tokens(text: str) -> list[tuple[str, str, str]]:
    """Split a command as the engine's parser does: ``(name, value, opening quote or "")``.

    Delimiters are blanks and commas; ``name=value`` pairs; a value starting with one of
    ``" ' ( [ {`` runs to the matching closing character.  What the engine could read two
    ways (unbalanced quotes, text glued to a closing quote, ``a=b=c``, an empty value,
    quote characters inside a bare word) is refused."""
    out, i, n = [], 0, len(text)

    def word(i: int) -> tuple[str, str, int]:
        if text[i] in _CLOSE:
            j = text.find(_CLOSE[text[i]], i + 1)
            if j < 0:
                raise _Refused(f"unbalanced {text[i]!r}")
            if j + 1 < n and text[j + 1] not in " \t,=":
                raise _Refused(f"text glued to a closing {_CLOSE[text[i]]!r}")
            return text[i + 1:j], text[i], j + 1
        m = _BARE_WORD.match(text, i)
        w = m.group(0)
        if _UNSAFE_CHAR.search(w):
            raise _Refused(f"quote or bracket inside the word {w[:40]!r}")
        return w, "", m.end()

    def blanks(i: int) -> int:
        while i < n and text[i] in " \t":
            i += 1
        return i

    while True:
        while i < n and text[i] in " \t,":
            i += 1
        if i >= n:
            return out
        if text[i] == "=":
            raise _Refused("'=' without a property name")
        value, quote, i = word(i)
        j = blanks(i)
        if j < n and text[j] == "=":
            if quote:
                raise _Refused(f"quoted property name {value[:40]!r}")
            name, j = value, blanks(j + 1)
            if j >= n or text[j] in ",":
                raise _Refused(f"{name}= without a value")
            value, quote, i = word(j)
            if not quote and not value:
                raise _Refused(f"{name}= without a value")
            k = blanks(i)
            if k < n and text[k] == "=":
                raise _Refused(f"{name}={value[:40]}= (a value holds no '=' unless quoted)")
            out.append((name, value, quote))
        else:
            out.append(("", value, quote))


def _emit(tokens: list[tuple[str, str, str]]) -> str:
    parts = []
    for name, value, quote in tokens:
        v = f"{quote}{value}{_CLOSE[quote]}" if quote else value
        parts.append(f"{name}={v}" if name else v)
    return " ".join(parts)


def _open_checked(path: Path, written: str, reading: _Reading, *, missing_ok: bool,
                  max_file: int | None = None) -> tuple[Path, bytes] | None:
    """A file a script names: inside the feeder's folder tree (after following links), a regular
    file of at most ``reading.max_file`` bytes (or ``max_file``, if smaller), all files read at most
    ``reading.max_total``.  Returns its resolved path and bytes (recorded in the digest), None if it
    does not exist and ``missing_ok``."""
    lexical = Path(os.path.normpath(path))
    if not lexical.is_relative_to(reading.root):
        raise _Refused(f"{written!r} lies outside the feeder's folder {reading.root}")
    try:
        real = lexical.resolve(strict=True)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise _Refused(f"{written!r}: no such file") from None
    except (OSError, RuntimeError) as e:  # a link loop, a permission problem
        raise _Refused(f"{written!r} cannot be resolved ({type(e).__name__})") from None
    if not real.is_relative_to(reading.root):
        raise _Refused(f"{written!r} leads (through a link) outside the feeder's folder {reading.root}")
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise _Refused(f"{written!r} cannot be opened ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Refused(f"{written!r} is not a regular file")
        left = reading.max_total - reading.total
        _check_size(st.st_size, written, reading, left, max_file)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(st.st_size + 1)  # (a buffer of the cap would take its size in memory)
        if len(data) != st.st_size:
            raise _Refused(f"{written!r} changed while it was read")
    finally:
        os.close(fd)
    reading.total += len(data)
    reading.record(real, data)
    return real, data


def _check_size(size: int, written: str, reading: _Reading, left: int, max_file: int | None = None) -> None:
    cap = reading.max_file if max_file is None else min(max_file, reading.max_file)
    if size > cap:
        raise _Refused(f"{written!r} is larger than {cap / 2**20:g} MB")
    if size > left:
        raise _Refused(f"{written!r}: the model's files hold more than {reading.max_total / 2**20:g} MB in total")


def _safe_path_text(real: Path) -> str:
    s = str(real)
    if set(s) & _UNSAFE_IN_PATH or any(ord(c) < 32 for c in s):
        raise _Refused(f"the path {s[:80]!r} holds quote or bracket characters")
    return s


def _checked_values(tokens):
    """No value may hold ``=``: inside quotes or brackets the engine reads ``file=``, ``sngfile=``,
    ``dblfile=`` and any prefix of the last two (``s=``, ``d=``, ``sngf=``, even ``sngfilex=``) as a
    file to read its values from.  A network description gives its values, so any ``name=``
    inside a value is refused (the tokenizer already refuses one outside quotes), and so is a
    property whose name says it reads a file."""
    for name, value, quote in tokens:
        if "file" in name.lower():
            raise _Refused(f"property {name!r} names a file (not supported)")
        if "=" in value:
            shown = f"{quote}{value[:40]}{_CLOSE[quote]}" if quote else value[:40]
            raise _Refused(f"{name or 'the value'}={shown}: '=' inside a value (the engine would read "
                           "(file=...), (s=...), (d=...) and the like from a file; give the values themselves)")
    return tokens


@dataclass
class _Command:
    file: Path
    no: int
    text: str  # as written (comments removed)
    send: str | None  # what the engine runs; None: skipped
    obj: str | None = None  # "class.name" a New/Edit/More defines
    keys: tuple[str, ...] = ()  # the property names it gives
    units: str | None = None
    more: bool = False  # a continuation line (More, M, ~)


def _commands(path: Path, data: bytes, reading: _Reading, depth: int):
    """Yield the checked commands of a DSS script, following Redirect/Compile ourselves.  Lines are
    decoded one at a time (a file of many short lines must not become as many strings)."""
    reading.seen.add(path)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if b"\r" in data:  # universal newlines: \r\n, \r, \n
        data = re.sub(rb"\r\n?", b"\n", data)
    lines = io.BytesIO(data)
    del data
    in_block_comment = False
    last: str | None = None  # "class.name" a continuation line (More, ~) edits
    for no, raw in enumerate(lines, 1):
        raw = raw.strip()
        if not raw or raw[:1] == b"!":
            continue
        s = raw.decode("utf-8", errors="replace").strip()
        if in_block_comment:
            if "*/" in s:
                in_block_comment = False
            continue
        if s.startswith("/*"):
            in_block_comment = "*/" not in s
            continue
        s = re.split(r"!|//", s, maxsplit=1)[0].strip()
        if not s:
            continue
        try:
            cmd = _check(s, path, no, reading, last)
        except _Refused as e:
            raise FeederError(f"{path}:{no}", f"{s[:80]!r} refused: {e}") from None
        if cmd is None:  # Redirect / Compile
            target = _tokens(s)[1][1]
            try:
                found = _open_checked(path.parent / target, target, reading, missing_ok=True)
            except _Refused as e:
                raise FeederError(f"{path}:{no}", f"Redirect refused: {e}") from None
            if found is None:
                if not _OPTIONAL_FILE.search(Path(target).name):
                    raise FeederError(f"{path}:{no}", f"Redirect {target!r}: no such file")
                warnings.warn(f"{path}:{no}: Redirect {target!r}: no such file; skipped (its name says it "
                              "holds only load shapes or monitors)", stacklevel=2)
                continue
            if found[0] in reading.seen:
                raise FeederError(f"{path}:{no}", f"Redirect {target!r}: this file was read before (a loop, "
                                                  "or twice the same definitions)")
            if depth >= _MAX_DEPTH:
                raise FeederError(f"{path}:{no}", f"Redirect {target!r}: nested more than {_MAX_DEPTH} deep")
            inner, found = _commands(*found, reading, depth + 1), None  # only the generator holds the bytes
            yield from inner
            last = None
            continue
        if not cmd.more:
            last = cmd.obj
        yield cmd


def _check(s: str, path: Path, no: int, reading: _Reading, last: str | None) -> _Command | None:
    """Judge one command; return what to run (or skip), None for Redirect/Compile.
    Raises _Refused for what is neither executed nor skipped."""
    if _CONTROL_CHAR.search(s):
        raise _Refused("control character")
    tokens = _tokens(s)
    name0, word, _ = tokens[0]
    if name0:
        raise _Refused(f"{name0}=... outside New/Edit (write Edit <Class>.<name> {name0}=...)")
    verb = _resolve_word(word, reading.commands)
    if verb is None:
        raise _Refused(f"{word[:40]!r} is not an OpenDSS command")
    args = tokens[1:]
    if verb in _SKIP_VERBS:
        return _Command(path, no, s, None)
    if verb == "batchedit":
        cls = (args[0][1].split(".", 1)[0].lower() if args else "")
        if cls in _SKIP_CLASSES:
            return _Command(path, no, s, None)
        raise _Refused(f"BatchEdit of {cls or '?'} is not supported (write Edit <Class>.<name> per element)")
    if verb not in _EXEC_VERBS:
        raise _Refused(f"{verb} {_REFUSE_WHY.get(verb, 'is not a command a network description needs')}")
    if verb in ("redirect", "compile"):
        if len(args) != 1 or args[0][0]:
            raise _Refused(f"{verb} takes one file name")
        return None
    if verb == "clear":
        return _Command(path, no, s, "clear")
    if verb in ("buscoords", "latlongcoords"):
        if len(args) != 1 or args[0][0]:
            raise _Refused(f"{verb} takes one file name")
        found = _open_checked(path.parent / args[0][1], args[0][1], reading, missing_ok=True)
        if found is None:
            warnings.warn(f"{path}:{no}: {verb} {args[0][1]!r}: no such file; no coordinates", stacklevel=3)
            return _Command(path, no, s, None)
        return _Command(path, no, s, f'{verb} "{_safe_path_text(found[0])}"')
    if verb == "set":
        run = []
        for name, value, quote in args:
            if not name:
                raise _Refused(f"Set value {value[:40]!r} without an option name (write option=value)")
            opt = _resolve_word(name, reading.options)
            if opt in _EXEC_OPTIONS:
                run.append((opt, value, quote))
            elif opt not in _SKIP_OPTIONS:
                raise _Refused(f"Set {name}" + (f" ({opt})" if opt and opt != name.lower() else "") +
                               f" is not allowed (allowed: {', '.join(sorted(_EXEC_OPTIONS))} and study options)")
        run = _checked_values(run)
        return _Command(path, no, s, f"set {_emit(run)}" if run else None)
    if verb in ("more", "m", "~"):
        if last is None:
            raise _Refused("a continuation line (More, ~) without a New/Edit before it")
        cls, obj = last.split(".", 1)
        if cls in _SKIP_CLASSES:
            return _Command(path, no, s, None, more=True)
        props, keys = _properties(args, cls, obj, reading, new=False)
        return _Command(path, no, s, f"more {_emit(_checked_values(props))}", keys=keys, units=_units(props),
                        more=True)
    # New / Edit
    if not args or args[0][0].lower() not in ("", "object"):
        raise _Refused(f"{verb} needs <Class>.<name> first")
    spec = args[0][1]
    cls, dot, obj = spec.partition(".")
    if not dot or not obj or not cls:
        raise _Refused(f"{verb} {spec[:40]!r}: give <Class>.<name>")
    cls = cls.lower()
    if cls in _SKIP_CLASSES:
        return _Command(path, no, s, None, obj=f"{cls}.{obj.lower()}")
    if cls not in _EXEC_CLASSES:
        if cls in reading.classes:
            raise _Refused(f"{spec[:60]}: {cls} elements are not supported (allowed: "
                           f"{', '.join(sorted(_EXEC_CLASSES))}; skipped: {', '.join(sorted(_SKIP_CLASSES))})")
        raise _Refused(f"{spec[:60]}: no element class {cls!r}")
    if set(obj) & (_UNSAFE_IN_PATH | set(" \t,=")):
        raise _Refused(f"element name {obj[:40]!r} holds quote, bracket or blank characters")
    props, keys = _properties(args[1:], cls, obj.lower(), reading, new=verb == "new")
    send = f"{verb} {cls}.{obj} {_emit(_checked_values(props))}".rstrip()
    return _Command(path, no, s, send, obj=f"{cls}.{obj.lower()}", keys=keys, units=_units(props))


def _properties(args, cls: str, obj: str, reading: _Reading, *, new: bool):
    """name=value pairs to send, without the references to skipped time series and the properties
    the reader does not use that take arrays (``ratings``, ``seasons``: the reader takes
    ``normamps``), and the engine's full names of the properties given.  Names are resolved as the
    engine resolves them (``rat`` is ``ratings``).  A LineGeometry property that addresses a
    conductor before ``nconds=`` is refused: the engine crashes on it."""
    names = reading.props.get(cls, [])
    _checked_values(args)  # also what is dropped: a value holding '=' is refused wherever it stands
    out, keys = [], []
    if cls == "linegeometry" and (new or obj not in reading.nconds):
        reading.nconds[obj] = False
    for name, value, quote in args:
        if not name:
            raise _Refused(f"value {value[:40]!r} without a property name (write name=value)")
        full = _resolve_word(name, names) or name.lower()
        if full in _SHAPE_PROPS or full in _UNUSED_PROPS:
            continue
        if cls == "linegeometry":
            if full == "nconds":
                if not re.fullmatch(r"[1-9][0-9]{0,3}", value):
                    raise _Refused(f"LineGeometry.{obj}: nconds={value[:40]} (allowed: a whole number, 1 to 9999)")
                reading.nconds[obj] = True
            elif full == "like":
                reading.nconds[obj] = reading.nconds.get(value.lower(), False)
            elif full in _PER_CONDUCTOR and not reading.nconds[obj]:
                raise _Refused(f"LineGeometry.{obj}: {name}= before nconds= (give nconds= first)")
        out.append((name, value, quote))
        keys.append(full)
    return out, tuple(keys)


def _units(props) -> str | None:
    return next((v for k, v, _ in props if k.lower() == "units"), None)


def _run_script(dss, master: Path, reading: _Reading) -> dict[str, tuple[str, set[str]]]:
    """Run the checked script; return, per line, line code and transformer ("line.name"), where it
    is defined and the properties the script gives it (the engine fills the others with defaults)."""
    dss.Text.Command("clear")
    given: dict[str, tuple[str, set[str]]] = {}
    last = None
    try:
        found = _open_checked(master, master.name, reading, missing_ok=False)
    except _Refused as e:
        raise FeederError(str(master), str(e)) from None
    commands, found = _commands(*found, reading, 0), None
    for cmd in commands:
        where = f"{cmd.file}:{cmd.no}"
        if cmd.send is None:
            if not cmd.more:
                last = None
            continue
        coords = cmd.send.startswith(("buscoords", "latlongcoords"))
        try:
            if coords:  # the engine places only buses it knows
                dss.Text.Command("makebuslist")
            dss.Text.Command(cmd.send)
        except Exception as e:  # DSSException and friends
            if coords:
                continue  # coordinates are optional
            msg = str(e).split("\n")[0]
            raise FeederError(where, f"OpenDSS rejected {cmd.text[:80]!r}: {msg[:200]}") from e
        keys = set(cmd.keys)
        if cmd.obj is not None:
            kind, name = cmd.obj.split(".", 1)
            last = cmd.obj if kind in _NEEDS else None
            if last:
                w, have = given.get(last, (where, set()))
                given[last] = (w, have | keys)
        elif cmd.more:
            if last is not None:
                given[last][1].update(keys)
        else:
            last = None
        if cmd.units is not None and cmd.units.lower() not in _UNITS:
            raise FeederError(where, f"{cmd.obj or 'the element'}: units={cmd.units} unknown "
                                     f"(allowed: {', '.join(_UNITS)})")
    return given


def _missing_data(given: dict[str, tuple[str, set[str]]]) -> list[str]:
    """Data the script leaves to the engine's defaults (a line without impedance, a line code
    without zero sequence, a transformer without its ratings or reactance)."""
    problems = []
    for obj, (where, keys) in given.items():
        kind, name = obj.split(".", 1)
        if kind == "line" and not keys & {"linecode", "r1", "rmatrix", "geometry", "spacing", "z1"}:
            problems.append(f"{where}: Line.{name} has no impedance (give linecode=, r1/x1/r0/x0 or rmatrix/xmatrix)")
        if kind == "line" and "linecode" in keys and "length" not in keys:
            problems.append(f"{where}: Line.{name} has no length (the engine would make it 1 unit of its line code)")
        seq = {"r1", "x1", "r0", "x0"}
        if kind in ("line", "linecode") and keys & seq and not seq <= keys:
            problems.append(f"{where}: {kind.title()}.{name} has an incomplete sequence impedance "
                            f"(give R1, X1, R0 and X0; missing: {', '.join(sorted(seq - keys))})")
        for need in _NEEDS.get(kind, ()):
            if not keys & need:
                problems.append(f"{where}: {kind.title()}.{name} gives no {' or '.join(sorted(need))} "
                                "(the engine's default would be used)")
    return problems


def _bus_and_nodes(spec: str) -> tuple[str, list[int]]:
    parts = spec.split(".")
    return parts[0].lower(), [int(p) for p in parts[1:] if p.strip().isdigit()]


def feeder_from_opendss(path: Path, *, name: str) -> Feeder:
    """Read an OpenDSS model: a master .dss file or a folder with Master.dss.

    The engine runs in a child process (see the module's docstring): a crash, a hang or a
    runaway allocation there becomes a :class:`FeederError`; its warnings are warned here."""
    try:
        import opendssdirect  # noqa: F401  (imported before a fork, so the child need not)
    except ImportError as e:  # pragma: no cover - it is a dependency
        raise FeederError(str(path), "reading OpenDSS needs the package opendssdirect.py") from e
    path = Path(path)
    master = path / "Master.dss" if path.is_dir() else path
    if not master.exists():
        raise FeederError(str(path), "no Master.dss in this folder")
    master = master.resolve()  # the folder tree is judged where the files really are (a linked parent is fine)
    limits = {"max_file": _MAX_FILE_BYTES, "max_total": _MAX_TOTAL_BYTES}
    if multiprocessing.current_process().daemon:  # a daemonic process may not start children
        warnings.warn(f"{master}: read in this process (a daemonic worker cannot start the OpenDSS engine's "
                      "child process): an engine crash would end this process", RuntimeWarning, stacklevel=2)
        outcome = _outcome(str(master), name, limits)
    else:
        outcome = _in_child(master, name, limits)
    kind, *rest = outcome
    caught = []
    if kind == "feeder_error":
        source, problems, caught = rest
    elif kind == "ok":
        kwargs, sha, caught = rest
    for message, category in caught:
        warnings.warn(message, category, stacklevel=2)
    if kind == "feeder_error":
        raise FeederError(source, problems)
    if kind == "raise":  # a bug of this reader, not the model's fault: its own exception, with the child's traceback
        exc, tb = rest
        exc.add_note(f"(raised in the OpenDSS engine's child process)\n{tb}")
        raise exc
    return Feeder.build(**kwargs).replace(sha256=sha)


def _memory_budget() -> int:
    if _MEMORY_BYTES is not None:
        return _MEMORY_BYTES
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        ram = 16 * 2**30
    return min(8 * 2**30, ram // 2)


def _in_child(master: Path, name: str, limits: dict) -> tuple:
    """Run :func:`_outcome` in a child process: ``fork`` where the platform has it (the engine is
    already loaded; about 10 ms), else ``spawn``.  Its address space may grow by
    :func:`_memory_budget`; it has ``_TIMEOUT_S`` seconds.  A child that dies, runs out of memory
    or time becomes a ``("feeder_error", ...)`` outcome naming what happened."""
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods and sys.platform.startswith("linux") else "spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_main, args=(send, str(master), name, limits, _memory_budget()),
                        name=f"bayesflex-opendss-{name}", daemon=True)
    timeout = _TIMEOUT_S
    child.start()
    send.close()
    outcome, what = None, None
    try:
        if receive.poll(timeout):
            try:
                outcome = receive.recv()
            except (EOFError, OSError):  # it died before it could answer
                pass
            except Exception as e:  # an answer that cannot be unpickled
                what = f"its answer could not be read ({type(e).__name__}: {e})"
        else:
            what = f"it did not finish within {timeout:g} s (stopped)"
    finally:
        receive.close()
        if outcome is None and what is not None and child.is_alive():
            child.kill()
        child.join(10)
        if child.is_alive():  # pragma: no cover - it answered but does not exit
            child.kill()
            child.join()
    if outcome is not None:
        return outcome
    code = child.exitcode
    if what is None:
        if code is not None and code < 0:
            sig = -code
            try:
                signame = signal.Signals(sig).name
            except ValueError:
                signame = "a signal"
            what = f"the OpenDSS engine crashed ({signame}, signal {sig}) reading this model"
            if sig == signal.SIGKILL:
                what += " (killed: out of memory?)"
        else:
            what = f"the OpenDSS engine's process ended (exit code {code}) without an answer"
    elif "did not finish" in what:
        what = f"the OpenDSS engine is stuck: {what}"
    else:
        what = f"the OpenDSS engine's process failed: {what}"
    return "feeder_error", str(master), [what], []


def _child_main(send, master: str, name: str, limits: dict, budget: int) -> None:
    """The child process: limit its address space, read, send the outcome back."""
    import faulthandler

    faulthandler.disable()  # an engine crash is reported by the parent, not dumped on stderr
    try:
        import resource

        vm = _address_space()
        if vm is not None:
            soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            want = vm + budget
            if hard != resource.RLIM_INFINITY:
                want = min(want, hard)
            if soft == resource.RLIM_INFINITY or want < soft:
                resource.setrlimit(resource.RLIMIT_AS, (want, hard))
    except (ImportError, ValueError, OSError):  # pragma: no cover - no such limit here
        pass
    try:
        outcome = _outcome(master, name, limits)
    except MemoryError:
        outcome = ("feeder_error", master, [f"the OpenDSS engine ran out of memory reading this model "
                                            f"(limit: {budget / 2**30:.3g} GB more than at its start)"], [])
    try:
        send.send(outcome)
    except Exception as e:  # e.g. an exception that cannot be pickled
        send.send(("raise", RuntimeError(f"{type(e).__name__}: {e}"), traceback.format_exc()))
    send.close()


def _address_space() -> int | None:
    """This process's virtual memory size [bytes] (Linux), else None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _outcome(master: str, name: str, limits: dict) -> tuple:
    """Read the model with the engine, in this process: ``("ok", Feeder.build keyword arguments,
    sha256, warnings)``, ``("feeder_error", source, problems, warnings)`` or ``("raise", exception,
    traceback text)``; warnings are ``(message, category)`` pairs."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            kwargs, sha = _engine_read(Path(master), name, limits)
            kind = ("ok", kwargs, sha)
        except FeederError as e:
            kind = ("feeder_error", e.source, e.problems)
        except MemoryError:
            raise
        except Exception as e:
            return "raise", e, traceback.format_exc()
    return (*kind, [(str(w.message), w.category) for w in caught])


def _engine_read(master: Path, name: str, limits: dict) -> tuple[dict, str]:
    import opendssdirect as dss

    commands, options, classes, props = _engine_names(dss)
    reading = _Reading(root=master.parent.resolve(), commands=commands, options=options, classes=classes,
                       props=props, **limits)
    cwd = os.getcwd()
    with _engine_locked_down(dss):
        try:
            kwargs = _read(dss, master, reading, name)
        finally:
            if os.getcwd() != cwd:  # the engine must never move it; put it back if it did
                os.chdir(cwd)
    return kwargs, reading.digest.hexdigest()


@contextlib.contextmanager
def _engine_locked_down(dss):
    """No editor, forms, shell commands or directory changes while the script's commands run;
    the engine's previous settings are restored afterwards."""
    basic = dss.Basic
    switches = [getattr(basic, n) for n in ("AllowEditor", "AllowForms", "AllowDOScmd", "AllowChangeDir")
                if hasattr(basic, n)]
    before = [f() for f in switches]
    for f in switches:
        f(False)
    try:
        yield
    finally:
        for f, v in zip(switches, before):
            f(v)


def _read(dss, master: Path, reading: _Reading, name: str) -> dict:
    """The model's Feeder, as keyword arguments of :meth:`Feeder.build` (built by the parent)."""
    origin = str(master)
    given = _run_script(dss, master, reading)
    if dss.Circuit.Name() == "" or not dss.Vsources.AllNames():
        raise FeederError(origin, "the script defines no circuit (New Circuit.<name>)")
    dss.Text.Command("makebuslist")
    problems: list[str] = _missing_data(given)
    disabled = _disabled(dss)
    if disabled:  # the engine leaves them out of its network; the rest of this reader would not
        raise FeederError(origin, problems + disabled)

    buses = [b.lower() for b in dss.Circuit.AllBusNames()]
    index = {b: i for i, b in enumerate(buses)}

    def ask(element: str, prop: str) -> str:
        try:
            dss.Text.Command(f"? {element}.{prop}")
        except Exception as e:  # DSSException: e.g. a name with quotes the engine cannot look up
            raise FeederError(origin, f"{element}: OpenDSS cannot report its {prop}: {str(e).strip()}") from e
        return dss.Text.Result()

    # source
    if len(dss.Vsources.AllNames()) != 1:
        problems.append(f"exactly one Vsource is supported, found {len(dss.Vsources.AllNames())}")
    dss.Vsources.First()
    vname = f"vsource.{dss.Vsources.Name()}"

    def zpair(prop: str) -> complex:
        r, x = (float(v) for v in ask(vname, prop).strip("[] ").replace(",", " ").split()[:2])
        return complex(r, x)

    src_bus, _ = _bus_and_nodes(ask(vname, "bus1"))
    f_hz = float(ask(vname, "basefreq"))
    source = Source(bus=index[src_bus], vm_pu=dss.Vsources.PU(), va_degree=dss.Vsources.AngleDeg(),
                    z1_ohm=zpair("Z1"), z2_ohm=zpair("Z2"), z0_ohm=zpair("Z0"))
    base_kv = {src_bus: dss.Vsources.BasekV()}

    # transformers
    trafos = []
    for tname in dss.Transformers.AllNames():
        el = f"transformer.{tname}"
        dss.Transformers.Name(tname)
        where = f"Transformer.{tname}"
        if dss.Transformers.NumWindings() != 2:
            problems.append(f"{where}: {dss.Transformers.NumWindings()} windings (allowed: 2)")
            continue
        if dss.CktElement.NumPhases() != 3:
            problems.append(f"{where}: {dss.CktElement.NumPhases()} phases (allowed: 3)")
            continue
        wdg = []
        for w in (1, 2):
            dss.Transformers.Wdg(w)
            wdg.append((dss.Transformers.kV(), dss.Transformers.kVA(), dss.Transformers.R(),
                        dss.Transformers.IsDelta(), dss.Transformers.Tap()))
        if not (wdg[0][3] and not wdg[1][3]):
            conns = ["Delta" if w[3] else "Wye" for w in wdg]
            problems.append(f"{where}: conns {conns} not supported (allowed: [Delta Wye], i.e. Dyn)")
            continue
        hv, lv = (_bus_and_nodes(b)[0] for b in dss.CktElement.BusNames())
        xhl = dss.Transformers.Xhl()
        r_tot = wdg[0][2] + wdg[1][2]
        if not (xhl > 0 and r_tot >= 0 and all(w[0] > 0 and w[1] > 0 for w in wdg)):
            problems.append(f"{where}: XHL {xhl}, %R {r_tot}, kVs {[w[0] for w in wdg]}, kVAs {[w[1] for w in wdg]} "
                            "(allowed: XHL > 0, %R >= 0, kV > 0, kVA > 0)")
            continue
        vk = math.hypot(xhl, r_tot)
        imag, nll = float(ask(el, "%imag")), float(ask(el, "%noloadloss"))
        if imag == 0 and nll == 0:
            mag0, mag0_rx = math.inf, 0.0
        else:
            zm = 1 / complex(nll / 100, -imag / 100)
            mag0, mag0_rx = abs(zm) / (vk / 100) * 100, zm.real / zm.imag
        shift = 30.0 if ask(el, "leadlag").strip().lower().startswith("lag") else -30.0
        taps = [w[4] for w in wdg]
        if taps[0] != 1.0 and taps[1] != 1.0:
            problems.append(f"{where}: taps on both windings {taps} not supported (allowed: one tapped winding)")
            continue
        tap_side, tap = ("hv", taps[0]) if taps[0] != 1.0 else ("lv", taps[1])
        base_kv.setdefault(hv, wdg[0][0])
        base_kv.setdefault(lv, wdg[1][0])
        trafos.append(Transformer(
            name=tname, hv_bus=index[hv], lv_bus=index[lv], sn_kva=wdg[0][1], vn_hv_kv=wdg[0][0],
            vn_lv_kv=wdg[1][0], vk_percent=vk, vkr_percent=r_tot, pfe_kw=nll / 100 * wdg[0][1],
            i0_percent=math.hypot(imag, nll), vector_group="Dyn", shift_degree=shift,
            vk0_percent=vk, vkr0_percent=r_tot, mag0_percent=mag0, mag0_rx=mag0_rx, si0_hv_partial=0.5,
            tap_side=tap_side, tap_pos=(tap - 1.0) * 100, tap_neutral=0.0, tap_step_percent=1.0,
        ))

    # lines
    line_names, lf, lt, zs, ys, amps, codes, defaulted = [], [], [], [], [], [], [], []
    w = 2 * math.pi * f_hz
    for lname in dss.Lines.AllNames():
        dss.Lines.Name(lname)
        where = f"Line.{lname}"
        if dss.Lines.Phases() != 3:
            problems.append(f"{where}: {dss.Lines.Phases()} phase(s) (allowed: 3)")
            continue
        (b1, n1), (b2, n2) = _bus_and_nodes(dss.Lines.Bus1()), _bus_and_nodes(dss.Lines.Bus2())
        for nodes in (n1, n2):
            if nodes and nodes[:3] != [1, 2, 3]:
                problems.append(f"{where}: phase order {nodes} (allowed: 1.2.3)")
        length = dss.Lines.Length()  # the matrices are per unit of the line's own length unit
        unit = dss.Lines.Units()  # 0: none, the line code's unit
        length_km = length * _KM_PER_UNIT[unit] if 0 < unit < len(_KM_PER_UNIT) else length
        if not 1e-6 <= length_km <= 1e3:
            problems.append(f"{where}: length = {length} {_UNITS[unit] if 0 < unit < len(_UNITS) else ''}"
                            " (allowed: 1 mm to 1000 km)")
            continue
        z = (np.array(dss.Lines.RMatrix()) + 1j * np.array(dss.Lines.XMatrix())).reshape(3, 3) * length
        y = 1j * w * np.array(dss.Lines.CMatrix()).reshape(3, 3) * 1e-9 * length
        if not np.abs(z).max() <= _MAX_OHM_PER_KM * length_km:  # also catches NaN
            problems.append(f"{where}: impedance {np.abs(z).max():.3g} ohm over {length_km:.3g} km "
                            f"(allowed: finite, up to {_MAX_OHM_PER_KM:g} ohm/km; check its line code)")
            continue
        line_names.append(lname)
        lf.append(index[b1])
        lt.append(index[b2])
        zs.append(z)
        ys.append(y)
        amps.append(dss.Lines.NormAmps())
        codes.append(dss.Lines.LineCode().lower())
        defaulted.append(_rating_defaulted(given, lname.lower(), codes[-1], amps[-1]))

    # loads
    agents, a_bus, a_ph, a_p, a_q = [], [], [], [], []
    for ldname in dss.Loads.AllNames():
        dss.Loads.Name(ldname)
        where = f"Load.{ldname}"
        if dss.Loads.IsDelta():
            problems.append(f"{where}: delta connection not supported (allowed: wye)")
            continue
        if dss.Loads.Model() != 1:
            problems.append(f"{where}: model={dss.Loads.Model()} not supported (allowed: 1, constant PQ)")
            continue
        spec = dss.CktElement.BusNames()[0]
        bus, _ = _bus_and_nodes(spec)
        nph = dss.CktElement.NumPhases()
        order = list(dss.CktElement.NodeOrder())  # the nodes the engine connects: phases, then the neutral
        nodes, neutral = order[:nph], order[nph:]
        if len(set(nodes)) != nph or any(n not in (1, 2, 3) for n in nodes) or any(n != 0 for n in neutral):
            problems.append(f"{where}: bus1={spec} connects nodes {'.'.join(map(str, order))}, not {nph} distinct "
                            "phase(s) of 1, 2, 3 to the neutral 0 (a load between two phases, e.g. a 1-phase load "
                            "at bus.2.3, is not supported; allowed: wye to neutral, e.g. bus.2 or bus.1.2.3)")
            continue
        phases = np.zeros(3, bool)
        phases[[n - 1 for n in nodes]] = True
        agents.append(ldname)
        a_bus.append(index.get(bus, -1))
        a_ph.append(phases)
        a_p.append(np.where(phases, dss.Loads.kW() / nph, 0.0))
        a_q.append(np.where(phases, dss.Loads.kvar() / nph, 0.0))

    if not agents:
        problems.append("no loads (every agent is a Load)")
    if problems:
        raise FeederError(origin, problems)
    vn = _nominal_kv(len(buses), source.bus, base_kv, index, trafos, lf, lt)
    xy = None
    try:
        coords = []
        for b in buses:
            dss.Circuit.SetActiveBus(b)
            coords.append((dss.Bus.X(), dss.Bus.Y()) if dss.Bus.Coorddefined() else (np.nan, np.nan))
        xy = np.array(coords, float)
        if np.isnan(xy).all():
            xy = None
    except AttributeError:  # older engine API
        xy = None
    if xy is None:  # no Buscoords in the script: ENWL's coordinate file beside the master, if there is one
        xy = _xy_positions(master, reading, buses)
    return dict(
        name=name, origin=origin, f_hz=f_hz, buses=buses, bus_vn_kv=vn, lines=line_names,
        line_from=lf, line_to=lt, line_z_ohm=np.array(zs).reshape(-1, 3, 3),
        line_y_s=np.array(ys).reshape(-1, 3, 3), line_i_max_a=amps, trafos=trafos, source=source,
        agents=agents, agent_bus=np.array(a_bus, np.int64), agent_phases=np.array(a_ph, bool).reshape(-1, 3),
        agent_p_kw=np.array(a_p).reshape(-1, 3), agent_q_kvar=np.array(a_q).reshape(-1, 3), bus_xy=xy,
        meta={"opendss_circuit": dss.Circuit.Name()}, line_code=codes,
        line_rating_defaulted=np.array(defaulted, bool),
    )


def _rating_defaulted(given: dict[str, tuple[str, set[str]]], line: str, code: str, amps: float) -> bool:
    """Whether a line's rating is OpenDSS's default (:data:`OPENDSS_DEFAULT_AMPS`): neither the line
    nor its line code gives ``normamps``, and the engine reports the default (a line built from a
    geometry or ``like=`` another line gets its rating from there)."""
    keys = given.get(f"line.{line}", ("", set()))[1] | given.get(f"linecode.{code}", ("", set()))[1]
    return "normamps" not in keys and amps == OPENDSS_DEFAULT_AMPS


def _disabled(dss) -> list[str]:
    """Sources, transformers, lines and loads the engine holds disabled (``enabled=no``, ``ena=false``,
    ``like=`` a disabled one, ...): the engine leaves them out, this reader would not."""
    out = []
    for cls in ("Vsource", "Transformer", "Line", "Load"):
        dss.Circuit.SetActiveClass(cls)
        for n in dss.ActiveClass.AllNames():
            dss.Circuit.SetActiveElement(f"{cls}.{n}")
            if not dss.CktElement.Enabled():
                out.append(f"{cls}.{n} is disabled (enabled=no); disabled elements are not supported: "
                           "remove it from the model")
    return out


def _xy_positions(master: Path, reading: _Reading, buses: list[str]) -> np.ndarray | None:
    """Bus coordinates from ENWL's ``XY_Position.csv`` beside the master file: a header
    ``Node,X,Y``, then one bus a row (its name as the script spells it, two finite numbers).

    Read as safely as the script (inside the feeder's folder after following links, a regular
    file, at most ``_MAX_XY_BYTES``) and counted in the feeder's checksum; None if there is no
    such file.  Buses the file does not name keep NaN (a map leaves them out and says so); rows
    naming no bus of the model are warned about once.  Bad content is a :class:`FeederError`
    naming the file and the line."""
    path = master.parent / XY_FILE
    try:
        found = _open_checked(path, XY_FILE, reading, missing_ok=True, max_file=_MAX_XY_BYTES)
    except _Refused as e:
        raise FeederError(str(path), f"coordinates: {e}") from None
    if found is None:
        return None
    data = found[1]
    where = str(path)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    index = {b: i for i, b in enumerate(buses)}
    xy = np.full((len(buses), 2), np.nan)
    first_line: dict[str, int] = {}
    unknown: list[str] = []
    header = True
    for no, raw in enumerate(re.split(rb"\r\n?|\n", data), 1):
        try:
            row = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise FeederError(f"{where}:{no}", "not UTF-8 text (allowed: a CSV file Node,X,Y)") from None
        if not row:
            continue
        cells = [c.strip() for c in row.split(",")]
        if header:
            if [c.lower() for c in cells] != ["node", "x", "y"]:
                raise FeederError(f"{where}:{no}", f"header {row[:80]!r} (allowed: Node,X,Y)")
            header = False
            continue
        if len(cells) != 3 or not cells[0]:
            raise FeederError(f"{where}:{no}", f"{row[:80]!r}: give a bus name and two numbers (Node,X,Y)")
        name = cells[0].lower()
        try:
            x, y = float(cells[1]), float(cells[2])
        except ValueError:
            raise FeederError(f"{where}:{no}", f"{row[:80]!r}: X and Y must be numbers") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise FeederError(f"{where}:{no}", f"{row[:80]!r}: X and Y must be finite numbers")
        if name in first_line:
            raise FeederError(f"{where}:{no}", f"bus {cells[0][:40]!r} placed again (first on line "
                                               f"{first_line[name]})")
        first_line[name] = no
        if name not in index:
            unknown.append(cells[0][:40])
            continue
        xy[index[name]] = x, y
    if header:
        raise FeederError(where, "no header Node,X,Y: the file is empty")
    if unknown:
        warnings.warn(f"{where}: {len(unknown)} row(s) name no bus of the model (first: {unknown[0]!r}); ignored",
                      stacklevel=2)
    return None if np.isnan(xy).all() else xy


def _nominal_kv(nb, src, base_kv, index, trafos, lf, lt) -> np.ndarray:
    """Nominal voltage of every bus: from the source and transformer windings,
    carried along lines.  Buses no line reaches keep NaN (and fail validation
    as not connected)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    vn = np.full(nb, np.nan)
    g = sp.coo_matrix((np.ones(len(lf)), (lf, lt)), shape=(nb, nb))
    _, label = connected_components(g, directed=False)
    for bus, kv in base_kv.items():
        vn[label == label[index[bus]]] = kv
    vn[np.isnan(vn)] = 1.0  # isolated islands: any positive value; validation reports them
    return vn
