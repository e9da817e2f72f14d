"""bayesflex: a Bayesian probabilistic risk engine for low-voltage networks.

Public surface (see DESIGN.md):

    feeder = bf.load_feeder("ieee_eu_lv")
    lf = bf.solve_loadflow(feeder, p_kw, q_kvar)            # full results
    lf = bf.solve_loadflow(feeder, p_kw, q_kvar, full=False)  # reductions only
    ds = bf.sample_priors(feeder, "default", draws=1000, seed=1)  # agent powers
    tree = bf.run_study(feeder="ieee_eu_lv", priors="default", draws=1000, seed=1)  # xarray.DataTree
    dec = bf.decide(tree, "uk", objective="profit", risk=0.05, fresh=tree2)  # what to offer where
"""

from importlib.metadata import PackageNotFoundError, version

from .errors import BayesflexError, ConfigError, FeederError, SolverError

try:
    __version__ = version("bayesflex")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

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
         "run_study": "bayesflex.engine", "decide": "bayesflex.decide", "load_markets": "bayesflex.markets",
         **dict.fromkeys(("Feeder", "Source", "Transformer", "load_feeder", "validate_feeder"), "bayesflex.feeder"),
         **dict.fromkeys(("LoadFlowResult", "LoadFlowSummary", "solve_loadflow"), "bayesflex.loadflow")}


def __getattr__(name: str):
    """Import the feeder, the load flow and the priors only when asked for."""
    if name in _LAZY:
        import importlib

        value = globals()[name] = getattr(importlib.import_module(_LAZY[name]), name)
        return value
    raise AttributeError(f"module 'bayesflex' has no attribute {name!r}")
