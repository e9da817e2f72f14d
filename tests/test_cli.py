"""The README's main command, as a user runs it."""

from __future__ import annotations

import numpy as np
import xarray as xr

import bayesflex as bf
from bayesflex.cli import main
from bayesflex.timeseries import TAN_PHI_095


def test_run_prints_a_summary_and_writes_the_time_series(tmp_path, capsys):
    assert main(["run", "--periods", "6", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "min V [pu]" in out and "worst line loading" in out and "result.nc" in out
    ds = xr.open_dataset(tmp_path / "result.nc", engine="h5netcdf")
    assert ds.sizes == {"time": 6, "agent": 55, "phase": 3}
    assert bool(ds.converged.all())
    # the file's numbers are the load flow of the file's own powers
    feeder = bf.load_feeder("ieee_eu_lv")
    p = ds.p_kw.values
    lf = bf.solve_loadflow(feeder, p, p * TAN_PHI_095, full=False, precision="double")
    np.testing.assert_allclose(ds.v_min_pu.values, lf.v_min_pu, rtol=1e-12)
    np.testing.assert_allclose(ds.loading_max_pu.values, lf.loading_max_pu, rtol=1e-12)
    # H0 in January: a household draws a few hundred watts on average
    assert 0.1 < p.sum(axis=(1, 2)).mean() / 55 < 1.0


def test_run_reports_bad_input_without_a_traceback(capsys):
    assert main(["run", "--feeder", "atlantis"]) == 2
    err = capsys.readouterr().err
    assert "no feeder named 'atlantis'" in err and "Traceback" not in err
