"""Heat pumps: COP against hplib, shared weather, rating, and the data they were set from."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bayesflex.priors import sample_priors
from bayesflex.priors.heat_pump import cop

from .conftest import edited_priors

# hplib 1.9, HeatPump(get_parameters("Generic", group_id=1, ...)).simulate(...): COP of its
# generic regulated air/water heat pump at outdoor -10..15 degC, flow 35 and 55 degC (run
# with hplib itself, which bayesflex does not depend on)
HPLIB_COP = {
    35: [2.440, 3.210, 3.981, 4.751, 5.521, 6.291],
    55: [1.000, 1.459, 2.229, 3.000, 3.770, 4.540],
}


@pytest.mark.parametrize("flow", [35, 55])
def test_cop_matches_hplib(flow):
    np.testing.assert_allclose(cop(np.array([-10, -5, 0, 5, 10, 15]), flow), HPLIB_COP[flow], atol=1.5e-3)


@pytest.fixture(scope="module")
def hp(ieee, tmp_path_factory):
    path = edited_priors(tmp_path_factory.mktemp("hp"), [("penetration = 0.15", "penetration = 1.0")])
    return sample_priors(ieee, path, draws=200, seed=8)


def test_demand_is_within_rating_and_bounds(hp):
    p = hp.p_hp_kw.sum("phase").values[0]
    assert (p >= 0).all()
    assert (p <= hp.heat_pump_rating_kw.values[0][:, None, :] + 1e-5).all()
    assert (hp.p_lb_kw <= hp.p_kw + 1e-5).all() and (hp.p_kw <= hp.p_ub_kw + 1e-5).all()


def test_one_weather_for_the_feeder_and_colder_means_more(hp):
    t = hp.hp_outdoor_temp_c.values[0]  # (draw, time): one series per draw for all houses
    assert t.shape == (200, 96)
    daily_t = t[:, :48].mean(axis=1)
    kwh = hp.p_hp_kw.sum(("phase", "agent")).values[0][:, :48].sum(axis=1) / 2
    assert np.corrcoef(daily_t, kwh)[0, 1] < -0.5
    # the January normal: mean of low 1.7 and high 7.3, within 4 SE of the draws' day means
    se = daily_t.std(ddof=1) / np.sqrt(len(daily_t))
    assert abs(daily_t.mean() - 4.5) < 4 * se


def test_heat_pump_energy_matches_enwl(hp):
    """Mean electricity per heat pump and day against ENWL's winter heat-pump
    profiles (19.8 kWh/day, sd 8.4 over 100): within 3 SE of both."""
    from .conftest import shared_path

    x = pd.read_csv(shared_path("enwl", "profiles", "Winter_EHP_Profiles.csv"), header=None,
                    encoding="utf-8-sig").to_numpy()
    data = x.sum(axis=0) / 12
    per_draw = (hp.p_hp_kw.sum("phase").values[0][:, :48].sum(axis=1) / 2).mean(axis=1)
    se = np.hypot(data.std(ddof=1) / np.sqrt(len(data)), per_draw.std(ddof=1) / np.sqrt(len(per_draw)))
    assert abs(per_draw.mean() - data.mean()) < 3 * se, (per_draw.mean(), data.mean(), se)
