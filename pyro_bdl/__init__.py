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

Optimisation-based fits (``svi``, ``map``, ``ensemble``, ``swag``) stop with `DivergenceError`
(a ``FloatingPointError``) when their loss diverges; its message names the learning rate and the fix::

    try:
        post = bdl.fit(model, x, y, method="svi", lr=0.1)
    except bdl.DivergenceError as err:
        print(err)                       # "svi diverged at step ...: ... try lr=0.01 ..."
"""
from ._util.deprecation import install_moved_modules
from ._version import __version__
from .evaluate import diagnostics, metrics, plots
from .examples import datasets as data, networks
from .infer import fit, methods
from .infer.divergence import DivergenceError
from .model import batchnorm, likelihoods, tempering
from .model.bayesian_model import BayesianModel
from .model.layout import WeightLayout
from .model.lifting import LiftedNetwork, lift
from .posterior import BMAPredictive, GuidePosterior, MixturePosterior, Posterior, SamplesPosterior, SWAGPosterior
from . import function_priors, guides, priors, studies

# Old module paths keep importing (the public namespaces silently: ``pyro_bdl.metrics`` is ``bdl.metrics``;
# private paths with a DeprecationWarning, for one release).
_PUBLIC = {"likelihoods": "model.likelihoods", "tempering": "model.tempering", "batchnorm": "model.batchnorm",
           "metrics": "evaluate.metrics", "plots": "evaluate.plots", "diagnostics": "evaluate.diagnostics",
           "data": "examples.datasets", "networks": "examples.networks"}
_MOVED = {
    "lifting": ("model.lifting", "model.bayesian_model"), "weights": ("model.layout",),
    "validation": ("model.inputs", "_util.checks"), "checkpoint": ("_util.checkpoint", "_util.io"),
    "progress": ("_util.progress",), "predictive": ("posterior.predictive",),
    "diagnostics.inference_data": ("posterior.arviz",), "diagnostics.convergence": ("evaluate.diagnostics.convergence",),
    "inference": ("infer",), "inference.fit": ("infer.fit",), "inference.registry": ("infer.registry",),
    "inference.data": ("infer.data",), "inference.svi": ("infer.svi", "infer.map"), "inference.swag": ("infer.swag", "posterior.swag"),
    "inference.ensemble": ("infer.ensemble",), "inference.members": ("infer.members",),
    "inference.sgmcmc": ("infer.sgmcmc",), "inference.objective": ("model.potential",),
    "inference.mcmc": ("infer.mcmc.methods", "infer.mcmc.init", "infer.mcmc.pyro"),
    "inference.numpyro_mcmc": ("infer.mcmc.numpyro",),
    "priors.gp": ("function_priors.targets",), "priors.wasserstein": ("function_priors.distances",),
    "priors.functional": ("function_priors.fit", "function_priors.inputs"), "priors.rff": ("function_priors.rff",),
}
install_moved_modules({
    **{f"{__name__}.{old}": ([f"{__name__}.{new}"], False) for old, new in _PUBLIC.items()},
    **{f"{__name__}.{old}": ([f"{__name__}.{n}" for n in new], True) for old, new in _MOVED.items()},
})



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
    "DivergenceError",
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
    "function_priors",
    "__version__",
]
