"""Bayesian update of the priors with metered data.

``condition(priors, observations)`` fits the baseload model of
:mod:`bayesflex.priors.baseload` to half-hourly readings of some agents with
NUTS and returns a :class:`Posterior`; ``sample_priors(feeder, posterior, ...)``
then draws the horizon from it (the posterior predictive): observed agents
keep their own fitted household level, the others draw theirs from the
fitted population; every agent draws new day levels.  Readings ``y`` (kW) of
agent ``a`` on day ``d`` at half-hour ``t`` are Beta on ``[0, C]``, given the
household level ``z_a`` and the day level ``w_a,d`` (both latent, standard
normal), exactly the model's margins::

    mu_a,t = shape_kw[h(t)] exp(level_log_mean - level_log_sd^2 / 2
                                + level_log_sd (sqrt(1 - day_share) z_a + sqrt(day_share) w_a,d(t)))
    y_a,t / C ~ Beta(beta_ab(mu_a,t, C, appliance_kw, knee_kw, knee_power))

With several days per agent the household and day parts separate
(``day_share`` is then learnt); with one day they do not and ``day_share``
keeps its prior.  The half-hours of a day are not independent (the
model's Gamma chains, ``persistence``), and the chains have no closed-form
likelihood; the log-likelihood of the margins is weighted by
``(1 - rho) / (1 + rho)`` (the effective share of independent half-hours in
an AR(1): a composite likelihood with its curvature adjusted, e.g. Ribatet,
Cooley and Davison 2012), with ``rho`` the prior mean of ``persistence`` (an
approximation of the readings' lag-1 correlation), which is not updated;
simulation-based calibration (tests/test_priors_conditioning.py) checks the
result.
``C`` is the largest service in ``service_kw``: the meter does not say which
fuse a house has, and for a mean far below ``C`` the Beta barely depends on
it.

R-hat and bulk ESS of every parameter are reported with the posterior.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from bayesflex.core.checks import check_on_feeder
from bayesflex.core.tables import agents_and_times, netcdf_engine, read_csv, zone
from bayesflex.errors import ConfigError
from bayesflex.priors.baseload import EDGE, beta_ab, day_index, half_hour_of_day, log_level, shape_kw_at
from bayesflex.priors.config import Priors, load_priors
from bayesflex.priors.ev import IMPOSSIBLE, STATES, prior_alpha, transition_counts
from bayesflex.priors.spec import DRAW_MODE, PYTENSOR_LOCK

__all__ = ["Posterior", "condition", "read_observations"]

#: the baseload parameters a posterior may update (those given as distributions)
BASELOAD_VARS = ("level_log_mean", "level_log_sd", "day_share", "appliance_kw", "knee_kw", "knee_power")
#: NUTS' target acceptance rate in the baseload fit
TARGET_ACCEPT = 0.9
#: the most free dimensions (households' and days' levels and the population's parameters) for
#: which NUTS adapts a dense mass matrix (its memory and updates grow with their square); a
#: household's level is correlated with the population's, which a diagonal one cannot follow:
#: on ten days of four meters (47 dimensions) dense took 15 leapfrog steps a draw instead of
#: 32, sampling 2 chains of 500 + 800 draws in 40 s instead of 60; the smallest bulk ESS rose
#: from 455 (z) to 737 (day_share; z 1,341, level_log_mean 855 -> 2,141)
DENSE_MASS_MAX_DIM = 500
#: PyTensor's backend for the fit's log-density and gradient: numba (a dependency; recent PyTensor
#: needs it too) compiles them in seconds, where the C backend builds some 50 C modules, about
#: 50 s on a machine whose compile cache is empty (as every fresh install's is); on ten days
#: of four meters the whole fit took 55 s instead of 101 s, and its sampling 36 s instead of 42
FIT_MODE = "NUMBA"
#: prior draws that set the fit's initial mass matrix (see :func:`prior_scaled_nuts`), fewer (not
#: below 100) where they would hold more than PRIOR_VALUES_MAX values (80 MB): a rough start suffices
PRIOR_DRAWS = 1000
PRIOR_VALUES_MAX = 10_000_000


@dataclass(frozen=True)
class Posterior:
    """Priors updated with observations.

    ``idata`` is the ArviZ InferenceData of the baseload fit (groups
    ``posterior``, ``sample_stats``, ``observed_data``), None without meter
    readings; ``ev_alpha`` the EV transition rows' Dirichlet parameters after
    the state logs (prior + counts), None without logs; ``agents`` the metered agents;
    ``diagnostics`` R-hat and bulk ESS per parameter, and ``ok`` whether all
    meet R-hat <= 1.01 and ESS >= 400.
    """

    priors: Priors
    idata: object | None
    agents: tuple[str, ...]
    diagnostics: dict = field(default_factory=dict)
    observations_sha256: str = ""
    ev_alpha: np.ndarray | None = None  # (48, 3, 3) conjugate Dirichlet parameters of the EV rows
    ev_counts: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return all(d["r_hat"] <= 1.01 and d["ess_bulk"] >= 400 for d in self.diagnostics.values())

    def draws(self) -> dict[str, np.ndarray]:
        if self.idata is None:
            return {}
        """Posterior samples flattened over chains: ``{name: (sample, ...)}``."""
        post = self.idata.posterior
        out = {}
        for name in post.data_vars:
            v = post[name].values
            out[name] = v.reshape((-1,) + v.shape[2:])
        return out


def read_observations(source, *, agents: tuple[str, ...] | None = None, tz: str | None = None) -> pd.DataFrame:
    """Metered half-hourly readings as a wide frame (time x agent), checked.

    ``source``: a tidy CSV with columns ``agent,time,p_kw``, a NetCDF with
    ``p_kw (agent, time)``, or a DataFrame in the tidy form.  Every agent must
    have a complete half-hourly series (no gaps, no duplicates); readings must
    be finite and not negative (demand meters); ``agents``, when given, are
    the allowed names.  The index is the readings' UTC half-hours (naive):
    times with an offset are converted, naive ones are local times in ``tz``
    (an IANA name such as "Europe/London"; None: UTC), except decoded NetCDF
    times, which CF defines as UTC (see :func:`bayesflex.core.tables.utc_times`).
    """
    where = str(source) if isinstance(source, (str, Path)) else "observations"
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"{path}: no such file")
        if path.suffix.lower() in (".nc", ".netcdf", ".h5"):
            try:
                ds = xr.open_dataset(path, engine=netcdf_engine(path))
            except Exception as e:  # any reader failure means the same to the user
                raise ConfigError(f"{path}: not a readable NetCDF file ({e})") from e
            if "p_kw" not in ds or set(ds["p_kw"].dims) != {"agent", "time"}:
                raise ConfigError(f"{path}: needs a variable p_kw with dims (agent, time)")
            df = ds["p_kw"].to_dataframe().reset_index()[["agent", "time", "p_kw"]]
            tz = _netcdf_zone(df["time"], tz)
        else:
            df = read_csv(path)
    else:
        df = pd.DataFrame(source)
    missing = {"agent", "time", "p_kw"} - set(df.columns)
    if missing:
        raise ConfigError(f"{where}: missing column(s) {sorted(missing)} (needed: agent, time, p_kw)")
    df = agents_and_times(df[["agent", "time", "p_kw"]].copy(), where, tz=tz)
    p = pd.to_numeric(df["p_kw"], errors="coerce")
    if p.isna().any() or not np.isfinite(p).all():
        row = int(np.flatnonzero(~np.isfinite(p.fillna(np.nan).to_numpy()))[0])
        raise ConfigError(f"{where}: p_kw in row {row + 2} is not a finite number")
    if (p < 0).any():
        row = int(np.flatnonzero(p.to_numpy() < 0)[0])
        raise ConfigError(f"{where}: p_kw = {p.iloc[row]} in row {row + 2} is negative "
                          "(demand readings must be >= 0; net metering with PV is not supported)")
    df["p_kw"] = p
    wide = _wide(df, "p_kw", where, agents, "readings")
    if len(wide) < 2:
        raise ConfigError(f"{where}: at least two half-hours of readings are needed")
    return wide


def _netcdf_zone(times: pd.Series, tz: str | None) -> str | None:
    """Decoded NetCDF times are UTC (CF: a reference time without a zone is UTC, and
    xarray converts one with an offset); text times keep the site's zone."""
    zone(tz)  # a bad name is an error whatever the file holds
    return "UTC" if pd.api.types.is_datetime64_dtype(times) else tz


def _wide(df: pd.DataFrame, column: str, where: str, agents, what: str) -> pd.DataFrame:
    """Tidy rows (agent, time, column) -> time x agent, with the checks both
    kinds of log need: known agents, half-hour times, one value per agent and
    time, and a complete series for every agent over the same period."""
    if agents is not None:
        check_on_feeder(df["agent"], agents, f"{where} agent")
    off = np.flatnonzero((df["time"] != df["time"].dt.floor("30min")).to_numpy())
    if len(off):
        raise ConfigError(f"{where}: row {off[0] + 2}: time {df['time'].iloc[off[0]]}: times must fall on half-hours "
                          "(the start of each half-hour)")
    if df.duplicated(["agent", "time"]).any():
        a, t = df.loc[df.duplicated(["agent", "time"]), ["agent", "time"]].iloc[0]
        raise ConfigError(f"{where}: agent {a!r} has two {what} at {t}")
    wide = df.pivot(index="time", columns="agent", values=column).sort_index()
    full = pd.date_range(wide.index[0], wide.index[-1], freq="30min")
    if len(full) != len(wide) or wide.isna().any().any():
        wide = wide.reindex(full)
        agent = wide.columns[wide.isna().any()][0]
        first_gap = wide.index[wide[agent].isna()][0]
        raise ConfigError(f"{where}: agent {agent!r} has a gap at {first_gap} "
                          "(every agent needs a complete half-hourly series over the same period)")
    return wide


def read_ev_states(source, *, agents: tuple[str, ...] | None = None,
                   tz: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """EV state logs (tidy CSV or DataFrame: ``agent,time,state`` with state
    one of M, R, C) as ``states (time, car)`` codes 0..2 and ``slots (time,)``.
    Every car needs a complete half-hourly log over the same period, and no
    move the model forbids (R to C or C to R without moving).  Times as in
    :func:`read_observations` (naive ones local in ``tz``; None: UTC)."""
    where = str(source) if isinstance(source, (str, Path)) else "ev state logs"
    df = read_csv(Path(source)) if isinstance(source, (str, Path)) else pd.DataFrame(source)
    missing = {"agent", "time", "state"} - set(df.columns)
    if missing:
        raise ConfigError(f"{where}: missing column(s) {sorted(missing)} (needed: agent, time, state)")
    df = agents_and_times(df[["agent", "time", "state"]].copy(), where, tz=tz)
    unknown = np.flatnonzero(~df["state"].astype(str).isin(STATES).to_numpy())
    if len(unknown):
        bad = sorted(set(df["state"].astype(str).iloc[unknown]))
        raise ConfigError(f"{where}: state(s) {bad} unknown (allowed: {', '.join(STATES)}; "
                          f"first in row {unknown[0] + 2})")
    code = {s: i for i, s in enumerate(STATES)}
    df = df.assign(code=df["state"].astype(str).map(code).astype(float))
    wide = _wide(df, "code", where, agents, "states")
    states = wide.to_numpy().astype(int)
    for i, j in IMPOSSIBLE:
        hit = np.argwhere((states[:-1] == i) & (states[1:] == j))
        if len(hit):
            t, c = hit[0]
            raise ConfigError(f"{where}: agent {wide.columns[c]!r} goes from {STATES[i]} to {STATES[j]} at "
                              f"{wide.index[t + 1]} without moving (not possible in the model)")
    return states, half_hour_of_day(wide.index.values)


def condition(
    priors: Priors | str,
    observations=None,
    *,
    ev_states=None,
    agents: tuple[str, ...] | None = None,
    tz: str | None = None,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 2,
    seed: int = 0,
    progressbar: bool = False,
) -> Posterior:
    """Update the priors with metered readings and/or EV state logs.

    ``observations``: meter readings (see :func:`read_observations`), fitted
    to the baseload model with NUTS; ``ev_states``: EV state logs (see
    :func:`read_ev_states`), which update the Dirichlet rows of the EV chain
    in closed form (conjugate: prior parameters + transition counts).
    ``agents``: the feeder's agent names, to check both against; ``tz``: the
    zone of naive times in both (default: the priors' ``[site] timezone``).  Returns a
    :class:`Posterior` whose ``diagnostics`` give R-hat and bulk ESS.
    """
    import hashlib

    import arviz as az
    import pymc as pm

    pri = priors if isinstance(priors, Priors) else load_priors(priors)
    tz = pri.timezone if tz is None else tz
    if observations is None and ev_states is None:
        raise ConfigError("condition: give observations (meter readings) and/or ev_states (EV state logs)")
    ev_alpha = ev_counts = None
    if ev_states is not None:
        if "ev" not in pri:
            raise ConfigError(f"{pri.origin}: EV state logs given, but the priors have no [ev] table")

        states, slots = read_ev_states(ev_states, agents=agents, tz=tz)
        ev_counts = transition_counts(states, slots)
        ev_alpha = prior_alpha(pri["ev"]) + ev_counts
    if observations is None:
        return Posterior(priors=pri, idata=None, agents=(), ev_alpha=ev_alpha, ev_counts=ev_counts)
    wide = read_observations(observations, agents=agents, tz=tz)
    digest = hashlib.sha256(pd.util.hash_pandas_object(wide, index=True).values.tobytes()).hexdigest()
    tech = pri["baseload"]
    data = baseload_data(pri, wide)
    obs_agents = tuple(wide.columns)
    with PYTENSOR_LOCK, baseload_model(pri, data, obs_agents) as model:  # compiles: see PYTENSOR_LOCK
        step, starts = prior_scaled_nuts(model, chains, seed)
        idata = pm.sample(draws=draws, tune=tune, chains=chains, cores=min(chains, 2), random_seed=seed,
                          step=step, initvals=starts, progressbar=progressbar, compute_convergence_checks=False,
                          compile_kwargs={"mode": FIT_MODE})
    names = [k for k in BASELOAD_VARS if not tech[k].fixed] + ["z"]
    rhat = az.rhat(idata, var_names=names)
    ess = az.ess(idata, var_names=names, method="bulk")
    diag = {}
    for n in names:
        r, e = np.atleast_1d(rhat[n].values), np.atleast_1d(ess[n].values)
        diag[n] = {"r_hat": float(r.max()), "ess_bulk": float(e.min())}
    del model
    return Posterior(priors=pri, idata=idata, agents=obs_agents, diagnostics=diag, observations_sha256=digest,
                     ev_alpha=ev_alpha, ev_counts=ev_counts)


def prior_moments(model, draws: int = PRIOR_DRAWS, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Mean and variance of each unconstrained coordinate of ``model`` under its prior, in NUTS's
    order of the coordinates, from ``draws`` prior draws (seeded by ``seed``; drawn by Python's
    implementations, no compilation); and the draws themselves, ``{variable: (draw, ...)}``."""
    import pymc as pm
    from pymc.blocking import DictToArrayBijection

    values = pm.draw(model.free_RVs, draws=draws, random_seed=seed, mode=DRAW_MODE)
    prior = {}
    for rv, v in zip(model.free_RVs, values):
        tr = model.rvs_to_transforms.get(rv)
        prior[model.rvs_to_values[rv].name] = tr.forward(v, *rv.owner.inputs).eval(mode=DRAW_MODE) if tr else v
    names = [v.name for v in model.value_vars]
    mean = DictToArrayBijection.map({n: prior[n].mean(0) for n in names}).data
    var = DictToArrayBijection.map({n: prior[n].var(0) for n in names}).data
    return mean, var, {rv.name: v for rv, v in zip(model.free_RVs, values)}


def prior_scaled_nuts(model, chains: int, seed: int):
    """NUTS for ``model`` (``condition``'s target acceptance and backend) whose mass matrix starts
    at the prior variance of each unconstrained coordinate (dense, adapted as PyMC's
    ``jitter+adapt_full``, up to ``DENSE_MASS_MAX_DIM`` coordinates; diagonal beyond), and one
    start point per chain drawn from the prior: ``(step, start points)``.  PyMC's own start is
    a unit mass matrix, while the prior sds run from 0.076 (log level_log_sd) to 1 (z, w):
    on ten days of four meters its first 100 tuning steps took some 155 leapfrog steps each
    (more than the 800 draws after them, at 15 a draw), here 85.  Two chains of 500 tuning
    steps and 800 draws then take some 33,000 leapfrog steps a chain instead of 40,000, and the
    whole fit 43-45 s instead of 50-53 s; the posteriors agree within Monte Carlo error."""
    import pymc as pm
    from pymc.step_methods.hmc.quadpotential import QuadPotentialDiagAdapt, QuadPotentialFullAdapt

    n = sum(np.size(v) for v in model.initial_point().values())
    draws = max(chains, min(PRIOR_DRAWS, max(100, PRIOR_VALUES_MAX // n)))  # a year of 100 meters: about 270 draws
    mean, var, prior = prior_moments(model, draws, seed)
    if n <= DENSE_MASS_MAX_DIM:
        potential = QuadPotentialFullAdapt(n, mean, np.diag(var), 10, rng=np.random.default_rng(seed))
    else:
        potential = QuadPotentialDiagAdapt(n, mean, var, 10, rng=np.random.default_rng(seed))
    step = pm.NUTS(potential=potential, target_accept=TARGET_ACCEPT, model=model, compile_kwargs={"mode": FIT_MODE})
    return step, [{name: v[len(v) - chains + c] for name, v in prior.items()} for c in range(chains)]


def baseload_data(priors: Priors, wide: pd.DataFrame) -> dict[str, np.ndarray]:
    """The baseload fit's data from readings ``wide`` (time x agent, kW, as
    :func:`read_observations` gives them): ``share`` the readings as shares of
    the largest service ``C`` (agent, time), ``shape_kw`` the day shape at each
    half-hour (time,) and ``reading_day`` each half-hour's day (time,), numbered from 0.
    Readings at or above ``C`` are an error (not a household)."""
    tech = priors["baseload"]
    cap = max(tech.extra["service_kw"])
    x = wide.to_numpy(float).T  # (agent, time)
    if (x >= cap * (1 - EDGE)).any():
        j, t = np.argwhere(x >= cap * (1 - EDGE))[0]
        raise ConfigError(f"observations: agent {wide.columns[j]!r} reads {x[j, t]:g} kW at {wide.index[t]}, "
                          f"at or above the largest service in {priors.origin} [baseload] service_kw ({cap:g} kW): "
                          "a three-phase or commercial supply is not a household baseload")
    return {"share": np.clip(x / cap, EDGE, 1 - EDGE),
            "shape_kw": shape_kw_at(tech.extra["shape_kw"], wide.index.values),
            "reading_day": day_index(wide.index.values)}


def baseload_model(priors: Priors, data: dict[str, np.ndarray], agents: tuple[str, ...], *,
                   containers: bool = False, replications: int | None = None):
    """The PyMC model of the baseload fit (see the module's docstring) for
    ``data`` from :func:`baseload_data`.  With ``containers`` the arrays go in
    ``pm.Data`` containers of the same names, so that the model compiles once
    and ``pm.set_data`` gives it new readings of the same shape; without, they
    are constants, which PyTensor folds into the graph (the log-density then
    differs from the containers' in the last bits, and :func:`condition` keeps
    its numbers).

    ``replications = R`` holds R independent copies of the fit in one model
    (simulation-based calibration samples them together): ``data["share"]`` is
    then (rep, agent, time), every parameter given as a distribution is a
    vector along a leading ``rep`` dimension, ``z`` is (rep, agent) and ``w``
    (rep, agent, day); fixed parameters, ``shape_kw`` and ``reading_day`` are
    shared.  The log-density is the sum of the R fits' (a product of
    independent posteriors), so each replication's margin is its own fit.
    None (the default) is the single fit, unchanged."""
    import pymc as pm

    tech = priors["baseload"]
    cap = max(tech.extra["service_kw"])
    rho = tech["persistence"].mean()
    if rho >= 0.99:
        raise ConfigError(f"{priors.origin} [baseload] persistence: mean {rho:.3g}; conditioning needs it below 0.99 "
                          "(readings that never change carry no information to weight)")
    weight = (1 - rho) / (1 + rho)
    rep = () if replications is None else ("rep",)
    if rep and np.shape(data["share"]) != (replications, len(agents), len(data["reading_day"])):
        want = (replications, len(agents), len(data["reading_day"]))
        raise ValueError(f"baseload_model: share has shape {np.shape(data['share'])}, not (rep, agent, time) = {want}")

    def rv(key):
        par = tech[key]
        if par.fixed:
            return pm.Data(key, par.value)
        if not rep:
            return getattr(pm, par.dist)(key, **par.kwargs())
        return getattr(pm, par.dist)(key, **par.kwargs(), dims=rep)[:, None, None]  # against (rep, agent, .)

    coords = {"agent": list(agents), "day": np.arange(data["reading_day"][-1] + 1)}
    with pm.Model(coords=coords | ({"rep": np.arange(replications)} if rep else {})) as model:
        y, shape, days = (pm.Data(k, data[k]) if containers else data[k] for k in ("share", "shape_kw", "reading_day"))
        mean, sd, share = rv("level_log_mean"), rv("level_log_sd"), rv("day_share")
        appliance, knee, power = rv("appliance_kw"), rv("knee_kw"), rv("knee_power")
        z = pm.Normal("z", 0.0, 1.0, dims=rep + ("agent",))
        w = pm.Normal("w", 0.0, 1.0, dims=rep + ("agent", "day"))
        level = log_level(mean, sd, share, z[..., None], w, xp=pm.math)  # ([rep,] agent, day)
        mu = shape * pm.math.exp(level[..., days])  # ([rep,] agent, time)
        a, b = beta_ab(mu, cap, appliance, knee, power, xp=pm.math)
        pm.Potential("readings", weight * pm.logp(pm.Beta.dist(alpha=a, beta=b), y).sum())
    return model
