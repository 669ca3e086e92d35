"""Device and dtype plumbing: everything follows the network's device and dtype.

No GPU is needed: the dtype path is tested for real with float64 networks (torch's default dtype
stays float32), and the device path by checking that every batch, draw and loaded tensor goes
through the one device helper (`FitData.to_device`, `Posterior.predictive_for`, `io.mapped`).
`benchmarks/gpu_check.py` runs the same on CUDA when a GPU is available.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pyro_bdl as bdl
from pyro_bdl._util.random import randn_like
from pyro_bdl.infer.data import FitData
from pyro_bdl.posterior import io as posterior_io

from blr import make_blr

ROOT = Path(__file__).resolve().parents[1]

# every method, a few steps each (the BLR closed-form checks live in test_inference_blr.py)
METHODS = {
    "svi": dict(num_steps=20), "map": dict(num_steps=20), "swag": dict(epochs=4, swa_start=2),
    "multiswag": dict(num_models=2, epochs=4, swa_start=2), "ensemble": dict(num_models=2, num_steps=10),
    "sgld": dict(epochs=6), "sghmc": dict(epochs=6), "csgmcmc": dict(epochs=80),
    "nuts": dict(num_samples=5, warmup=5, backend="pyro"),
}


def _model64(learned_noise: bool = False) -> bdl.BayesianModel:
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1).double()
    lik = bdl.likelihoods.Gaussian(scale=None if learned_noise else 0.5)
    return bdl.BayesianModel(net, prior=bdl.priors.Gaussian(0.0, 1.0), likelihood=lik)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_float64_network_every_method(method):
    assert torch.get_default_dtype() == torch.float32
    b = make_blr(n=20)
    model = _model64()
    post = bdl.fit(model, b.x, b.y, method=method, batch_size=None if method == "nuts" else 10, seed=0,
                   **METHODS[method])  # float32 data: cast to the network's float64
    draws = post.sample(3)
    assert {v.dtype for v in draws.values()} == {torch.float64}
    pred = post.predict(b.x[:4], num_samples=3)
    assert pred.mean.dtype == torch.float64 and pred.variance.dtype == torch.float64
    assert torch.isfinite(pred.mean).all()
    assert model.net.weight.dtype == torch.float64 and torch.get_default_dtype() == torch.float32


@pytest.mark.parametrize("method", ["svi", "sgld", "nuts"])
def test_float64_learned_noise(method):
    b = make_blr(n=20)
    opts = dict(METHODS[method])
    post = bdl.fit(_model64(learned_noise=True), b.x.double(), b.y.double(), method=method, seed=0, **opts)
    assert post.sample(2)["noise_scale"].dtype == torch.float64
    assert post.predict(b.x[:3], num_samples=2).mean.dtype == torch.float64


def test_float64_matches_float32_closed_form_map():
    """The float64 MAP of BLR is the closed-form posterior mode to float64-level accuracy (a float32
    computation inside would stop at ~1e-6)."""
    b = make_blr(n=30)
    mean, _ = b.posterior()
    post = bdl.fit(_model64(), b.x, b.y, method="map", num_steps=3000, lr=0.05, seed=0)
    w = post.sample(1)
    got = torch.cat([w["weight"].reshape(-1), w["bias"].reshape(-1)])
    assert (got - mean).abs().max() < 1e-4


def test_integer_labels_stay_integer_inputs_take_network_dtype():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    model = bdl.BayesianModel(net, likelihood=bdl.likelihoods.Categorical())
    x, y = torch.randn(12, 3), torch.randint(3, (12,))
    data = FitData(model, x, y, batch_size=5)
    for xb, yb in data.epoch(torch.Generator().manual_seed(0)):
        assert xb.dtype == torch.float64 and yb.dtype == torch.int64
    assert data.full()[0].dtype == torch.float64
    post = bdl.fit(model, x, y, method="map", num_steps=5)
    assert post.predict(x, num_samples=1).probs.dtype == torch.float64


def test_every_batch_goes_through_the_device_helper(monkeypatch):
    """Each batch a method sees is moved by `FitData.to_device` (the one place data meet the device)."""
    moved = []
    original = FitData.to_device

    def spy(self, batch):
        out = original(self, batch)
        moved.append(out[1])
        return out

    monkeypatch.setattr(FitData, "to_device", spy)
    b = make_blr(n=20)
    model = b.model()
    data = FitData(model, b.x, b.y, batch_size=6)
    g = torch.Generator().manual_seed(0)
    for name, batches in (("epoch", lambda: list(data.epoch(g))), ("random", lambda: list(data.random_batches(3, g)))):
        moved.clear()
        seen = batches()
        assert len(moved) == len(seen) and all(m is s[1] for m, s in zip(moved, seen)), name
    moved.clear()
    full = data.full()
    assert moved and data.full() is full  # one device copy, made once
    assert data.device == model.net.weight.device and data.dtype == model.net.weight.dtype


def test_fit_and_predict_move_tensors_to_the_model_device(monkeypatch):
    """Data batches, predict's inputs and draws are moved to ``model.device``. The network's device
    is patched to report ``cpu:0`` (a distinct device object that still runs here), and every
    ``Tensor.to(device)`` call is recorded: the data and the predictions must be sent there."""
    from pyro_bdl.model.lifting import LiftedNetwork
    fake = torch.device("cpu", 0)
    real = LiftedNetwork.device
    monkeypatch.setattr(LiftedNetwork, "device", property(lambda self: (real.fget(self), fake)[1]))
    targets = []
    original = torch.Tensor.to

    def spy(self, *args, **kwargs):
        target = args[0] if args else kwargs.get("device")
        if isinstance(target, torch.device):
            targets.append(target)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    b = make_blr(n=20)
    post = bdl.fit(b.model(), b.x, b.y, method="sgld", epochs=2, batch_size=10)
    assert targets.count(fake) >= 4  # every minibatch (x and y) went to the network's device
    targets.clear()
    post.predict(b.x[:3], num_samples=2)
    assert targets.count(fake) >= 2  # inputs and draws
    monkeypatch.undo()


def test_network_moved_after_lifting_is_followed():
    """``model.net.double()`` after building the model: the model evaluates the new storage."""
    b = make_blr(n=20)
    model = b.model()
    model.net.double()
    assert model.dtype == torch.float64
    out = model.forward(model.initial_values(), b.x[:3].double())
    assert out.dtype == torch.float64
    post = bdl.fit(model, b.x, b.y, method="map", num_steps=5)
    assert post.sample(1)["weight"].dtype == torch.float64
    assert model.to(dtype=torch.float32).dtype == torch.float32


def test_load_maps_dtype_and_device(tmp_path):
    """A float32 posterior loads into a float64 model as float64; ``map_location="cpu"`` (what a
    CUDA-saved file needs on a CPU-only machine) puts everything on the CPU."""
    b = make_blr(n=20)
    post = bdl.fit(b.model(), b.x, b.y, method="swag", epochs=4, swa_start=2, batch_size=10)
    path = tmp_path / "p.pt"
    post.save(path)
    model64 = b.model()
    model64.net.double()
    back = bdl.Posterior.load(path, model=model64, map_location="cpu")
    assert back.sample(2, seed=0)["weight"].dtype == torch.float64
    assert back.predict(b.x[:3], num_samples=2).mean.dtype == torch.float64
    state = posterior_io.mapped({"a": torch.ones(2), "n": torch.tensor(3), "l": [torch.zeros(1)]},
                                torch.device("cpu"), torch.float64)
    assert state["a"].dtype == torch.float64 and state["n"].dtype == torch.int64 and state["l"][0].dtype == torch.float64


def test_randn_like_same_numbers_from_the_generator_whatever_the_target():
    like = torch.zeros(5, dtype=torch.float64)
    a = randn_like(like, torch.Generator().manual_seed(3))
    b = torch.randn(5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert a.dtype == torch.float64 and torch.equal(a, b)


def test_gpu_check_runs_on_cpu():
    """The GPU benchmark script runs end to end on the CPU at a tiny size (on a GPU: --device cuda)."""
    # two methods keep it short; every method's device/dtype path is covered by the float64 test above
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
                          "--only", "map", "sgld"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| map") or line.startswith("| sgld")]
    assert len(rows) == 2 and all(line.rstrip().endswith("| yes |") for line in rows), out.stdout



def test_gpu_check_without_cuda_says_so_and_exits_cleanly(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the script would run for real")
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--only", "map"]) == 0
    assert "CUDA is not available" in capsys.readouterr().out
