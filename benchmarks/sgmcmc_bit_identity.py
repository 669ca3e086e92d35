"""Fixed-seed SG-MCMC fits saved to a file, to show a refactor leaves every number bit for bit as it was
(`notes/issue-15-sgmcmc-review.md`): sgld / sghmc / csgmcmc on a small Bayesian linear regression and a tiny ReLU
MLP classifier — full batch and minibatch, T = 1 and 0.1, 1 and 3 chains stacked and ``stack=False``,
``gradient="cv"``/``"plain"``/auto, noise correction, preconditioner None / rmsprop / fisher, float64 networks, and
checkpoint resumes (interrupted after the 5th save, resumed).

Run from the repository root, with the old tree's package for the baseline (e.g. ``git archive main pyro_bdl | tar
-x -C /tmp/main``) and then the new one::

    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/main python benchmarks/sgmcmc_bit_identity.py save base.pt
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/sgmcmc_bit_identity.py save new.pt
    PYTHONPATH=. python benchmarks/sgmcmc_bit_identity.py compare base.pt new.pt   # a markdown table of torch.equal
    # a checkpoint written by the old tree, resumed by the new one, against the old tree's resumed run:
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/main python benchmarks/sgmcmc_bit_identity.py write DIR
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/sgmcmc_bit_identity.py resume DIR base.pt
"""
import os
import sys
import tempfile
import warnings

import torch

import pyro_bdl as bdl

N, B = 64, 16


def blr(T=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(N, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -0.5], dtype=torch.float64) + 0.3 + 0.5 * noise
    torch.manual_seed(0)
    m = bdl.BayesianModel(torch.nn.Linear(2, 1).to(dtype), prior=bdl.priors.Gaussian(0.0, 1.0),
                          likelihood=bdl.likelihoods.Gaussian(scale=0.5), temperature=T)
    return m, x.to(dtype), y.to(dtype)


def mlp(T=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] ** 2 > 0.5).long() + (x[:, 2] > 1).long()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).to(dtype)
    m = bdl.BayesianModel(net, prior=bdl.priors.Gaussian(0.0, 1.0), likelihood=bdl.likelihoods.Categorical(),
                          temperature=T)
    return m, x.to(dtype), y


F32, F64 = torch.float32, torch.float64
CASES = {  # name: (problem, T, dtype, fit options)
    "blr sgld plain mb": ("blr", 1.0, F32, dict(method="sgld", preconditioner=None, lr=1e-3, epochs=20,
                                                batch_size=B, per_datapoint=False)),
    "blr sgld fisher auto T0.1 mb": ("blr", 0.1, F32, dict(method="sgld", epochs=24, batch_size=B)),
    "blr sghmc fisher cv mb 3ch stacked": ("blr", 1.0, F32, dict(method="sghmc", gradient="cv", epochs=24,
                                                                 batch_size=B, num_chains=3, stack=True)),
    "blr sghmc fisher cv mb 3ch seq": ("blr", 1.0, F32, dict(method="sghmc", gradient="cv", epochs=24, batch_size=B,
                                                             num_chains=3, stack=False)),
    "blr sghmc fisher full batch": ("blr", 1.0, F32, dict(method="sghmc", epochs=60)),
    "blr sghmc rmsprop nc mb T0.1": ("blr", 0.1, F32, dict(method="sghmc", preconditioner="rmsprop",
                                                           noise_correction=True, epochs=24, batch_size=B)),
    "blr sgld fisher nc plain mb": ("blr", 1.0, F32, dict(method="sgld", noise_correction=True, gradient="plain",
                                                          epochs=24, batch_size=B)),
    "blr sghmc plain full batch 3ch": ("blr", 1.0, F32, dict(method="sghmc", preconditioner=None, lr=1e-3, epochs=60,
                                                             num_chains=3, per_datapoint=False)),
    "blr csgmcmc adaptive mb": ("blr", 1.0, F32, dict(method="csgmcmc", lr=0.05, cycles=2, epochs=40, batch_size=B)),
    "blr csgmcmc plain mb T0.1": ("blr", 0.1, F32, dict(method="csgmcmc", preconditioner=None, lr=0.1, cycles=2,
                                                        epochs=20, batch_size=B)),
    "mlp sghmc default mb 3ch stacked": ("mlp", 1.0, F32, dict(method="sghmc", epochs=24, batch_size=B, num_chains=3)),
    "mlp sghmc default mb 3ch seq": ("mlp", 1.0, F32, dict(method="sghmc", epochs=24, batch_size=B, num_chains=3,
                                                           stack=False)),
    "mlp sgld fisher cv T0.1 f64": ("mlp", 0.1, F64, dict(method="sgld", gradient="cv", epochs=24, batch_size=B)),
    "mlp csgmcmc adaptive f64 3ch": ("mlp", 1.0, F64, dict(method="csgmcmc", lr=0.05, cycles=2, epochs=60,
                                                           batch_size=B, num_chains=3)),
    "mlp csgmcmc sgld rmsprop nc": ("mlp", 0.1, F32, dict(method="csgmcmc", sampler="sgld", preconditioner="rmsprop",
                                                          noise_correction=True, cycles=2, epochs=40, batch_size=B)),
    "mlp sghmc plain full batch": ("mlp", 1.0, F32, dict(method="sghmc", preconditioner=None, lr=1e-3, epochs=40,
                                                         per_datapoint=False)),
}


RESUMED = {
    "resume sghmc default mb 2ch": ("blr", 1.0, F32, dict(method="sghmc", epochs=12, batch_size=B, num_chains=2)),
    "resume csgmcmc adaptive mb": ("mlp", 1.0, F32, dict(method="csgmcmc", lr=0.05, cycles=2, epochs=40,
                                                         batch_size=B)),
}


def fit_case(prob, T, dtype, opts, **more):
    m, x, y = (blr if prob == "blr" else mlp)(T, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bdl.fit(m, x, y, progress=False, seed=3, **opts, **more)


def interrupted(directory):
    """Each `RESUMED` run with a checkpoint in ``directory``, stopped right after its 5th save."""
    from pyro_bdl._util import checkpoint
    for i, (prob, T, dtype, opts) in enumerate(RESUMED.values()):
        real, count = checkpoint.save, [0]

        def save(path, fp, state):
            real(path, fp, state)
            count[0] += 1
            if count[0] == 5:
                raise KeyboardInterrupt
        checkpoint.save = save
        try:
            fit_case(prob, T, dtype, opts, checkpoint=os.path.join(directory, f"run{i}.ckpt"))
        except KeyboardInterrupt:
            pass
        finally:
            checkpoint.save = real


def resumed(directory):
    """The `RESUMED` runs resumed from the checkpoints in ``directory``."""
    return {name: fit_case(prob, T, dtype, opts, checkpoint=os.path.join(directory, f"run{i}.ckpt"))
            for i, (name, (prob, T, dtype, opts)) in enumerate(RESUMED.items())}


def record(post):
    info = {k: v for k, v in post.info.items() if isinstance(v, torch.Tensor)}
    plain = {k: v for k, v in post.info.items() if not isinstance(v, torch.Tensor) and k != "wall_time"}
    return {"samples": dict(post.samples), "stats": dict(post.sample_stats), "info": info, "plain": repr(plain)}


def equal(a, b):
    if isinstance(a, dict):
        return set(a) == set(b) and all(equal(a[k], b[k]) for k in a)
    if a.dtype.is_floating_point:
        same_nan = torch.equal(a.isnan(), b.isnan())
        return a.shape == b.shape and a.dtype == b.dtype and same_nan and torch.equal(a[~a.isnan()], b[~b.isnan()])
    return torch.equal(a, b)


def table(a, b, suffix=""):
    for k in b:
        print(f"| {k}{suffix} | {equal(a[k]['samples'], b[k]['samples'])} | {equal(a[k]['stats'], b[k]['stats'])} | "
              f"{equal(a[k]['info'], b[k]['info'])} | {a[k]['plain'] == b[k]['plain']} |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode = sys.argv[1]
    if mode == "save":
        res = {c: record(fit_case(*CASES[c])) for c in CASES}
        directory = tempfile.mkdtemp()
        interrupted(directory)
        res.update({k: record(v) for k, v in resumed(directory).items()})
        torch.save(res, sys.argv[2])
        print("saved", len(res))
    elif mode == "write":
        interrupted(sys.argv[2])
    else:
        print("| configuration | draws | sample_stats | info tensors | other info (options, in order) |")
        print("| --- | --- | --- | --- | --- |")
        if mode == "resume":
            table(torch.load(sys.argv[3]), {k: record(v) for k, v in resumed(sys.argv[2]).items()},
                  " (checkpoint of the first tree, resumed by the second)")
        else:
            table(torch.load(sys.argv[2]), torch.load(sys.argv[3]))
