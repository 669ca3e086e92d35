"""Reading a file never runs code: posteriors and functional priors refuse crafted, old and bad files."""
import os
import pickle

import pytest
import torch

import pyro_bdl as bdl
from pyro_bdl.posterior import io as posterior_io

from posterior_factory import make_model
from test_checkpoint import Payload

X = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
Y = X[:, 0] - X[:, 1]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("post") / "post.pt")
    bdl.fit(make_model(), X, Y, method="map", num_steps=5, progress=False).save(path)
    return path


@pytest.mark.parametrize("where", ["state", "info", "header"])
def test_crafted_posterior_is_refused_without_running_code(tmp_path, where):
    marker = tmp_path / "pwned"
    blob = {"format": posterior_io.FORMAT, "version": posterior_io.FORMAT_VERSION, "kind": "samples", "method": "map",
            "model": "{}", "factory": None, "network": {}, "info": {}, "state": {}}
    blob[where if where != "header" else "format"] = Payload(marker)
    torch.save(blob, tmp_path / "post.pt")
    with pytest.raises(ValueError, match="refused unread"):
        bdl.Posterior.load(str(tmp_path / "post.pt"), model=make_model())
    assert not marker.exists()


def test_crafted_functional_prior_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": "pyro_bdl.functional_prior", "version": 1, "sites": Payload(marker)}, tmp_path / "p.pt")
    with pytest.raises(ValueError, match="FunctionalPrior"):
        bdl.function_priors.FunctionalPrior.load(str(tmp_path / "p.pt"))
    assert not marker.exists()


def test_old_pickled_posterior_says_how_to_resave(tmp_path):
    post = bdl.fit(make_model(), X, Y, method="map", num_steps=5, progress=False)
    torch.save({"format": posterior_io.FORMAT, "version": 1, "posterior": post}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="old pickle format.*save it again"):
        bdl.Posterior.load(str(tmp_path / "old.pt"), model=make_model())


@pytest.mark.parametrize("damage,match", [("empty", "is empty"), ("truncated", "truncated or corrupt"),
                                          ("garbage", "truncated or corrupt"), ("missing", "no such file"),
                                          ("directory", "is a directory")])
def test_bad_posterior_files_get_one_clear_error(tmp_path, saved, damage, match):
    path = tmp_path / "post.pt"
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        whole = open(saved, "rb").read()
        path.write_bytes(whole[: len(whole) * 2 // 3])
    elif damage == "garbage":
        path.write_bytes(os.urandom(300))
    elif damage == "directory":
        path.mkdir()
    with pytest.raises(ValueError, match=match) as err:
        bdl.Posterior.load(str(path), model=make_model())
    assert str(path) in str(err.value)


def test_bad_load_arguments(saved):
    with pytest.raises(TypeError, match="file path"):
        bdl.Posterior.load(3, model=make_model())
    with pytest.raises(ValueError, match="needs the model"):
        bdl.Posterior.load(saved)
    with pytest.raises(TypeError, match="BayesianModel"):
        bdl.Posterior.load(saved, model=make_model().net)
    with pytest.raises(ValueError, match="not model and net"):
        bdl.Posterior.load(saved, model=make_model(), net=make_model().net)
    with pytest.raises(ValueError, match="records no model factory"):
        bdl.Posterior.load(saved, factory=True)
    with pytest.raises(TypeError, match="factory must be"):
        bdl.Posterior.load(saved, factory=3)
    with pytest.raises(ValueError, match="needs also|also needs likelihood"):
        bdl.Posterior.load(saved, net=make_model().net)
    with pytest.raises(ValueError, match="cannot import the model factory"):
        bdl.Posterior.load(saved, factory="no_such_module_xyz:make")
    with pytest.raises(ValueError, match="guide= is for"):
        bdl.Posterior.load(saved, model=make_model(), guide=torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="factory must be a 'package.module:function'"):
        bdl.fit(make_model(), X, Y, method="map", num_steps=2, progress=False).save(saved + "2", factory="nocolon")


@pytest.mark.parametrize("change,field", [(dict(temperature=0.5), "temperature"), (dict(hidden=5), "network")])
def test_load_refuses_a_different_model_naming_the_difference(saved, change, field):
    with pytest.raises(ValueError, match=f"differs from the saved one in .*{field}"):
        bdl.Posterior.load(saved, model=make_model(**change))


def test_loading_restores_the_saved_network_state(saved):
    model = make_model()
    with torch.no_grad():
        model.net[0].weight.zero_()  # e.g. a freshly initialised network
    post = bdl.Posterior.load(saved, model=model)
    assert torch.equal(model.net[0].weight, make_model().net[0].weight)
    assert post.model is model
