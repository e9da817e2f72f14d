"""The random streams of a sample, each a child of ``numpy.random.SeedSequence(seed)``.

A built-in technology's streams sit at fixed positions, so that adding, removing or
changing one technology never changes another's random numbers; a registered technology's
streams are derived from its name (not from its place in the registry), for the same reason.
(The baseload's draws still depend on the EV, heat-pump and refrigeration ratings, which bound
it: see ``sampling._baseload``.)
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["MODELS", "STREAMS", "pymc_stream", "stream", "technology_stream"]

#: a built-in technology's PyMC parameters draw from the child of the PyMC stream at its
#: position here: never reorder
MODELS = ("baseload", "pv", "ev", "heat_pump", "battery", "refrigeration")
#: position of each stream in SeedSequence(seed).spawn(...): never reorder
STREAMS = {
    "pymc": 0, "baseload": 1, "pv": 2, "pv_ownership": 3, "posterior": 4, "ev": 5, "ev_ownership": 6,
    "heat_pump": 7, "heat_pump_ownership": 8, "battery_ownership": 9, "refrigeration_ownership": 10,
}


def _named(what: str) -> int:
    """A spawn key from a name: 64 bits of its SHA-256, above every position of ``STREAMS``."""
    return (1 << 64) | int.from_bytes(hashlib.sha256(what.encode()).digest()[:8], "little")


def stream(seed: int, name: str) -> np.random.SeedSequence:
    """The stream at ``STREAMS[name]``: ``SeedSequence(seed).spawn(...)[STREAMS[name]]``."""
    return np.random.SeedSequence(seed, spawn_key=(STREAMS[name],))


def technology_stream(seed: int, tech: str, use: str) -> np.random.SeedSequence:
    """Technology ``tech``'s stream for ``use``: "simulate" (its simulation) or "ownership"
    (who has it)."""
    if tech in MODELS:
        return stream(seed, tech if use == "simulate" else f"{tech}_{use}")
    return np.random.SeedSequence(seed, spawn_key=(_named(f"{use}/{tech}"),))


def pymc_stream(pymc: np.random.SeedSequence, tech: str) -> np.random.SeedSequence:
    """The child of the PyMC stream from which technology ``tech``'s parameters draw."""
    key = MODELS.index(tech) if tech in MODELS else _named(f"pymc/{tech}")
    return np.random.SeedSequence(pymc.entropy, spawn_key=(*pymc.spawn_key, key))
