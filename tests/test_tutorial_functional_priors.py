"""The functional-priors tutorial runs at small size and shows what it claims."""
import importlib.util
import math
import pathlib

import torch

TUTORIAL = pathlib.Path(__file__).resolve().parents[1] / "tutorials" / "functional_priors.py"


def test_tutorial_functional_priors(tmp_path):
    spec = importlib.util.spec_from_file_location("tutorial_functional_priors", TUTORIAL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared CI cores: avoid oversubscription
    try:
        result = module.main(out_dir=str(tmp_path))
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "functional_prior_draws.png").stat().st_size > 10_000
    d = result["distances"]
    # fitting moves the prior over functions towards the GP; the RFF net is at the sampling floor
    assert d["fitted"] < 0.5 * d["iid"] and d["fitted"] < d["fan_in"]
    assert d["floor"] < d["fitted"] and d["rff"] < 1.3 * d["floor"]
    s = result["summary"]
    assert result["method"] == "svi"
    assert set(s) == {"exact GP (target, reference)", "fitted to GP", "iid N(0,1)", "fan-in"}
    assert all(math.isfinite(v["nll"]) for v in s.values())
    # the wild iid N(0,1) prior over functions predicts worse than the GP-matched one
    assert s["fitted to GP"]["nll"] < s["iid N(0,1)"]["nll"]
