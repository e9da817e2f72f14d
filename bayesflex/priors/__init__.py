"""Priors for agent demand and flexibility; the only part of bayesflex that uses PyMC.

    priors = load_priors("default")                 # priors/<name>.toml or a path
    ds = sample_priors(feeder, priors, draws=1000, seed=1)
    register(Model(name="sauna", ...))              # a technology of one's own (see technology.py)

The names below are imported when first asked for: reading and checking a priors file
(``load_priors``) needs neither xarray nor PyMC, so a bad one is reported at once.
"""

__all__ = ["Context", "Model", "Output", "Param", "Posterior", "Priors", "Simulation", "Technology", "condition",
           "draw_parameters", "load_priors", "priors_dir", "read_ev_states", "read_observations", "register",
           "sample_priors", "technologies", "unregister"]

_LAZY = {**dict.fromkeys(("Posterior", "condition", "read_ev_states", "read_observations"), "conditioning"),
         **dict.fromkeys(("Priors", "Technology", "load_priors", "priors_dir"), "config"),
         **dict.fromkeys(("draw_parameters", "sample_priors"), "sampling"),
         **dict.fromkeys(("Context", "Model", "Output", "Simulation"), "technology"),
         **dict.fromkeys(("register", "technologies", "unregister"), "registry"),
         "Param": "spec"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = globals()[name] = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
