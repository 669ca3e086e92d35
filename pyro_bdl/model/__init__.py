"""The model layer: a ``torch.nn.Module`` becomes a Pyro model.

* :mod:`~pyro_bdl.model.lifting` — every parameter a ``pyro.sample`` site (:class:`LiftedNetwork`, :func:`lift`);
* :mod:`~pyro_bdl.model.bayesian_model` — :class:`BayesianModel`: priors + likelihood + temperature;
* :mod:`~pyro_bdl.model.sites` — every site and plate name;
* :mod:`~pyro_bdl.model.likelihoods`, :mod:`~pyro_bdl.model.tempering` — p(y | f) with N/B scaling, and T;
* :mod:`~pyro_bdl.model.potential` — the flat unconstrained tempered potential (the one flatten + Jacobian);
* :mod:`~pyro_bdl.model.layout` — flattening named weights into one vector and back;
* :mod:`~pyro_bdl.model.batchnorm` — BatchNorm statistics per weight draw;
* :mod:`~pyro_bdl.model.inputs` — checks of data fed to a model.
"""
