"""The one checkpoint protocol: safe files, a fingerprint that resumes only the run that wrote it."""
import os
import pickle

import pytest
import torch

import pyro_bdl as bdl
from pyro_bdl._util import checkpoint, io

METHODS = {
    "sgld": dict(lr=1e-3, epochs=3, batch_size=10),
    "sghmc": dict(lr=1e-3, epochs=3, batch_size=10),
    "csgmcmc": dict(lr=0.1, epochs=4, cycles=2, samples_per_cycle=1, exploration=0.5, batch_size=10),
    "swag": dict(epochs=3, swa_start=1, lr=0.01, rank=2, batch_size=10),
    "multiswag": dict(num_models=2, epochs=3, swa_start=1, lr=0.01, rank=2, batch_size=10),
    "ensemble": dict(num_models=2, num_steps=5, lr=0.01),
}


def data(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    return x, x[:, 0] - 0.5 * x[:, 1] + 0.1 * torch.randn(n, generator=g)


def model(temperature=1.0, prior=None, likelihood=None, hidden=4):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
    return bdl.BayesianModel(net, prior=prior or bdl.priors.Gaussian(0.0, 1.0),
                             likelihood=likelihood or bdl.likelihoods.Gaussian(scale=0.1), temperature=temperature)


class Payload:
    """Unpickling this would create ``marker``: the proof that a loader ran code from a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted(path, marker, legacy=False):
    blob = {"format": checkpoint.FORMAT, "version": checkpoint.FORMAT_VERSION, "fingerprint": "{}",
            "state": Payload(marker)}
    if legacy:
        with open(path, "wb") as f:
            pickle.dump(blob, f)
    else:
        torch.save(blob, path)


def member_path(method, path):
    root, ext = os.path.splitext(path)
    return f"{root}.member0{ext}" if method == "multiswag" else path


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_crafted_checkpoint_is_refused_without_running_code(tmp_path, method, legacy):
    marker = tmp_path / "pwned"
    path = str(tmp_path / "run.ckpt")
    crafted(member_path(method, path), marker, legacy)
    x, y = data()
    with pytest.raises(ValueError, match="refused unread|not a readable"):
        bdl.fit(model(), x, y, method=method, seed=0, progress=False, checkpoint=path, **METHODS[method])
    assert not marker.exists()


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"garbage\x00\x01 not a checkpoint", "not a readable"),
                                           ("truncated", "not a readable")])
def test_bad_checkpoint_files_get_one_clear_error(tmp_path, content, match):
    path = tmp_path / "run.ckpt"
    x, y = data()
    if content == "truncated":
        bdl.fit(model(), x, y, method="sgld", seed=0, progress=False, checkpoint=str(path), **METHODS["sgld"])
        whole = path.read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as err:
        bdl.fit(model(), x, y, method="sgld", seed=0, progress=False, checkpoint=str(path), **METHODS["sgld"])
    assert str(path) in str(err.value)


def test_other_files_and_bad_paths(tmp_path):
    torch.save({"a": 1}, tmp_path / "other.pt")
    x, y = data()
    with pytest.raises(ValueError, match="not a pyro_bdl checkpoint"):
        bdl.fit(model(), x, y, method="sgld", progress=False, checkpoint=str(tmp_path / "other.pt"), **METHODS["sgld"])
    with pytest.raises(TypeError, match="checkpoint must be a file path"):
        bdl.fit(model(), x, y, method="ensemble", progress=False, checkpoint=3, **METHODS["ensemble"])
    with pytest.raises(TypeError, match="only tensors"):
        checkpoint.save(str(tmp_path / "x.ckpt"), {}, {"net": torch.nn.Linear(1, 1)})
    assert not (tmp_path / "x.ckpt").exists()


CHANGES = {  # field named in the refusal -> how the rerun differs
    "model.temperature": dict(model=lambda: model(temperature=0.5)),
    "model.prior": dict(model=lambda: model(prior=bdl.priors.Gaussian(0.0, 0.3))),
    "model.likelihood": dict(model=lambda: model(likelihood=bdl.likelihoods.Gaussian(scale=0.2))),
    "model.network": dict(model=lambda: model(hidden=5)),
    "data.hash": dict(data=lambda: data(seed=1)),
    "options.lr": dict(options=dict(lr=2e-3)),
    "seed": dict(seed=1),
}


@pytest.mark.parametrize("method", ["sgld", "swag", "ensemble"])
@pytest.mark.parametrize("field", sorted(CHANGES))
def test_checkpoint_of_another_run_is_refused_naming_the_field(tmp_path, method, field):
    path = str(tmp_path / "run.ckpt")
    x, y = data()
    opts = METHODS[method]
    first = bdl.fit(model(), x, y, method=method, seed=0, progress=False, checkpoint=path, **opts)
    change = CHANGES[field]
    m = change.get("model", model)()
    x2, y2 = change.get("data", data)()
    opts2 = {**opts, **change.get("options", {})}
    with pytest.raises(ValueError, match="belongs to another run") as err:
        bdl.fit(m, x2, y2, method=method, seed=change.get("seed", 0), progress=False, checkpoint=path, **opts2)
    assert field in str(err.value)
    # the same run again reads its finished checkpoint back
    again = bdl.fit(model(), x, y, method=method, seed=0, progress=False, checkpoint=path, **opts)
    a, b = first.sample(3, seed=0), again.sample(3, seed=0)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        checkpoint.save(str(tmp_path / "a.ckpt"), {}, {"x": torch.ones(2)})
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "a.ckpt").st_mode & 0o777) == 0o644


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".tmp-abc.png").write_bytes(b"half")
    (tmp_path / "keep.csv").write_text("x")
    assert io.remove_stale_temporaries(str(tmp_path)) == [str(tmp_path / "sub" / ".tmp-abc.png")]
    assert (tmp_path / "keep.csv").exists()
