"""Symmetrical components: the sequence <-> phase transforms of three-phase elements.

Lines and transformers are often given by their zero-, positive- and negative-sequence
values; the load flow works in the phase frame (a, b, c).  ``A`` is the Fortescue matrix
with ``a = exp(2j pi / 3)``: ``V_abc = A @ V_012``.
"""

import numpy as np

__all__ = ["PHASE_TO_SEQ", "SEQ_TO_PHASE", "phase_to_sequence_matrix", "sequence_to_phase_matrix"]

_A = np.exp(2j * np.pi / 3)
#: V_abc = SEQ_TO_PHASE @ V_012
SEQ_TO_PHASE = np.array([[1, 1, 1], [1, _A**2, _A], [1, _A, _A**2]])
PHASE_TO_SEQ = np.linalg.inv(SEQ_TO_PHASE)


def sequence_to_phase_matrix(z0: complex, z1: complex, z2: complex | None = None) -> np.ndarray:
    """3x3 phase-frame matrix of an element given by its sequence values.

    For a symmetric (transposed) element ``z2 = z1`` and the result is the
    familiar ``Zs = (2 z1 + z0) / 3`` on the diagonal, ``Zm = (z0 - z1) / 3``
    off it.
    """
    z2 = z1 if z2 is None else z2
    return SEQ_TO_PHASE @ np.diag([z0, z1, z2]) @ PHASE_TO_SEQ


def phase_to_sequence_matrix(z_abc: np.ndarray) -> np.ndarray:
    """Sequence-frame matrix ``A^-1 Z_abc A``; diagonal for a symmetric element."""
    return PHASE_TO_SEQ @ z_abc @ SEQ_TO_PHASE
