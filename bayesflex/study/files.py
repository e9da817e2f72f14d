"""A study's result file: ``result.nc`` written, checked and opened.

Integrity: ``result.nc`` is written under another name and renamed when
complete; beside it ``result.nc.sha256`` holds the SHA-256 of the whole file
(the format of ``sha256sum``, so ``sha256sum -c result.nc.sha256`` checks it
too).  :func:`open_study` checks it before reading anything: a file changed or
damaged after it was written is a clear error, never numbers.  A report
built from an earlier result in the same folder is removed when a new result
takes its place.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from bayesflex.core.outdir import fresh, regular, result_file
from bayesflex.errors import ConfigError
from bayesflex.study.schema import RESULT_FILE

__all__ = ["CHECKSUM_SUFFIX", "CHUNK_FILTER", "DERIVED_FILES", "WRITE_ENGINE", "ChunkArray", "DamagedChunk",
           "FileCloser", "StoredArray", "checksum_path", "compress_chunk", "compressed", "file_sha256", "install",
           "open_read", "open_study", "read_raw", "read_tree", "save_study", "stored", "stored_dtype",
           "verify_result"]

#: the result's checksum file: ``result.nc.sha256``
CHECKSUM_SUFFIX = ".sha256"
#: files built from a result; removed when a new result replaces it (they would describe the old one)
DERIVED_FILES = ("report.html",)
#: xarray's engine for writing whole datasets: the netCDF-C library (netCDF4) creates a variable
#: in ~2 ms where h5netcdf takes ~10 ms (it looks up each dimension's scale dozens of times), so a
#: result's ~200 summary variables take 0.7 s instead of 3 s; files are read through h5py
WRITE_ENGINE = "netcdf4"
#: how the per-draw arrays over agents or buses are compressed, one HDF5 chunk per chunk of draws,
#: in a chunk file and in the result file alike: deflate, level 1 (without HDF5's shuffle filter,
#: which made these arrays ~20 % larger and slower to write), so that a chunk the worker compressed
#: is copied into the result file as it is (:class:`ChunkArray`)
CHUNK_FILTER = {"compression": "gzip", "compression_opts": 1, "shuffle": False}


def save_study(tree: xr.DataTree, directory: str | Path) -> Path:
    """Write ``directory/result.nc`` (NetCDF4 groups); written to a temporary
    name and renamed, so a partial file is never taken for a finished one."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / RESULT_FILE
    tmp = fresh(d / f".{RESULT_FILE}.partial-{os.getpid()}")
    try:
        enc = {node.path: compressed(node.dataset) for node in tree.subtree}
        tree.to_netcdf(tmp, engine=WRITE_ENGINE, encoding={k: v for k, v in enc.items() if v})
        install(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def compressed(ds: xr.Dataset) -> dict:
    """Encoding that compresses a dataset's large numeric arrays (most agent-phase cells are zero)."""
    return {k: {"zlib": True, "complevel": 1, "shuffle": True} for k, v in ds.data_vars.items()
            if v.size > 100_000 and v.dtype.kind in "fiub"}


def install(part: Path, final: Path) -> None:
    """Put the finished file ``part`` in place as ``final``, with its checksum; remove what was
    built from the result it replaces.  The checksum goes first: a crash in between leaves a
    result that fails its check (and is computed again), never an unchecked one."""
    digest = file_sha256(part)
    for name in DERIVED_FILES:
        (final.parent / name).unlink(missing_ok=True)
    side = checksum_path(final)
    tmp = fresh(side.with_name(f".{side.name}.tmp"))
    tmp.write_text(f"{digest}  {final.name}\n")
    os.replace(tmp, side)
    os.replace(part, final)


def checksum_path(result: Path) -> Path:
    """Where the checksum of the result file ``result`` is kept."""
    return result.with_name(result.name + CHECKSUM_SUFFIX)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def verify_result(f: Path) -> None:
    """Raise a ConfigError if ``f`` has no checksum file beside it or does not match it."""
    side = checksum_path(f)
    if not regular(side):
        raise ConfigError(f"{f}: no checksum file {side.name} beside it, so its numbers cannot be checked; keep "
                          f"{f.name} and {side.name} together (copy both), or, for a file you trust, "
                          "open_study(path, verify=False)")
    try:
        expected = side.read_text(encoding="ascii").split()[0]
    except (OSError, UnicodeDecodeError, IndexError) as err:
        raise ConfigError(f"{side}: not a readable checksum file ({err})") from err
    if file_sha256(f) != expected:
        raise ConfigError(f"{f}: the file does not match its checksum ({side.name}): it was changed or damaged "
                          "after bayesflex wrote it, so its numbers cannot be trusted; run the study again")


def open_study(path: str | Path, *, verify: bool = True) -> xr.DataTree:
    """Open a study from its folder or its ``result.nc``; a clear error if it is not one, or
    (``verify``) if the file does not match its checksum."""
    f = result_file(path)
    if verify:
        verify_result(f)
    try:
        tree = read_tree(f)
    except Exception as err:  # any reader failure means the same thing to the user
        raise ConfigError(f"{f}: not a readable study result ({err})") from err
    if tree.attrs.get("creation_library") != "bayesflex" or "heuristic" not in tree.children:
        raise ConfigError(f"{f}: not a bayesflex study result (no provenance or no 'heuristic' group)")
    return tree


#: arrays of more elements than this are read from the file when indexed, smaller ones at once
LAZY_ELEMENTS = 100_000
#: what netCDF-4 writes on a dimension that has no coordinate variable
_DIMENSION_ONLY = b"This is a netCDF dimension but not a netCDF variable"


class _Unusual(Exception):
    """The file holds something :func:`read_tree` does not read itself (xarray reads it)."""


def read_tree(path: Path) -> xr.DataTree:
    """The DataTree of a NetCDF-4 file, as ``xr.open_datatree(path, engine="h5netcdf")`` gives it.

    That reader looks every HDF5 object up again by its path each time it asks
    anything of it (about 50 lookups a variable): ~10 ms a variable, ~2.5 s for a
    result's ~200.  This one walks the file once through h5py, finds each
    variable's dimensions by their netCDF-4 ids (``_Netcdf4Coordinates``, as
    the netCDF-C library does), reads the attributes as h5netcdf does and
    decodes the variables with xarray's CF decoding.  Arrays above
    :data:`LAZY_ELEMENTS` elements are read when indexed (:class:`StoredArray`).
    A file laid out otherwise than the netCDF-4 files xarray writes (a
    variable without dimension ids, a coordinate of several dimensions, a
    dimension id used twice), or that it cannot decode, is read by xarray."""
    import h5py
    from h5netcdf.attrs import Attributes

    def attributes(obj) -> dict:
        out = {}  # h5netcdf's reading of each value, then xarray's of bytes (utf-8 decoded)
        for k, v in Attributes(obj.attrs, None, h5py).items():
            if k not in ("_FillValue", "missing_value") and isinstance(v, bytes):
                v = v.decode("utf-8")
            out[k] = v
        return out

    def visit(group, where: str, outer: dict[int, str]) -> None:
        datasets, children = [], []  # (name, dataset, its CLASS attribute), (name, group)
        for name, obj in group.items():
            if isinstance(obj, h5py.Group):
                children.append((name, obj))
            else:
                datasets.append((name, obj, obj.attrs.get("CLASS")))
        dims = dict(outer)  # netCDF-4 dimension id -> name; a group sees its ancestors' dimensions
        for name, obj, kind in datasets:
            if kind == b"DIMENSION_SCALE":
                dimid = int(obj.attrs["_Netcdf4Dimid"])
                if dimid in outer:  # ids are the file's, not the group's: an id used twice is not ours to read
                    raise _Unusual(obj.name)
                dims[dimid] = name
        variables = {}
        for name, obj, kind in datasets:
            if kind == b"DIMENSION_SCALE" and bytes(obj.attrs.get("NAME", b"")).startswith(_DIMENSION_ONLY):
                continue  # a dimension without coordinates
            if kind == b"DIMENSION_SCALE" and obj.ndim == 1 and not name.startswith("_nc4_non_coord_"):
                on = (name,)
            elif obj.ndim == 0:
                on = ()
            elif "_Netcdf4Coordinates" in obj.attrs:
                on = tuple(dims[int(i)] for i in obj.attrs["_Netcdf4Coordinates"])
            else:
                raise _Unusual(obj.name)
            variables[name.removeprefix("_nc4_non_coord_")] = xr.Variable(on, _values(obj), attributes(obj))
        groups[where] = xr.Dataset(variables, attrs=attributes(group))
        for name, obj in children:
            visit(obj, f"{where.rstrip('/')}/{name}", dims)

    groups: dict[str, xr.Dataset] = {}
    source = open_read(path)
    try:
        visit(source, "/", {})
        tree = xr.DataTree.from_dict({k: xr.decode_cf(ds) for k, ds in groups.items()})
    except Exception:  # noqa: BLE001 - whatever this reader cannot read, xarray's reads (or says why not)
        source.close()
        return xr.open_datatree(path, engine="h5netcdf")
    tree.set_close(FileCloser(source))
    return tree


def _values(dataset):
    """A dataset's values: strings decoded (numpy's str, as xarray gives them), small arrays
    read now, large ones when indexed."""
    import h5py

    info = h5py.check_string_dtype(dataset.dtype)
    if info is not None and info.length is None:  # variable-length strings
        return np.asarray(dataset.asstr()[()], dtype=str)
    return stored(dataset) if dataset.size > LAZY_ELEMENTS else dataset[()]


def open_read(path: str | Path):
    """An HDF5 file opened for reading by its absolute path, which a lazy array pickles; it stays
    open while the arrays read from it do (closed with the last, or by a tree's :class:`FileCloser`)."""
    import h5py

    return h5py.File(os.path.abspath(path), "r")


def stored(dataset) -> indexing.LazilyIndexedArray:
    """An HDF5 dataset as the data of an xarray variable, read when indexed."""
    return indexing.LazilyIndexedArray(StoredArray(dataset))


class FileCloser:
    """A tree's ``close``: closes the file it reads.  Pickled, it closes nothing: the unpickled
    tree's arrays open the file again for themselves (:class:`StoredArray`)."""

    def __init__(self, source=None):
        self.source = source

    def __call__(self) -> None:
        if self.source is not None:
            self.source.close()

    def __reduce__(self):
        return FileCloser, ()


class StoredArray(BackendArray):
    """An array of a result file, read (outer indexing, as h5py allows) when indexed.  Pickled,
    it is the file's path and the array's name, and opens the file again where it is unpickled."""

    def __init__(self, dataset):
        self.dataset, self.shape, self.dtype = dataset, dataset.shape, dataset.dtype

    def __getstate__(self) -> tuple[str, str]:
        return self.dataset.file.filename, self.dataset.name

    def __setstate__(self, state: tuple[str, str]) -> None:
        import h5py

        path, name = state
        self.__init__(h5py.File(path, "r")[name])

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.OUTER_1VECTOR,
                                                  self._read)

    def _read(self, key: tuple) -> np.ndarray:
        return np.asarray(self.dataset[key])


class DamagedChunk(ValueError):
    """A chunk file's data do not match the checksums written with them."""


def stored_dtype(dtype) -> np.dtype:
    """The type a large array has in a chunk file and in the result file: booleans are int8 there."""
    return np.dtype(np.int8) if np.dtype(dtype) == bool else np.dtype(dtype)


def compress_chunk(v: np.ndarray, rows: int, draw_axis: int) -> bytes:
    """``v``'s bytes as one HDF5 chunk of ``rows`` draws under :data:`CHUNK_FILTER`: the draws
    (axis ``draw_axis``, after a leading chain axis or none) padded with zeros to ``rows``, deflated.
    Booleans are stored as int8 (as the result file stores them)."""
    data = np.ascontiguousarray(v, stored_dtype(v.dtype))
    n = data.shape[draw_axis]
    if n < rows:
        pad = np.zeros(data.shape[:draw_axis] + (rows,) + data.shape[draw_axis + 1:], data.dtype)
        pad[(slice(None),) * draw_axis + (slice(0, n),)] = data
        data = pad
    return zlib.compress(data.data, 1)


@dataclass(frozen=True)
class ChunkArray:
    """A chunk's per-draw array over agents or buses as its chunk file keeps it: one chunk of
    ``rows`` draws, compressed as the result file compresses it (:func:`compress_chunk`), so that
    the main process copies the compressed bytes into the result file (:meth:`raw`) instead of
    receiving the array from the worker and compressing it again.  ``sha256``: of those bytes."""

    path: str
    name: str  # the dataset in the chunk file
    shape: tuple[int, ...]  # as computed: (draw, ...) or (chain, draw, ...)
    dtype: np.dtype
    draw_axis: int
    rows: int
    sha256: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def raw(self) -> bytes:
        """The compressed chunk, checked against its SHA-256 (:class:`DamagedChunk` if it differs)."""
        return read_raw([self])[0]

    def values(self) -> np.ndarray:
        """The array itself (decompressed)."""
        full = self.shape[:self.draw_axis] + (self.rows,) + self.shape[self.draw_axis + 1:]
        v = np.frombuffer(zlib.decompress(self.raw()), stored_dtype(self.dtype)).reshape(full)
        return v[(slice(None),) * self.draw_axis + (slice(0, self.shape[self.draw_axis]),)].astype(self.dtype)


def read_raw(arrays: list[ChunkArray]) -> list[bytes]:
    """The compressed chunks of ``arrays``, each checked against its SHA-256 (:class:`DamagedChunk`
    if one differs); each chunk file opened once."""
    import h5py

    out: list[bytes | None] = [None] * len(arrays)
    for path in dict.fromkeys(x.path for x in arrays):
        with h5py.File(path, "r") as f:
            for i, x in enumerate(arrays):
                if x.path == path:
                    mask, out[i] = f[x.name].id.read_direct_chunk((0,) * len(x.shape))
                    if mask or hashlib.sha256(out[i]).hexdigest() != x.sha256:
                        raise DamagedChunk(f"{x.path}: {x.name}: its data do not match their SHA-256")
    return out
