"""A technology defined outside bayesflex joins through the registry: its table is read from a
priors file, its power is drawn into the net power and its bounds into the flexibility, and no
other technology's numbers change (each draws from streams of its own)."""

from __future__ import annotations

import numpy as np
import pytest

from bayesflex.analysis.query import technology_names
from bayesflex.core.checks import toml_numbers
from bayesflex.errors import ConfigError
from bayesflex.priors import Model, Output, Simulation, load_priors, register, sample_priors, unregister
from bayesflex.priors.registry import BUILTIN, components, power_vars
from bayesflex.study.schema import causes

OWNERS = ["LOAD3", "LOAD7", "LOAD12"]
SAUNA = f"""
[sauna]
agents = {OWNERS!r}
rating_kw = {{ dist = "Uniform", lower = 6.0, upper = 9.0 }}
use_share = {{ dist = "Beta", alpha = 2.0, beta = 2.0 }}
hours = [17, 18, 19]
""".replace("'", '"')
DRAWS, PERIODS = 12, 48


def _sauna(params, extra, owners, context, rng) -> Simulation:
    """A sauna heats at its rating or not at all: in each half-hour of its ``hours`` (UTC) with
    probability ``use_share``; it can be switched off or on in any half-hour."""
    n, n_agent = owners.shape
    allowed = np.isin(context.times.hour, extra["hours"])  # (time,)
    used = rng.random((n, len(context.times), n_agent)) < params["use_share"][:, None, None]
    rating = np.where(owners, params["rating_kw"], 0.0)[:, None, :]  # (draw, 1, agent)
    p = np.where(used & allowed[None, :, None], rating, 0.0)
    ub = np.broadcast_to(rating, p.shape).copy()
    return Simulation(p, np.zeros_like(p), ub, variables={"sauna_on_share": (("draw", "agent"), (p > 0).mean(axis=1))})


def _hours(tab: dict, where: str) -> dict:
    return {"hours": toml_numbers(tab, "hours", where, lo=0, hi=23, n=None, what="a list of hours of the day")}


def _model(name: str = "sauna") -> Model:
    # no rating on the service (a circuit of its own, say): the baseload's cap, and so its draws,
    # stay those without it
    return Model(name=name, schema={"rating_kw": "positive", "use_share": "unit"}, per_agent=("rating_kw",),
                 keys=frozenset({"hours"}), parse=_hours, output=Output(f"p_{name}_kw", name, f"{name}s"),
                 simulate=_sauna, random=True)


@pytest.fixture
def sauna():
    model = register(_model())
    yield model
    unregister(model.name)


@pytest.fixture
def files(tmp_path):
    text = load_priors("default").text
    (tmp_path / "without.toml").write_text(text)
    (tmp_path / "with.toml").write_text(text + SAUNA)
    return tmp_path / "without.toml", tmp_path / "with.toml"


def _per_agent(ds, name):
    return ds[name].sum("phase").values[0].astype(float) if "phase" in ds[name].dims else ds[name].values[0]


def test_a_registered_technology_is_drawn_and_changes_no_other_number(ieee, sauna, files):
    a = sample_priors(ieee, files[0], draws=DRAWS, seed=7, periods=PERIODS)
    b = sample_priors(ieee, files[1], draws=DRAWS, seed=7, periods=PERIODS)
    assert (a.p_sauna_kw.values == 0).all()  # registered, but not in the file: no sauna
    own = np.isin(b.agent.values, OWNERS)
    p = _per_agent(b, "p_sauna_kw")  # (draw, time, agent)
    rating = np.where(own, b.sauna_rating_kw.values[0], 0.0)  # (draw, agent): drawn for all, an owner's counts
    evening = np.isin(b.time.dt.hour.values, [17, 18, 19])
    # on at its rating or off, only its owners, only in its hours; used in some of them
    on = p > 0
    np.testing.assert_allclose(p[on], np.broadcast_to(rating[:, None, :], p.shape)[on], rtol=1e-6)
    assert not on[..., ~own].any() and not on[:, ~evening].any()
    assert 0.2 < on[:, evening][..., own].mean() < 0.8  # Beta(2, 2) use: about half
    # every built-in number is the one drawn without it; the battery answers to the net power,
    # so its numbers change at the sauna's owners only
    battery = [k for k in a.data_vars if k.startswith(("battery_", "p_battery"))]
    net = ("p_kw", "p_lb_kw", "p_ub_kw", "n_above_service", "p_sauna_kw")
    for k in a.data_vars:
        if k not in net and k not in battery:
            assert a[k].values.tobytes() == b[k].values.tobytes(), k
    for k in battery:
        x, y = a[k].values, b[k].values
        if "agent" in a[k].dims:
            ax = a[k].dims.index("agent")
            x, y = np.take(x, np.flatnonzero(~own), axis=ax), np.take(y, np.flatnonzero(~own), axis=ax)
        assert x.tobytes() == y.tobytes(), k
    # its power is in the net power, its bounds (off: 0, on: its rating) in the flexibility
    moved = {k: _per_agent(b, k) - _per_agent(a, k) for k in ("p_kw", "p_lb_kw", "p_ub_kw", "p_battery_kw")}
    own_lb = b.battery_p_lb_kw.values[0] - a.battery_p_lb_kw.values[0]
    own_ub = b.battery_p_ub_kw.values[0] - a.battery_p_ub_kw.values[0]
    np.testing.assert_allclose(moved["p_kw"] - moved["p_battery_kw"], p, atol=2e-5)
    np.testing.assert_allclose(moved["p_lb_kw"] - own_lb, 0.0, atol=2e-5)
    np.testing.assert_allclose(moved["p_ub_kw"] - own_ub, np.broadcast_to(rating[:, None, :], p.shape), atol=2e-5)
    # and the study's names of the technologies know it
    assert components()["sauna"] == "p_sauna_kw" and causes()[-2:] == ("sauna", "position")
    assert technology_names()["sauna"] == "saunas" and "p_sauna_kw" in power_vars(controllable=True)


def test_its_numbers_come_from_its_name_not_its_place_in_the_registry(ieee, tmp_path):
    text = load_priors("default").text
    path = tmp_path / "baseload_and_sauna.toml"
    path.write_text(text[:text.index("\n[pv]")] + SAUNA)
    first = register(_model())
    try:
        a = sample_priors(ieee, path, draws=4, seed=3, periods=PERIODS)
    finally:
        unregister(first.name)
    other = register(_model("steam"))  # registered before it this time
    second = register(_model())
    try:
        b = sample_priors(ieee, path, draws=4, seed=3, periods=PERIODS)
    finally:
        unregister(second.name)
        unregister(other.name)
    for k in ("p_sauna_kw", "sauna_rating_kw", "sauna_use_share", "p_kw"):
        assert a[k].values.tobytes() == b[k].values.tobytes(), k


def test_its_table_is_checked_and_the_registry_guards_its_names(sauna, files, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(files[1].read_text().replace("hours = [17", "hour = [17"))
    with pytest.raises(ConfigError, match=r"\[sauna\]: unknown key 'hour' \(allowed: agents, hours, penetration, "
                                          r"rating_kw, use_share\)"):
        load_priors(bad)
    bad.write_text(files[1].read_text().replace("hours = [17", "hours = [25"))
    with pytest.raises(ConfigError, match=r"\[sauna\] hours: must be a list of hours of the day"):
        load_priors(bad)
    with pytest.raises(ConfigError, match="name 'sauna' is taken"):
        register(_model())
    with pytest.raises(ConfigError, match="name 'ev' is taken"):
        register(Model(name="ev", schema={}, output=Output("p_ev2_kw", "x", "x"), simulate=_sauna))
    with pytest.raises(ConfigError, match="not a registered technology"):
        unregister("pv")
    assert len(BUILTIN) == 6


def test_an_unregistered_technology_s_table_is_unknown(files):
    with pytest.raises(ConfigError, match=r"unknown table \[sauna\] \(allowed: horizon, site, baseload, pv, ev, "
                                          r"heat_pump, battery, refrigeration\)"):
        load_priors(files[1])
