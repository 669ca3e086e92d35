"""Inputs after fit validate like fit: predict, log_prob, summary, prior dicts, patterns and the CLI."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import pyro_bdl as bdl
from pyro_bdl import cli
from pyro_bdl.evaluate.diagnostics.convergence import ConvergenceWarning, summary


def _mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


@pytest.fixture(scope="module")
def regression():
    torch.manual_seed(0)
    x = torch.randn(30, 4)
    y = x.sum(1)
    model = bdl.BayesianModel(_mlp(), likelihood=bdl.likelihoods.Gaussian(scale=0.5))
    return bdl.fit(model, x, y, method="svi", num_steps=10, progress=False), x, y


def test_predict_with_the_wrong_feature_width_names_it(regression):
    post, x, _ = regression
    with pytest.raises(ValueError, match=r"cannot take an input of shape \(5,\) per row.*feature dimension"):
        post.predict(torch.randn(3, 5))


@pytest.mark.parametrize("kwargs, match", [
    ({"num_samples": -3}, r"num_samples .*must be a positive integer, got -3"),
    ({"num_samples": 2.5}, r"num_samples .*must be a positive integer, got 2.5"),
    ({"batch_size": 0}, r"batch_size .*must be a positive integer, got 0"),
    ({"seed": "a"}, r"seed must be an int"),
])
def test_predict_argument_errors(regression, kwargs, match):
    post, x, _ = regression
    with pytest.raises((ValueError, TypeError), match=match):
        post.predict(x, **kwargs)


def test_log_prob_with_the_wrong_length_names_the_expected_shape(regression):
    post, x, y = regression
    pred = post.predict(x[:10], num_samples=5)
    assert pred.log_prob(y[:10]).shape == (10,)
    with pytest.raises(ValueError, match=r"y has shape \(7,\) but this predictive is over 10 inputs and needs y of "
                                         r"shape \(10,\)"):
        pred.log_prob(y[:7])
    with pytest.raises(ValueError, match=r"needs y of shape \(10,\)"):
        pred.log_prob(y[:10].unsqueeze(-1))
    with pytest.raises(TypeError, match="torch.as_tensor"):
        pred.log_prob([1.0] * 10)


def test_log_prob_of_classification_checks_labels():
    torch.manual_seed(0)
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    model = bdl.BayesianModel(nn.Linear(4, 3), likelihood=bdl.likelihoods.Categorical())
    pred = bdl.fit(model, x, y, method="map", num_steps=5, progress=False).predict(x)
    assert torch.allclose(pred.log_prob(y), pred.log_prob(y.double()))  # float labels are fine
    with pytest.raises(ValueError, match=r"class labels must lie in 0..2"):
        pred.log_prob(torch.full((20,), 3))
    with pytest.raises(ValueError, match="class labels"):
        pred.log_prob(torch.full((20,), 0.5))


# -- summary -----------------------------------------------------------------------------------------
def _bias_posterior(chains):
    """A posterior over the bias of Linear(1, 1) only: at x = 0 the prediction is the bias draw."""
    model = bdl.BayesianModel(nn.Linear(1, 1), likelihood=bdl.likelihoods.Gaussian(scale=1.0), bayesian="bias")
    draws = torch.as_tensor(np.asarray(chains), dtype=torch.get_default_dtype())
    return bdl.SamplesPosterior(model, {"bias": draws.unsqueeze(-1)}, "nuts")


def test_summary_of_one_chain_does_not_talk_about_rhat_or_modes():
    rng = np.random.default_rng(0)
    post = _bias_posterior(rng.standard_normal((1, 300)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        table = summary(post, torch.zeros(3, 1))
    assert table["r_hat"].isna().all()
    assert table.attrs["flagged_inputs"] == [] and table.attrs["diagnosis"]["different_modes"] == []
    assert any("one chain: R-hat not available" in note for note in table.attrs["notes"])


def test_summary_of_a_one_chain_svi_guide_does_not_say_different_modes(regression):
    post, x, _ = regression
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        table = summary(post, x[:20], num_samples=200)
    messages = " ".join(str(w.message) for w in record if issubclass(w.category, ConvergenceWarning))
    assert "different modes" not in messages and "R-hat >" not in messages
    assert table.attrs["diagnosis"]["different_modes"] == [] and table.attrs["diagnosis"]["not_mixing"] == []


def test_healthy_four_chains_with_rhat_just_above_1_01_do_not_alarm():
    """4 chains × 200 iid draws (ESS ≈ 800) with a small shift between chains: R-hat in (1.01, 1.05)
    is listed as information, without a warning; a large shift does warn (not mixing / modes)."""
    rng = np.random.default_rng(3)
    shift = np.array([0.0, 0.0, 0.0, 0.45])[:, None]
    post = _bias_posterior(rng.standard_normal((4, 200)) + shift)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        table = summary(post, torch.zeros(1, 1))
    rhat = float(table["r_hat"].iloc[0])
    assert 1.01 < rhat < 1.05 and float(table["ess_bulk"].iloc[0]) > 400
    assert table.attrs["diagnosis"]["rhat_above_1.01"] == [0] and table.attrs["flagged_inputs"] == []

    far = _bias_posterior(rng.standard_normal((4, 200)) + 3 * shift)
    with pytest.warns(ConvergenceWarning, match="different modes"):
        table = summary(far, torch.zeros(1, 1))
    assert table.attrs["diagnosis"]["different_modes"] == [0]
    # the strict bar is one argument away
    with pytest.warns(ConvergenceWarning, match=r"R-hat > 1.01"):
        summary(post, torch.zeros(1, 1), rhat_threshold=1.01)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"weights": "yes"}, TypeError, "weights must be True or False"),
    ({"num_samples": 0}, ValueError, "num_samples .*positive integer"),
    ({"num_splits": 1}, ValueError, "num_splits .*integer >= 2"),
    ({"ess_threshold": -1}, ValueError, "ess_threshold must be a number >= 0"),
    ({"warn": 1}, TypeError, "warn must be True or False"),
])
def test_summary_argument_errors(regression, kwargs, error, match):
    post, x, _ = regression
    with pytest.raises(error, match=match):
        summary(post, x[:3], **kwargs)


def test_summary_input_errors(regression):
    post, x, _ = regression
    with pytest.raises(TypeError, match="needs a posterior returned by pyro_bdl.fit"):
        summary(post.model, x[:3])
    with pytest.raises(ValueError, match=r"cannot take an input of shape \(2,\)"):
        summary(post, x[:3, :2])
    with pytest.raises(ValueError, match=r"needs inputs x.*summary\(posterior, x_test\[:50\]\)"):
        summary(post)


# -- prior dicts and patterns ----------------------------------------------------------------------
def test_a_prior_glob_matching_nothing_is_an_error():
    lik = bdl.likelihoods.Gaussian(scale=1.0)
    with pytest.raises(ValueError, match=r"prior rule glob '3\.\*' matches no Bayesian parameter.*'0.weight'"):
        bdl.BayesianModel(_mlp(), prior={"3.*": bdl.priors.Gaussian(0, 2)}, likelihood=lik)
    with pytest.raises(ValueError, match=r"layer type Conv2d matches no Bayesian parameter"):
        bdl.BayesianModel(_mlp(), prior={nn.Conv2d: bdl.priors.Gaussian(0, 2)}, likelihood=lik)
    # a glob that only matches deterministic parameters has no effect either
    with pytest.raises(ValueError, match=r"glob '0\.\*' matches no Bayesian parameter"):
        bdl.BayesianModel(_mlp(), prior={"0.*": bdl.priors.Gaussian(0, 2)}, likelihood=lik, bayesian="2.*")
    model = bdl.BayesianModel(_mlp(), prior={"0.*": bdl.priors.Gaussian(0, 2), "*.bias": bdl.priors.Gaussian(0, 1)},
                              likelihood=lik)
    assert model.weight_sites == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_pattern_messages_say_what_matched():
    lik = bdl.likelihoods.Gaussian(scale=1.0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1), nn.ReLU())
    with pytest.raises(ValueError, match=r"bayesian pattern '3\.\*' matches no parameter; the network's parameters"):
        bdl.BayesianModel(net, likelihood=lik, bayesian="3.*")
    with pytest.raises(ValueError, match=r"deterministic=\['\*'\] matched \['0.weight', '0.bias', '2.weight', "
                                         r"'2.bias'\].*Loosen deterministic="):
        bdl.BayesianModel(net, likelihood=lik, deterministic="*")


# -- the command line --------------------------------------------------------------------------------
def test_cli_options_that_are_not_json_say_so_with_an_example(capsys):
    assert cli.main(["fit", "--data", "wine", "--options", "num_steps=10"]) == 2
    err = capsys.readouterr().err
    assert "--options must be a JSON object" in err and '{"steps": 3000' in err
    assert "Expecting value: line 1" not in err
    assert cli.main(["fit", "--options", "[3]"]) == 2
    assert "must be a JSON object" in capsys.readouterr().err
    assert cli.main(["fit", "--data", "wine", "--method", "map", "--options", '{"nums_steps": 3}']) == 2
    assert "unknown option(s) ['nums_steps']" in capsys.readouterr().err


def test_every_cli_option_has_help():
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subparsers.items():
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, f"pyro-bdl {name} {'/'.join(action.option_strings) or action.dest} has no help"


def test_cli_fit_uses_its_cheaper_defaults_and_options_override_them(monkeypatch, capsys):
    seen = {}

    def fake_fit(model, x, y, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(cli, "fit", fake_fit)
    assert cli.main(["fit", "--data", "wine", "--method", "ensemble"]) == 2
    assert seen["num_chains"] == cli.CLI_DEFAULTS["ensemble"]["num_chains"]
    assert seen["steps"] == cli.CLI_DEFAULTS["ensemble"]["steps"]
    assert cli.main(["fit", "--data", "wine", "--method", "ensemble", "--options", '{"num_steps": 7}']) == 2
    assert seen["steps"] == 7  # the deprecated name, canonicalised before the defaults are merged
