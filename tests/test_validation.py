"""Bad input fails before any work, with a message naming the problem and the fix."""
import pytest
import torch
from torch import nn

import pyro_bdl as bdl


def regression():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    return bdl.BayesianModel(net, likelihood=bdl.likelihoods.Gaussian(0.1))


def classifier(classes=10):
    return bdl.BayesianModel(nn.Linear(3, classes), likelihood=bdl.likelihoods.Categorical())


X = torch.randn(8, 3)


@pytest.mark.parametrize("x,y,match", [
    (torch.randn(8, 5), torch.randn(8), "feature dimension"),
    (X, torch.randn(7), "8 rows but y has 7"),
    (X, torch.randn(8, 2), r"pass y of shape \(N,\)"),
    (torch.randn(8), torch.randn(8), "batch dimension"),
    (X.clone().index_put_((torch.tensor([2]), torch.tensor([1])), torch.tensor(float("nan"))), torch.randn(8), "NaN"),
    (X, torch.tensor([0.0, 1, 2, float("inf"), 4, 5, 6, 7]), "NaN or inf"),
    (X, None, "y is missing"),
])
def test_bad_regression_data(x, y, match):
    with pytest.raises(ValueError, match=match):
        bdl.fit(regression(), x, y, method="map", num_steps=1)


def test_bad_labels():
    with pytest.raises(ValueError, match="class label 10 does not fit a network with 10 logits"):
        bdl.fit(classifier(), X, torch.tensor([0, 1, 2, 3, 4, 5, 6, 10]), method="map")
    with pytest.raises(ValueError, match="must be integers"):
        bdl.fit(classifier(), X, torch.full((8,), 0.5), method="map")
    with pytest.raises(ValueError, match="class label -1"):
        bdl.fit(classifier(), X, -torch.ones(8, dtype=torch.long), method="map")
    binary = bdl.BayesianModel(nn.Linear(3, 1), likelihood=bdl.likelihoods.Bernoulli())
    with pytest.raises(ValueError, match="0 or 1"):
        bdl.fit(binary, X, torch.arange(8), method="map")
    with pytest.raises(ValueError, match="needs 1 logit"):
        bdl.fit(bdl.BayesianModel(nn.Linear(3, 2), likelihood=bdl.likelihoods.Bernoulli()), X, torch.zeros(8),
                method="map")


def test_bad_temperature_method_and_options():
    for T in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature must be finite and > 0"):
            bdl.BayesianModel(nn.Linear(3, 1), likelihood=bdl.likelihoods.Gaussian(0.1), temperature=T)
        with pytest.raises(ValueError, match="temperature"):
            bdl.fit(regression(), X, torch.randn(8), method="map", temperature=T)
    with pytest.raises(ValueError, match="tempering must be one of"):
        bdl.BayesianModel(nn.Linear(3, 1), likelihood=bdl.likelihoods.Gaussian(0.1), tempering="prior")
    with pytest.raises(ValueError, match="unknown method 'nutz'; available methods: .*nuts"):
        bdl.fit(regression(), X, torch.randn(8), method="nutz")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['num_sample'\]"):
        bdl.fit(regression(), X, torch.randn(8), method="nuts", num_sample=10)
    with pytest.raises(ValueError, match="unknown guide"):
        bdl.fit(regression(), X, torch.randn(8), method="svi", guide="flow")
    with pytest.raises(ValueError, match="needs the full data set"):
        bdl.fit(regression(), X, torch.randn(8), method="nuts", batch_size=4)
    with pytest.raises(ValueError, match="unknown backend"):
        bdl.fit(regression(), X, torch.randn(8), method="nuts", backend="stan")
    with pytest.raises(ValueError, match="likelihood"):
        bdl.BayesianModel(nn.Linear(3, 1))
    with pytest.raises(TypeError, match="BayesianModel"):
        bdl.fit(nn.Linear(3, 1), X, torch.randn(8))


def test_checks_run_before_any_work(monkeypatch):
    """Validation happens before the method function is called."""
    from pyro_bdl.infer import registry

    called = []
    monkeypatch.setitem(registry.METHODS, "map", lambda *a, **k: called.append(1))
    with pytest.raises(ValueError):
        bdl.fit(classifier(), X, torch.full((8,), 11), method="map")
    assert not called


def test_heteroskedastic_needs_two_columns():
    model = bdl.BayesianModel(nn.Linear(3, 3), likelihood=bdl.likelihoods.Gaussian(scale=None, heteroskedastic=True))
    with pytest.raises(ValueError, match="even number of network outputs"):
        bdl.fit(model, X, torch.randn(8), method="map")
