"""Fused element-wise steps of the load flow, compiled with numba.

numpy evaluates ``a / conj(b)`` or ``min |v0 + d|`` one operation at a time, each
writing a temporary the size of the batch; on the IEEE European LV feeder those
passes took more time than the matrix products between them.  These kernels do
each such sequence in one pass over the batch, with the same floating-point
operations in the same order as the numpy expressions they replace (named in each
docstring), so their results are the same bit for bit (``tests/test_kernels.py``).
The matrix products stay with numpy's BLAS.

They release the GIL (``nogil``), so that :mod:`bayesflex.grid.loadflow` can run
chunks of a batch in threads; each kernel is single-threaded.  Compiled on first use
and cached on disk by numba (``cache=True``), as Python caches byte code.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["div_conj", "add_and_step", "segment_min_max_abs2"]

_jit = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")


@_jit
def div_conj(c: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:
    """``out = c / conj(v)`` (n, L) complex128, as numpy divides complex numbers
    (Smith's method: no overflow for large or small ``|v|``)."""
    n, m = c.shape
    for r in range(n):
        for j in range(m):
            ar, ai = c[r, j].real, c[r, j].imag
            br, bi = v[r, j].real, -v[r, j].imag
            abr, abi = abs(br), abs(bi)
            if abr >= abi:
                if abr == 0.0 and abi == 0.0:
                    out[r, j] = complex(ar / abr, ai / abr)
                else:
                    rat = bi / br
                    scl = 1.0 / (br + bi * rat)
                    out[r, j] = complex((ar + ai * rat) * scl, (ai - ar * rat) * scl)
            else:
                rat = br / bi
                scl = 1.0 / (bi + br * rat)
                out[r, j] = complex((ar * rat + ai) * scl, (ai * rat - ar) * scl)


@_jit
def add_and_step(vn: np.ndarray, v0: np.ndarray, va: np.ndarray, step2: np.ndarray) -> None:
    """``vn += v0`` in place and ``step2 = max |vn - va|^2`` over each row (NaN if any
    term is NaN): numpy's ``vn += v0; d = vn - va; (d.real**2 + d.imag**2).max(axis=1)``."""
    n, m = vn.shape
    for r in range(n):
        best = -np.inf
        for j in range(m):
            x = vn[r, j] + v0[j]
            vn[r, j] = x
            dr = x.real - va[r, j].real
            di = x.imag - va[r, j].imag
            s = dr * dr + di * di
            if s != s:
                best = s
                for k in range(j + 1, m):  # finish the in-place sum of the row
                    vn[r, k] = vn[r, k] + v0[k]
                break
            if s > best:
                best = s
        step2[r] = best


@_jit
def segment_min_max_abs2(v0: np.ndarray, d: np.ndarray, starts: np.ndarray, vmin: np.ndarray,
                         vmax: np.ndarray) -> None:
    """Per row of ``d`` (n, R) (complex64 or complex128) and per segment ``starts[k]:starts[k+1]`` of its
    columns: the smallest and largest ``|v0 + d|^2`` (``v0`` (R,) complex128, the sum in
    float64; NaN if any term is NaN) into ``vmin``, ``vmax`` (n, segments): numpy's
    ``v = v0 + d; v2 = v.real**2; v2 += v.imag**2`` then ``minimum/maximum.reduceat``."""
    n, width = d.shape
    nseg = len(starts)
    for r in range(n):
        for k in range(nseg):
            a = starts[k]
            b = starts[k + 1] if k + 1 < nseg else width
            lo, hi = np.inf, -np.inf
            for j in range(a, b):
                re = v0[j].real + np.float64(d[r, j].real)
                im = v0[j].imag + np.float64(d[r, j].imag)
                s = re * re
                s += im * im
                if s != s:
                    lo = hi = s
                    break
                if s < lo:
                    lo = s
                if s > hi:
                    hi = s
            vmin[r, k] = lo
            vmax[r, k] = hi
