"""Priors for agent demand and flexibility; the only part of bayesflex that uses PyMC.

    priors = load_priors("default")                 # priors/<name>.toml or a path
    ds = sample_priors(feeder, priors, draws=1000, seed=1)
"""

from .conditioning import Posterior, condition, read_ev_states, read_observations
from .config import Priors, Technology, load_priors, priors_dir
from .sampling import draw_parameters, sample_priors
from .spec import Param

__all__ = ["Param", "Posterior", "Priors", "Technology", "condition", "draw_parameters", "load_priors",
           "priors_dir", "read_ev_states", "read_observations", "sample_priors"]
