"""Inference: :func:`fit` dispatches to one module per family of methods."""
from . import mcmc, svi  # noqa: F401  (registers the methods)
from .fit import fit, method_options, methods
from .registry import METHODS, register

__all__ = ["fit", "methods", "method_options", "register", "METHODS"]
