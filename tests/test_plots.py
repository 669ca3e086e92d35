"""Plots return figures with the right content and never show them."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import pyro_bdl as bdl  # noqa: E402
from pyro_bdl import plots  # noqa: E402
from pyro_bdl.posterior.predictive import BMAPredictive  # noqa: E402


def test_predictive_band_from_a_posterior(tmp_path):
    data = bdl.data.gap_regression(n=30)
    model = bdl.BayesianModel(torch.nn.Linear(1, 1), likelihood=bdl.likelihoods.Gaussian(scale=0.3))
    post = bdl.fit(model, data.x_train, data.y_train, method="svi", num_steps=50, progress=False)
    fig = plots.predictive_band(post, data.x_test, x_train=data.x_train, y_train=data.y_train, levels=(0.5, 0.9))
    ax = fig.axes[0]
    assert len(ax.collections) == 3  # two bands and the training points
    pred = post.predict(data.x_test)
    line = ax.lines[0]
    np.testing.assert_allclose(line.get_ydata(), pred.mean.numpy(), rtol=1e-5)  # x_test is sorted already
    fig.savefig(tmp_path / "band.png")
    assert (tmp_path / "band.png").stat().st_size > 0
    plt.close(fig)
    with pytest.raises(ValueError, match="one input feature"):
        plots.predictive_band(post, torch.zeros(3, 2))


def test_reliability_diagram_bars_are_the_bin_accuracies():
    p = torch.tensor([[0.95, 0.05], [0.9, 0.1], [0.65, 0.35], [0.3, 0.7], [0.5, 0.5]])
    y = torch.tensor([0, 1, 0, 1, 1])
    fig = plots.reliability_diagram(p, y, num_bins=5)
    ax = fig.axes[0]
    heights = [patch.get_height() for patch in ax.patches]
    bins = bdl.metrics.calibration_bins(p, y, 5)
    np.testing.assert_allclose(heights, bins.accuracy.nan_to_num(0).numpy())
    assert f"{bdl.metrics.ece(p, y, 5):.3f}" in ax.get_title()
    plt.close(fig)
    logits = torch.randn(4, 5, 2)  # works on a BMA too
    pred = BMAPredictive(dist.Categorical(logits=logits), logits, "classification")
    plt.close(plots.reliability_diagram(pred, torch.zeros(5, dtype=torch.long)))


def test_rhat_ess_over_inputs_plots_the_worst_output_per_input():
    import pandas as pd

    table = pd.DataFrame({"kind": "prediction", "input": [0, 0, 1, 1], "output": [0, 1, 0, 1],
                          "r_hat": [1.0, 1.2, 1.001, 1.002], "within_chain_r_hat": [1.0, 1.01, 1.0, 1.0],
                          "ess_bulk": [500, 300, 800, 900], "ess_tail": [450, 600, 700, 100]})
    fig = plots.rhat_ess_over_inputs(table, x=torch.tensor([0.5, -0.5]))
    top, bottom = fig.axes
    rhat_line = top.lines[0]
    np.testing.assert_allclose(rhat_line.get_xdata(), [-0.5, 0.5])  # sorted by x
    np.testing.assert_allclose(rhat_line.get_ydata(), [1.002, 1.2])
    np.testing.assert_allclose(bottom.lines[1].get_ydata(), [100, 450])  # min tail ESS per input
    plt.close(fig)
    with pytest.raises(ValueError, match="no prediction rows"):
        plots.rhat_ess_over_inputs(table.assign(kind="weight"))
