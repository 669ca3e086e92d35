import torch

import pyro_bdl as bdl


def test_fit_map_runs_and_predicts():
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)
    model = bdl.BayesianModel(net, likelihood=bdl.likelihoods.Gaussian(scale=0.5))
    x = torch.randn(20, 2)
    y = x.sum(-1)
    post = bdl.fit(model, x, y, method="map", num_steps=50, progress=False)
    assert post.predict(x).mean.shape == (20,)
