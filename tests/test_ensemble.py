"""Deep ensembles: members from different seeds, reproducible, separate chains, parallel, resumable."""
import pytest
import torch

import pyro_bdl as bdl
from pyro_bdl._util import checkpoint


def data_and_model():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 2, generator=g)
    y = torch.sin(2 * x[:, 0]) + 0.5 * x[:, 1] + 0.1 * torch.randn(48, generator=g)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    model = bdl.BayesianModel(net, prior=bdl.priors.Gaussian(0.0, 1.0), likelihood=bdl.likelihoods.Gaussian(scale=0.1))
    return x, y, model


def test_members_differ_reproduce_and_are_chains():
    x, y, model = data_and_model()
    kw = dict(method="ensemble", num_models=3, num_steps=150, lr=0.02, batch_size=16, progress=False)
    a = bdl.fit(model, x, y, seed=0, **kw)
    b = bdl.fit(model, x, y, seed=0, **kw)
    assert a.samples["0.weight"].shape == (3, 1, 16, 2)  # M chains of one draw
    assert a.draws_by_chain()["0.weight"].shape == (3, 1, 16, 2)
    for site in a.samples:
        assert torch.equal(a.samples[site], b.samples[site])
    w = a.samples["0.weight"][:, 0]
    assert all(not torch.allclose(w[i], w[j], atol=1e-3) for i in range(3) for j in range(i))
    # each member is the MAP from its own fresh initialisation (seed + m) and shuffle
    single = bdl.fit(model, x, y, method="map", num_steps=150, lr=0.02, batch_size=16, seed=1, progress=False,
                     init=model.initial_values(seed=1))
    assert torch.allclose(single.samples["0.weight"][0, 0], w[1])
    # the members fit: the equal-weight mixture predicts far better than the prior mean
    pred = a.predict(x)
    assert pred.outputs.shape == (3, 48, 1)
    assert float(((pred.mean - y) ** 2).mean()) < 0.5 * float(y.var())
    assert a.info["losses"].shape == (3, 150)
    assert a.info["member_seeds"] == [0, 1, 2]


def test_map_init_option_sets_start():
    """(core) fit_map(init=...) starts from the given values; sites left out start from the net."""
    x, y, model = data_and_model()
    start = model.initial_values(seed=5)
    post = bdl.fit(model, x, y, method="map", num_steps=1, lr=1e-8, init={"0.weight": start["0.weight"]},
                   progress=False)
    assert torch.allclose(post.samples["0.weight"][0, 0], start["0.weight"], atol=1e-6)
    assert torch.allclose(post.samples["2.bias"][0, 0], model.net[2].bias.detach(), atol=1e-6)
    with pytest.raises(TypeError, match="init"):
        bdl.fit(model, x, y, method="map", num_steps=1, init="fresh", progress=False)


def test_parallel_members_equal_sequential():
    x, y, model = data_and_model()
    kw = dict(method="ensemble", num_models=2, num_steps=40, lr=0.02, progress=False, seed=3)
    seq = bdl.fit(model, x, y, workers=1, **kw)
    par = bdl.fit(model, x, y, workers=2, **kw)
    for site in seq.samples:
        assert torch.allclose(seq.samples[site], par.samples[site], atol=1e-6)


def test_resume_trains_only_missing_members(tmp_path, monkeypatch):
    x, y, model = data_and_model()
    kw = dict(method="ensemble", num_models=3, num_steps=30, lr=0.02, progress=False, seed=2)
    full = bdl.fit(model, x, y, **kw)
    path = str(tmp_path / "ens.ckpt")
    real = checkpoint.save

    def die_after_first(p, state):
        real(p, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", die_after_first)
    with pytest.raises(KeyboardInterrupt):
        bdl.fit(model, x, y, checkpoint=path, **kw)
    monkeypatch.setattr(checkpoint, "save", real)
    import pyro_bdl.infer.ensemble as ens

    trained = []
    member = ens.fit_member
    monkeypatch.setattr(ens, "fit_member", lambda m, d, seed, *a: trained.append(seed) or member(m, d, seed, *a))
    resumed = bdl.fit(model, x, y, checkpoint=path, **kw)
    assert trained == [3, 4]  # member 0 (seed 2) came from the checkpoint
    for site in full.samples:
        assert torch.equal(full.samples[site], resumed.samples[site])


@pytest.mark.parametrize("opts,match", [(dict(num_models=0), "num_models"), (dict(workers=0), "workers"),
                                        (dict(epochs=0), "epochs")])
def test_bad_options(opts, match):
    x, y, model = data_and_model()
    with pytest.raises(ValueError, match=match):
        bdl.fit(model, x, y, method="ensemble", progress=False, **opts)
