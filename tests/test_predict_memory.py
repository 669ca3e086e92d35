"""predict bounds its memory: chunks sized to a budget, summaries streamed, same numbers as all at once."""
import pytest
import torch

import pyro_bdl as bdl
from pyro_bdl.posterior.base import DEFAULT_MEMORY_BUDGET
from pyro_bdl.posterior.predictive import ChunkedBMAPredictive


def fitted(kind):
    torch.manual_seed(0)
    out = 3 if kind == "classification" else 1
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, out))
    lik = bdl.likelihoods.Categorical() if kind == "classification" else bdl.likelihoods.Gaussian(scale=None)
    x = torch.randn(40, 2)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long() if kind == "classification" else x[:, 0] - x[:, 1]
    post = bdl.fit(bdl.BayesianModel(net, likelihood=lik), x, y, method="svi", num_steps=20, progress=False)
    return post, x, y


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_chunked_summaries_equal_the_whole(kind):
    post, x, y = fitted(kind)
    whole = post.predict(x, num_samples=30, seed=1)
    assert post.predict(x, num_samples=30, memory_budget=1.0).rows == 1  # a tiny budget: one row, one draw
    chunked = post.predict(x, num_samples=30, seed=1, batch_size=8, memory_budget=1.0)
    assert isinstance(chunked, ChunkedBMAPredictive) and chunked.rows == 8 and chunked.draws_per_block == 1
    assert not isinstance(whole, ChunkedBMAPredictive)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # noqa: E731
    close(chunked.mean, whole.mean)
    close(chunked.variance, whole.variance)
    close(chunked.log_prob(y), whole.log_prob(y))
    close(chunked.draw_means, whole.draw_means)
    close(chunked.outputs, whole.outputs)
    assert chunked.num_samples == 30 and chunked.num_inputs == 40 and chunked.output_dim == whole.output_dim
    if kind == "classification":
        close(chunked.probs, whole.probs)
        close(chunked.entropy(), whole.entropy())
    else:
        close(chunked.aleatoric_variance, whole.aleatoric_variance)
        close(chunked.quantile([0.1, 0.9]), whole.quantile([0.1, 0.9]))
        close(chunked.interval(0.8), whole.interval(0.8))
        close(chunked.cdf(whole.mean), whole.cdf(whole.mean))
        assert chunked.sample((5,)).shape == whole.sample((5,)).shape == (5, 40)
    assert bdl.metrics.evaluate(post, x, y, num_samples=30)  # the metrics run on a chunked predictive


def test_batch_size_fixes_the_chunk_rows_and_bad_values_are_refused():
    post, x, y = fitted("regression")
    pred = post.predict(x, num_samples=10, batch_size=16)
    assert isinstance(pred, ChunkedBMAPredictive) and pred.rows == 16
    torch.testing.assert_close(pred.mean, post.predict(x, num_samples=10).mean)
    with pytest.raises(ValueError, match="memory_budget"):
        post.predict(x, memory_budget=-1)
    with pytest.raises(ValueError, match="batch_size"):
        post.predict(x, batch_size=0)


def test_default_budget_chunks_large_predictions():
    post, x, _ = fitted("classification")
    big = x.repeat(10000, 1)  # 400k inputs × 200 draws × 3 classes: ~2.9 GB of per-draw results at once
    pred = post.predict(big, num_samples=200)
    assert isinstance(pred, ChunkedBMAPredictive) and pred.rows < big.shape[0]
    assert 3 * 200 * 3 * 4 * pred.rows <= DEFAULT_MEMORY_BUDGET / 2


def test_draws_are_blocked_when_one_row_of_all_draws_does_not_fit():
    post, x, y = fitted("classification")
    whole = post.predict(x, num_samples=30, seed=1)
    # rows fixed at all 40 inputs: the activations of 30 draws exceed the budget, so draws go in blocks
    blocked = post.predict(x, num_samples=30, seed=1, batch_size=40, memory_budget=40 * 40 * 4 * 2 * 7)
    assert not isinstance(blocked, ChunkedBMAPredictive)
    torch.testing.assert_close(blocked.outputs, whole.outputs, rtol=1e-5, atol=1e-6)
    chunked = post.predict(x, num_samples=30, seed=1, batch_size=10, memory_budget=1.0)
    assert chunked.rows == 10 and chunked.draws_per_block == 1
    torch.testing.assert_close(chunked.log_prob(y), whole.log_prob(y), rtol=1e-5, atol=1e-6)
