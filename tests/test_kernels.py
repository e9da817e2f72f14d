"""The load flow's fused kernels give numpy's numbers bit for bit, and the batch's
chunks give the same numbers in threads as in one thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import threadpoolctl

import bayesflex as bf
from bayesflex.grid import loadflow
from bayesflex.grid.kernels import add_and_step, div_conj, segment_min_max_abs2


def _complex(rng, shape, spread=0):
    """Complex numbers whose parts span 10^-spread .. 10^spread."""
    scale = 10.0 ** rng.uniform(-spread, spread, shape) if spread else 1.0
    return rng.normal(size=shape) * scale + 1j * rng.normal(size=shape) * scale


def test_division_by_the_conjugate_is_numpys():
    rng = np.random.default_rng(1)
    c, v = _complex(rng, (300, 55), 4), _complex(rng, (300, 55), 4)
    v[0, 0], v[1, 1], v[2, 2] = 0, 1e-300 + 0j, 3j  # zero, tiny, purely imaginary (|Im| > |Re|)
    c[3, 3], v[4, 4] = np.nan, np.inf
    out = np.empty_like(c)
    div_conj(c, v, out)
    with np.errstate(all="ignore"):
        assert np.array_equal(out, c / np.conj(v), equal_nan=True)


def test_add_and_step_is_numpys_including_nan_rows():
    rng = np.random.default_rng(2)
    vn, va, v0 = _complex(rng, (200, 55)), _complex(rng, (200, 55)), _complex(rng, 55)
    vn[5, 7] = np.nan  # a row whose step is NaN: its sum must still be complete
    vn[6, 54] = np.inf
    ours, step2 = vn.copy(), np.empty(len(vn))
    add_and_step(ours, v0, va, step2)
    theirs = vn.copy()
    theirs += v0
    d = theirs - va
    with np.errstate(invalid="ignore"):
        want = (d.real**2 + d.imag**2).max(axis=1)
    assert np.array_equal(ours, theirs, equal_nan=True)
    assert np.array_equal(step2, want, equal_nan=True)
    assert np.isnan(step2[5]) and np.isinf(step2[6])


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_segment_min_max_is_numpys_reduceat(dtype):
    rng = np.random.default_rng(3)
    width, starts = 500, np.array([0, 120, 333])
    v0 = np.exp(1j * rng.uniform(-np.pi, np.pi, width))
    d = (0.05 * _complex(rng, (100, width))).astype(dtype)
    d[9, 200] = np.nan  # in the second segment only
    lo, hi = np.empty((100, 3)), np.empty((100, 3))
    segment_min_max_abs2(v0, d, starts, lo, hi)
    v = v0 + d
    v2 = v.real**2
    v2 += v.imag**2
    assert np.array_equal(lo, np.minimum.reduceat(v2, starts, axis=1), equal_nan=True)
    assert np.array_equal(hi, np.maximum.reduceat(v2, starts, axis=1), equal_nan=True)
    assert np.isnan(lo[9, 1]) and np.isfinite(lo[9, [0, 2]]).all()


@pytest.mark.parametrize("full", [False, True])
def test_chunks_in_threads_give_the_numbers_of_one_thread(ieee, full, monkeypatch):
    """Five chunks of 40 scenarios, some beyond collapse (Newton's and NaN rows too): solved in
    two threads (each with one BLAS thread) and in one thread, identical."""
    f = np.random.default_rng(4).uniform(0, 8, size=(200, ieee.n_agent, 3))
    p, q = ieee.agent_p_kw * f, ieee.agent_q_kvar * f
    threads = set()

    def solve_load_nodes(*args, **kw):
        threads.add(threading.current_thread().name)
        return loadflow_solve_load_nodes(*args, **kw)

    loadflow_solve_load_nodes = loadflow.solve_load_nodes
    monkeypatch.setattr(loadflow, "solve_load_nodes", solve_load_nodes)
    with threadpoolctl.threadpool_limits(limits=2):
        threaded = bf.solve_loadflow(ieee, p, q, full=full, chunk_size=40)
    assert len(threads) == 2 and all(t.startswith("bayesflex-lf") for t in threads), threads
    threads.clear()
    with threadpoolctl.threadpool_limits(limits=1):
        single = bf.solve_loadflow(ieee, p, q, full=full, chunk_size=40)
    assert threads == {threading.current_thread().name}
    assert 0 < (~single.converged).sum() < 200
    for name in type(single).__dataclass_fields__:
        a, b = getattr(threaded, name), getattr(single, name)
        if isinstance(a, np.ndarray):
            assert np.array_equal(a, b, equal_nan=True), name
