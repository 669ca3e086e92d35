"""SVI on the driver (issue 15): the same optimisation as a hand-written Pyro loop on the driver's batches,
bit-identical resume, divergence within one check block, the info schema, another run's checkpoint refused."""
import math
import re

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

import pyro_bdl as bdl
from interrupt import interrupt_after
from pyro_bdl.infer import svi
from pyro_bdl.infer.data import FitData
from pyro_bdl.infer.divergence import DivergenceError, loss_floor
from pyro_bdl.infer.map import example_batch
from pyro_bdl.model.potential import Objective
from blr import make_blr
from test_checkpoint import CHANGES, data, model


def _guide_params(post):
    return {k: v.detach().clone() for k, v in post.guide.state_dict().items()}


def _same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("guide, batch_size", [("normal", 10), ("lowrank", 10), ("fullrank", None)])
def test_svi_is_the_hand_written_pyro_loop_on_the_drivers_batches(guide, batch_size):
    """fit(method="svi") = the ELBO on the compiled potential (`FlatELBO`, + the control variate under minibatches;
    `test_svi_flat_elbo` checks it is Pyro's Trace_ELBO) + Adam with svi's parameter groups and decay, stepped over
    FitData.epoch(Generator(seed)) — bit for bit. (The finish after the loop is off here: `test_svi_finish` and
    `test_svi_stationarity` check it.)"""
    problem = make_blr(n=40, d=2, seed=2)
    m, seed, steps, lr, lr_decay = problem.model(0.1), 4, 30, 0.02, 0.1
    post = bdl.fit(m, problem.x, problem.y, method="svi", guide=guide, batch_size=batch_size, steps=steps, lr=lr,
                   seed=seed, progress=False, newton_steps=0)

    fd = FitData(m, problem.x, problem.y, batch_size=batch_size)
    N = fd.dataset_size
    pyro.set_rng_seed(seed)  # what fit does before dispatching
    losses = []
    with pyro.settings.context(module_local_params=True):
        g = svi.make_guide(m, guide, "auto", None, m.initial_values())
        svi.initialise_scales(g, m, fd, seed, m.initial_values())
        elbo = Trace_ELBO(max_plate_nesting=1)
        loss_fn = elbo(m, g)
        x0, y0 = example_batch(fd)
        loss_fn(x0, y0, N)  # builds the parameters
        with torch.random.fork_rng(devices=[]):  # as fit: the objective's prior trace leaves the global RNG alone
            objective = Objective(m, fd.example_x(2))
        flat = svi.FlatELBO.build(g, objective, fd.minibatched, 1)
        loss_floor(m, x0, y0, N, "elbo")  # the divergence floor's trace draws from the global RNG too
        opt = torch.optim.Adam(svi.param_groups(loss_fn, lr), lr=lr)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=lr_decay ** (1 / steps))
        order = torch.Generator().manual_seed(seed)
        batches = (b for _ in range(steps) for b in fd.epoch(order))
        for _, (xb, yb) in zip(range(steps), batches):
            opt.zero_grad()
            loss, value = flat(xb, yb, N)
            losses.append(float(value))
            loss.backward()
            opt.step()
            sched.step()
    assert post.info["losses"] == losses
    assert _same(_guide_params(post), {k: v.detach() for k, v in g.state_dict().items()})


def _interrupted_then_resumed(monkeypatch, tmp_path, fit, at_save=2):
    """Run ``fit(path)`` until its ``at_save``-th checkpoint is written, stop it there, then rerun it."""
    path = str(tmp_path / "svi.ckpt")
    saves: list = []
    restore = interrupt_after(monkeypatch, at_save, steps=saves)
    with pytest.raises(KeyboardInterrupt):
        fit(path)
    restore()
    assert 0 < saves[-1]  # interrupted mid-run, with Adam's moments and the RNGs part-way
    return fit(path), saves[-1]


@pytest.mark.parametrize("guide", ["normal", "lowrank"])
def test_minibatch_svi_resumes_bit_identically(tmp_path, monkeypatch, guide):
    problem = make_blr(n=30, d=2)
    kw = dict(method="svi", guide=guide, batch_size=8, epochs=5, lr=0.05, seed=1, progress=False)
    full = bdl.fit(problem.model(0.5), problem.x, problem.y, **kw)
    resumed, at = _interrupted_then_resumed(
        monkeypatch, tmp_path, lambda path: bdl.fit(problem.model(0.5), problem.x, problem.y, checkpoint=path, **kw))
    assert at == 8  # stopped at the start of epoch 3 (4 batches an epoch)
    assert torch.equal(full.info["loss"], resumed.info["loss"])
    assert _same(_guide_params(full), _guide_params(resumed))
    a, b = full.sample(5, seed=0), resumed.sample(5, seed=0)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("own_generator", [True, False])
def test_svi_with_a_shuffling_dataloader_resumes_bit_identically(tmp_path, monkeypatch, own_generator):
    """The loader shuffles with its own generator, or with torch's global RNG, which the ELBO's draws share."""
    problem = make_blr(n=30, d=2)

    def loader():
        gen = torch.Generator().manual_seed(3) if own_generator else None
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(problem.x, problem.y), batch_size=6,
                                           shuffle=True, generator=gen)

    kw = dict(method="svi", epochs=4, lr=0.05, seed=0, progress=False)
    full = bdl.fit(problem.model(), loader(), **kw)
    resumed, _ = _interrupted_then_resumed(monkeypatch, tmp_path,
                                           lambda path: bdl.fit(problem.model(), loader(), checkpoint=path, **kw))
    assert torch.equal(full.info["loss"], resumed.info["loss"])
    assert _same(_guide_params(full), _guide_params(resumed))


def test_a_finished_svi_checkpoint_is_read_back_not_retrained(tmp_path, monkeypatch):
    problem = make_blr(n=20, d=2)
    path = str(tmp_path / "svi.ckpt")
    kw = dict(method="svi", batch_size=5, epochs=3, seed=0, progress=False, checkpoint=path)
    first = bdl.fit(problem.model(), problem.x, problem.y, **kw)
    calls = []
    update = svi.SVIRule.update
    monkeypatch.setattr(svi.SVIRule, "update", lambda self, *a: calls.append(1) or update(self, *a))
    again = bdl.fit(problem.model(), problem.x, problem.y, **kw)
    assert not calls
    assert torch.equal(first.info["loss"], again.info["loss"]) and _same(_guide_params(first), _guide_params(again))


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_svi_checkpoint_of_another_run_is_refused_naming_the_field(tmp_path, field):
    path = str(tmp_path / "run.ckpt")
    x, y = data()
    opts = dict(lr=0.01, epochs=3, batch_size=10)
    bdl.fit(model(), x, y, method="svi", seed=0, progress=False, checkpoint=path, **opts)
    change = CHANGES[field]
    x2, y2 = change.get("data", data)()
    with pytest.raises(ValueError, match="belongs to another run") as err:
        bdl.fit(change.get("model", model)(), x2, y2, method="svi", seed=change.get("seed", 0), progress=False,
                checkpoint=path, **{**opts, **change.get("options", {})})
    assert field in str(err.value)


def test_svi_checkpoint_of_another_guide_or_start_is_refused(tmp_path):
    path = str(tmp_path / "run.ckpt")
    x, y = data()
    opts = dict(epochs=2, batch_size=10, seed=0, progress=False, checkpoint=path)
    bdl.fit(model(), x, y, method="svi", **opts)
    with pytest.raises(ValueError, match=r"belongs to another run.*options\.guide"):
        bdl.fit(model(), x, y, method="svi", guide="lowrank", **opts)
    bdl.fit(model(), x, y, method="svi", init={"2.bias": torch.zeros(1)}, **{**opts, "checkpoint": path + "2"})
    with pytest.raises(ValueError, match=r"belongs to another run; it differs in start \("):
        # the same options (init records its sites), another starting point
        bdl.fit(model(), x, y, method="svi", init={"2.bias": torch.ones(1)}, **{**opts, "checkpoint": path + "2"})


@pytest.mark.parametrize("batch_size", [None, 10])
def test_absurd_lr_stops_svi_within_one_check_block_naming_lr(monkeypatch, batch_size):
    problem = make_blr(n=30, d=2)
    calls = []
    update = svi.SVIRule.update
    monkeypatch.setattr(svi.SVIRule, "update", lambda self, *a: calls.append(1) or update(self, *a))
    with pytest.raises(DivergenceError, match=r"svi diverged at step \d+.*lr=1e\+06.*try lr=100000") as err:
        bdl.fit(problem.model(), problem.x, problem.y, method="svi", lr=1e6, steps=1000, batch_size=batch_size,
                seed=0, progress=False)
    step = int(re.search(r"at step (\d+)", str(err.value)).group(1))
    assert len(calls) <= 50 * (step // 50 + 1) < 1000  # stopped at the end of the block that diverged


def test_a_jump_of_orders_of_magnitude_stops_svi_with_lr_named(monkeypatch):
    """Issue 13's rule, now read in blocks: a loss 100× its initial excess stops the run, naming the step and lr."""
    problem = make_blr(n=30, d=2)
    update = svi.SVIRule.update
    step = []

    def jump(self, state, batch, gens):
        state, loss = update(self, state, batch, gens)
        step.append(1)
        return state, loss * 1e6 if len(step) == 23 else loss

    monkeypatch.setattr(svi.SVIRule, "update", jump)
    with pytest.raises(DivergenceError, match=r"svi diverged at step 22: .*times its initial excess.*lr=0\.01"):
        bdl.fit(problem.model(), problem.x, problem.y, method="svi", steps=200, seed=0, progress=False)
    assert len(step) == 50


def test_svi_info_schema_on_the_driver(tmp_path):
    problem = make_blr(n=20, d=2)
    post = bdl.fit(problem.model(), problem.x, problem.y, method="svi", guide="lowrank", epochs=3, batch_size=5,
                   seed=0, progress=False, checkpoint=str(tmp_path / "svi.ckpt"))
    info = post.info
    assert info["loss"].shape == (1, 12) and torch.isfinite(info["loss"]).all()  # 3 epochs × 4 batches
    assert info["losses"] == info["loss"][0].tolist() and info["guide"] == "AutoLowRankMultivariateNormal"
    assert info["options"]["guide"] == "lowrank" and info["options"]["epochs"] == 3
    assert "checkpoint" not in info["options"]  # where a run is saved is not part of what it is
    assert isinstance(info["wall_time"], float) and info["wall_time"] > 0 and info["seed"] == 0


def test_svi_start_that_is_not_finite_is_reported_as_the_start():
    problem = make_blr(n=20, d=2)
    m = bdl.BayesianModel(torch.nn.Linear(2, 1), prior=bdl.priors.Gaussian(0.0, 1e-30),
                          likelihood=bdl.likelihoods.Gaussian(scale=0.1))
    with pytest.raises(FloatingPointError, match=r"starting point.*learning rate is not the cause"):
        bdl.fit(m, problem.x, problem.y, method="svi", steps=5, init_scale=0.1, progress=False)


def test_the_guide_owns_its_parameters_after_the_fit():
    """During the run the guide's parameters are views of the driver's θ; afterwards each has its own storage."""
    problem = make_blr(n=20, d=2)
    post = bdl.fit(problem.model(), problem.x, problem.y, method="svi", steps=3, progress=False)
    params = [p for p in post.guide.parameters()]
    assert len({p.untyped_storage().data_ptr() for p in params}) == len(params)
    assert all(math.isfinite(float(p.sum())) for p in params)


def _mlp_model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    return bdl.BayesianModel(net, prior=bdl.priors.Gaussian(0.0, 1.0), likelihood=bdl.likelihoods.Gaussian(scale=0.1))


def test_svi_chains_are_single_runs_with_spawned_seeds_and_fresh_starts():
    """Run k of num_chains = fit(seed=s_k, init=model.initial_values(seed=s_k)) bit for bit (s = spawn_seeds)."""
    from pyro_bdl._util.random import spawn_seeds

    problem = make_blr(n=30, d=2)
    m = _mlp_model()
    post = bdl.fit(m, problem.x, problem.y, method="svi", num_chains=3, epochs=4, batch_size=8, seed=5, progress=False)
    assert isinstance(post, bdl.MixturePosterior) and post.num_members == 3
    assert post.info["loss"].shape == (3, 16) and post.info["options"]["num_chains"] == 3 and "losses" not in post.info
    for k, s in enumerate(spawn_seeds(5, 3)):
        single = bdl.fit(m, problem.x, problem.y, method="svi", epochs=4, batch_size=8, seed=s,
                         init=m.initial_values(seed=s), progress=False)
        assert torch.equal(post.info["loss"][k], single.info["loss"][0])
        assert _same(_guide_params(post.members[k]), _guide_params(single)) and post.members[k].info["seed"] == s
    means = [_guide_params(member)["locs.0.weight_unconstrained"] for member in post.members]
    assert not torch.equal(means[0], means[1])  # different starts, different runs


def test_svi_chains_resume_bit_identically_and_save(tmp_path, monkeypatch):
    problem = make_blr(n=30, d=2)
    kw = dict(method="svi", guide="lowrank", num_chains=2, batch_size=8, epochs=5, lr=0.05, seed=1, progress=False)
    full = bdl.fit(_mlp_model(), problem.x, problem.y, **kw)
    resumed, _ = _interrupted_then_resumed(
        monkeypatch, tmp_path, lambda path: bdl.fit(_mlp_model(), problem.x, problem.y, checkpoint=path, **kw))
    assert torch.equal(full.info["loss"], resumed.info["loss"])
    for a, b in zip(full.members, resumed.members):
        assert _same(_guide_params(a), _guide_params(b))
    full.save(str(tmp_path / "post.pt"))
    loaded = bdl.Posterior.load(str(tmp_path / "post.pt"), model=_mlp_model())
    a, b = full.sample(6, seed=0), loaded.sample(6, seed=0)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_svi_chains_need_a_built_in_guide():
    from pyro.infer.autoguide import AutoNormal

    problem = make_blr(n=20, d=2)
    m = problem.model()
    with pyro.settings.context(module_local_params=True):
        guide = AutoNormal(m)
    with pytest.raises(ValueError, match="num_chains > 1 .* built-in guide"):
        bdl.fit(m, problem.x, problem.y, method="svi", guide=guide, num_chains=2, steps=2, progress=False)
    with pytest.raises(ValueError, match="num_chains"):
        bdl.fit(m, problem.x, problem.y, method="svi", num_chains=0, steps=2, progress=False)
