"""A network factory for the study tests, named by import path ``study_nets:gated_mlp``.

``gated_mlp`` builds an MLP. When the environment variable ``STUDY_GATE_DIR`` names a study's
output folder and that folder already holds a finished cell, it blocks instead: a run started with
the gate finishes exactly one cell and then waits, so a test can kill it at a known point; with
``STUDY_GATE_MARKER`` set it first creates that file, so the test knows the run is waiting.
"""
import glob
import os
import time

from pyro_bdl.networks import mlp


def gated_mlp(in_features, out_features, hidden=(16,)):
    gate = os.environ.get("STUDY_GATE_DIR")
    if gate and glob.glob(os.path.join(gate, "cells", "*.json")):
        marker = os.environ.get("STUDY_GATE_MARKER")
        if marker:  # tells a test that a signal sent now lands here, not in the first cell's epilogue
            open(marker, "w").close()
        time.sleep(600)  # the test kills us here
    return mlp(in_features, list(hidden), out_features)
