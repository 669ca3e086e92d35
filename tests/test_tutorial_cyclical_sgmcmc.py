import importlib.util
import math
import os

import torch

from pyro_bdl.infer import cyclical_schedule, sampling_stage


def load_tutorial():
    path = os.path.join(os.path.dirname(__file__), "..", "tutorials", "cyclical_sgmcmc.py")
    spec = importlib.util.spec_from_file_location("cyclical_sgmcmc_tutorial", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cyclical_tutorial(tmp_path):
    out = load_tutorial().main(out_dir=str(tmp_path))
    for png in out["figures"]:
        assert os.path.getsize(png) > 10_000
    K, cycles = len(out["step_size"]), 4
    # the plotted schedule is Zhang et al.'s, and every draw comes from a sampling stage
    assert torch.allclose(out["step_size"], cyclical_schedule(1e-3, K, cycles).float())
    stage = sampling_stage(K, cycles, 0.7)
    assert torch.equal(out["sampling_stage"], stage) and stage[out["draw_steps"] - 1].all()
    assert out["cycle_of_draw"].tolist() == sorted(list(range(cycles)) * 5)
    # the loss falls from the start (prior-like weights) to the sampling stages
    loss = out["loss"]
    assert float(loss[out["draw_steps"] - 1].mean()) < 0.3 * float(loss[:20].mean())
    # several cycles, several places: draws cluster by cycle
    assert out["between_cycle_distance"] > 2 * out["within_cycle_distance"]
    # the model fits the data and knows less in the gap
    assert out["rmse_on_data"] < 0.35
    assert out["std_in_gap"] > 1.5 * out["std_on_data"]
    assert math.isfinite(out["std_in_gap"])
