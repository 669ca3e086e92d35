"""A model factory named by import path (``posterior_factory:make_model``) for the save/load tests."""
import torch
from torch import nn

import pyro_bdl as bdl


def make_model(hidden=6, temperature=1.0):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    return bdl.BayesianModel(net, likelihood=bdl.likelihoods.Gaussian(scale=None), temperature=temperature)
