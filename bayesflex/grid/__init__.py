"""The network and its physics, pure numpy/scipy: the ``Feeder`` data type and its validation, symmetrical
components, the factorised network model, the batched load flow and the per-phase heuristic.

Imports: ``core``, ``errors``.  Reads no file.
"""
