"""A network factory for the study tests, named by import path ``study_nets:gated_mlp``.

``gated_mlp`` builds an MLP. When the environment variable ``STUDY_GATE_DIR`` names a study's
output folder and that folder already holds a finished cell, it blocks instead: a run started with
the gate finishes exactly one cell and then waits, so a test can kill it at a known point.
"""
import glob
import os
import time

from pyro_bdl.networks import mlp


def gated_mlp(in_features, out_features, hidden=(16,)):
    gate = os.environ.get("STUDY_GATE_DIR")
    if gate and glob.glob(os.path.join(gate, "cells", "*.json")):
        time.sleep(600)  # the test kills us here
    return mlp(in_features, list(hidden), out_features)
