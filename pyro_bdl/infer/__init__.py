"""Inference: [`fit`][pyro_bdl.fit] dispatches to one module per family of methods."""
from . import ensemble, map, mcmc, sgmcmc, svi, swag  # noqa: F401  (registers the methods)
from .fit import fit, method_options, methods
from .registry import METHODS, register
from .sgmcmc import cyclical_draw_steps, cyclical_schedule, sampling_stage, sghmc_step, sgld_step

__all__ = ["fit", "methods", "method_options", "register", "METHODS", "cyclical_schedule", "sampling_stage",
           "cyclical_draw_steps", "sgld_step", "sghmc_step"]
