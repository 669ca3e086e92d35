"""Diagnostics: ArviZ ``InferenceData`` for every posterior and function-space convergence checks.

::

    idata = post.to_arviz(x=x_test, y=y_test)      # or bdl.diagnostics.to_arviz(post, ...)
    az.plot_trace(idata, var_names=["0.weight"]); az.plot_rank(idata); az.loo(idata)
    table = bdl.diagnostics.summary(post, x=x_test) # R-hat, bulk/tail ESS, MCSE on predictions

This subpackage is the only place that imports ArviZ, and only when one of its functions is
called, so ``import pyro_bdl`` does not need ArviZ (``pip install pyro_bdl[arviz]``).
"""
from .convergence import ConvergenceWarning, prediction_draws, summary, within_chain_rhat
from ...posterior.arviz import SAMPLE_STATS_NAMES, to_arviz, weight_dims

__all__ = ["to_arviz", "summary", "within_chain_rhat", "prediction_draws", "weight_dims", "ConvergenceWarning",
           "SAMPLE_STATS_NAMES"]
