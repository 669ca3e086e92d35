"""``method="hmc"`` takes exactly the leapfrog steps it is asked for (or keeps a trajectory length when asked)."""
import math

import pytest
import torch

import pyro_bdl as bdl


def blr():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, generator=g)
    y = x @ torch.tensor([1.0, -0.5]) + 0.3 * torch.randn(30, generator=g)
    model = bdl.BayesianModel(torch.nn.Linear(2, 1), likelihood=bdl.likelihoods.Gaussian(scale=0.3))
    return model, x, y


@pytest.mark.parametrize("step_size", [0.5, 0.001])  # adaptation shrinks the first and grows the second
def test_hmc_takes_exactly_num_steps(step_size):
    model, x, y = blr()
    post = bdl.fit(model, x, y, method="hmc", num_steps=5, step_size=step_size, warmup=30, num_samples=10,
                   progress=False)
    assert post.sample_stats["num_steps"].eq(5).all()
    assert not torch.isclose(post.sample_stats["step_size"][0, 0], torch.tensor(step_size))  # it did adapt


@pytest.mark.parametrize("length", [0.5, None])  # None: the default, π/2
def test_trajectory_length_is_the_named_alternative_and_the_default(length):
    model, x, y = blr()
    opts = {} if length is None else {"trajectory_length": length}
    post = bdl.fit(model, x, y, method="hmc", step_size=0.01, warmup=30, num_samples=10, progress=False, **opts)
    steps, eps = post.sample_stats["num_steps"], post.sample_stats["step_size"]
    lam = math.pi / 2 if length is None else length
    assert torch.equal(steps, torch.clamp((lam / eps).floor(), min=1).long().to(steps.dtype))
    with pytest.raises(ValueError, match="not both"):
        bdl.fit(model, x, y, method="hmc", num_steps=5, trajectory_length=0.5, progress=False)
    with pytest.raises(ValueError, match="num_steps"):
        bdl.fit(model, x, y, method="hmc", num_steps=0, progress=False)
