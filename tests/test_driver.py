"""The driver: per-run minibatches, divergence checks without a sync per step, resume, the info schema; MAP on it."""
import math

import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoDelta, init_to_value

import pyro_bdl as bdl
from interrupt import interrupt_after
from pyro_bdl.infer import driver
from pyro_bdl.infer.data import FitData
from pyro_bdl.infer.divergence import DivergenceCheck, DivergenceError
from pyro_bdl.infer.svi import optimise
from blr import make_blr


class Recorder:
    """A step rule that records its batches and steps θ by −0.1·θ + the mean target (loss: ‖θ‖²)."""

    def __init__(self, nan_at=None):
        self.batches, self.nan_at, self.step = [], nan_at, 0

    def init(self, theta):
        return {"theta": theta.clone()}

    def update(self, state, batch, generators):
        self.batches.append(batch)
        theta = state["theta"]
        loss = (theta ** 2).sum(-1)
        if self.nan_at is not None and self.step >= self.nan_at:
            loss = loss * math.nan
        self.step += 1
        ys = batch.y.mean(-1) if not batch.shared else batch.y.mean().expand(theta.shape[0])
        return {"theta": 0.9 * theta + 0.01 * ys[:, None]}, loss

    def save(self, state):
        return {"theta": state["theta"]}

    def restore(self, saved):
        return {"theta": saved["theta"]}


def problem(n=24):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g)
    y = x[:, 0] + 0.1 * torch.randn(n, generator=g)
    torch.manual_seed(0)
    model = bdl.BayesianModel(torch.nn.Linear(2, 1), prior=bdl.priors.Gaussian(0.0, 1.0),
                              likelihood=bdl.likelihoods.Gaussian(scale=0.1))
    return x, y, model


def test_each_run_gets_the_batches_a_single_run_with_its_seed_gets():
    x, y, model = problem()
    data = FitData(model, x, y, batch_size=5)  # 5 batches per epoch, the last one of 4 rows
    rule = Recorder()
    driver.drive(rule, torch.ones(3, 2), data, steps=12, seeds=[7, 8, 9], desc="test", progress=False)
    for k, seed in enumerate([7, 8, 9]):
        g = torch.Generator().manual_seed(seed)
        expected = [b for _ in range(3) for b in data.epoch(g)]
        for step, batch in enumerate(rule.batches):
            xb, yb = batch.member(k)
            assert torch.equal(xb, expected[step][0]) and torch.equal(yb, expected[step][1])
    assert rule.batches[4].x.shape == (3, 4, 2)  # the epoch's short last batch, stacked
    full = Recorder()
    driver.drive(full, torch.ones(2, 2), FitData(model, x, y), steps=2, seeds=[0, 1], desc="test", progress=False)
    assert full.batches[0].shared and full.batches[0].x.shape == (24, 2)


@pytest.mark.parametrize("check_every", [1, 5, 50])
def test_divergence_found_at_its_step_when_the_history_is_read_in_blocks(check_every):
    x, y, model = problem()
    rule = Recorder(nan_at=7)
    with pytest.raises(DivergenceError, match="diverged at step 7: the loss is nan"):
        driver.drive(rule, torch.ones(2, 2), FitData(model, x, y, batch_size=6), steps=30, seeds=[0, 1], desc="test",
                     progress=False, checks=[DivergenceCheck("test", 0.1) for _ in range(2)], check_every=check_every)
    assert rule.step == min(30, check_every * math.ceil(8 / check_every))  # ran on until the block was read


def test_a_nonfinite_start_is_reported_as_the_start():
    x, y, _ = problem()
    model = bdl.BayesianModel(torch.nn.Linear(2, 1), prior=bdl.priors.Gaussian(0.0, 1e-30),
                              likelihood=bdl.likelihoods.Gaussian(scale=0.1))
    with pytest.raises(FloatingPointError, match=r"starting point.*learning rate is not the cause.*prior"):
        bdl.fit(model, x, y, method="map", steps=5, progress=False)


def test_map_info_schema():
    x, y, model = problem()
    post = bdl.fit(model, x, y, method="map", steps=7, batch_size=8, progress=False)
    assert post.info["loss"].shape == (1, 7) and post.info["losses"] == post.info["loss"][0].tolist()
    assert post.info["options"]["steps"] == 7 and post.info["options"]["optimiser"] == "adam"
    assert post.info["wall_time"] > 0


def test_user_dataloader_run_resumes_bit_identically(tmp_path, monkeypatch):
    x, y, model = problem()

    def loader():
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=6, shuffle=True,
                                           generator=torch.Generator().manual_seed(3))

    kw = dict(method="map", epochs=4, lr=0.05, progress=False, seed=0)
    full = bdl.fit(model, loader(), **kw)
    path = str(tmp_path / "map.ckpt")
    restore = interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        bdl.fit(model, loader(), checkpoint=path, **kw)
    restore()
    resumed = bdl.fit(model, loader(), checkpoint=path, **kw)
    assert torch.equal(full.info["loss"], resumed.info["loss"])
    assert torch.equal(full.samples["weight"], resumed.samples["weight"])


def test_map_with_learned_noise_finds_the_mode_pyro_autodelta_finds():
    """No Jacobian term: the mode in w (σ constrained), as Pyro's AutoDelta guide defines MAP."""
    blr = make_blr(n=30, d=2)
    torch.manual_seed(0)
    model = bdl.BayesianModel(torch.nn.Linear(2, 1), prior=bdl.priors.Gaussian(0.0, 1.0),
                              likelihood=bdl.likelihoods.Gaussian(scale=None))
    post = bdl.fit(model, blr.x, blr.y, method="map", steps=1500, lr=0.05, progress=False)
    data = FitData(model, blr.x, blr.y)
    with pyro.settings.context(module_local_params=True):
        guide = AutoDelta(model, init_loc_fn=init_to_value(values=model.initial_values()))
    optimise(model, guide, data, 1500, 0.05, 0.1, 1, 0, False, "map", floor_kind="point")
    with torch.no_grad(), pyro.settings.context(module_local_params=True):
        ref = guide.median(blr.x)
    assert set(ref) == set(post.samples)
    for site, value in ref.items():
        assert torch.allclose(post.samples[site][0, 0], value, atol=1e-3), site


@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_minibatch_map_at_defaults_finds_the_closed_form_mode(temperature):
    """Default options (Adam lr 0.01 → 0.001, 2000 steps), minibatches of 10 of 40 points."""
    blr = make_blr(n=40, d=3, seed=1)
    post = bdl.fit(blr.model(temperature), blr.x, blr.y, method="map", batch_size=10, progress=False)
    mode = torch.cat([post.samples["weight"][0, 0].reshape(-1), post.samples["bias"][0, 0].reshape(-1)]).double()
    mean, cov = blr.posterior(1.0)  # Gaussian: the mode is the mean, the same at every T
    z = (mode - mean) / cov.diag().sqrt()
    assert z.abs().max() < 0.03, z  # measured ≈ 0.005; dropping the N/B factor moves it by far more


def test_stacked_runs_gather_their_rows_at_once_with_the_same_batches():
    """K runs' minibatches of tensors are one gather of a (K, B) index (`MemberBatches.gathered`), each run's
    rows still its own permutation: the same batches as `FitData.epoch` per run, also for a two-input network;
    augmented batches keep the per-run path."""
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(13, 2, generator=g), torch.randn(13, 3, generator=g)
    y = torch.randn(13, generator=g)

    class TwoInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(2, 1), torch.nn.Linear(3, 1)

        def forward(self, u, v):
            return self.a(u) + self.b(v)

    model = bdl.BayesianModel(TwoInputs(), prior=bdl.priors.Gaussian(0.0, 1.0),
                              likelihood=bdl.likelihoods.Gaussian(scale=0.1))
    data = FitData(model, (x1, x2), y, batch_size=4)  # 4 batches per epoch, the last one of 1 row
    batches = driver.MemberBatches(data, [3, 4], torch.zeros(0))
    assert batches.gathered
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    expected = [[b for _ in range(2) for b in data.epoch(gen)] for gen in gens]  # two epochs of each run
    for step in range(8):
        if step % 4 == 0:
            batches.new_epoch()
        batch = batches.next()
        assert batch.x[0].shape[:2] == batch.y.shape == (2, 4 if step % 4 < 3 else 1)
        for k in range(2):
            (u, v), yb = batch.member(k)
            (eu, ev), ey = expected[k][step]
            assert torch.equal(u, eu) and torch.equal(v, ev) and torch.equal(yb, ey)
    augmented = FitData(model, (x1, x2), y, batch_size=4, augment=lambda x, gen: x)
    assert not driver.MemberBatches(augmented, [3, 4], torch.zeros(0)).gathered
    assert not driver.MemberBatches(data, [3], torch.zeros(0)).gathered  # one run: its batch as it comes

    class OwnEpochs(FitData):  # a batch source with its own epochs (as SWAG's i.i.d. batches) is iterated as it is
        def epoch(self, generator=None):
            yield from super().epoch(generator)

    assert not driver.MemberBatches(OwnEpochs(model, (x1, x2), y, batch_size=4), [3, 4], torch.zeros(0)).gathered
