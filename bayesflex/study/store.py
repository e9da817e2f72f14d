"""Where a study's chunks go as they arrive: one interface, kept in memory or streamed to a file.

The engine hands each finished chunk to a :class:`Store` (:meth:`Store.add`),
in chunk order, and gives it to :func:`bayesflex.study.results.build_tree` when
the last one is in (or :meth:`Store.discard` s it when the study fails).  It
never asks which store it has, as emcee's samplers never ask which backend
they write to: :class:`MemoryStore` keeps everything in memory and returns a
tree built there; :class:`FileStore` streams the large arrays into the result
file as they arrive, so that memory stays bounded whatever the number of draws.
A chunk that went through its chunk file brings its large arrays compressed,
as the result file stores them (:class:`~bayesflex.study.files.ChunkArray`):
they are copied into the file as they are.  When a loky worker wrote that file,
the main process neither receives those arrays nor compresses them.

Both keep in memory what the summaries are computed from: the per-draw
reductions without agents or buses (``small``), the probability counts
(``counts``), the sums over draws of the causes of congestion (``sums``), the
portfolio's per-draw totals (``portfolio``) and the sampled parameters
(``rest``).  What goes where is :mod:`bayesflex.study.schema`'s.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import xarray as xr

from bayesflex.core.outdir import ensure_space, fresh
from bayesflex.study.files import (
    CHUNK_FILTER,
    WRITE_ENGINE,
    ChunkArray,
    FileCloser,
    compressed,
    install,
    open_read,
    read_raw,
    stored,
    stored_dtype,
)
from bayesflex.study.schema import COUNTS, PER_DRAW, RESULT_FILE, SUMS, is_big, is_big_physics

__all__ = ["FileStore", "MemoryStore", "Store", "chunk_rows"]


class Store(ABC):
    """A study's chunk results, gathered in chunk order.

    Arrays per draw over agents or buses (the agent powers, adjustments,
    headroom, full voltages, agent states) go straight to their place, which
    the implementation decides (:meth:`_create`, :meth:`_put`); everything
    else is gathered here.  :meth:`finish` turns the summary groups that
    :func:`~bayesflex.study.results.build_tree` computed from it into the tree.

    ``draws``: the study's draws; ``kind``: "prior" or "posterior";
    ``buses``: the feeder's bus names; ``chunk_draws``: the engine's chunk.  The portfolio's
    sums over its agents come with each chunk (``part["portfolio"]``).
    """

    def __init__(self, draws: int, kind: str, buses: tuple[str, ...], *, chunk_draws: int):
        self.draws, self.kind, self.buses = draws, kind, list(buses)
        self.chunk_draws = chunk_draws
        self.small: dict[str, np.ndarray] = {}  # physics per draw, without agent/bus
        self.counts: dict[str, np.ndarray] = {}
        self.sums: dict[str, np.ndarray] = {}  # sums over draws (schema.SUMS), chunk by chunk
        self.big: dict[tuple[str, str], object] = {}  # (group, name) -> where the array goes
        self.big_meta: dict[tuple[str, str], tuple] = {}  # -> (dims, shape per draw, dtype, attrs)
        self.portfolio: dict[str, np.ndarray] = {}  # (draw, time) sums over the portfolio's agents
        self.rest: list[xr.Dataset] = []
        self.coords: dict | None = None

    # -- what the engine calls ---------------------------------------------------------------
    def add(self, part: dict, a: int, b: int) -> None:
        """Chunk results ``part`` (what a chunk returns, or what its chunk file gave back: the
        large arrays as :class:`~bayesflex.study.files.ChunkArray`) of draws ``a`` to ``b - 1``."""
        ds = part.pop("draws")
        big = self._big(part, ds)
        self._reserve(big, a, b)
        if self.coords is None:
            self._allocate(ds, big)
        self._put({key: v for key, (_, _, v) in big.items()}, a, b)
        for k, v in part.pop("portfolio").items():
            if k not in self.portfolio:
                self.portfolio[k] = np.empty((self.draws,) + v.shape[1:])
            self.portfolio[k][a:b] = v
        for k, v in part.items():
            if k in COUNTS:
                self.counts[k] = self.counts[k] + v if k in self.counts else v.astype(np.int64)
            elif k in SUMS:
                self.sums[k] = self.sums[k] + v if k in self.sums else np.array(v)
            else:
                if k not in self.small:
                    self.small[k] = np.empty((self.draws,) + v.shape[1:], v.dtype)
                self.small[k][a:b] = v
        self.rest.append(ds.drop_vars([n for _, n in big if n in ds]).assign_coords(draw=np.arange(a, b)))

    def close(self) -> None:
        """Release what the store holds open (nothing, unless it writes a file)."""

    def discard(self) -> None:
        """Drop an unfinished study: a partial one is never left to be taken for a result."""

    @abstractmethod
    def finish(self, groups: dict[str, xr.Dataset], attrs: dict) -> xr.DataTree:
        """The study's tree: the summary ``groups`` (name -> dataset) with the large arrays
        put in their groups, and the root ``attrs``."""

    # -- what an implementation decides ------------------------------------------------------
    def _reserve(self, big: dict, a: int, b: int) -> None:
        """Before a chunk's large arrays ``big`` are placed: room for them (nothing to check in memory)."""

    @abstractmethod
    def _create(self) -> None:
        """Make a place for every large array (``big_meta``) in ``big``."""

    @abstractmethod
    def _put(self, arrays: dict[tuple[str, str], object], a: int, b: int) -> None:
        """Put draws ``a`` to ``b - 1`` of the large arrays (key -> an array, or a
        :class:`~bayesflex.study.files.ChunkArray`) in their places."""

    # -- shared --------------------------------------------------------------------------------
    @staticmethod
    def _tree(groups: dict[str, xr.Dataset], attrs: dict, big: dict[tuple[str, str], xr.Variable]) -> xr.DataTree:
        """The summary ``groups`` with the large arrays ``big`` ((group, name) -> variable) put in
        their groups, and the root ``attrs``."""
        tree = dict(groups)
        for (g, name), var in big.items():
            tree[g] = tree[g].assign({name: var})
        tree["/"] = xr.Dataset(attrs=attrs)
        return xr.DataTree.from_dict(tree)

    def _big(self, part: dict, ds: xr.Dataset) -> dict[tuple[str, str], tuple]:
        """The chunk's large arrays, taken out of ``part``: (group, name) -> (dims, attrs, array),
        the array (draw, ...) or as its chunk file keeps it."""
        big = {}
        for n in [n for n in part if is_big_physics(n)]:
            dims, group, attrs = PER_DRAW[n]
            big[(group, n)] = (("chain", "draw") + dims, attrs, part.pop(n))
        var = ds.variables
        drawn = {n: (var[n].dims, dict(var[n].attrs), var[n].values[0]) for n in ds.data_vars if is_big(var[n].dims)}
        for n, (dims, attrs, v) in (drawn | part.pop("stored_draws", {})).items():
            big[(f"{self.kind}_predictive" if dims[-1] == "phase" else self.kind, n)] = (dims, attrs, v)
        return big

    def _allocate(self, ds: xr.Dataset, big: dict) -> None:
        self.coords = {"chain": [0], "draw": np.arange(self.draws),
                       **{k: ds.coords[k].values for k in ("time", "agent", "phase")}}
        for key, (dims, attrs, v) in big.items():
            self.big_meta[key] = (dims, v.shape[len(v.shape) - len(dims) + 2:], v.dtype, attrs)
        self._create()


def chunk_rows(draws: int, chunk_draws: int) -> int:
    """Draws per HDF5 chunk of a result's large arrays (and of a chunk file's, which are copied there)."""
    return min(chunk_draws, draws)


def _values(v) -> np.ndarray:
    """A large array's draws (draw, ...), from a chunk file if it is kept there."""
    if isinstance(v, ChunkArray):
        return v.values().reshape(v.shape[v.draw_axis:])
    return v


class MemoryStore(Store):
    """Every array in memory; :meth:`finish` builds the tree there."""

    def _create(self) -> None:
        for key, (_, shape, dtype, _) in self.big_meta.items():
            self.big[key] = np.empty((1, self.draws) + shape, dtype)

    def _put(self, arrays: dict[tuple[str, str], object], a: int, b: int) -> None:
        for key, v in arrays.items():
            self.big[key][0, a:b] = _values(v)

    def finish(self, groups: dict[str, xr.Dataset], attrs: dict) -> xr.DataTree:
        return self._tree(groups, attrs, {key: xr.Variable(self.big_meta[key][0], arr, self.big_meta[key][3])
                                          for key, arr in self.big.items()})


class FileStore(Store):
    """The large arrays streamed into ``path``, a NetCDF file being written (compressed
    variables, one HDF5 chunk per engine chunk of draws); :meth:`finish` appends the
    summary groups, renames it to ``final`` (default: ``result.nc`` beside it) with its
    checksum and gives the tree the file holds, its large arrays read from the file.  Booleans
    are stored as int8 with the attribute ``dtype = "bool"``."""

    def __init__(self, draws: int, kind: str, buses: tuple[str, ...], path: Path, *, chunk_draws: int,
                 final: Path | None = None):
        super().__init__(draws, kind, buses, chunk_draws=chunk_draws)
        self.rows = chunk_rows(draws, chunk_draws)
        self.path = path
        self.final = final or path.with_name(RESULT_FILE)  # renamed to, when complete
        self._file = None

    def _reserve(self, big: dict, a: int, b: int) -> None:
        ensure_space(self.path.parent, sum(v.nbytes for _, _, v in big.values()), f"draws {a}-{b - 1} of the result")

    def _create(self) -> None:
        import h5netcdf
        import h5py

        groups = sorted({g for g, _ in self.big_meta})
        fresh(self.path)
        for i, g in enumerate(groups):
            dims = {d for (gg, _), (dd, *_rest) in self.big_meta.items() if gg == g for d in dd}
            coords = {k: v for k, v in self.coords.items() if k in dims}
            if "bus" in dims:
                coords["bus"] = self.buses
            xr.Dataset(coords=coords).to_netcdf(self.path, mode="w" if i == 0 else "a", group=g,
                                               engine="h5netcdf")
        with h5netcdf.File(self.path, "a") as f:
            for (g, n), (dims, shape, dtype, attrs) in self.big_meta.items():
                var = f[g].create_variable(n, dims, stored_dtype(dtype), chunks=(1, self.rows) + tuple(shape),
                                           **CHUNK_FILTER)
                var.attrs.update(_stored_attrs(attrs, dtype))
        self._file = h5py.File(self.path, "a")  # the chunks written through h5py: dimensions are set
        self.big = {(g, n): self._file[f"{g}/{n}"] for g, n in self.big_meta}

    def _put(self, arrays: dict[tuple[str, str], object], a: int, b: int) -> None:
        """Chunks kept compressed in a chunk file are copied as they are (their SHA-256 checked)."""
        kept = {key: v for key, v in arrays.items() if isinstance(v, ChunkArray) and self._copies(key, v, a)}
        for key, raw in zip(kept, read_raw(list(kept.values()))):
            target = self.big[key]
            target.id.write_direct_chunk((0, a) + (0,) * (target.ndim - 2), raw)
        for key, v in arrays.items():
            if key not in kept:
                v = _values(v)
                self.big[key][0, a:b] = v.astype(stored_dtype(v.dtype), copy=False)

    def _copies(self, key: tuple[str, str], v: ChunkArray, a: int) -> bool:
        """Whether ``v``'s compressed bytes are, as they are, the chunk of draws from ``a`` of ``key``:
        the same rows per chunk, starting on a chunk, the same type and shape per draw."""
        _, shape, dtype, _ = self.big_meta[key]
        return (v.rows == self.rows and a % self.rows == 0 and v.dtype == dtype
                and tuple(v.shape[v.draw_axis + 1:]) == tuple(shape))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def discard(self) -> None:
        """Close and delete the unfinished file."""
        try:
            self.close()
        except Exception:  # noqa: BLE001 - a file that failed to write may fail to close: it is deleted anyway
            self._file = None
        self.path.unlink(missing_ok=True)

    def finish(self, groups: dict[str, xr.Dataset], attrs: dict) -> xr.DataTree:
        """The tree as :func:`~bayesflex.study.files.open_study` reads it from the finished file:
        the summary groups as they were written (from memory), each large array read from the
        file when indexed.  Opening the whole file instead costs ~10 ms a variable (~200)."""
        self.close()
        ensure_space(self.path.parent, sum(ds.nbytes for ds in groups.values()), "the result's summary groups")
        summary = xr.DataTree.from_dict({"/": xr.Dataset(attrs=attrs), **groups})  # written in one opening
        summary.to_netcdf(self.path, mode="a", engine=WRITE_ENGINE,
                          encoding={f"/{g}": compressed(ds) for g, ds in groups.items()})
        install(self.path, self.final)
        source = open_read(self.final)
        big = {}
        for (g, name), (dims, _, dtype, var_attrs) in self.big_meta.items():
            var = xr.Variable(dims, stored(source[f"{g}/{name}"]), _stored_attrs(var_attrs, dtype))
            big[(g, name)] = xr.conventions.decode_cf_variable(name, var)  # int8 -> bool
        tree = self._tree(groups, attrs, big)
        tree.set_close(FileCloser(source))
        return tree


def _stored_attrs(attrs: dict, dtype) -> dict:
    """A large array's attributes in the file: booleans are int8 there, marked ``dtype = "bool"``."""
    return {**attrs, **({"dtype": "bool"} if dtype == bool else {})}
