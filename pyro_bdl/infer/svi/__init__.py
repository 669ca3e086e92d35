"""Stochastic variational inference with Pyro autoguides.

SVI maximises the ELBO of the (tempered) model,

    ELBO(q) = E_q[log p̃(D, w)] − E_q[log q(w)],

with log p̃ from [`BayesianModel.log_joint`][pyro_bdl.BayesianModel] semantics (the Pyro trace), so minibatches
are scaled by N/B through the data plate and temperature through ``poutine.scale``.
Guides: ``"normal"`` (mean-field, AutoNormal), ``"lowrank"`` (AutoLowRankMultivariateNormal),
``"fullrank"`` (AutoMultivariateNormal), or any Pyro guide object.

(MAP has its own step rule on the compiled potential, `pyro_bdl.infer.map`; ``optimise`` still takes
``floor_kind="point"`` for a user's AutoDelta guide.)

Guide parameters are module-local (``pyro.settings module_local_params``): no global
parameter store, and the optimiser is a plain ``torch.optim.Adam`` with an exponential
decay from ``lr`` to ``lr * lr_decay`` over the run.

The loop is the one driver's (`pyro_bdl.infer.driver`): `SVIRule` is SVI's step rule (one Adam step
on the negative ELBO per minibatch), and the driver owns the data order (seeded per run), the
blocked divergence checks, progress, the checkpoint (`checkpoint=path`, bit-identical resume) and
the ``info`` schema. A built-in guide's ELBO is evaluated on the compiled potential that map/swag/SG-MCMC step on
(`FlatELBO`: z = μ + Lε, U_b(z) − H(q), Pyro's ``Trace_ELBO`` without its two traces per step); a user's guide, a
traced density (hierarchical priors) or a constrained site keep Pyro's traces of model and guide
(`ControlVariateELBO` under minibatches).

After Adam, a built-in guide of a small model (P ≤ 200) is finished by the ELBO's fixed-point equations on the
full data (`pyro_bdl.infer.svi.finish`: exact in one step for a Gaussian posterior), and every built-in guide's mean
and variances are checked for stationarity beyond the noise of the guide draws (`pyro_bdl.infer.svi.check`, a
`StationarityWarning` when they are not).

Modules: `fit` (``fit(method="svi")``), `rule` (the driver's step rule and loops), `elbo` (the flat and the
control-variate ELBOs), `guides` (building the guides and their initial sds), `gaussian` (the guides as flat Gaussians), `check`
(the full-data potential and the stationarity check), `finish` (the fixed-point finish). Everything is re-exported
here (``from pyro_bdl.infer.svi import optimise``).
"""
from ..stationarity import STATIONARITY_TOLERANCE, StationarityWarning  # noqa: F401 (re-exported)
from .check import (MAX_PAIRS, STATIONARITY_PAIRS, StationarityCheck, fit_check, full_data_potential,  # noqa: F401
                    pair_budget, stationarity_check, stationarity_info, stationarity_offsets, warn_if_not_stationary,
                    warn_stationarity)
from .elbo import ControlVariateELBO, FlatELBO  # noqa: F401
from .finish import (FINISH_ELBO_PAIRS, FINISH_MAX_PARAMS, FINISH_PAIRS, SVI_NEWTON_STEPS, finish,  # noqa: F401
                     full_hessian)
from .fit import MAX_EXTENSIONS, MAX_POLISHES, fit_svi  # noqa: F401
from .gaussian import FullRank, Gaussian, LowRank, MeanField, gaussian_view  # noqa: F401
from .guides import (FALLBACK_SCALE, FISHER_BATCHES, GUIDES, curvature_scales, initialise_scales,  # noqa: F401
                     make_guide)
from .rule import (SVIRule, SVIRun, flatten_parameters, optimise, param_groups, run_svi,  # noqa: F401
                   unflatten_parameters)
