"""bayesflex: a Bayesian probabilistic risk engine for low-voltage networks.

Public surface (see DESIGN.md):

    feeder = bf.load_feeder("ieee_eu_lv")
    lf = bf.solve_loadflow(feeder, p_kw, q_kvar)            # full results
    lf = bf.solve_loadflow(feeder, p_kw, q_kvar, full=False)  # reductions only
    ds = bf.sample_priors(feeder, "default", draws=1000, seed=1)  # agent powers
    tree = bf.run_study(feeder="ieee_eu_lv", priors="default", draws=1000, seed=1)  # xarray.DataTree
    dec = bf.decide(tree, "uk", objective="profit", risk=0.05, fresh=tree2)  # what to offer where
"""

from bayesflex.core.versions import __version__ as __version__
from bayesflex.errors import BayesflexError, ConfigError, FeederError, SolverError

__all__ = [
    "BayesflexError",
    "ConfigError",
    "Feeder",
    "FeederError",
    "LoadFlowResult",
    "LoadFlowSummary",
    "SolverError",
    "Source",
    "Transformer",
    "load_feeder",
    "condition",
    "decide",
    "load_markets",
    "run_study",
    "load_priors",
    "sample_priors",
    "solve_loadflow",
    "validate_feeder",
]

#: imported when first asked for, so that ``import bayesflex`` (and the command line's checks of
#: what it was given) takes a fraction of a second: numpy, scipy, pandas, xarray and PyMC take seconds
_LAZY = {"sample_priors": "bayesflex.priors", "load_priors": "bayesflex.priors", "condition": "bayesflex.priors",
         "run_study": "bayesflex.study.engine", "decide": "bayesflex.aggregator.decide",
         "load_markets": "bayesflex.aggregator.markets", "load_feeder": "bayesflex.io.feeders",
         **dict.fromkeys(("Feeder", "Source", "Transformer", "validate_feeder"), "bayesflex.grid.feeder"),
         **dict.fromkeys(("LoadFlowResult", "LoadFlowSummary", "solve_loadflow"), "bayesflex.grid.loadflow")}


def __getattr__(name: str):
    """Import the feeder, the load flow and the priors only when asked for."""
    if name in _LAZY:
        import importlib

        value = globals()[name] = getattr(importlib.import_module(_LAZY[name]), name)
        return value
    raise AttributeError(f"module 'bayesflex' has no attribute {name!r}")
