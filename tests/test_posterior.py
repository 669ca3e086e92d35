import math
import os
import subprocess
import sys
import textwrap

import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_bdl as bdl
from pyro_bdl.posterior.predictive import BMAPredictive

from posterior_factory import make_model

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _fit(method, **kw):
    x = torch.randn(25, 2, generator=torch.Generator().manual_seed(1))
    y = x[:, 0] - x[:, 1] + 0.1 * torch.randn(25, generator=torch.Generator().manual_seed(2))
    return bdl.fit(make_model(), x, y, method=method, progress=False, **kw), x


@pytest.mark.parametrize("method,kw", [("map", {"num_steps": 30}), ("svi", {"num_steps": 30, "guide": "lowrank"}),
                                       ("nuts", {"num_samples": 10, "warmup": 10, "max_tree_depth": 4})])
def test_save_load_in_fresh_process_predicts_identically(tmp_path, method, kw):
    """The file records the factory; a fresh process rebuilds the model from it when asked."""
    post, x = _fit(method, **kw)
    path = tmp_path / "post.pt"
    post.save(str(path), factory="posterior_factory:make_model")
    torch.save(x, tmp_path / "x.pt")
    here = post.predict(x, num_samples=20, seed=5)
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {HERE!r})
        import pyro_bdl as bdl
        post = bdl.Posterior.load({str(path)!r}, factory=True)
        pred = post.predict(torch.load({str(tmp_path / 'x.pt')!r}), num_samples=20, seed=5)
        torch.save((pred.mean, pred.variance), {str(tmp_path / 'out.pt')!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT)
    mean, var = torch.load(tmp_path / "out.pt")
    assert torch.equal(mean, here.mean) and torch.equal(var, here.variance)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    # the same from the user's model, or from the network and likelihood
    for again in (bdl.Posterior.load(str(path), model=make_model()),
                  bdl.Posterior.load(str(path), net=make_model().net,
                                     likelihood=bdl.likelihoods.Gaussian(scale=None))):
        assert type(again) is type(post) and again.method == method
        assert torch.equal(again.predict(x, num_samples=20, seed=5).mean, here.mean)


def test_load_rejects_other_files(tmp_path):
    torch.save({"a": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a pyro_bdl posterior"):
        bdl.Posterior.load(str(tmp_path / "x.pt"), model=make_model())


def test_sampling_is_reproducible_and_shaped():
    post, x = _fit("svi", num_steps=30)
    a, b = post.sample(7, seed=1), post.sample(7, seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["0.weight"].shape == (7, 6, 2) and a["noise_scale"].shape == (7,)
    assert (a["noise_scale"] > 0).all()
    by_chain = post.draws_by_chain(7)
    assert by_chain["0.weight"].shape == (1, 7, 6, 2)


def test_samples_posterior_thins_evenly():
    post, _ = _fit("nuts", num_samples=10, warmup=5, num_chains=2, max_tree_depth=4)
    assert post.sample(None)["0.weight"].shape[0] == 20
    assert torch.equal(post.sample(2)["0.weight"][1], post.samples["0.weight"][1, -1])
    assert post.sample(50, seed=0)["0.weight"].shape[0] == 50
    assert post.predict(torch.randn(3, 2), num_samples=500).num_samples == 20


def test_same_seed_same_numbers():
    a, x = _fit("map", num_steps=40, seed=3)
    b, _ = _fit("map", num_steps=40, seed=3)
    assert torch.equal(a.predict(x).mean, b.predict(x).mean)


def _mixture(locs, scales):
    comp = dist.Normal(torch.tensor(locs).unsqueeze(-1), torch.tensor(scales).unsqueeze(-1))
    return BMAPredictive(comp, torch.tensor(locs).reshape(-1, 1, 1), "regression")


def test_bma_moments_quantiles_and_log_prob():
    pred = _mixture([-1.0, 1.0], [0.5, 0.5])
    assert torch.allclose(pred.mean, torch.tensor([0.0]))
    assert torch.allclose(pred.variance, torch.tensor([0.25 + 1.0]))  # E[var] + Var[mean]
    assert torch.allclose(pred.aleatoric_variance, torch.tensor([0.25]))
    y = torch.tensor([0.3])
    expected = math.log(0.5 * (math.exp(dist.Normal(-1.0, 0.5).log_prob(y)) + math.exp(dist.Normal(1.0, 0.5).log_prob(y))))
    assert torch.allclose(pred.log_prob(y), torch.tensor([expected]), atol=1e-6)
    assert torch.allclose(pred.quantile(0.5), torch.tensor([0.0]), atol=1e-5)  # symmetric mixture
    q = pred.quantile([0.1, 0.9])
    assert torch.allclose(pred.cdf(q[0]), torch.tensor([0.1]), atol=1e-5)
    lo, hi = pred.interval(0.8)
    assert torch.allclose(lo, q[0]) and torch.allclose(hi, q[1])
    draws = pred.sample((20000,), generator=torch.Generator().manual_seed(0))
    assert abs(draws.mean()) < 0.03 and abs(draws.var() - 1.25) < 0.05
    # far in a tail the log density stays finite (log-sum-exp, no log(0))
    assert torch.isfinite(pred.log_prob(torch.tensor([60.0]))).all()


def test_bma_classification():
    logits = torch.log(torch.tensor([[[0.9, 0.1]], [[0.5, 0.5]]]))
    pred = BMAPredictive(dist.Categorical(logits=logits), logits, "classification")
    assert torch.allclose(pred.probs, torch.tensor([[0.7, 0.3]]))
    assert torch.allclose(pred.log_prob(torch.tensor([1])), torch.log(torch.tensor([0.3])))
    assert torch.allclose(pred.entropy(), -(pred.probs * pred.probs.log()).sum(-1))
    with pytest.raises(AttributeError, match="regression"):
        pred.quantile(0.5)


def test_student_t_quantile_uses_its_cdf():
    comp = dist.StudentT(torch.tensor(3.0), torch.zeros(1, 1), torch.ones(1, 1))
    pred = BMAPredictive(comp, torch.zeros(1, 1, 1), "regression")
    assert torch.allclose(pred.quantile(0.975), torch.tensor([3.182446]), atol=1e-4)
