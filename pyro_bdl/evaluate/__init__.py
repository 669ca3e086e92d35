"""Evaluating posteriors: predictive metrics, plots, and convergence diagnostics (R-hat / ESS on predictions)."""
