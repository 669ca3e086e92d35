"""Deep ensembles: members from different seeds, stacked (vmap) = sequential, reproducible, parallel, resumable."""
import pytest
import torch

import pyro_bdl as bdl
from interrupt import interrupt_after
from pyro_bdl._util.random import spawn_seeds


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
    kw = dict(method="ensemble", num_chains=3, steps=150, lr=0.02, batch_size=16, progress=False)
    a = bdl.fit(model, x, y, seed=0, **kw)
    b = bdl.fit(model, x, y, seed=0, **kw)
    assert a.info["stack"] == 3  # stacked by default
    assert a.samples["0.weight"].shape == (3, 1, 16, 2)  # M chains of one draw
    assert a.draws_by_chain()["0.weight"].shape == (3, 1, 16, 2)
    for site in a.samples:
        assert torch.equal(a.samples[site], b.samples[site])
    w = a.samples["0.weight"][:, 0]
    assert all(not torch.allclose(w[i], w[j], atol=1e-3) for i in range(3) for j in range(i))
    # each member is the MAP from its own fresh initialisation and shuffle, seeded by spawn_seeds(seed, M)
    seeds = spawn_seeds(0, 3)
    single = bdl.fit(model, x, y, method="map", steps=150, lr=0.02, batch_size=16, seed=seeds[1], progress=False,
                     init=model.initial_values(seed=seeds[1]))
    assert torch.allclose(single.samples["0.weight"][0, 0], w[1], atol=1e-5)
    assert torch.allclose(single.info["loss"][0], a.info["loss"][1], rtol=1e-5)
    # the members fit: the equal-weight mixture predicts far better than the prior mean
    pred = a.predict(x)
    assert pred.outputs.shape == (3, 48, 1)
    assert float(((pred.mean - y) ** 2).mean()) < 0.5 * float(y.var())
    assert a.info["loss"].shape == (3, 150) and a.info["member_seeds"] == seeds
    assert a.info["options"]["num_chains"] == 3 and a.info["wall_time"] > 0
    # no member is shared with a run of another seed (seed + m would share two of three)
    c = bdl.fit(model, x, y, seed=1, **kw)
    wc = c.samples["0.weight"][:, 0]
    assert all(not torch.allclose(w[i], wc[j], atol=1e-3) for i in range(3) for j in range(3))


def shift(x, generator):
    return x + 0.01 * torch.randn(x.shape, generator=generator)


@pytest.mark.parametrize("batch_size,augment", [(16, None), (None, None), (20, shift)])
def test_stacked_members_equal_sequential_members(batch_size, augment):
    """vmap over K members = K members one after another (own init, data order, augmentation, seed)."""
    x, y, model = data_and_model()
    kw = dict(method="ensemble", num_chains=3, steps=60, lr=0.05, batch_size=batch_size, augment=augment,
              progress=False, seed=4)
    stacked = bdl.fit(model, x, y, stack=True, **kw)
    alone = bdl.fit(model, x, y, stack=False, **kw)
    assert stacked.info["stack"] == 3 and alone.info["stack"] == 1
    for site in stacked.samples:
        assert torch.allclose(stacked.samples[site], alone.samples[site], atol=1e-5), site
    assert torch.allclose(stacked.info["loss"], alone.info["loss"], rtol=1e-5)
    # the members really saw different data: their first losses differ beyond their starts
    assert len(set(stacked.info["loss"][:, 1].tolist())) == 3


def test_map_init_option_sets_start():
    """(core) fit_map(init=...) starts from the given values; sites left out start from the net."""
    x, y, model = data_and_model()
    start = model.initial_values(seed=5)
    post = bdl.fit(model, x, y, method="map", steps=1, lr=1e-8, init={"0.weight": start["0.weight"]},
                   progress=False)
    assert torch.allclose(post.samples["0.weight"][0, 0], start["0.weight"], atol=1e-6)
    assert torch.allclose(post.samples["2.bias"][0, 0], model.net[2].bias.detach(), atol=1e-6)
    with pytest.raises(TypeError, match="init"):
        bdl.fit(model, x, y, method="map", steps=1, init="fresh", progress=False)


def test_parallel_members_equal_sequential():
    x, y, model = data_and_model()
    kw = dict(method="ensemble", num_chains=2, steps=40, lr=0.02, progress=False, seed=3)
    seq = bdl.fit(model, x, y, workers=1, **kw)
    par = bdl.fit(model, x, y, workers=2, **kw)
    assert par.info["stack"] == 1
    for site in seq.samples:
        assert torch.allclose(seq.samples[site], par.samples[site], atol=1e-5)


@pytest.mark.parametrize("stack", [True, False])
def test_interrupted_run_resumes_bit_identically(tmp_path, monkeypatch, stack):
    x, y, model = data_and_model()
    kw = dict(method="ensemble", num_chains=3, epochs=4, lr=0.02, batch_size=10, progress=False, seed=2, stack=stack)
    full = bdl.fit(model, x, y, **kw)
    path = str(tmp_path / "ens.ckpt")
    restore = interrupt_after(monkeypatch, 2 if stack else 5)  # stacked: after epoch 2; alone: member 0 done + 1 epoch
    with pytest.raises(KeyboardInterrupt):
        bdl.fit(model, x, y, checkpoint=path, **kw)
    restore()
    import pyro_bdl.infer.ensemble as ens

    groups = []
    group = ens.fit_group
    monkeypatch.setattr(ens, "fit_group", lambda m, d, members, *a: groups.append(list(members)) or
                        group(m, d, members, *a))
    resumed = bdl.fit(model, x, y, checkpoint=path, **kw)
    assert groups == ([[0, 1, 2]] if stack else [[0], [1], [2]])
    for site in full.samples:
        assert torch.equal(full.samples[site], resumed.samples[site])
    assert torch.equal(full.info["loss"], resumed.info["loss"])
    # a finished checkpoint is read back without training
    again = bdl.fit(model, x, y, checkpoint=path, **kw)
    assert torch.equal(again.info["loss"], full.info["loss"])


def test_map_resumes_bit_identically(tmp_path, monkeypatch):
    x, y, model = data_and_model()
    kw = dict(method="map", epochs=5, lr=0.02, batch_size=10, progress=False, seed=1)
    full = bdl.fit(model, x, y, **kw)
    path = str(tmp_path / "map.ckpt")
    restore = interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        bdl.fit(model, x, y, checkpoint=path, **kw)
    restore()
    resumed = bdl.fit(model, x, y, checkpoint=path, **kw)
    assert torch.equal(full.samples["0.weight"], resumed.samples["0.weight"])
    assert torch.equal(full.info["loss"], resumed.info["loss"])
    with pytest.raises(ValueError, match="belongs to another run"):
        bdl.fit(model, x, y, checkpoint=path, **dict(kw, lr=0.03))


def test_stack_auto_follows_memory(monkeypatch):
    import pyro_bdl.infer.stacking as stacking

    x, y, model = data_and_model()
    one = stacking.run_bytes(model, bdl.infer.data.FitData(model, x, y, batch_size=16), 65)
    assert one >= 4 * 8 * 65  # at least the parameters' copies
    monkeypatch.setattr(stacking, "free_memory", lambda device: int(2.5 * one / stacking.MEMORY_SHARE))
    post = bdl.fit(model, x, y, method="ensemble", num_chains=5, steps=5, batch_size=16, progress=False)
    assert post.info["stack"] == 2  # 2.5 members fit: groups of 2


@pytest.mark.parametrize("opts,match", [(dict(num_chains=0), "num_chains"), (dict(workers=0), "workers"),
                                        (dict(epochs=0), "epochs"), (dict(stack="yes"), "stack"),
                                        (dict(optimiser="adagrad"), "optimiser")])
def test_bad_options(opts, match):
    x, y, model = data_and_model()
    with pytest.raises((ValueError, TypeError), match=match):
        bdl.fit(model, x, y, method="ensemble", progress=False, **opts)


def test_fresh_member_start_is_initial_values_of_its_seed():
    """`fresh_theta` (no per-member Pyro trace when every site is a weight) = θ at initial_values(seed), also with
    a learned noise scale (where it takes the traced path)."""
    from pyro_bdl.infer.map import fresh_theta, initial_theta
    from pyro_bdl.model.potential import Objective
    x, _, model = data_and_model()
    noisy = bdl.BayesianModel(model.net, prior=bdl.priors.Gaussian(0.0, 1.0), likelihood=bdl.likelihoods.Gaussian(scale=None))
    for m in (model, noisy):
        objective = Objective(m, x[:2])
        for seed in (0, 5, 2 ** 31):
            assert torch.equal(fresh_theta(objective, seed, x[:2]),
                               initial_theta(objective, m.initial_values(seed=seed), x[:2]))
    assert set(Objective(noisy, x[:2]).layout.names) != set(noisy.weight_sites)  # the second case is the traced one


def test_in_process_groups_share_one_objective(monkeypatch):
    """The ensemble's shared start-up (the model trace, the compiled density's check) runs once, not per group."""
    from pyro_bdl.infer import ensemble as ens
    x, y, model = data_and_model()
    built = []
    original = ens.Objective.__init__

    def counting(self, *a, **k):
        built.append(1)
        original(self, *a, **k)

    kw = dict(method="ensemble", num_chains=4, steps=5, lr=0.02, batch_size=16, progress=False, seed=0)
    reference = bdl.fit(model, x, y, stack=1, **kw)
    monkeypatch.setattr(ens.Objective, "__init__", counting)
    grouped = bdl.fit(model, x, y, stack=2, **kw)
    assert len(built) == 1
    for site in reference.samples:  # groups of 2 stacked = one member at a time (float rounding)
        assert torch.allclose(reference.samples[site], grouped.samples[site], atol=1e-6)
