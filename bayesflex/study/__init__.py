"""The study: chunks of draws through priors, load flow and heuristic in parallel (``engine``); the result's
groups and names (``schema``), where the chunks gather (``store``: in memory or streamed to the file), the tree
with its summaries and provenance (``results``) and the result file (``files``); checkpoints, the aggregator's
planned positions as an input, and the screening of model uncertainty.

Imports: ``priors``, ``io``, ``grid``, ``core``, ``errors``.
"""
