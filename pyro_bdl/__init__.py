"""pyro_bdl: Bayesian deep learning on Pyro.

Lift any ``torch.nn.Module`` into a Pyro model with priors on its weights and a (tempered)
likelihood, run inference with one call, and predict by Bayesian model averaging::

    import pyro_bdl as bdl
    model = bdl.BayesianModel(net, prior=bdl.priors.FanInGaussian(1.0),
                              likelihood=bdl.likelihoods.Gaussian(scale=0.1))
    post = bdl.fit(model, x, y, method="nuts", num_samples=500, warmup=500)
    pred = post.predict(x_test)          # pred.mean, pred.variance, pred.quantile(0.9), pred.log_prob(y)
    bdl.metrics.evaluate(post, x_test, y_test)
    idata = post.to_arviz(x=x_test, y=y_test)            # ArviZ InferenceData
    bdl.diagnostics.summary(post, x=x_test)              # function-space R-hat / ESS

``fit(..., method="nuts", backend="numpyro")`` runs NumPyro's compiled NUTS on a JAX translation of
the network; `pyro_bdl.backends` (``bdl.backends.to_jax``, imported on first use) holds it.
Temperature / cold-posterior studies over a grid of T × method × seed × augmentation:
``bdl.studies.TemperatureStudy("study.toml").run()`` or ``pyro-bdl study study.toml``.
"""
from .inference import fit, methods  # first: the SWAG guide and the swag method import each other's modules
from . import batchnorm, data, diagnostics, guides, likelihoods, metrics, networks, plots, priors, tempering
from .lifting import BayesianModel, LiftedNetwork, lift
from .inference.swag import SWAGPosterior
from .posterior import GuidePosterior, MixturePosterior, Posterior, SamplesPosterior
from .predictive import BMAPredictive
from .weights import WeightLayout
from . import studies  # noqa: E402  (after the core it builds on)

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``bdl.backends`` (the NumPyro/JAX backend) is imported on first use: it imports JAX.
    if name == "backends":
        import importlib

        return importlib.import_module(".backends", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BayesianModel",
    "LiftedNetwork",
    "lift",
    "fit",
    "methods",
    "Posterior",
    "SamplesPosterior",
    "GuidePosterior",
    "MixturePosterior",
    "SWAGPosterior",
    "BMAPredictive",
    "WeightLayout",
    "priors",
    "guides",
    "batchnorm",
    "data",
    "metrics",
    "diagnostics",
    "plots",
    "likelihoods",
    "tempering",
    "networks",
    "studies",
]
