"""Resumable studies: every finished chunk of draws is kept on disk until the study is done.

A study written to ``DIR`` works in ``DIR/.partial/``:

``manifest.json``
    the study's *fingerprint* (a SHA-256 of everything that decides its
    numbers: feeder, priors or posterior, positions, draws, seed, chunk size,
    limits, method, horizon, package versions) and what went into it;
``chunk-00012.h5``
    chunk 12's results, written by the worker that computed it (an HDF5 file,
    written under a temporary name and renamed when complete, and stamped
    with the fingerprint and its draw range); its large arrays are already
    compressed as the result file's chunks, which the main process copies
    without decompressing them; every array carries the SHA-256 of its
    (compressed) bytes, dimensions and attributes, checked when it is read;
``result.nc.part``
    the result file being assembled; renamed to ``DIR/result.nc`` only when
    complete, after which ``.partial`` is removed.

``bayesflex run --resume`` (``run_study(..., resume=True)``) reads the chunks
already finished -- only when their fingerprint is the study's -- and computes
the rest: the result is identical to an uninterrupted run because a chunk's
numbers depend only on the study's inputs, its seed and its index.  A chunk
file that cannot be read (a crash while writing it) or whose data do not match
their checksums (changed bytes, a damaged compressed block) is computed again,
with a warning: a damaged chunk is never taken for a result.  ``.partial``
must be a real folder inside ``DIR`` (a symbolic link is refused: clearing it
would delete files wherever it points).  Without
``resume`` an unfinished study in the folder is discarded, with a warning.  A
lock stops two runs from writing to one folder at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from bayesflex.core.outdir import as_output_error, ensure_space, fresh, inside, quiet_failed_writes, regular
from bayesflex.core.versions import __version__, package_versions
from bayesflex.errors import ConfigError
from bayesflex.study.files import CHUNK_FILTER, ChunkArray, DamagedChunk, compress_chunk, stored_dtype
from bayesflex.study.schema import is_big, is_big_physics

__all__ = ["PARTIAL_DIR", "Checkpoint", "kept_chunks", "save_chunk", "study_fingerprint"]

PARTIAL_DIR = ".partial"
#: packages whose version can change a study's numbers
_NUMERIC = ("numpy", "scipy", "pymc", "pytensor", "pandas", "pvlib")
#: which arrays a chunk file holds and how (2: with the causes of congestion; 3: the large arrays as
#: result-file chunks, the portfolio's sums); chunks of another format are not resumed
CHUNK_FORMAT = 3


def _digest(*items) -> str:
    h = hashlib.sha256()
    for x in items:
        if isinstance(x, np.ndarray):
            h.update(str((x.dtype.str, x.shape)).encode())
            h.update(np.ascontiguousarray(x).tobytes())
        else:
            h.update(repr(x).encode())
        h.update(b"\0")
    return h.hexdigest()


def _feeder_digest(fd) -> str:
    return _digest(fd.name, fd.sha256, fd.buses, fd.lines, fd.agents, fd.line_from, fd.line_to, fd.line_z_ohm,
                   fd.line_y_s, fd.line_i_max_a, fd.agent_bus, fd.agent_phases, repr(fd.trafos), repr(fd.source))


def _priors_digest(pr, posterior) -> str:
    if posterior is None:
        return _digest(pr.sha256)
    idata = posterior.idata
    post = [] if idata is None else [idata.posterior[k].values for k in sorted(idata.posterior.data_vars)]
    ev = [] if posterior.ev_alpha is None else [np.asarray(posterior.ev_alpha)]
    return _digest(posterior.priors.sha256, posterior.observations_sha256, posterior.agents, *post, *ev)


def study_fingerprint(feeder, priors, posterior, *, draws: int, seed: int, opts, chunk_draws: int) -> dict:
    """What decides a study's numbers, and its SHA-256 (``"sha256"``)."""
    versions = package_versions(_NUMERIC)
    pos = opts.positions
    what = {
        "bayesflex": __version__, "versions": versions, "chunk_format": CHUNK_FORMAT,
        "feeder": feeder.name, "feeder_digest": _feeder_digest(feeder),
        "priors_digest": _priors_digest(priors, posterior),
        "positions_digest": "" if pos is None else _digest(pos.agents, np.asarray(pos.times, "datetime64[ns]"),
                                                           pos.p_kw, pos.p_lb_kw, pos.p_ub_kw),
        "draws": int(draws), "seed": int(seed), "chunk_draws": int(chunk_draws),
        "limits": [opts.limits.v_min_pu, opts.limits.v_max_pu, opts.limits.loading_max_pu],
        "method": opts.method, "start": None if opts.start is None else str(opts.start),
        "periods": None if opts.periods is None else int(opts.periods),
        "full_voltages": bool(opts.full_voltages), "headroom": bool(opts.headroom),
        "timezone": getattr(priors, "priors", priors).timezone,  # local clocks in the draws (EV timers)
    }
    return {"sha256": _digest(json.dumps(what, sort_keys=True)), **what}


class Checkpoint:
    """The ``.partial`` folder of one study: its lock, manifest and finished chunks."""

    def __init__(self, out: str | Path, fingerprint: dict, n_chunks: int, *, rows: int, resume: bool = False):
        self.out = Path(out)
        self.rows = rows  # draws per chunk of the result file's large arrays
        self.dir = inside(self.out, PARTIAL_DIR)  # never a link: _clear deletes what is in it
        self.sha256 = fingerprint["sha256"]
        self.out.mkdir(parents=True, exist_ok=True)
        self.dir.mkdir(exist_ok=True)
        inside(self.out, PARTIAL_DIR)  # a link made between the check and mkdir
        self._lock = self._acquire()
        #: chunks finished by an earlier run of this study, read instead of computed
        self.done: set[int] = set()
        manifest = self.dir / "manifest.json"
        old = _read_json(manifest)
        same = old is not None and old.get("sha256") == self.sha256
        if resume and old is not None and not same:
            diff = sorted(k for k in fingerprint if k != "sha256" and old.get(k) != fingerprint[k])
            self.release()
            raise ConfigError(
                f"{self.dir}: the unfinished study here was started with other inputs (differs in: "
                f"{', '.join(diff) or 'the fingerprint'}); it cannot be resumed with these. Run without "
                "--resume to discard it, or give the inputs it was started with")
        if resume and same:
            self.remove_temporaries()
            self.done = {c for c in range(n_chunks) if self._valid(c)}
        else:
            n_old = kept_chunks(self.out)
            if n_old:
                warnings.warn(f"{self.dir}: an unfinished study ({n_old} chunks) was discarded; "
                              "use --resume (resume=True) to continue one", stacklevel=3)
            self._clear()
        tmp = fresh(manifest.with_suffix(".tmp"))
        tmp.write_text(json.dumps(fingerprint, indent=1, sort_keys=True))
        os.replace(tmp, manifest)

    # -- the folder ------------------------------------------------------------------------
    @property
    def stream_path(self) -> Path:
        """Where the result file is assembled before it is renamed to ``result.nc``."""
        return self.dir / "result.nc.part"

    def _chunk(self, c: int) -> Path:
        return _chunk_path(self.dir, c)

    def _acquire(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on POSIX: no lock
            return None
        fd = os.open(fresh(self.dir / "lock"), os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        f = os.fdopen(fd, "a+")  # held open (locked) while the study runs
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise ConfigError(f"{self.out}: another bayesflex run is writing a study here; wait for it to "
                              "finish or choose another --out") from None
        return f

    def remove_temporaries(self) -> None:
        """Delete the half-written chunk files of workers that were stopped while writing
        (a worker that fails deletes its own; one killed with its pool cannot)."""
        for p in self.dir.glob(".chunk-*.tmp-*"):
            p.unlink(missing_ok=True)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _clear(self) -> None:
        for p in self.dir.iterdir():
            if p.name != "lock" and (p.is_symlink() or p.is_file()):
                p.unlink()

    def finish(self) -> None:
        """The study is complete and renamed: remove the partial folder."""
        self.release()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- chunks ----------------------------------------------------------------------------
    def _valid(self, c: int) -> bool:
        import h5py

        p = self._chunk(c)
        if not regular(p):  # a link or a FIFO is not a chunk we wrote
            return False
        try:
            with h5py.File(p, "r") as f:
                return f.attrs.get("fingerprint") == self.sha256 and int(f.attrs.get("chunk", -1)) == c
        except Exception:  # noqa: BLE001 - unreadable: written by a process that died; compute it again
            return False

    def save(self, c: int, a: int, b: int, part: dict) -> dict:
        """Write chunk ``c`` (draws ``a:b``) under a temporary name, then rename it; ``part`` with
        its large arrays as the file keeps them (:func:`save_chunk`)."""
        return save_chunk(self.dir, self.sha256, c, a, b, part, self.rows)

    def load(self, c: int) -> dict | None:
        """Chunk ``c`` as :func:`save_chunk` returned it, or None (with a warning) when its file
        is damaged: its data do not match their checksums, or cannot be read."""
        try:
            return _read_chunk(self._chunk(c))
        except Exception as err:  # noqa: BLE001 - any damage means the same: compute the chunk again
            warnings.warn(f"{self._chunk(c)}: damaged ({' '.join(str(err).split())[:200]}); computing the chunk "
                          "again", stacklevel=2)
            return None


# A chunk file is plain HDF5 (h5py), written for every chunk by the worker that computed it (or
# by the main process).  Group ``physics`` holds the chunk's arrays, ``portfolio`` its sums over
# the portfolio's agents, ``draws`` the sampled dataset, each variable with its dimensions and
# attributes, so that it is rebuilt exactly.  The per-draw arrays over agents or buses (nine
# tenths of the bytes) are each one chunk compressed as the result file compresses it
# (``files.compress_chunk``): the main process copies those bytes into the result and
# decompresses nothing (``files.ChunkArray``).  The rest is LZF-compressed: a tenth of the time of
# writing it as NetCDF.
def _put(group, name: str, v: np.ndarray, meta: dict | None = None):
    """Store ``v`` (with ``meta`` attributes), stamped with the SHA-256 of what is stored."""
    data = v
    if v.dtype.kind == "U":
        data = np.char.encode(v, "utf-8")
    elif v.dtype.kind in "mM":
        data = v.view(np.int64)
    elif v.dtype.kind == "O":
        data = np.char.encode(v.astype(str), "utf-8")
    big = data.size > 4096 and data.dtype.kind in "fiub"
    d = group.create_dataset(name, data=data, compression="lzf" if big else None)
    _describe(d, v.dtype, meta)
    d.attrs["sha256"] = _digest(np.asarray(data), *_described(d))
    return d


def _put_chunk(group, name: str, v: np.ndarray, rows: int, draw_axis: int, final: Path,
               meta: dict | None = None) -> ChunkArray:
    """Store a large per-draw array as one result-file chunk of ``rows`` draws, in the file that
    will be ``final``; its SHA-256 is of the compressed bytes (and of the attributes that say how
    it is read)."""
    raw = compress_chunk(v, rows, draw_axis)
    chunk = v.shape[:draw_axis] + (rows,) + v.shape[draw_axis + 1:]
    d = group.create_dataset(name, shape=v.shape, maxshape=chunk, chunks=chunk, dtype=stored_dtype(v.dtype),
                             **CHUNK_FILTER)
    d.id.write_direct_chunk((0,) * v.ndim, raw)
    _describe(d, v.dtype, {**(meta or {}), "draw_axis": draw_axis, "rows": rows})
    sha = hashlib.sha256(raw).hexdigest()
    d.attrs["sha256"] = _chunk_digest(d, sha)
    return ChunkArray(os.path.abspath(final), d.name, v.shape, v.dtype, draw_axis, rows, sha)


def _describe(d, dtype: np.dtype, meta: dict | None) -> None:
    d.attrs["dtype"] = dtype.str if dtype.kind != "O" else "O"
    d.attrs.update(meta or {})


def _described(d) -> list[str]:
    """The attributes that say how a stored array is read back (part of its checksum)."""
    return [str(d.attrs[k]) for k in ("dtype", "dims", "attrs", "coord", "draw_axis", "rows") if k in d.attrs]


def _chunk_digest(d, sha: str) -> str:
    """A compressed chunk's checksum: of its bytes' SHA-256, its shape and type, and the attributes
    that say how it is read."""
    return _digest(sha, tuple(d.shape), d.dtype.str, *_described(d))


def _get(d) -> np.ndarray | ChunkArray:
    """A stored array, checked against its SHA-256; a large one as its compressed chunk."""
    if "draw_axis" in d.attrs:
        mask, raw = d.id.read_direct_chunk((0,) * d.ndim)
        sha = hashlib.sha256(raw).hexdigest()
        if mask or d.attrs.get("sha256") != _chunk_digest(d, sha):
            raise DamagedChunk(f"{d.name}: its data do not match their SHA-256")
        return ChunkArray(os.path.abspath(d.file.filename), d.name, d.shape, np.dtype(d.attrs["dtype"]),
                          int(d.attrs["draw_axis"]), int(d.attrs["rows"]), sha)
    v, dt = d[()], d.attrs["dtype"]
    if d.attrs.get("sha256") != _digest(np.asarray(v), *_described(d)):
        raise DamagedChunk(f"{d.name}: its data do not match their SHA-256")
    if dt == "O":
        return np.char.decode(v, "utf-8").astype(object)
    dtype = np.dtype(dt)
    if dtype.kind == "U":
        return np.char.decode(v, "utf-8").astype(dtype)
    if dtype.kind in "mM":
        return np.asarray(v).view(dtype)
    return np.asarray(v, dtype)


def _json(attrs) -> str:
    return json.dumps(dict(attrs), default=lambda x: x.item() if hasattr(x, "item") else str(x))


def _write_chunk(path: Path, part: dict, attrs: dict, rows: int, final: Path) -> dict:
    """Write ``part`` (what a chunk returns) into ``path``, to be renamed ``final``; return it with
    its large arrays as the file keeps them (:class:`~bayesflex.study.files.ChunkArray`): those in
    ``physics`` in place, those of the draws under ``"stored_draws"`` (name -> dims, attrs, array)."""
    import h5py

    light, stored = {}, {}
    with h5py.File(path, "w") as f:
        f.attrs.update(attrs)
        phys = f.create_group("physics", track_order=True)
        for k, v in part.items():
            if k in ("draws", "portfolio"):
                continue
            v = np.asarray(v)
            if is_big_physics(k):
                light[k] = _put_chunk(phys, k, v, rows, 0, final)
            else:
                _put(phys, k, v)
                light[k] = v
        port = f.create_group("portfolio", track_order=True)
        for k, v in part["portfolio"].items():
            _put(port, k, np.asarray(v))
        ds = part["draws"]
        g = f.create_group("draws")
        g.attrs["order"] = json.dumps(list(ds.variables))
        for k, var in ds.variables.items():
            meta = {"dims": json.dumps(var.dims), "attrs": _json(var.attrs), "coord": int(k in ds.coords)}
            if k in ds.data_vars and is_big(var.dims):
                stored[k] = (var.dims, dict(var.attrs), _put_chunk(g, k, var.values, rows, 1, final, meta))
            else:
                _put(g, k, var.values, meta)
    return light | {"portfolio": part["portfolio"], "draws": ds.drop_vars(list(stored)), "stored_draws": stored}


def _read_chunk(path: Path) -> dict:
    """A chunk file as :func:`_write_chunk` returned it; every array checked against its SHA-256."""
    import h5py

    with h5py.File(path, "r") as f:
        part = {k: _get(d) for k, d in f["physics"].items()}
        part["portfolio"] = {k: _get(d) for k, d in f["portfolio"].items()}
        g = f["draws"]
        data, coords, stored = {}, {}, {}
        for k in json.loads(g.attrs["order"]):
            d = g[k]
            dims, attrs = tuple(json.loads(d.attrs["dims"])), json.loads(d.attrs["attrs"])
            v = _get(d)
            if isinstance(v, ChunkArray):
                stored[k] = (dims, attrs, v)
            else:
                (coords if d.attrs["coord"] else data)[k] = (dims, v, attrs)
    return part | {"draws": xr.Dataset(data, coords=coords), "stored_draws": stored}


def _chunk_path(folder: Path, c: int) -> Path:
    return folder / f"chunk-{c:05d}.h5"


def kept_chunks(out: str | Path) -> int:
    """How many finished chunk files the study folder ``out`` holds."""
    return len(list((Path(out) / PARTIAL_DIR).glob("chunk-*.h5")))


def save_chunk(folder: Path, sha256: str, c: int, a: int, b: int, part: dict, rows: int) -> dict:
    """Write chunk ``c`` (draws ``a:b``) of the study ``sha256`` into ``folder``, atomically, its
    large arrays as chunks of ``rows`` draws; return ``part`` with those as the file keeps them.
    Called by the workers when they share the disk (loky), else by the main process."""
    tmp = fresh(folder / f".chunk-{c:05d}.tmp-{os.getpid()}")
    ensure_space(folder, sum(np.asarray(v).nbytes for k, v in part.items() if k not in ("draws", "portfolio"))
                 + sum(v.nbytes for v in part["portfolio"].values()) + part["draws"].nbytes, f"chunk {c}")
    try:
        with quiet_failed_writes():
            light = _write_chunk(tmp, part, {"fingerprint": sha256, "chunk": c, "draw_start": a, "draw_stop": b},
                                 rows, final=_chunk_path(folder, c))
        os.replace(tmp, _chunk_path(folder, c))
    except BaseException as err:  # noqa: BLE001 - re-raised; interrupted or failed alike, no half file stays
        tmp.unlink(missing_ok=True)  # a partial chunk file is never left behind
        raise as_output_error(folder, err) from None
    return light


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
