"""The study: chunks of draws through priors, load flow and heuristic in parallel (``engine``), the result's
schema, store and NetCDF file (``results``), checkpoints, the aggregator's planned positions as an input, and the
screening of model uncertainty.

Imports: ``priors``, ``io``, ``grid``, ``core``, ``errors``.
"""
