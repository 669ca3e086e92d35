"""Inference: :func:`fit` dispatches to one module per family of methods."""
from . import mcmc, svi, swag  # noqa: F401  (registers the methods)
from .fit import fit, methods
from .registry import METHODS, register

__all__ = ["fit", "methods", "register", "METHODS"]
