"""SWAG: SWA-Gaussian as a Pyro guide (Maddox et al. 2019, "A Simple Baseline for Bayesian
Uncertainty in Deep Learning").

While SGD runs, [`SWAG`][pyro_bdl.guides.SWAG] is a point mass at the current iterate θ (all latent sites
flattened to one unconstrained vector by `Objective`),
so Pyro's ``SVI`` with ``Trace_ELBO`` and an SGD optimiser follows the gradient of the MAP
objective log p̃(D, w(θ)) + log|det ∂w/∂θ|. After each epoch past ``swa_start`` the user calls
[`SWAG.collect`][pyro_bdl.guides.SWAG], which records the iterate θ_i into

* the running mean θ̄ = (1/n) Σ θ_i and second moment (1/n) Σ θ_i² (kept as Welford's sum of
  squared deviations, which equals n·(mean of θ² − θ̄²) without its cancellation error);
* the deviation matrix D (k × P) of the last k ≤ K snapshots, rows D_i = θ_i − θ̄_i with θ̄_i
  the running mean just after θ_i was added (the paper's D̂), kept in a ring buffer.

The SWAG posterior is then the Gaussian

    q(θ) = N(θ̄, scale · (diag(σ²) + DᵀD / (k − 1))),   σ² = max(mean θ² − θ̄², var_clamp),

sampled as θ = θ̄ + √scale · (σ ⊙ z₁ + Dᵀz₂ / √(k − 1)), z₁ ~ N(0, I_P), z₂ ~ N(0, I_k),
in O(k·P) time and memory: the P × P covariance is never formed ([`SWAGNormal`][pyro_bdl.guides.SWAGNormal]).
k is the number of stored deviations (k < K while fewer than K snapshots exist). ``scale``
defaults to 0.5 as in the paper. Variants: ``"diagonal"`` (SWAG-Diag, drop the low-rank
term), ``"swa"`` (a point mass at θ̄, stochastic weight averaging, Izmailov et al. 2018) and
``"full"``: the snapshots' own sample covariance,

    q(θ) = N(θ̄, 2·scale · S),   S = (1/(n − 1)) Σ_i (θ_i − θ̄)(θ_i − θ̄)ᵀ,

for a collection that kept every snapshot (n ≤ K; the θ_i are recovered exactly from D and θ̄,
`SWAG.snapshots`). Both halves of ``"swag"``'s covariance estimate the same Σ, so ½(diag(σ²) + DᵀD/(k − 1))
is Σ where Σ is nearly diagonal; on a correlated posterior the diagonal half is not, and halves every
correlation: on a rotated linear regression with cond(XᵀX) = 10³ it put ½(diag + full) 30–100× wider than
the posterior along its stiff directions, while S was within [0.5, 1.5]. With 2·scale = 1 (the default
scale) ``"full"`` is S itself.

Once snapshots exist, calls made without gradient tracking (``pyro.infer.Predictive`` runs
the guide under ``torch.no_grad()``) draw from q; calls with gradients (SVI steps) stay the
point mass at the iterate, so training can go on between collections. (So does
``SVI.evaluate_loss``, which runs without gradients: after collection it scores a SWAG draw.)

A network with BatchNorm predicts with its stored statistics under plain ``Predictive``;
`pyro_bdl.SWAGPosterior.predict` (what ``fit(method="swag")`` returns) recomputes them
for every draw (`pyro_bdl.batchnorm`).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoGuide, init_to_sample, init_to_value
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.nn import PyroParam

from ..model.potential import Objective
from ..model.bayesian_model import BayesianModel
from .._util.checks import check_float, check_int

VARIANTS = ("swag", "diagonal", "swa", "full")


class SWAGNormal(dist.TorchDistribution):
    """The SWAG Gaussian N(mean, scale·(diag(variance) + DᵀD/(k−1))) over θ ∈ ℝ^P.

    ``rsample`` is mean + √scale·(√variance ⊙ z₁ + Dᵀz₂/√(k−1)) — O(k·P), no P × P matrix.
    ``log_prob`` uses the Woodbury identity (``LowRankMultivariateNormal``, built on first use).
    Without ``deviations`` it is the diagonal Gaussian N(mean, scale·diag(variance)).

    Args:
        mean: θ̄, shape ``(P,)``.
        variance: the clamped diagonal σ², shape ``(P,)``.
        deviations: D, shape ``(k, P)`` with k ≥ 2, or ``None``.
        scale: the covariance scale (0.5 in Maddox et al. 2019).
    """

    arg_constraints: Dict[str, Any] = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, mean: torch.Tensor, variance: torch.Tensor, deviations: Optional[torch.Tensor] = None,
                 scale: float = 0.5, validate_args: Optional[bool] = None):
        if mean.dim() != 1 or variance.shape != mean.shape:
            raise ValueError(f"mean and variance must both have shape (P,), got {tuple(mean.shape)} and {tuple(variance.shape)}")
        if deviations is not None and (deviations.dim() != 2 or deviations.shape[1] != mean.shape[0]
                                       or deviations.shape[0] < 2):
            raise ValueError(f"deviations must have shape (k, P) with k >= 2, got {tuple(deviations.shape)}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.loc, self.diag, self.deviations, self.scale = mean, variance, deviations, float(scale)
        self._lowrank = None
        super().__init__(torch.Size(), mean.shape, validate_args=False)

    @property
    def rank(self) -> int:
        """K, the number of deviation columns kept for the low-rank covariance (0 before any are collected)."""
        return 0 if self.deviations is None else self.deviations.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        """The marginal variances scale·(σ² + Σ_i D_i² / (k−1))."""
        var = self.diag
        if self.deviations is not None:
            var = var + self.deviations.pow(2).sum(0) / (self.rank - 1)
        return self.scale * var

    @property
    def cov_factor(self) -> Optional[torch.Tensor]:
        """W = √(scale/(k−1))·Dᵀ, shape ``(P, k)``: the covariance is scale·diag(σ²) + WWᵀ."""
        if self.deviations is None:
            return None
        return self.deviations.t() * math.sqrt(self.scale / (self.rank - 1))

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        z1 = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        eps = self.diag.sqrt() * z1
        if self.deviations is not None:
            z2 = torch.randn(shape[:-1] + (self.rank,), dtype=self.loc.dtype, device=self.loc.device)
            eps = eps + (z2 @ self.deviations) / math.sqrt(self.rank - 1)
        return self.loc + math.sqrt(self.scale) * eps

    def _gaussian(self) -> dist.TorchDistribution:
        if self._lowrank is None:
            if self.deviations is None:
                self._lowrank = dist.Normal(self.loc, (self.scale * self.diag).sqrt()).to_event(1)
            else:
                self._lowrank = dist.LowRankMultivariateNormal(self.loc, self.cov_factor, self.scale * self.diag)
        return self._lowrank

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self._gaussian().log_prob(value)

    def entropy(self) -> torch.Tensor:
        return self._gaussian().entropy()


class SWAG(AutoGuide):
    """SWA-Gaussian guide over every latent site of ``model`` (Maddox et al. 2019).

    Pyro-user path (the MAP objective per data point, so usual deep-learning learning rates
    apply: scale model and guide by 1/N)::

        guide = bdl.guides.SWAG(model, rank=20)
        svi = SVI(poutine.scale(model, 1 / N), poutine.scale(guide, 1 / N),
                  pyro.optim.SGD({"lr": 0.05, "momentum": 0.9}), Trace_ELBO())
        for epoch in range(60):
            for xb, yb in loader:
                svi.step(xb, yb, N)
            if epoch >= 40:
                guide.collect()
        samples = Predictive(model, guide=guide, num_samples=30)(x_test)

    [`pyro_bdl.fit`][pyro_bdl.fit] with ``method="swag"`` runs the same guide with the learning-rate
    schedule of the paper and returns a [`SWAGPosterior`][pyro_bdl.SWAGPosterior].

    Args:
        model: a [`BayesianModel`][pyro_bdl.BayesianModel], or any Pyro model whose first argument is the
            inputs and whose latent sites are all global (outside plates).
        rank: K, the number of deviation columns kept (the paper's K = 20).
        scale: covariance scale of the samples (0.5 in the paper).
        variant: ``"swag"``, ``"diagonal"`` (SWAG-Diag) or ``"swa"`` (mean only).
        var_clamp: floor on the diagonal variance σ².
        init_loc_fn: Pyro init strategy for the starting point; default: the network's current
            weights for a [`BayesianModel`][pyro_bdl.BayesianModel], a prior draw otherwise.
    """

    def __init__(self, model: Callable, rank: int = 20, scale: float = 0.5, variant: str = "swag",
                 var_clamp: float = 1e-30, init_loc_fn: Optional[Callable] = None, create_plates=None):
        check_int(rank, 'rank', 1)
        check_scale(scale)
        check_variant(variant)
        if not var_clamp > 0:
            raise ValueError(f"var_clamp must be > 0, got {var_clamp!r}")
        super().__init__(model, create_plates=create_plates)
        self.rank = rank
        self.scale = float(scale)
        self.variant = variant
        self.var_clamp = float(var_clamp)
        self.init_loc_fn = init_loc_fn
        self.objective: Optional[Objective] = None

    # -- set-up ---------------------------------------------------------------------------
    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        if self._prototype_frames:
            raise ValueError(f"SWAG fits global latent variables only, but the model has latent sites inside "
                             f"plates {sorted(self._prototype_frames)}; keep per-data-point latents out of the model "
                             "or use an SVI guide for them.")
        x = args[0] if args else kwargs.get("x")
        if not (torch.is_tensor(x) or (isinstance(x, tuple) and x and all(torch.is_tensor(t) for t in x))):
            raise TypeError("SWAG needs the model's inputs (a tensor, or a tuple of tensors for a multi-input network) "
                            "as its first argument (model(x, ...)) to set up")
        self.objective = Objective(self.model, x)
        init = self.init_loc_fn
        if init is None:
            init = (init_to_value(values=self.model.initial_values()) if isinstance(self.model, BayesianModel)
                    else init_to_sample)
        with poutine.block(), torch.no_grad():
            trace = poutine.trace(InitMessenger(init)(self.model)).get_trace(*args, **kwargs)
        theta = self.objective.to_unconstrained({n: trace.nodes[n]["value"] for n in self.objective.layout.names})
        P = theta.numel()
        self.loc = PyroParam(theta.detach().clone(), constraints.real)
        self.register_buffer("swa_mean", torch.zeros(P, dtype=theta.dtype, device=theta.device))
        self.register_buffer("swa_sq_dev", torch.zeros(P, dtype=theta.dtype, device=theta.device))  # Σ (θ_i − θ̄)², Welford
        self.register_buffer("swa_deviations", torch.zeros(self.rank, P, dtype=theta.dtype, device=theta.device))
        self.register_buffer("swa_count", torch.zeros((), dtype=torch.long))

    def setup(self, *args, **kwargs) -> "SWAG":
        """Create the parameter and moment buffers from the model's arguments (done on the first call)."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        return self

    def __getstate__(self):
        # AutoGuide drops the model when pickled; SWAG keeps it (its Objective needs the model anyway).
        model = self._model
        state = dict(super().__getstate__())
        self._model = state["_model"] = model
        return state

    def _require_setup(self) -> None:
        if self.objective is None:
            raise RuntimeError("the SWAG guide is not set up yet: call it once (e.g. one SVI step) or call "
                               "guide.setup(x, y, dataset_size) before collecting or sampling")

    # -- moments --------------------------------------------------------------------------
    @property
    def num_parameters(self) -> int:
        """P, the length of the flat unconstrained vector θ."""
        self._require_setup()
        return self.swa_mean.numel()

    @property
    def num_snapshots(self) -> int:
        """n, how many iterates `collect` has recorded."""
        return 0 if self.objective is None else int(self.swa_count)

    @property
    def mean(self) -> torch.Tensor:
        """θ̄, the running mean of the snapshots (the SWA solution), shape ``(P,)``."""
        self._require_setup()
        return self.swa_mean

    @property
    def second_moment(self) -> torch.Tensor:
        """(1/n) Σ θ_i², the running second moment."""
        return self.swa_sq_dev / max(self.num_snapshots, 1) + self.swa_mean ** 2

    @property
    def variance(self) -> torch.Tensor:
        """σ² = max((1/n) Σ θ_i² − θ̄², var_clamp), the diagonal of the SWAG covariance."""
        self._require_setup()
        return (self.swa_sq_dev / max(self.num_snapshots, 1)).clamp_min(self.var_clamp)

    @property
    def deviations(self) -> torch.Tensor:
        """D, the last k = min(n, K) deviations θ_i − θ̄_i in collection order, shape ``(k, P)``."""
        self._require_setup()
        n = self.num_snapshots
        if n <= self.rank:
            return self.swa_deviations[:n]
        # Stored as a ring: snapshot i (1-based) lives in row (i − 1) mod K; the oldest kept is n − K + 1.
        return torch.roll(self.swa_deviations, -(n % self.rank), dims=0)

    @torch.no_grad()
    def snapshots(self) -> torch.Tensor:
        """Every snapshot θ_1..θ_n ``(n, P)``, recovered from D and θ̄ (needs n ≤ K: none dropped from the ring).

        D_i = θ_i − θ̄_i and θ̄_i = θ̄_{i−1} + (θ_i − θ̄_{i−1})/i give θ̄_{i−1} = θ̄_i − D_i/(i − 1), so from the final
        θ̄_n backwards θ_i = θ̄_i + D_i (θ_1 = θ̄_1). float64."""
        self._require_setup()
        n = self.num_snapshots
        if not 1 <= n <= self.rank:
            raise ValueError(f"the snapshots are recoverable only while every one is kept (1 ≤ n ≤ K); n = {n}, "
                             f"K = {self.rank}: collect with rank ≥ the number of snapshots (rank='auto' in "
                             "fit(method='swag') does so for small models)")
        deviations = self.swa_deviations[:n].to(torch.float64)
        mean = self.swa_mean.to(torch.float64).clone()
        out = torch.empty_like(deviations)
        for i in range(n, 0, -1):  # 1-based i
            out[i - 1] = mean + deviations[i - 1]
            if i > 1:
                mean = mean - deviations[i - 1] / (i - 1)
        return out

    @torch.no_grad()
    def collect(self, theta: Optional[torch.Tensor] = None) -> None:
        """Record a snapshot: the current iterate (default) or a given flat θ of shape ``(P,)``.

        θ̄ ← θ̄ + (θ − θ̄)/n;  S ← S + (θ − θ̄_old)(θ − θ̄_new);  D gets θ − θ̄_new as its newest row,
        replacing the oldest once K rows are stored (a ring buffer, so no rows are moved).
        O(P) time per snapshot, O(K·P) memory.
        """
        self._require_setup()
        theta = (self.loc if theta is None else torch.as_tensor(theta)).detach().reshape(-1).to(self.swa_mean.dtype)
        if theta.numel() != self.swa_mean.numel():
            raise ValueError(f"a snapshot needs {self.swa_mean.numel()} values, got {theta.numel()}")
        n = int(self.swa_count) + 1
        delta = theta - self.swa_mean
        self.swa_mean.add_(delta / n)
        deviation = theta - self.swa_mean
        self.swa_sq_dev.add_(delta * deviation)
        self.swa_deviations[(n - 1) % self.rank] = deviation
        self.swa_count.add_(1)

    # -- the posterior --------------------------------------------------------------------
    def get_posterior(self, variant: Optional[str] = None, scale: Optional[float] = None) -> dist.TorchDistribution:
        """q(θ) over the flat unconstrained vector: [`SWAGNormal`][pyro_bdl.guides.SWAGNormal], or a Delta at θ̄ for ``"swa"``.

        With fewer than two snapshots there is no low-rank term (k − 1 = 0) and ``"swag"`` is diagonal.
        """
        self._require_setup()
        variant = check_variant(self.variant if variant is None else variant)
        scale = check_scale(self.scale if scale is None else scale)
        if self.num_snapshots == 0:
            raise RuntimeError("no SWAG snapshots yet: call guide.collect() after epochs past swa_start")
        if variant == "swa":
            return dist.Delta(self.swa_mean, event_dim=1)
        if variant == "full":
            if self.num_snapshots < 2:
                raise RuntimeError("the 'full' SWAG variant needs at least two snapshots")
            theta = self.snapshots()
            cov = torch.cov(theta.T).reshape(theta.shape[1], theta.shape[1]) * (2 * scale)
            # a floor of var_clamp on the diagonal keeps the Cholesky defined where the snapshots are degenerate
            eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
            cov = cov + eye * max(self.var_clamp, 1e-12 * float(cov.diagonal().abs().max()))
            dtype = self.swa_mean.dtype
            return dist.MultivariateNormal(self.swa_mean, scale_tril=torch.linalg.cholesky(cov).to(dtype))
        deviations = self.deviations if variant == "swag" and self.num_snapshots >= 2 else None
        return SWAGNormal(self.swa_mean, self.variance, deviations, scale)

    def _sites(self, theta: torch.Tensor) -> Dict[str, torch.Tensor]:
        # Delta sites carry −log|det ∂w/∂θ|, so the guide's density of w is q(θ)/|det ∂w/∂θ|
        # and Trace_ELBO with the point mass is log p̃(D, w(θ)) + log|det ∂w/∂θ|.
        values, log_dets = self.objective.constrain(theta)
        return {name: pyro.sample(name, dist.Delta(values[name], log_density=-log_dets[name] if name in log_dets else 0.0,
                                                   event_dim=len(shape)))
                for name, shape in zip(self.objective.layout.names, self.objective.layout.shapes)}

    def forward(self, *args, **kwargs) -> Dict[str, torch.Tensor]:
        """One draw of every latent site: the iterate while training (gradients on or no snapshots),
        a SWAG draw under ``torch.no_grad()`` once snapshots exist (``Predictive``)."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        self._create_plates(*args, **kwargs)
        if self.num_snapshots > 0 and not torch.is_grad_enabled():
            theta = pyro.sample(f"_{self._pyro_name}_latent", self.get_posterior(), infer={"is_auxiliary": True})
        else:
            theta = self.loc
        return self._sites(theta)

    @torch.no_grad()
    def sample_values(self, num_samples: int, variant: Optional[str] = None,
                      scale: Optional[float] = None) -> Dict[str, torch.Tensor]:
        """``num_samples`` SWAG draws of every latent site, ``{site: (num_samples, *shape)}``, constrained."""
        theta = self.get_posterior(variant, scale).sample((num_samples,))
        return {k: v.clone() for k, v in self.objective.to_constrained(theta).items()}

    @torch.no_grad()
    def iterate(self) -> Dict[str, torch.Tensor]:
        """The current SGD iterate as site values (the MAP estimate being trained)."""
        self._require_setup()
        return {k: v.detach().clone() for k, v in self.objective.to_constrained(self.loc.detach()).items()}

    @torch.no_grad()
    def median(self, *args, **kwargs) -> Dict[str, torch.Tensor]:
        """The SWAG mean θ̄ as site values (the SWA solution), or the iterate before any snapshot."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        if self.num_snapshots == 0:
            return self.iterate()
        return {k: v.clone() for k, v in self.objective.to_constrained(self.swa_mean).items()}


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown SWAG variant {variant!r}; choose one of {VARIANTS} "
                         "('swag': diagonal + low rank, 'diagonal': SWAG-Diag, 'swa': the mean only, 'full': the "
                         "snapshots' sample covariance)")
    return variant


def check_scale(scale: float) -> float:
    return check_float(scale, "scale (the paper uses 0.5)", positive=True)
