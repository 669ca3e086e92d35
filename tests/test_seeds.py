"""Independent seeds (issue 13): the chains and members of runs with different seeds never coincide,
and the same seed gives the same numbers."""
import pytest
import torch

import pyro_bdl as bdl
from blr import make_blr


def _chains(post, site="weight"):
    return post.samples[site].reshape(post.samples[site].shape[0], -1)


@pytest.mark.parametrize("method, options", [
    ("nuts", dict(num_samples=15, warmup=15, num_chains=2, init="prior")),
    ("multiswag", dict(num_models=2, epochs=4, batch_size=10)),
])
def test_fits_with_different_seeds_share_no_chain_and_the_same_seed_repeats(method, options):
    problem = make_blr(n=40, d=2)
    model = problem.model()
    runs = {s: bdl.fit(model, problem.x, problem.y, method=method, seed=s, progress=False, **options) for s in (0, 1)}
    again = bdl.fit(model, problem.x, problem.y, method=method, seed=0, progress=False, **options)
    if method == "multiswag":
        draws = {s: torch.stack([m.guide.mean for m in post.members]) for s, post in runs.items()}
        repeat = torch.stack([m.guide.mean for m in again.members])
    else:
        draws = {s: _chains(post) for s, post in runs.items()}
        repeat = _chains(again)
    assert torch.equal(draws[0], repeat)  # same seed, same numbers
    for i in range(len(draws[0])):
        for j in range(len(draws[1])):
            assert not torch.allclose(draws[0][i], draws[1][j]), f"chain {i} of seed 0 equals chain {j} of seed 1"
