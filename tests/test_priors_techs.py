"""EV, heat-pump and PV priors against ENWL's profiles: tails, coincidence, ADMD.

The targets of ``bench/priors_techs.py`` (its docstring defines every figure),
one case each: the data's figure is computed here from ENWL's file, the
model's from one sample per prior set (every household an owner, 400 draws x
55 houses, the first weekday), both with the bench's functions.  A case the
model misses for a stated reason is ``xfail(strict=True)``: it turns red if the
model starts to meet it, so that the reason is then removed, here and in
priors/README.md.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from .conftest import REPO, shared_path

sys.path.insert(0, str(REPO / "bench"))
import priors_techs as pt

DRAWS = 400

EV_CHARGER = ("ENWL's EV profiles all charge at 3 kW; the default charger_kw prior is Uniform(3, 7.4) kW "
              "for today's wallboxes (a choice, priors/default.toml [ev]): shorter sessions at more kW")
EV_EVERY_DAY = ("every ENWL EV profile charges, once, in its day (none of 100 is zero; the sessions that run past "
                "midnight wrap round to 00:00: a charging day per car, not a random car-day); in the model a car-day "
                "without a trip has no charge (0.35 of car-days have no trip), so 0.72 of car-days charge, and with a "
                "third of the cars on a timer the evening holds fewer of them; real drivers plug in less often than "
                "daily (Electric Nation, ~700 UK drivers: about three times a week)")
EV_TIMER_PEAK = ("the model's timed cars (timed_share, mean 0.32) start together when their windows open (22:00-00:30) "
                 "with chargers of up to 7.4 kW: groups of 20 peak above ENWL's 3 kW chargers (with charger_kw = 3.0 "
                 "the ratio is 0.95)")
PV_SCALE = ("ENWL's PV profiles are one day of one system, scaled so that the 5-minute peak equals each nominal "
            "size (1.57-4 kW): 1 kW per kWp at the peak and 6.66 kWh/kWp in a broken-cloud day, more than a clear "
            "day gives a kWp here (pvlib clear sky x performance ratio 0.85: ~6.4 kWh/kWp on 15 July)")


def _miss(*reasons):
    return pytest.mark.xfail(strict=True, reason="; ".join(reasons))


def _edge(*reasons):
    """A figure the model misses by about the Monte Carlo allowance: it passes or misses with the seed."""
    return pytest.mark.xfail(strict=False, reason="; ".join(reasons))


CASES = {
    "ev": {
        "share of EV-days that charge": _miss(EV_EVERY_DAY),
        "share charging, peak": _miss(EV_CHARGER),
        "share charging, peak at, h": None,  # the timers' 00:00 against the data's 23:30
        "share charging, day mean": _miss(EV_CHARGER),
        "coincidence 17-21, peak": _miss(EV_CHARGER, EV_EVERY_DAY),
        "coincidence 17-21, mean": _miss(EV_CHARGER, EV_EVERY_DAY),
        "half-hour p99, kW": _miss(EV_CHARGER),
        "ADMD N=1, kW": _miss(EV_CHARGER),
        "ADMD N=5, kW": _miss(EV_CHARGER),
        # ratio 1.14-1.16 over seeds 0-3 and 14 (edge 1.10 + 3 Monte Carlo SE): passes with some seeds
        "ADMD N=20, kW": _edge(EV_CHARGER, EV_TIMER_PEAK),
        "ADMD N=55, kW": None,
    },
    "hp": {
        "share of half-hours off": None,
        "half-hour p50, kW": None,
        "half-hour p90, kW": None,
        "half-hour p99, kW": None,
        "daily kWh p10": None,
        "daily kWh p50": None,  # ratio 1.14-1.18 over seeds 0-4 (edge 1.2): the data are more skewed
        "daily kWh p90": None,
        # at the edge: ratio 0.91 over seeds 0-4 (edge 0.90); a model unit's largest half-hour is
        # its rating, and a few of ENWL's units peak above their running power (to 8 kW: a backup heater?)
        "ADMD N=1, kW": None,
        "ADMD N=5, kW": None,
        "ADMD N=20, kW": None,
        "ADMD N=55, kW": None,
    },
    "pv": {
        "half-hour p99, kW/kWp": _miss(PV_SCALE),
        "day's largest half-hour, kW/kWp": _miss(PV_SCALE),
        "daily kWh/kWp": _miss(PV_SCALE),
        "output starts, h": None,
        "output ends, h": None,
        "centre of output, h": None,
    },
}


@pytest.fixture(scope="module")
def draws():
    """(draw, unit, 48) per technology: one sample of each prior set."""
    out = pt.model_days("default", ["ev", "hp"], DRAWS, seed=14)
    out.update(pt.model_days("summer", ["pv"], DRAWS, seed=15))
    return out


@pytest.fixture(scope="module")
def results(draws):
    """``{tech: {figure: row}}``: data figure (from the file), model figure, verdict."""
    profiles = shared_path("enwl", "profiles")
    return {t: {r["name"]: r for r in pt.rows(t, pt.read_data(t, profiles), draws[t], reps=0, seed=0)}
            for t in CASES}


def test_every_figure_has_a_case(results):
    for t, cases in CASES.items():
        assert set(results[t]) == set(cases), t


def test_data_are_what_the_bench_assumes():
    """The facts the figures and the reasons rest on, read from the files."""
    import pandas as pd

    def raw(name):
        return pd.read_csv(shared_path("enwl", "profiles", name), header=None, encoding="utf-8-sig").to_numpy(float)

    ev = raw("Winter_EV_Profiles.csv")
    assert set(np.unique(ev)) == {0.0, 3.0} and (ev.max(axis=0) > 0).all()  # 3 kW chargers, every car charges
    on = ev > 0
    starts = on & ~np.roll(on, 1, axis=0)
    assert (starts.sum(axis=0) == 1).all()  # one session each, read round midnight
    start_h = starts.argmax(axis=0) / 12
    assert ((start_h >= 22) & (start_h < 24)).sum() == 32  # late starts: the timed_share prior's source
    pv = raw("Summer_PV_Profiles.csv")
    shape = pv / pv.max(axis=0)
    np.testing.assert_allclose(shape, shape[:, :1] * np.ones((1, 100)), atol=1e-6)  # one day, one system, scaled
    hp = pt.read_data("hp", shared_path("enwl", "profiles"))
    assert 0.55 < (hp < pt.OFF_KW).mean() < 0.7  # heat pumps off in most half-hours


@pytest.mark.parametrize(
    "tech, name",
    [pytest.param(t, k, marks=m or (), id=f"{t}-{k}") for t, cases in CASES.items() for k, m in cases.items()],
)
def test_figure_meets_target(results, tech, name):
    r = results[tech][name]
    assert r["ok"], f"{tech} {name}: data {r['data']:.4g}, model {r['model']:.4g} (+- {r['se']:.2g}), target {r['target']}"
