"""The "inspect chains with ArviZ" tutorial runs at small size and shows what it claims."""
import importlib.util
import math
import os
import warnings

import pytest

pytest.importorskip("arviz")

HERE = os.path.dirname(__file__)


def load_tutorial():
    path = os.path.join(HERE, "..", "tutorials", "inspect_chains.py")
    spec = importlib.util.spec_from_file_location("inspect_chains", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_inspect_chains_tutorial(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = load_tutorial().main(out_dir=str(tmp_path))
    for name in ("trace", "rank", "energy", "rhat", "reliability"):
        path = result["figures"][name]
        assert path.endswith(".png") and os.path.getsize(path) > 10_000, name
    assert result["num_chains"] == 4 and result["num_draws"] == 40
    # the chains are short: the diagnostics must say so, consistently
    assert result["convergence_warning"] == (result["flagged_inputs"] > 0)
    assert 1.0 <= result["rhat_predictions_median"] < result["rhat_predictions_max"]
    # weights are not identifiable: their R-hat looks worse than the predictions'
    assert result["rhat_weights_median"] > result["rhat_predictions_median"]
    # PSIS-LOO on the training data estimates the test log predictive density
    assert math.isfinite(result["elpd_loo_per_point"])
    assert abs(result["elpd_loo_per_point"] - result["test_lpd_per_point"]) < 0.25
    assert result["nll"] == pytest.approx(-result["test_lpd_per_point"], rel=1e-5)
    assert result["accuracy"] > 0.85 and 0 <= result["ece"] < 0.3
