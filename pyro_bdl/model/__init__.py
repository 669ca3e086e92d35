"""The model layer: a ``torch.nn.Module`` becomes a Pyro model.

* `lifting` — every parameter a ``pyro.sample`` site ([`LiftedNetwork`][pyro_bdl.LiftedNetwork], [`lift`][pyro_bdl.lift]);
* `bayesian_model` — [`BayesianModel`][pyro_bdl.BayesianModel]: priors + likelihood + temperature;
* `sites` — every site and plate name;
* `likelihoods`, `tempering` — p(y | f) with N/B scaling, and T;
* `potential` — the flat unconstrained tempered potential (the one flatten + Jacobian);
* `layout` — flattening named weights into one vector and back;
* `batchnorm` — BatchNorm statistics per weight draw;
* `inputs` — checks of data fed to a model.
"""
