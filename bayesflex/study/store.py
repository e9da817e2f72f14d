"""Where a study's chunks go as they arrive: one interface, kept in memory or streamed to a file.

The engine hands each finished chunk to a :class:`Store` (:meth:`Store.add`),
in chunk order, and gives it to :func:`bayesflex.study.results.build_tree` when
the last one is in (or :meth:`Store.discard` s it when the study fails).  It
never asks which store it has, as emcee's samplers never ask which backend
they write to: :class:`MemoryStore` keeps everything in memory and returns a
tree built there; :class:`FileStore` streams the large arrays into the result
file as they arrive, so that memory stays bounded whatever the number of draws.

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
from bayesflex.study.files import WRITE_ENGINE, FileCloser, compressed, install, open_read, stored
from bayesflex.study.schema import COUNTS, PER_DRAW, PORTFOLIO, RESULT_FILE, SUMS, is_big

__all__ = ["FileStore", "MemoryStore", "Store"]


class Store(ABC):
    """A study's chunk results, gathered in chunk order.

    Arrays per draw over agents or buses (the agent powers, adjustments,
    headroom, full voltages, agent states) go straight to their place, which
    the implementation decides (:meth:`_create`, :meth:`_put`); everything
    else is gathered here.  :meth:`finish` turns the summary groups that
    :func:`~bayesflex.study.results.build_tree` computed from it into the tree.

    ``draws``: the study's draws; ``kind``: "prior" or "posterior";
    ``buses``: the feeder's bus names; ``chunk_draws``: the engine's chunk;
    ``portfolio``: agent indices of the portfolio (None: every agent).
    """

    def __init__(self, draws: int, kind: str, buses: tuple[str, ...], *, chunk_draws: int,
                 portfolio: np.ndarray | None = None):
        self.draws, self.kind, self.buses = draws, kind, list(buses)
        self.chunk_draws = chunk_draws
        self.portfolio_agents = portfolio
        self.small: dict[str, np.ndarray] = {}  # physics per draw, without agent/bus
        self.counts: dict[str, np.ndarray] = {}
        self.sums: dict[str, np.ndarray] = {}  # sums over draws (schema.SUMS), chunk by chunk
        self.big: dict[tuple[str, str], object] = {}  # (group, name) -> where the array goes
        self.big_meta: dict[tuple[str, str], tuple] = {}  # -> (dims, shape, dtype, attrs, from physics?)
        self.portfolio: dict[str, np.ndarray] = {}  # (draw, time) sums over agents
        self.rest: list[xr.Dataset] = []
        self.coords: dict | None = None

    # -- what the engine calls ---------------------------------------------------------------
    def add(self, part: dict, a: int, b: int) -> None:
        """Chunk results ``part`` (what a chunk returns) of draws ``a`` to ``b - 1``."""
        ds = part.pop("draws")
        self._reserve(part, ds, a, b)
        if self.coords is None:
            self._allocate(part, ds)
        for (g, n), (_, _, _, _, from_physics) in self.big_meta.items():
            v = part.pop(n) if from_physics else ds[n].values[0]
            if n in PORTFOLIO:
                self._sum(PORTFOLIO[n], v, a, b)
            self._put((g, n), v, a, b)
        for k, v in part.items():
            if k in COUNTS:
                self.counts[k] = self.counts[k] + v if k in self.counts else v.astype(np.int64)
            elif k in SUMS:
                self.sums[k] = self.sums[k] + v if k in self.sums else np.array(v)
            else:
                if k not in self.small:
                    self.small[k] = np.empty((self.draws,) + v.shape[1:], v.dtype)
                self.small[k][a:b] = v
        big = [n for g, n in self.big_meta if g not in ("heuristic", "network")]
        self.rest.append(ds.drop_vars(big).assign_coords(draw=np.arange(a, b)))

    def close(self) -> None:
        """Release what the store holds open (nothing, unless it writes a file)."""

    def discard(self) -> None:
        """Drop an unfinished study: a partial one is never left to be taken for a result."""

    @abstractmethod
    def finish(self, groups: dict[str, xr.Dataset], attrs: dict) -> xr.DataTree:
        """The study's tree: the summary ``groups`` (name -> dataset) with the large arrays
        put in their groups, and the root ``attrs``."""

    # -- what an implementation decides ------------------------------------------------------
    def _reserve(self, part: dict, ds: xr.Dataset, a: int, b: int) -> None:
        """Before a chunk is placed: room for it (nothing to check in memory)."""

    @abstractmethod
    def _create(self) -> None:
        """Make a place for every large array (``big_meta``) in ``big``."""

    @abstractmethod
    def _put(self, key: tuple[str, str], v: np.ndarray, a: int, b: int) -> None:
        """Put draws ``a`` to ``b - 1`` of the large array ``key`` in its place."""

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

    def _sum(self, name: str, v: np.ndarray, a: int, b: int) -> None:
        if name not in self.portfolio:
            self.portfolio[name] = np.empty((self.draws,) + v.shape[1:2])
        if self.portfolio_agents is not None:
            v = v[:, :, self.portfolio_agents]
        self.portfolio[name][a:b] = v.sum(axis=(2, 3), dtype=np.float64)

    def _allocate(self, part: dict, ds: xr.Dataset) -> None:
        self.coords = {"chain": [0], "draw": np.arange(self.draws),
                       **{k: ds.coords[k].values for k in ("time", "agent", "phase")}}
        for k, v in part.items():
            if k not in COUNTS and k not in SUMS and is_big(("draw",) + PER_DRAW[k][0]):
                dims, group, attrs = PER_DRAW[k]
                self.big_meta[(group, k)] = (("chain", "draw") + dims, v.shape[1:], v.dtype, attrs, True)
        for n in ds.data_vars:
            if is_big(ds[n].dims):
                group = f"{self.kind}_predictive" if ds[n].dims[-1] == "phase" else self.kind
                self.big_meta[(group, n)] = (ds[n].dims, ds[n].shape[2:], ds[n].dtype, dict(ds[n].attrs), False)
        self._create()


class MemoryStore(Store):
    """Every array in memory; :meth:`finish` builds the tree there."""

    def _create(self) -> None:
        for key, (_, shape, dtype, _, _) in self.big_meta.items():
            self.big[key] = np.empty((1, self.draws) + shape, dtype)

    def _put(self, key: tuple[str, str], v: np.ndarray, a: int, b: int) -> None:
        self.big[key][0, a:b] = v

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
                 portfolio: np.ndarray | None = None, final: Path | None = None):
        super().__init__(draws, kind, buses, chunk_draws=chunk_draws, portfolio=portfolio)
        self.path = path
        self.final = final or path.with_name(RESULT_FILE)  # renamed to, when complete
        self._file = None

    def _reserve(self, part: dict, ds: xr.Dataset, a: int, b: int) -> None:
        ensure_space(self.path.parent, sum(np.asarray(v).nbytes for v in part.values()) + ds.nbytes,
                     f"draws {a}-{b - 1} of the result")

    def _create(self) -> None:
        import h5netcdf

        groups = sorted({g for g, _ in self.big_meta})
        fresh(self.path)
        for i, g in enumerate(groups):
            dims = {d for (gg, _), (dd, *_rest) in self.big_meta.items() if gg == g for d in dd}
            coords = {k: v for k, v in self.coords.items() if k in dims}
            if "bus" in dims:
                coords["bus"] = self.buses
            xr.Dataset(coords=coords).to_netcdf(self.path, mode="w" if i == 0 else "a", group=g,
                                               engine="h5netcdf")
        self._file = h5netcdf.File(self.path, "a")
        for (g, n), (dims, shape, dtype, attrs, _) in self.big_meta.items():
            dt = np.int8 if dtype == bool else dtype
            chunks = (1, min(self.chunk_draws, self.draws)) + tuple(shape)
            var = self._file[g].create_variable(n, dims, dt, chunks=chunks, compression="gzip",
                                                compression_opts=1, shuffle=True)
            var.attrs.update(_stored_attrs(attrs, dtype))
            self.big[(g, n)] = var

    def _put(self, key: tuple[str, str], v: np.ndarray, a: int, b: int) -> None:
        if v.dtype == bool:
            v = v.astype(np.int8)
        self.big[key][0, a:b] = v

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
        for (g, name), (dims, _, dtype, var_attrs, _) in self.big_meta.items():
            var = xr.Variable(dims, stored(source[f"{g}/{name}"]), _stored_attrs(var_attrs, dtype))
            big[(g, name)] = xr.conventions.decode_cf_variable(name, var)  # int8 -> bool
        tree = self._tree(groups, attrs, big)
        tree.set_close(FileCloser(source))
        return tree


def _stored_attrs(attrs: dict, dtype) -> dict:
    """A large array's attributes in the file: booleans are int8 there, marked ``dtype = "bool"``."""
    return {**attrs, **({"dtype": "bool"} if dtype == bool else {})}
