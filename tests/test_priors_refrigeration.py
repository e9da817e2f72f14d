"""Commercial refrigeration: the defrost's moving-average end, power, and flexibility."""

from __future__ import annotations

import numpy as np
import pytest

from bayesflex.priors import load_priors, sample_priors
from bayesflex.priors.refrigeration import defrost_minutes

REFRIGERATION = """
[refrigeration]
agents = ["LOAD5", "LOAD9"]
compressor_kw = { dist = "LogNormal", mu = 2.7, sigma = 0.3 }
duty = { dist = "Beta", alpha = 12.0, beta = 12.0 }
shelf_warming_c_per_min = { dist = "LogNormal", mu = -0.92, sigma = 0.3 }
setpoint_c = 3.0
cpt_max_c = 5.0
defrost_hours = [1, 7, 13, 19]
suction_flex = 0.1
"""


def _cpt_by_hand(setpoint, limit, warming):
    """The aggregator paper's recurrence, one minute at a time, written out."""
    cpt = [setpoint] * 29
    k = 0
    while True:
        k += 1
        value = (sum(cpt[-29:]) + setpoint + warming * k) / 30
        cpt.append(value)
        if value >= limit:
            return k


@pytest.mark.parametrize("warming", [0.05, 0.15, 0.4])
def test_defrost_ends_when_the_moving_average_reaches_its_limit(warming):
    assert defrost_minutes(3.0, 5.0, warming) == _cpt_by_hand(3.0, 5.0, warming)
    # a faster-warming shelf ends its defrost sooner
    assert defrost_minutes(3.0, 5.0, 2 * warming) < defrost_minutes(3.0, 5.0, warming)


@pytest.fixture(scope="module")
def shops(ieee, tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "shops.toml"
    path.write_text(load_priors("default").text + REFRIGERATION)
    return sample_priors(ieee, path, draws=50, seed=4)


def test_defrosts_cut_power_and_recovery_repays_it(shops):
    p = shops.p_refrigeration_kw.sum("phase").values[0]  # (draw, time, agent)
    assert (p[:, :, [0, 1, 2, 3, 5, 6, 7]] == 0).all() and (p[:, :, [4, 8]] > 0).any()
    kw = shops.refrigeration_compressor_kw.values[0][:, [4, 8]]
    duty = shops.refrigeration_duty.values[0][:, [4, 8]]
    shop = p[:, :, [4, 8]]
    # the half-hour a defrost starts (01:00, slot 2) is below normal running
    assert (shop[:, 2] < kw * duty - 1e-6).all()
    # over a day, the energy equals running at duty all day (recovery repays the
    # defrost) for every shop whose recovery fits before its next defrost; the
    # others are flagged and fall short, never above
    daily = shop[:, :48].sum(axis=1) / 2
    ok = shops.refrigeration_recovered.values[0][:, [4, 8]]
    assert ok.mean() > 0.9
    np.testing.assert_allclose(daily[ok], (kw * duty * 24)[ok], rtol=0.02)
    assert (daily[~ok] < (kw * duty * 24)[~ok]).all()
    lb = shops.p_lb_kw.sum("phase").values[0]
    ub = shops.p_ub_kw.sum("phase").values[0]
    assert (lb <= shops.p_kw.sum("phase").values[0] + 1e-4).all() and (shops.p_kw.sum("phase").values[0] <= ub + 1e-4).all()


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda t: t.replace("cpt_max_c = 5.0", "cpt_max_c = 2.0"), ["cpt_max_c = 2.0", "must be a number in [3"]),
        (lambda t: t.replace("defrost_hours = [1, 7, 13, 19]", "defrost_hours = [1, 25]"), ["defrost_hours", "[0, 24)"]),
        (lambda t: t.replace('agents = ["LOAD5", "LOAD9"]', 'agents = ["SHOP1"]'), ["'SHOP1' not on the feeder"]),
    ],
)
def test_bad_refrigeration_tables(ieee, tmp_path, edit, words):
    from bayesflex.errors import ConfigError

    path = tmp_path / "shops.toml"
    path.write_text(edit(load_priors("default").text + REFRIGERATION))
    with pytest.raises(ConfigError) as e:
        sample_priors(ieee, path, draws=2, seed=1)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_shops_never_draw_more_than_their_service(shops):
    """A shop's supply is sized to its plant: no agent-half-hour of net power above the
    agent's service, and a shop's baseload keeps at least a household's largest service."""
    assert int(shops.n_above_service.sum()) == 0
    has = shops.refrigeration_has.values[0]
    cap = shops.baseload_cap_kw.values[0]
    assert has.any() and (cap[has] >= 23.0 - 1e-9).all()
