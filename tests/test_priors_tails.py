"""Household baseload against ENWL's measured households: tails, peaks, coincidence.

The targets of issue 14, one case per figure and season (figures and
targets: :mod:`bayesflex.priors.check`): the data's figure is computed here
from ENWL's file, the model's from one sample of the shipped priors (400
draws x 55 houses, the first weekday).  A case the model misses for a stated
reason is ``xfail(strict=True)``: it turns red when the model starts to meet
it, so that the reason is then removed here and in priors/README.md.
"""

from __future__ import annotations

import pytest

import bayesflex as bf
from bayesflex.priors.check import compare, enwl_house_days, model_day

from .conftest import shared_path

EVENING_P99 = ("ENWL's evening-peak p99 over 100 house-days is its second-largest value (3.9 kW; 95 % bootstrap "
               "interval 3.34-5.38 kW): the model's ~4.9 kW lies inside that interval but 25 % above the point")
SUMMER_ADMD1 = ("summer: a single house's daily maximum is ~0.89 of ENWL's 2.05 kW (95 % bootstrap 1.89-2.25): the "
                "summer margins, fitted to all half-hours, put a little too little weight on each house's largest one "
                "(p99 and p99.9 are 0.81-0.84 of the data's, inside the target); groups of 2 and more houses, which "
                "load a feeder, meet their targets")
MISSES = {("winter", "evening peak p99"): EVENING_P99, ("summer", "ADMD N=1"): SUMMER_ADMD1}
SEASONS = {"winter": "default", "summer": "summer"}
FIGURES = ["half-hour p90", "half-hour p99", "half-hour p99.9", "half-hour max", "evening peak p90",
           "evening peak p99", *(f"ADMD N={n}" for n in (1, 2, 5, 10, 20, 55, 100)), "CV daily kWh",
           "lag-1 autocorr", "share > 15 kW", "share > 23 kW"]


@pytest.fixture(scope="module")
def results(ieee):
    out = {}
    for season, priors in SEASONS.items():
        x = enwl_house_days(season, shared_path("enwl", "profiles"))
        p = model_day(ieee, bf.load_priors(priors), draws=400, seed=3)
        out[season] = compare(x, p, reps=0, seed=0)
    return out


def test_every_figure_is_judged(results):
    for season in SEASONS:
        assert list(results[season].table.index) == FIGURES


def _case(season, name):
    reason = MISSES.get((season, name))
    marks = pytest.mark.xfail(strict=True, reason=reason) if reason else ()
    return pytest.param(season, name, marks=marks, id=f"{season}-{name}")


@pytest.mark.parametrize("season, name", [_case(s, k) for s in SEASONS for k in FIGURES])
def test_baseload_figure_meets_its_target(results, season, name):
    r = results[season].table.loc[name]
    assert r["ok"], f"{season} {name}: data {r['data']:.4g}, model {r['model']:.4g}, target {r['target']}"


@pytest.mark.slow
def test_no_house_exceeds_its_fuse_in_a_large_sample(ieee):
    """4,000 draws x 55 houses x 96 half-hours: not one house-half-hour above
    23 kW, and the largest below 15 kW (ENWL's largest of 9,600 is 5.5 kW)."""
    for seed in range(4):
        ds = bf.sample_priors(ieee, "default", draws=1000, seed=11 + seed)
        p = ds.p_base_kw.sum("phase").values
        assert p.max() < 15.0, p.max()
        assert int(ds.n_above_service.sum()) == 0
