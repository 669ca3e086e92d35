"""Device and dtype plumbing: everything follows the network's device and dtype.

No GPU is needed: the dtype path is tested for real with float64 networks (torch's default dtype
stays float32), and the device path by checking that every batch, draw and loaded tensor goes
through the one device helper (`FitData.to_device`, `Posterior.predictive_for`, `io.mapped`).
`benchmarks/gpu_check.py` runs the same on CUDA when a GPU is available.
"""
from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch

import pyro_bdl as bdl
from pyro_bdl._util import random as rng
from pyro_bdl._util.random import noise_generator, randn_like, spawn_seeds
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


def _fake_device(monkeypatch):
    """Patch the network's device to ``cpu:0`` and record every ``Tensor.to(device)`` target."""
    from pyro_bdl.model.lifting import LiftedNetwork
    fake = torch.device("cpu", 0)
    real = LiftedNetwork.device
    monkeypatch.setattr(LiftedNetwork, "device", property(lambda self: (real.fget(self), fake)[1]))
    targets = []
    original = torch.Tensor.to

    def spy(self, *args, **kwargs):
        target = args[0] if args else kwargs.get("device")
        if isinstance(target, (torch.device, str)):
            targets.append((torch.device(target), id(self)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    return fake, targets


def test_fit_and_predict_move_tensors_to_the_model_device(monkeypatch):
    """Data batches, predict's inputs and draws are moved to ``model.device``. The network's device
    is patched to report ``cpu:0`` (a distinct device object that still runs here), and every
    ``Tensor.to(device)`` call is recorded: the data and the predictions must be sent there."""
    fake, sent = _fake_device(monkeypatch)
    b = make_blr(n=20)
    post = bdl.fit(b.model(), b.x, b.y, method="sgld", epochs=2, batch_size=10)
    assert [d for d, _ in sent].count(fake) >= 4  # every minibatch (x and y) went to the network's device
    sent.clear()
    post.predict(b.x[:3], num_samples=2)
    assert [d for d, _ in sent].count(fake) >= 2  # inputs and draws
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


# -- SG-MCMC's noise generator (`pyro_bdl._util.random.noise_generator`): the driver's on the CPU, the chain's own
# on θ's device elsewhere. A CPU-only torch cannot make a non-CPU generator (``torch.Generator(device="meta")``
# raises "not an accelerator"), so the device path is shown by a spy on the generator's construction and by
# running the chain with its own generator forced on the CPU: the same code a GPU chain runs (`Chain.bind`,
# `Chain.sync`, the checkpoint, the restore).
def test_noise_generator_on_the_cpu_is_the_drivers():
    g = torch.Generator().manual_seed(5)
    assert noise_generator(torch.zeros(3), g) is g
    assert noise_generator(torch.zeros(3, dtype=torch.float64), g) is g


def test_noise_generator_for_a_device_theta_is_made_there_from_the_seed(monkeypatch):
    made = []
    real = torch.Generator

    def generator(device=None):  # records the device asked for; a CPU generator stands in for it
        made.append(torch.device(device))
        return real()

    monkeypatch.setattr(rng.torch, "Generator", generator)
    driver = real().manual_seed(11)
    driver.set_state(real().manual_seed(11).get_state())  # a resumed driver generator keeps its seed
    own = noise_generator(torch.empty(4, device="meta"), driver)
    assert made == [torch.device("meta")] and own is not driver
    assert own.initial_seed() == spawn_seeds(11, 1)[0] != 11  # derived from the run's seed, not equal to it
    again = noise_generator(torch.empty(4, device="meta"), real().manual_seed(11))
    assert torch.equal(torch.randn(6, generator=own), torch.randn(6, generator=again))  # fixed by the seed


def _own_noise_generator(like, generator):
    """`noise_generator`'s device branch taken for a CPU θ."""
    return rng.device_generator(like.device, generator.initial_seed())


@pytest.mark.parametrize("opts,saves", [
    # adaptive sghmc: the momentum refresh at the sampling stage's start draws from the chain's generator too
    (dict(epochs=12, warmup=4, thin=2, num_chains=2), 7),  # two chains stacked, interrupted in the sampling stage
    (dict(epochs=12, warmup=4, thin=2, num_chains=2, stack=False), 15),  # one after another: in chain 2's run
])
def test_a_chains_own_noise_generator_travels_in_the_checkpoint(tmp_path, monkeypatch, opts, saves):
    from pyro_bdl._util import checkpoint as ckpt
    from pyro_bdl._util import io as bdl_io
    from pyro_bdl.infer.sgmcmc import chain
    from interrupt import interrupt_after

    class Interrupted(Exception):
        pass

    blr = make_blr(n=32)
    fit = lambda **extra: bdl.fit(blr.model(), blr.x, blr.y, method="sghmc", batch_size=8, seed=7,  # noqa: E731
                                  progress=False, **opts, **extra)
    driver_noise = fit()
    monkeypatch.setattr(chain, "noise_generator", _own_noise_generator)
    full = fit()
    # the chains' own generators drew the noise (the data order, from the driver's, is the same)
    assert not torch.equal(full.samples["weight"], driver_noise.samples["weight"])
    path = tmp_path / "run.ckpt"
    states = []
    restore = interrupt_after(monkeypatch, saves, Interrupted)
    with pytest.raises(Interrupted):
        fit(checkpoint=str(path))
    restore()
    # the file holds each chain's generator state (a CPU uint8 tensor: tensors only, read without running code)
    files = sorted(tmp_path.glob("run*.ckpt"))  # one file per group of chains (`stacking.group_path`)
    for f in files:
        for c in bdl_io.read(str(f), ckpt.FORMAT, ckpt.FORMAT_VERSION, "checkpoint", "")["state"]["rule"]["chains"]:
            states.append(c["noise_rng"])
    assert states and all(s.dtype == torch.uint8 and s.device.type == "cpu" for s in states)
    torch.manual_seed(123)  # whatever happened in between
    resumed = fit(checkpoint=str(path))
    for site in full.samples:
        assert torch.equal(full.samples[site], resumed.samples[site])
    assert torch.equal(full.info["loss"], resumed.info["loss"])
    assert torch.equal(full.sample_stats["loss"], resumed.sample_stats["loss"])


def test_gpu_check_runs_on_cpu():
    """The GPU benchmark script runs end to end on the CPU at a tiny size (on a GPU: --device cuda): draws,
    predictions, metrics with host targets and a save/load round trip all on the device, for map and sgld
    and their rows with a host init dict and a learned noise scale, and sghmc with one chain, two stacked
    chains and an interrupted, resumed run (bit-identical to the uninterrupted one)."""
    # two methods keep it short; every method's device/dtype path is covered by the float64 test above
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
                          "--only", "map", "sgld", "sghmc"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith(("| map", "| sgld", "| sghmc"))]
    # map, sgld and their variants: a host init dict, a learned noise scale; sghmc, 2 stacked chains, a resume
    # (the SG-MCMC rows also check that every chain's noise generator is on the device)
    assert len(rows) == 7 and all(line.rstrip().endswith("| yes |") for line in rows), out.stdout
    assert any(line.startswith("| sghmc (resume)") for line in rows)



def test_gpu_check_without_cuda_says_so_and_exits_cleanly(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the script would run for real")
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--only", "map"]) == 0
    assert "CUDA is not available" in capsys.readouterr().out


# -- the device gaps closed in 15drv: user init dicts, the default noise prior, metrics, the NumPyro backend ----------
# CPU tests show the dtype path for real (float64 networks, float32 inputs) and the device path only as far
# as a CPU can: the values are sent to the network's device (a spied `Tensor.to` with the network's device
# patched to the distinct object ``cpu:0``, or the ``meta`` device, which refuses to mix with CPU tensors).
# That they run on CUDA is what `benchmarks/gpu_check.py` shows on a GPU.
def test_user_init_dict_takes_the_network_dtype_and_device(monkeypatch):
    """A float32 (or list) ``init`` for a float64 network becomes float64 (map, svi, nuts, SG-MCMC, SWAG, the shared
    helper)."""
    from pyro_bdl.infer.mcmc.init import initial_point
    b = make_blr(n=20)
    init = {"weight": torch.tensor([[0.3, -0.2]]), "bias": [0.1]}  # float32 and a plain list
    model = _model64()
    data = FitData(model, b.x, b.y)
    start = initial_point(model, data, init, seed=0, progress=False)  # mcmc/init.py (nuts, hmc)
    assert {v.dtype for v in start.values()} == {torch.float64}
    assert torch.equal(start["weight"], init["weight"].double())
    from pyro_bdl.infer.map import start_values  # map and svi
    assert {v.dtype for v in start_values(model, init).values()} == {torch.float64}
    post = bdl.fit(_model64(), b.x, b.y, method="map", steps=1, lr=1e-9, init=init,
                   newton_steps=0)  # the start, not the Newton-finished mode
    assert post.sample(1)["weight"].dtype == torch.float64
    assert torch.allclose(post.sample(1)["weight"].reshape(-1), init["weight"].double().reshape(-1), atol=1e-6)
    svi = bdl.fit(_model64(), b.x, b.y, method="svi", steps=1, lr=1e-9, init=init, newton_steps=0)
    loc = svi.guide.median()
    assert loc["weight"].dtype == torch.float64
    assert torch.allclose(loc["weight"].reshape(-1), init["weight"].double().reshape(-1), atol=1e-6)
    nuts = bdl.fit(_model64(), b.x, b.y, method="nuts", backend="pyro", num_samples=2, warmup=2, init=init)
    assert nuts.sample(1)["weight"].dtype == torch.float64
    from pyro_bdl.infer.sgmcmc.run import _initial_theta  # sgld, sghmc, csgmcmc
    from pyro_bdl.infer.swag import _initial_values  # swag, multiswag
    from pyro_bdl.model.potential import Objective
    assert _initial_theta(Objective(model, b.x[:2].double()), model, init, seed=0).dtype == torch.float64
    assert {v.dtype for v in _initial_values(model, init, seed=0).values()} == {torch.float64}
    fake, targets = _fake_device(monkeypatch)
    values = model.as_values({"weight": torch.zeros(1, 2), "count": torch.tensor(3)})
    sent = {i for d, i in targets if d == fake}
    assert len(sent) == 2 and values["count"].dtype == torch.int64  # both sent to the network's device
    monkeypatch.undo()


def test_svi_init_refused_with_a_user_guide():
    b = make_blr(n=20)
    model = _model64()
    guide = pyro_autonormal(model)
    with pytest.raises(ValueError, match="init sets a built-in guide's starting means"):
        bdl.fit(model, b.x, b.y, method="svi", guide=guide, steps=1, init={"bias": torch.zeros(1)})


def pyro_autonormal(model):
    from pyro.infer.autoguide import AutoNormal
    return AutoNormal(model)


def test_default_noise_prior_follows_the_network():
    """The learned noise's default HalfNormal(1) is built in the network's dtype and on its device; a
    user's own scale_prior is used as given."""
    b = make_blr(n=20)
    model = _model64(learned_noise=True)
    draw = model.prior_sample(b.x[:3].double())["noise_scale"]
    assert draw.dtype == torch.float64  # was float32: the default prior lived in torch's default dtype
    lik = model.likelihood
    with pyro.validation_enabled(False):  # validating the parameter would read a meta tensor's value
        on_meta = lik.noise_prior(torch.device("meta"), torch.float64)
    assert on_meta.scale.device.type == "meta" and on_meta.scale.dtype == torch.float64
    assert lik.noise_prior(torch.device("meta"), torch.float64) is on_meta  # built once per device/dtype
    import pyro.distributions as dist
    own = dist.HalfCauchy(torch.tensor(2.0))
    assert bdl.likelihoods.Gaussian(scale=None, scale_prior=own).noise_prior(torch.device("meta"), torch.float64) is own


def test_metrics_move_targets_to_the_predictions():
    """Metrics compare predictions with targets on the predictions' device and dtype: ``meta`` predictions
    (a device CPU tensors do not mix with) get meta targets; float64 posteriors take float32 and int targets."""
    from pyro_bdl.evaluate import metrics
    like = torch.zeros(3, dtype=torch.float64, device="meta")
    moved = metrics._targets(torch.ones(3), like)
    assert moved.device.type == "meta" and moved.dtype == torch.float64
    labels = metrics._targets(torch.tensor([0, 1, 1]), like)
    assert labels.device.type == "meta" and labels.dtype == torch.int64

    class MetaPredictive:  # what rmse/coverage/crps read of a predictive, on the meta device
        mean = like

        def interval(self, level):
            return like - 1, like + 1

        def sample(self, shape, generator=None):
            return like.expand(*shape, 3)

    # Each runs to its final float() (which cannot read a meta value) instead of failing on CPU targets
    # meeting meta predictions ("... is not on the expected device meta").
    for metric in (metrics.rmse, metrics.coverage, lambda p, y: metrics.crps(p, y, num_samples=4)):
        with pytest.raises(RuntimeError, match="meta tensors"):
            metric(MetaPredictive(), torch.ones(3))
    b = make_blr(n=20)
    post = bdl.fit(_model64(), b.x, b.y, method="map", steps=20)
    out = metrics.evaluate(post, b.x[:8], b.y[:8].float())
    assert all(math.isfinite(v) for v in out.values())
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 3)).double()
    model = bdl.BayesianModel(net, likelihood=bdl.likelihoods.Categorical())
    x, y = torch.randn(12, 2), torch.randint(3, (12,))
    out = metrics.evaluate(bdl.fit(model, x, y, method="map", steps=5), x, y)
    assert all(math.isfinite(v) for v in out.values())


def test_numpyro_backend_returns_draws_with_the_network():
    """NumPyro draws come back in the network's dtype (a float64 network: float64 draws); the backend reads
    the network's tensors with ``.detach().cpu()`` (on the CPU a no-op; on CUDA the fix for ``.numpy()``)."""
    pytest.importorskip("numpyro")
    b = make_blr(n=20)
    post = bdl.fit(_model64(), b.x, b.y, method="nuts", backend="numpyro", num_samples=4, warmup=4, progress=False)
    assert post.sample(2)["weight"].dtype == torch.float64
