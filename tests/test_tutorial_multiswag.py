import os
import sys

import pytest

import pyro_bdl as bdl

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tutorials"))


@pytest.mark.skipif("ensemble" not in bdl.methods(), reason="needs method='ensemble' (issue 5: deep ensembles)")
def test_multiswag_tutorial(tmp_path):
    import multiswag

    out = multiswag.main(out_dir=str(tmp_path))
    assert os.path.exists(out["figure"])
    m = out["metrics"]
    multi, swag, ens = (m[f"Multi-SWAG (M={out['num_models']})"], m["SWAG"],
                        m[f"Deep ensemble (M={out['num_models']})"])
    # Inside the training range every posterior fits: calibrated 90% intervals, NLL near the noise's 0.22.
    for r in (multi, swag, ens):
        assert 0.8 <= r["coverage90_in"] <= 1.0 and r["nll_in"] < 0.5
    # Beyond it the weight uncertainty grows: Multi-SWAG's epistemic band widens most.
    assert multi["epistemic_sd_out"] > 1.5 * multi["epistemic_sd_in"]
    assert swag["epistemic_sd_out"] > 1.2 * swag["epistemic_sd_in"]
    # The mixture over basins is the least overconfident out there.
    assert multi["nll_out"] < ens["nll_out"]
    assert multi["coverage90_out"] >= ens["coverage90_out"]
