"""SG-MCMC chains in worker processes (``workers``, `pyro_bdl.infer.sgmcmc.run.sample` on
`pyro_bdl.infer.members.run_members`): a run with ``workers=2`` equals the run with ``workers=1`` and the same grouping
(chain c exactly, with ``stack=False``), its groups' checkpoints are the in-process run's (read back, not rerun), and
bad values fail with the shared argument check's message. Each run spawns two real processes on a tiny problem."""
import os
import pickle
import warnings

import pytest
import torch

import pyro_bdl as bdl
from pyro_bdl.infer.sgmcmc import run as sgmcmc_run
from pyro_bdl.infer.stacking import group_path

N, B = 48, 16


def data_and_model():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, generator=g)
    y = torch.tanh(x @ torch.tensor([1.0, -0.5, 0.3])) + 0.2 * torch.randn(N, generator=g)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    model = bdl.BayesianModel(net, prior=bdl.priors.Gaussian(0.0, 1.0), likelihood=bdl.likelihoods.Gaussian(scale=0.2))
    return x, y, model


def fit(**opts):
    x, y, model = data_and_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short runs: temperature diagnostics
        return bdl.fit(model, x, y, progress=False, seed=4, batch_size=B, **opts)


def equal(u: torch.Tensor, v: torch.Tensor) -> bool:
    """Bit for bit, NaN where NaN (a temperature interval with too few draws)."""
    return torch.equal(u.isnan(), v.isnan()) and torch.equal(u.nan_to_num(), v.nan_to_num())


def assert_same_run(a, b, exact: bool):
    same = equal if exact else (lambda u, v: torch.allclose(u, v, rtol=1e-5, atol=1e-6, equal_nan=True))
    assert set(a.samples) == set(b.samples)
    for site in a.samples:
        assert same(a.samples[site], b.samples[site]), site
    assert same(a.info["loss"], b.info["loss"])
    for key in ("configurational_temperature", "kinetic_temperature", "preconditioner_step", "friction"):
        if key in a.info:
            assert same(a.info[key], b.info[key]), key
    for key in a.sample_stats:
        assert same(a.sample_stats[key], b.sample_stats[key]), key


def test_group_function_pickles():
    """What `run_members` sends to a spawned process: a module-level function and a picklable task."""
    assert pickle.loads(pickle.dumps(sgmcmc_run.run_group)) is sgmcmc_run.run_group
    task = sgmcmc_run._GroupTask(chains=[0], seeds=[1], desc="sghmc", names=["sghmc"], checkpoint=None,
                                 fingerprint=None, verify=True)
    assert pickle.loads(pickle.dumps(task)) == task


@pytest.mark.parametrize("opts", [
    dict(method="sghmc", epochs=12),  # fisher kernel, gradient "auto" (the control variate's full-data pass)
    dict(method="sgld", preconditioner=None, lr=2e-4 * N, epochs=12),
    dict(method="csgmcmc", preconditioner=None, lr=0.005, cycles=2, epochs=12),
], ids=["sghmc", "sgld plain", "csgmcmc plain"])
def test_workers_equal_one_process_chain_by_chain(opts):
    """stack=False, workers=2: one chain per process; chain c is chain c of the in-process run, bit for bit."""
    serial = fit(num_chains=2, stack=False, workers=1, **opts)
    parallel = fit(num_chains=2, stack=False, workers=2, **opts)
    assert serial.info["stack"] == parallel.info["stack"] == 1
    assert parallel.info["workers"] == 2 and parallel.info["options"]["workers"] == 2
    assert_same_run(serial, parallel, exact=True)
    w = parallel.samples["0.weight"]
    assert not torch.equal(w[0], w[1])  # the chains are their own (seeds)


def test_workers_split_a_stack_into_groups_of_the_same_grouping():
    """stack=True with 4 chains and workers=2: groups of ⌈4/2⌉ = 2 stacked chains, one per process; equal to the
    in-process run with stack=2 (the same groups; to float rounding: the workers run one torch thread each, which
    may round a large network's matmuls differently; on this one it was bit for bit)."""
    parallel = fit(method="sghmc", epochs=8, num_chains=4, stack=True, workers=2)
    serial = fit(method="sghmc", epochs=8, num_chains=4, stack=2, workers=1)
    assert parallel.info["stack"] == serial.info["stack"] == 2
    assert_same_run(serial, parallel, exact=False)


def test_worker_checkpoints_are_read_back(tmp_path, monkeypatch):
    """Each process writes its group's file (`group_path`); a rerun with the same grouping, here in this process,
    reads the finished groups back without a single step (the rule's update is made to fail) and gives the same run."""
    path = str(tmp_path / "chains.ckpt")
    opts = dict(method="sghmc", epochs=6, num_chains=2, stack=False)
    parallel = fit(workers=2, checkpoint=path, **opts)
    assert sorted(tmp_path.iterdir()) == sorted(tmp_path / group_path(path, i, 2) for i in range(2))

    def no_steps(*args, **kwargs):
        raise AssertionError("a finished group was run again")

    monkeypatch.setattr(sgmcmc_run.SGMCMCRule, "update", no_steps)
    resumed = fit(workers=1, checkpoint=path, **opts)
    assert_same_run(parallel, resumed, exact=True)


@pytest.mark.parametrize("method", ["sgld", "sghmc", "csgmcmc"])
@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_workers_are_refused(method, bad):
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        fit(method=method, epochs=4, workers=bad)


def test_one_group_runs_in_this_process(monkeypatch):
    """One chain (one group) with workers=2 spawns nothing: it is the workers=1 run."""
    monkeypatch.setattr(sgmcmc_run, "run_members", None)  # calling it would fail
    assert_same_run(fit(method="sghmc", epochs=6, workers=1), fit(method="sghmc", epochs=6, workers=2), exact=True)


def test_interrupted_run_resumes_in_processes(tmp_path, monkeypatch):
    """Stopped in this process after chain 1's group finished and two epochs into chain 2's, the run resumes with
    workers=2 — chain 1 read back, chain 2 from its checkpoint, chain 3 from the start, each in a process — and
    equals the uninterrupted run bit for bit (the group files depend on the grouping, not on workers)."""
    from interrupt import interrupt_after
    opts = dict(method="sghmc", epochs=5, num_chains=3, stack=False)
    full = fit(workers=1, **opts)
    path = str(tmp_path / "chains.ckpt")
    steps = []
    restore = interrupt_after(monkeypatch, 5 + 2, steps=steps)  # one save per epoch: chain 1's 5, chain 2's first 2
    with pytest.raises(KeyboardInterrupt):
        fit(workers=1, checkpoint=path, **opts)
    restore()
    assert steps == [3, 6, 9, 12, 15, 3, 6]  # 3 steps per epoch: chain 1 done, chain 2 stopped at epoch 2
    assert sorted(tmp_path.iterdir()) == sorted(tmp_path / group_path(path, i, 3) for i in range(2))
    first, second = (os.stat(group_path(path, i, 3)).st_mtime_ns for i in range(2))
    resumed = fit(workers=2, checkpoint=path, **opts)
    assert_same_run(full, resumed, exact=True)
    assert os.stat(group_path(path, 0, 3)).st_mtime_ns == first  # read back, not run (or written) again
    assert os.stat(group_path(path, 1, 3)).st_mtime_ns > second  # resumed and run to the end
