"""Every network that runs forward fits and predicts: recurrent networks (no vmap batching rule) and
networks whose forward takes several inputs, through every inference method."""
import pyro
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import pyro_bdl as bdl
from pyro_bdl.model.inputs import cat_rows, split_rows, take_rows

# Tiny settings per method: these tests check that each method runs and predicts, not its statistics.
TINY = {
    "map": {"num_steps": 5},
    "svi": {"num_steps": 5},
    "svi-lowrank": {"guide": "lowrank", "rank": 2, "num_steps": 5},
    "svi-fullrank": {"guide": "fullrank", "num_steps": 5},
    "nuts": {"num_samples": 3, "warmup": 3, "max_tree_depth": 3},
    "hmc": {"num_samples": 3, "warmup": 3, "num_steps": 4},
    "swag": {"epochs": 3, "swa_start": 1, "rank": 2},
    "multiswag": {"epochs": 3, "swa_start": 1, "rank": 2, "num_models": 2},
    "sgld": {"epochs": 3},
    "sghmc": {"epochs": 3},
    "csgmcmc": {"epochs": 4, "cycles": 2, "samples_per_cycle": 1, "exploration": 0.5},
    "ensemble": {"num_models": 2, "num_steps": 5},
}
FULL_BATCH = {"nuts", "hmc"}  # exact-gradient samplers take the full data set, not a DataLoader


def _method(case):
    return case.split("-")[0]


class LSTMNet(nn.Module):
    """A sequence regressor: nn.LSTM (aten::lstm has no vmap batching rule) and a linear head."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(2, 3, batch_first=True)
        self.head = nn.Linear(3, 1)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class TwoInputs(nn.Module):
    """forward(x1, x2): two feature blocks of different widths."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(3, 4), nn.Linear(2, 4), nn.Linear(4, 1)

    def forward(self, x1, x2):
        return self.head(torch.tanh(self.a(x1) + self.b(x2)))


class Pairs(Dataset):
    """Items ((x1, x2), y), as a user's multi-input dataset would yield them."""

    def __init__(self, x1, x2, y):
        self.x1, self.x2, self.y = x1, x2, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return (self.x1[i], self.x2[i]), self.y[i]


def _sequences(n=12):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, 2, generator=g)
    return x, x.sum((1, 2))


def _pairs(n=12):
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(n, 3, generator=g), torch.randn(n, 2, generator=g)
    return x1, x2, x1.sum(1) - x2.sum(1)


@pytest.mark.parametrize("case", sorted(TINY))
def test_lstm_fits_and_predicts_with_every_method(case):
    torch.manual_seed(0)
    x, y = _sequences()
    model = bdl.BayesianModel(LSTMNet(), likelihood=bdl.likelihoods.Gaussian(scale=0.5))
    # SG-MCMC on the full-batch LSTM: the plain kernel. The adaptive one fits its step to 1–2 gradients in these
    # 3–4-step runs and the loss blows up to 1e7–1e15 (it did before too, unnoticed; the SG-MCMC loop's
    # divergence check now stops it). This test is plumbing, not sampler quality.
    plain = {"preconditioner": None} if case in ("sgld", "sghmc", "csgmcmc") else {}
    post = bdl.fit(model, x, y, method=_method(case), progress=False, **TINY[case], **plain)
    pred = post.predict(x, num_samples=4)
    assert pred.mean.shape == (12,) and torch.isfinite(pred.mean).all() and torch.isfinite(pred.variance).all()
    assert model.network.vectorised is False  # decided once: the loop over draws


@pytest.mark.parametrize("case", sorted(TINY))
def test_two_input_network_fits_and_predicts_with_every_method(case):
    torch.manual_seed(0)
    x1, x2, y = _pairs()
    model = bdl.BayesianModel(TwoInputs(), likelihood=bdl.likelihoods.Gaussian(scale=0.5))
    post = bdl.fit(model, (x1, x2), y, method=_method(case), progress=False, **TINY[case])
    pred = post.predict((x1, x2), num_samples=4)
    assert pred.mean.shape == (12,) and torch.isfinite(pred.mean).all()
    assert pred.log_prob(y).shape == (12,)
    # predict in chunks gives the same numbers as in one call
    chunked = post.predict((x1, x2), num_samples=4, batch_size=5)
    torch.testing.assert_close(chunked.mean, pred.mean)
    assert model.network.vectorised is True


@pytest.mark.parametrize("case", sorted(m for m in TINY if _method(m) not in FULL_BATCH))
def test_dataloader_of_pairs_works_with_every_minibatch_method(case):
    torch.manual_seed(0)
    x1, x2, y = _pairs()
    model = bdl.BayesianModel(TwoInputs(), likelihood=bdl.likelihoods.Gaussian(scale=0.5))
    loader = DataLoader(Pairs(x1, x2, y), batch_size=6, shuffle=True)
    post = bdl.fit(model, loader, method=_method(case), progress=False, **TINY[case])
    assert torch.isfinite(post.predict((x1, x2), num_samples=3).mean).all()


def test_two_inputs_with_batch_size_see_every_row_once_per_epoch():
    """Our own minibatches of a tuple input keep x1, x2 and y row-aligned."""
    from pyro_bdl.infer.data import FitData

    x1, x2, y = _pairs(10)
    x2 = x1[:, :2] * 10  # row i of x2 is determined by row i of x1
    model = bdl.BayesianModel(TwoInputs(), likelihood=bdl.likelihoods.Gaussian(scale=0.5))
    y = x1[:, 0]
    data = FitData(model, (x1, x2), y, batch_size=4)
    for generator in (torch.Generator().manual_seed(0), None):
        rows = 0
        for (a, b), yb in data.epoch(generator):
            torch.testing.assert_close(b, a[:, :2] * 10)
            torch.testing.assert_close(yb, a[:, 0])
            rows += len(yb)
        assert rows == 10
    full_x, full_y = data.full()
    assert isinstance(full_x, tuple) and len(full_x) == 2 and full_x[0].shape == (10, 3)


def test_a_users_loader_of_pairs_stays_a_loader_after_full():
    """full() concatenates a user's loader; later epochs still come from that loader, as tuples."""
    from pyro_bdl.infer.data import FitData

    x1, x2, y = _pairs(10)
    model = bdl.BayesianModel(TwoInputs(), likelihood=bdl.likelihoods.Gaussian(scale=0.5))
    data = FitData(model, DataLoader(Pairs(x1, x2, y), batch_size=4))
    (a, b), full_y = data.full()
    assert a.shape == (10, 3) and b.shape == (10, 2) and full_y.shape == (10,)
    for generator in (None, torch.Generator().manual_seed(0)):
        batches = list(data.epoch(generator))
        assert [len(yb) for _, yb in batches] == [4, 4, 2]  # the loader's own batches, in its order
        (a0, b0), y0 = batches[0]
        torch.testing.assert_close(a0, x1[:4])
        torch.testing.assert_close(b0, x2[:4])


def test_loop_over_draws_gives_the_vmap_numbers():
    """Where both work, the fallback loop and vmap agree; the choice is made once and cached."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    model = bdl.BayesianModel(net, likelihood=bdl.likelihoods.Categorical())
    x = torch.randn(7, 3)
    draws = {k: torch.randn(4, 2, *v.shape) for k, v in model.network.initial_weights().items()}
    vmapped = model.forward(draws, x)
    assert model.network.vectorised is True
    model.network.vectorised = False
    looped = model.forward(draws, x)
    assert looped.shape == (4, 2, 7, 2)
    torch.testing.assert_close(looped, vmapped)


def test_lstm_draws_match_one_draw_at_a_time():
    torch.manual_seed(0)
    model = bdl.BayesianModel(LSTMNet(), likelihood=bdl.likelihoods.Gaussian(scale=0.5))
    x, _ = _sequences(5)
    draws = {k: torch.randn(3, *v.shape) for k, v in model.network.initial_weights().items()}
    out = model.forward(draws, x)
    assert model.network.vectorised is False
    for s in range(3):
        torch.testing.assert_close(out[s], model.forward({k: v[s] for k, v in draws.items()}, x))


def test_a_real_error_is_not_mistaken_for_a_missing_batching_rule():
    """Wrong input width fails in vmap and in the loop: raised as it is, nothing cached."""
    model = bdl.BayesianModel(nn.Linear(3, 1), likelihood=bdl.likelihoods.Gaussian(scale=0.5))
    draws = {k: torch.randn(2, *v.shape) for k, v in model.network.initial_weights().items()}
    with pytest.raises(RuntimeError):
        model.forward(draws, torch.randn(4, 5))
    assert model.network.vectorised is None


def test_lstm_with_prior_predictive_and_to_arviz():
    """The Pyro-idiom paths (vectorised Predictive; ArviZ conversion) run on a recurrent network too."""
    pytest.importorskip("arviz")
    torch.manual_seed(0)
    x, y = _sequences()
    model = bdl.BayesianModel(LSTMNet(), likelihood=bdl.likelihoods.Gaussian(scale=0.5))
    prior = pyro.infer.Predictive(model, num_samples=3, parallel=True)(x)
    assert prior["obs"].shape == (3, 12)
    post = bdl.fit(model, x, y, method="map", num_steps=3, progress=False)
    idata = post.to_arviz(x=x, y=y)
    assert idata.log_likelihood["obs"].shape[-1] == 12


def test_input_helpers_keep_tuples_row_aligned():
    x = (torch.arange(10.).reshape(5, 2), torch.arange(5.))
    parts = split_rows(x, 2)
    assert [p[1].tolist() for p in parts] == [[0, 1], [2, 3], [4]]
    back = cat_rows(parts)
    assert all(torch.equal(a, b) for a, b in zip(back, x))
    picked = take_rows(x, torch.tensor([4, 0]))
    assert picked[1].tolist() == [4, 0] and picked[0][0].tolist() == [8, 9]


def test_dict_inputs_and_dict_batches_are_refused_with_the_supported_shapes():
    x1, x2, y = _pairs()
    model = bdl.BayesianModel(TwoInputs(), likelihood=bdl.likelihoods.Gaussian(scale=0.5))
    with pytest.raises(TypeError, match=r"dict batches are not supported.*tuple of tensors.*forward\(x1, x2\)"):
        bdl.fit(model, {"x1": x1, "x2": x2}, y, method="map", num_steps=1)

    class Dicts(Pairs):
        def __getitem__(self, i):
            return {"x1": self.x1[i], "x2": self.x2[i], "y": self.y[i]}

    with pytest.raises(TypeError, match=r"yields dicts.*\(\(x1, x2\), y\)"):
        bdl.fit(model, DataLoader(Dicts(x1, x2, y), batch_size=4), method="map", num_steps=1)
    with pytest.raises(ValueError, match=r"different numbers of rows \[12, 5\]"):
        bdl.fit(model, (x1, x2[:5]), y, method="map", num_steps=1)
    with pytest.raises(ValueError, match=r"cannot take an input of shape \(3,\).*missing 1 required positional.*tuple"):
        bdl.fit(model, x1, y, method="map", num_steps=1)
    post = bdl.fit(model, (x1, x2), y, method="map", num_steps=1)
    with pytest.raises(ValueError, match=r"cannot take inputs of shape \(\(3,\), \(3,\)\)"):
        post.predict((x1, x1))


def test_numpyro_backend_refuses_multi_input_networks_clearly():
    pytest.importorskip("numpyro")
    x1, x2, y = _pairs()
    model = bdl.BayesianModel(TwoInputs(), likelihood=bdl.likelihoods.Gaussian(scale=0.5))
    with pytest.raises(ValueError, match="backend='numpyro' translates networks with one input.*backend='pyro'"):
        bdl.fit(model, (x1, x2), y, method="nuts", backend="numpyro", num_samples=2, warmup=2)


class Attention(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.mha = nn.MultiheadAttention(d, 2, batch_first=True)
        self.head = nn.Linear(d, 1)

    def forward(self, x):
        a, _ = self.mha(x, x, x)
        return self.head(a.mean(1))


def test_swag_diverging_on_attention_ends_in_the_library_message_naming_lr():
    """At lr = 0.05 (Maddox et al.'s step, SWAG's default before ``lr="auto"``) this attention net diverges; the
    weights go NaN inside a distribution's argument check (a raw Pyro ValueError before): now the divergence
    message naming lr (from the invalid-argument handler on the traced path, or from the divergence check when
    the compiled potential, which skips validation, returns a NaN loss). The default ``lr="auto"`` measures the
    start's curvature and steps below it: the same fit runs."""
    torch.manual_seed(0)
    x = torch.randn(64, 5, 8)
    model = bdl.BayesianModel(Attention(), likelihood=bdl.likelihoods.Gaussian(scale=None))
    with pytest.raises(FloatingPointError, match=r"diverged.*(lower lr \(now 0.05\)|learning rate \(lr=0.05)"):
        bdl.fit(model, x, x.sum((1, 2)), method="swag", epochs=10, lr=0.05, progress=False)
    post = bdl.fit(model, x, x.sum((1, 2)), method="swag", epochs=10, progress=False)
    assert post.info["lr"][0] < 0.05 and all(math.isfinite(v) for v in post.info["losses"])


def test_two_input_network_through_diagnostics_and_arviz():
    pytest.importorskip("arviz")
    from pyro_bdl.evaluate.diagnostics.convergence import summary

    torch.manual_seed(0)
    x1, x2, y = _pairs()
    model = bdl.BayesianModel(TwoInputs(), likelihood=bdl.likelihoods.Gaussian(scale=0.5))
    # plain kernel: the adaptive one's loss reaches 1e14 on this tiny full-batch net (before too, unnoticed;
    # the divergence check now stops it); this test is about two-input plumbing
    post = bdl.fit(model, (x1, x2), y, method="sgld", epochs=20, num_chains=2, progress=False, preconditioner=None)
    table = summary(post, (x1[:4], x2[:4]), warn=False)
    predictions = [name for name in table.index if name.startswith("prediction")]
    assert predictions == [f"prediction[{i}]" for i in range(4)]  # (SG-MCMC adds its temperature rows too)
    idata = post.to_arviz(x=(x1, x2), y=y)
    assert idata.constant_data["x"].shape == (12, 3) and idata.constant_data["x_1"].shape == (12, 2)
    assert idata.log_likelihood["obs"].shape[-1] == 12
