import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tutorials"))

import gap_regression  # noqa: E402


def test_gap_regression_tutorial(tmp_path):
    r = gap_regression.main(out_dir=str(tmp_path))
    assert (tmp_path / "gap_regression.png").exists()
    assert r["map"]["gap"] == 0.0  # a point estimate has no epistemic spread
    # NUTS: uncertainty grows in the gap and beyond the data
    assert r["nuts"]["gap"] > 2 * r["nuts"]["data"]
    assert r["nuts"]["outside"] > 2 * r["nuts"]["data"]
    assert r["svi"]["data"] > 0
    assert r["user_model_prior_scale"] > 0
