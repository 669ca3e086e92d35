"""One option vocabulary: canonical names everywhere, deprecated names warn and still work."""
import pathlib
import warnings

import pytest
import torch

import pyro_bdl as bdl
from pyro_bdl.infer import options as vocab

ROOT = pathlib.Path(__file__).resolve().parents[1]


def problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 2, generator=g)
    y = x[:, 0] - 0.5 * x[:, 1] + 0.1 * torch.randn(20, generator=g)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    return x, y, bdl.BayesianModel(net, prior=bdl.priors.Gaussian(0.0, 1.0),
                                   likelihood=bdl.likelihoods.Gaussian(scale=0.1))


CASES = [  # method, common options, old name, new name, value
    ("map", {}, "num_steps", "steps", 5),
    ("svi", {}, "num_steps", "steps", 5),
    ("ensemble", dict(steps=3), "num_models", "num_chains", 2),
    ("ensemble", dict(num_chains=2), "num_steps", "steps", 3),
    ("swag", dict(epochs=3, batch_size=10, rank=2, lr=0.01), "swa_start", "warmup", 1),
    ("multiswag", dict(epochs=3, warmup=1, batch_size=10, rank=2, lr=0.01), "num_models", "num_chains", 2),
    ("sgld", dict(epochs=3, batch_size=10, lr=1e-3), "burnin", "warmup", 1),
    ("sghmc", dict(epochs=3, batch_size=10, lr=1e-3), "burnin", "warmup", 1),
]


@pytest.mark.parametrize("method,common,old,new,value", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_deprecated_name_warns_and_equals_the_new_one(method, common, old, new, value):
    x, y, model = problem()
    kw = dict(method=method, seed=0, progress=False, **common)
    with pytest.warns(DeprecationWarning, match=rf"'{old}' is deprecated, use '{new}' \({old} -> {new}\)"):
        a = bdl.fit(model, x, y, **{old: value}, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the canonical name does not warn
        b = bdl.fit(model, x, y, **{new: value}, **kw)
    sa, sb = a.sample(4, seed=0), b.sample(4, seed=0)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(TypeError, match=f"both '{old}' and '{new}'"):
        bdl.fit(model, x, y, **{old: value, new: value}, **kw)


def test_method_options_list_the_canonical_names():
    for method in bdl.methods():
        names = bdl.infer.method_options(method)
        assert not set(names) & set(vocab.deprecated_names(method)), method
        assert not {"num_models", "burnin", "swa_start"} & set(names), method
    assert {"steps", "num_chains", "workers", "checkpoint", "stack"} <= set(bdl.infer.method_options("ensemble"))
    assert {"steps", "init", "checkpoint"} <= set(bdl.infer.method_options("map"))
    assert "steps" in bdl.infer.method_options("svi") and "num_steps" not in bdl.infer.method_options("svi")
    assert {"warmup", "num_chains"} <= set(bdl.infer.method_options("multiswag"))
    assert "warmup" in bdl.infer.method_options("sgld") and "warmup" in bdl.infer.method_options("nuts")
    # HMC's leapfrog count keeps Pyro's name and is not an optimiser's step count
    assert "num_steps" in bdl.infer.method_options("hmc") and "num_steps" not in vocab.ALIASES.get("hmc", {})


def test_unknown_option_still_refused_with_the_canonical_list():
    x, y, model = problem()
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['momentum'\].*'steps'"):
        bdl.fit(model, x, y, method="map", momentum=0.9)


def test_every_alias_targets_a_vocabulary_name_and_the_docs_table_lists_it():
    page = (ROOT / "docs" / "options.md").read_text()
    for name in vocab.VOCABULARY:
        assert f"`{name}`" in page, name
    for method, table in vocab.ALIASES.items():
        assert method in bdl.methods()
        for old, new in table.items():
            assert new in vocab.VOCABULARY and new in bdl.infer.method_options(method), (method, new)
            assert f"`{old}` → `{new}`" in page, (method, old)
    assert "options.md" in (ROOT / "mkdocs.yml").read_text()


def test_cli_defaults_use_the_canonical_names():
    from pyro_bdl import cli

    for method, defaults in cli.CLI_DEFAULTS.items():
        assert set(defaults) <= set(bdl.infer.method_options(method)), method


# The gradient methods whose info follows the driver schema (`pyro_bdl.infer.driver.info`); for the epoch-based
# ones the loss history has epochs × batches per epoch steps (20 points in batches of 10).
INFO_SCHEMA = {"map": dict(steps=4), "ensemble": dict(steps=3, num_chains=2), "svi": dict(steps=4),
               "svi (2 runs)": dict(steps=4, num_chains=2),
               "sgld": dict(epochs=4, num_chains=2), "sghmc": dict(epochs=4),
               "csgmcmc": dict(epochs=10, cycles=2, samples_per_cycle=1)}


@pytest.mark.parametrize("method", sorted(INFO_SCHEMA))
def test_gradient_methods_share_the_info_schema(method):
    """``loss`` a (num_chains, steps) tensor, ``options`` plain data, ``wall_time`` seconds."""
    x, y, model = problem()
    options = INFO_SCHEMA[method]
    info = bdl.fit(model, x, y, method=method.split(" ")[0], batch_size=10, seed=0, progress=False, **options).info
    chains, steps = options.get("num_chains", 1), options.get("steps", options.get("epochs", 0) * 2)
    assert torch.is_tensor(info["loss"]) and info["loss"].shape == (chains, steps)
    assert torch.isfinite(info["loss"]).all()
    assert isinstance(info["options"], dict)
    assert info["options"]["steps" if "steps" in options else "epochs"] == options.get("steps", options.get("epochs"))
    assert all(isinstance(v, (type(None), bool, int, float, str, list, dict)) for v in info["options"].values())
    assert isinstance(info["wall_time"], float) and info["wall_time"] > 0
    if method in ("map", "ensemble", "svi"):
        assert "losses" in info  # their old key, kept for one release


def test_svi_losses_list_is_the_loss_history():
    x, y, model = problem()
    info = bdl.fit(model, x, y, method="svi", steps=5, seed=0, progress=False).info
    assert info["losses"] == info["loss"][0].tolist() and info["guide"] == "AutoNormal"


@pytest.mark.parametrize("method", ["sgld", "sghmc", "csgmcmc"])
def test_plain_kernel_lr_is_per_data_point(method):
    """One unit of ``lr``: the plain kernel reads it per data point (ε = lr/N), silently; ``per_datapoint=False``
    (ε = lr on the full-data potential, the old sgld/sghmc reading) is the same run at lr = ε and warns
    (``DeprecationWarning``); the plain default step is the textbook ε = 1e-4 in either reading."""
    import warnings

    x, y, model = problem()
    N, eps = len(y), 1e-4
    kw = dict(method=method, preconditioner=None, epochs=4, batch_size=10, seed=0, progress=False)
    if method == "csgmcmc":
        kw.update(cycles=2, epochs=20, samples_per_cycle=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("error", FutureWarning)
        new = bdl.fit(model, x, y, lr=N * eps, **kw)
        default = bdl.fit(model, x, y, **kw) if method != "csgmcmc" else None
        bdl.fit(model, x, y, **dict(kw, preconditioner="fisher"))  # the default kernel
    with pytest.warns(DeprecationWarning, match="per_datapoint=False"):
        old = bdl.fit(model, x, y, lr=eps, per_datapoint=False, **kw)
    assert new.info["per_datapoint"] is True and old.info["per_datapoint"] is False
    for site in old.samples:
        torch.testing.assert_close(new.samples[site], old.samples[site], rtol=1e-4, atol=1e-5)
    if method != "csgmcmc":  # csgmcmc's plain default is Zhang et al.'s α₀ = 0.5 per data point
        assert default.info["lr"] == pytest.approx(N * eps)
        for site in old.samples:
            torch.testing.assert_close(default.samples[site], old.samples[site], rtol=1e-4, atol=1e-5)
