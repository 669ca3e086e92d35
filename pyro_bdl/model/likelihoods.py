"""Likelihoods p(y | f(x; w)) for the network output f, with dataset-size scaling.

Every likelihood is callable inside a Pyro model::

    likelihood(output, y, dataset_size=N)

which observes the site ``"obs"`` inside ``pyro.plate("data", N, subsample=...)``. When a
minibatch of B < N points is passed, the plate scales its log density by N/B, so the
minibatch log likelihood is an unbiased estimate of the full-data one. This plate is the
single place where dataset-size scaling happens, for every inference method.

Shapes: ``output`` is ``(*batch, B, out_dim)``. Regression with ``out_dim == 1`` (two columns
when heteroskedastic) has scalar targets ``y`` of shape ``(B,)``; larger ``out_dim`` gives
vector targets ``(B, out_dim)``. Classification outputs are logits ``(*batch, B, C)`` and
targets class indices ``(B,)``.
"""
from __future__ import annotations

from typing import Dict, Optional

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F

from .sites import DATA_PLATE, NOISE_SITE, OBS_SITE

Params = Dict[str, torch.Tensor]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _sum(t: torch.Tensor, runs: int) -> torch.Tensor:
    """Σ over every entry of ``t`` (``runs = 0``), or over all but its first ``runs`` dims (stacked runs)."""
    return t.sum() if runs == 0 else t.reshape(*t.shape[:runs], -1).sum(-1)


def _square_norm(z: torch.Tensor, runs: int) -> torch.Tensor:
    """Σ z² (as `_sum`), one dot product per run."""
    z = z.reshape(-1) if runs == 0 else z.reshape(*z.shape[:runs], -1)
    return torch.linalg.vecdot(z, z)


def _count(z: torch.Tensor, runs: int) -> int:
    """Entries per run of ``z`` (as `_sum`)."""
    return z.numel() if runs == 0 else math.prod(z.shape[runs:])


class Likelihood:
    """Base class. Subclasses define `distribution` and `check_targets`."""

    kind = "regression"  # or "classification"

    def sample_params(self, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> Params:
        """Draw latent likelihood parameters (e.g. a learned noise scale) as Pyro sample sites, with default
        priors on ``device`` in ``dtype`` (the network's)."""
        return {}

    @property
    def param_sites(self) -> tuple:
        """Names of the latent sites `sample_params` creates."""
        return ()

    def distribution(self, output: torch.Tensor, params: Optional[Params] = None) -> dist.Distribution:
        """p(y | f): batch shape ``output.shape[:-1]``."""
        raise NotImplementedError

    def log_prob_sum(self, output: torch.Tensor, y: torch.Tensor, params: Optional[Params] = None,
                     runs: int = 0) -> torch.Tensor:
        """Σᵢ log p(yᵢ | f(xᵢ)) over the batch, without Pyro's validation: the compiled potential's hot path.

        The same density as `distribution` (subclasses override it with a closed form, checked against
        the Pyro trace at start-up by `Objective`); pure in ``output`` and
        ``params``, so it runs inside ``torch.func.vmap``. ``runs = 1``: ``output`` holds K stacked runs
        ``(K, B, out)`` (``y`` their rows ``(K, B, ...)`` or one batch ``(B, ...)``), and the sum is per run,
        ``(K,)`` (`pyro_bdl.model.potential.Objective.stacked_potential`).
        """
        with pyro.validation_enabled(False):
            return _sum(self.distribution(output, params).log_prob(y), runs)

    def check_output(self, out_dim: int) -> None:
        """Raise ``ValueError`` if a network with ``out_dim`` outputs cannot feed this likelihood."""

    def check_targets(self, y: torch.Tensor, out_dim: int) -> torch.Tensor:
        """Validate targets for a network with ``out_dim`` outputs; return them in canonical form."""
        raise NotImplementedError

    def __call__(
        self,
        output: torch.Tensor,
        y: Optional[torch.Tensor] = None,
        dataset_size: Optional[int] = None,
        params: Optional[Params] = None,
    ) -> torch.Tensor:
        batch = output.shape[-2]
        size = batch if dataset_size is None else int(dataset_size)
        d = self.distribution(output, params)
        with pyro.plate(DATA_PLATE, size=size, subsample=torch.arange(batch), dim=-1):
            return pyro.sample(OBS_SITE, d, obs=y)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class _LocScale(Likelihood):
    """Shared machinery of the location-scale regression likelihoods (Gaussian, Student-t)."""

    kind = "regression"
    noise_site = NOISE_SITE

    def __init__(self, scale: Optional[float], scale_prior: Optional[dist.Distribution], heteroskedastic: bool,
                 min_scale: float):
        if scale is not None and heteroskedastic:
            raise ValueError("a heteroskedastic likelihood takes its scale from the network; leave scale=None")
        if scale is not None and (isinstance(scale, bool) or not float(scale) > 0):
            raise ValueError(f"likelihood scale must be > 0, got {scale!r}; use scale=None to learn it")
        self.scale = None if scale is None else float(scale)
        self.heteroskedastic = bool(heteroskedastic)
        self.min_scale = float(min_scale)
        self.scale_prior = scale_prior if scale_prior is not None else dist.HalfNormal(torch.tensor(1.0))
        self._default_prior = scale_prior is None
        self._priors_on: Dict[tuple, dist.Distribution] = {}  # the default prior per (device, dtype)

    @property
    def learned(self) -> bool:
        return self.scale is None and not self.heteroskedastic

    @property
    def param_sites(self) -> tuple:
        return (self.noise_site,) if self.learned else ()

    def noise_prior(self, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> dist.Distribution:
        """The prior of a learned noise scale: ``scale_prior``; the default HalfNormal(1) is built on ``device``
        in ``dtype`` (the network's), so its draws and log densities live with the weights. A user's own
        ``scale_prior`` is used as given (it carries the device and dtype of its parameters)."""
        if not self._default_prior or (device is None and dtype is None):
            return self.scale_prior
        key = (torch.device(device) if device is not None else None, dtype)
        if key not in self._priors_on:
            self._priors_on[key] = dist.HalfNormal(torch.ones((), device=device, dtype=dtype))
        return self._priors_on[key]

    def sample_params(self, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> Params:
        if not self.learned:
            return {}
        return {self.noise_site: pyro.sample(self.noise_site, self.noise_prior(device, dtype))}

    def _loc_scale(self, output, params: Optional[Params], softplus=F.softplus, number: bool = False):
        """Location and scale of p(y | f) from the network output: the one definition of this link.

        Written with indexing only, so ``output`` may be a torch tensor or a JAX array (the NumPyro
        backend passes ``softplus=jax.nn.softplus``): heteroskedastic σ = softplus(raw) + min_scale,
        learned σ from ``params``, or the fixed scale (a Python number with ``number=True``).
        """
        if self.heteroskedastic:
            d = output.shape[-1] // 2
            loc, raw = output[..., :d], output[..., d:]
            scale = softplus(raw) + self.min_scale
        else:
            loc = output
            if self.learned:
                if not params or self.noise_site not in params:
                    raise ValueError(f"learned noise needs the {self.noise_site!r} sample")
                scale = params[self.noise_site]
                scale = scale[..., None] if scale.ndim > 0 else scale  # align with the output column dim
            else:
                scale = torch.tensor(self.scale, dtype=output.dtype, device=output.device) \
                    if torch.is_tensor(output) and not number else self.scale
        if loc.shape[-1] == 1:  # scalar targets
            loc = loc[..., 0]
            scale = scale[..., 0] if getattr(scale, "ndim", 0) > 0 else scale
        return loc, scale

    def _target_dim(self, out_dim: int) -> int:
        return out_dim // 2 if self.heteroskedastic else out_dim

    def check_output(self, out_dim: int) -> None:
        if self.heteroskedastic and out_dim % 2:
            raise ValueError(
                f"a heteroskedastic likelihood needs an even number of network outputs (mean and scale "
                f"columns), got {out_dim}; give the last layer 2 outputs per target."
            )

    def check_targets(self, y: torch.Tensor, out_dim: int) -> torch.Tensor:
        self.check_output(out_dim)
        d = self._target_dim(out_dim)
        if not torch.is_floating_point(y):
            y = y.to(torch.get_default_dtype())
        if d == 1:
            if y.dim() == 2 and y.shape[1] == 1:
                y = y[:, 0]
            if y.dim() != 1:
                raise ValueError(
                    f"the network has 1 regression output but y has shape {tuple(y.shape)}; pass y of shape (N,) or (N, 1)."
                )
        elif y.dim() != 2 or y.shape[1] != d:
            raise ValueError(
                f"the network predicts {d} regression targets but y has shape {tuple(y.shape)}; pass y of shape (N, {d})."
            )
        return y

    def _event(self, base: dist.Distribution, loc: torch.Tensor, output: torch.Tensor) -> dist.Distribution:
        vector = (output.shape[-1] // 2 if self.heteroskedastic else output.shape[-1]) > 1
        return base.to_event(1) if vector else base


class Gaussian(_LocScale):
    """Gaussian likelihood, y ~ N(f(x; w), σ²).

    * ``scale=σ``: fixed noise.
    * ``scale=None``: σ is learned, a latent site ``"noise_scale"`` with prior ``scale_prior``
      (default HalfNormal(1), for standardised targets).
    * ``heteroskedastic=True``: the network outputs mean and raw scale columns,
      σ(x) = softplus(raw) + ``min_scale``.
    """

    def __init__(self, scale: Optional[float] = 1.0, *, scale_prior: Optional[dist.Distribution] = None,
                 heteroskedastic: bool = False, min_scale: float = 1e-3):
        super().__init__(scale, scale_prior, heteroskedastic, min_scale)

    def distribution(self, output, params=None):
        loc, scale = self._loc_scale(output, params)
        return self._event(dist.Normal(loc, scale), loc, output)

    def log_prob_sum(self, output, y, params=None, runs=0):
        """Σᵢ log N(yᵢ | μᵢ, σᵢ²) = −½ Σᵢ ((yᵢ − μᵢ)/σᵢ)² − Σᵢ log σᵢ − (n/2) log 2π, in closed form (per run:
        `Likelihood.log_prob_sum`)."""
        loc, scale = self._loc_scale(output, params, number=True)
        z = y - loc
        n = _count(z, runs)
        if isinstance(scale, float):
            return -(0.5 / scale ** 2) * _square_norm(z, runs) - n * (math.log(scale) + _HALF_LOG_2PI)
        z = z / scale
        log_scale = _sum(torch.log(scale).expand(z.shape), runs)
        return -0.5 * _square_norm(z, runs) - log_scale - n * _HALF_LOG_2PI


class StudentT(_LocScale):
    """Student-t likelihood, y ~ t_ν(f(x; w), σ): robust to outliers. ``scale`` as in `Gaussian`."""

    def __init__(self, df: float = 4.0, scale: Optional[float] = 1.0, *,
                 scale_prior: Optional[dist.Distribution] = None, heteroskedastic: bool = False,
                 min_scale: float = 1e-3):
        if not float(df) > 0:
            raise ValueError(f"StudentT likelihood df must be > 0, got {df!r}")
        super().__init__(scale, scale_prior, heteroskedastic, min_scale)
        self.df = float(df)

    def distribution(self, output, params=None):
        loc, scale = self._loc_scale(output, params)
        return self._event(dist.StudentT(torch.tensor(self.df, dtype=output.dtype, device=output.device), loc, scale), loc, output)

    def log_prob_sum(self, output, y, params=None, runs=0):
        """Σᵢ log t_ν(yᵢ | μᵢ, σᵢ) = Σᵢ [c_ν − log σᵢ − (ν+1)/2 · log(1 + zᵢ²/ν)], zᵢ = (yᵢ − μᵢ)/σᵢ,
        c_ν = log Γ((ν+1)/2) − log Γ(ν/2) − ½ log(πν), in closed form (per run: `Likelihood.log_prob_sum`)."""
        loc, scale = self._loc_scale(output, params, number=True)
        nu = self.df
        z = (y - loc) / scale
        n = _count(z, runs)
        c = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(math.pi * nu)
        log_scale = n * math.log(scale) if isinstance(scale, float) else _sum(torch.log(scale).expand(z.shape), runs)
        return n * c - log_scale - 0.5 * (nu + 1) * _sum(torch.log1p(z * z / nu), runs)


def _integer_labels(y: torch.Tensor, what: str) -> torch.Tensor:
    if torch.is_floating_point(y):
        if not torch.equal(y, y.round()):
            raise ValueError(f"{what} labels must be integers, got non-integer values such as "
                             f"{y[y != y.round()][0].item()}; pass class indices (e.g. y.long()).")
    elif y.dtype == torch.bool:
        y = y.long()
    return y.long()


class Categorical(Likelihood):
    """Categorical likelihood over C classes; the network outputs logits (softmax link)."""

    kind = "classification"

    def distribution(self, output, params=None):
        return dist.Categorical(logits=output)

    def log_prob_sum(self, output, y, params=None, runs=0):
        """Σᵢ log softmax(fᵢ)[yᵢ] = −cross_entropy(f, y, reduction="sum"), in closed form (per run:
        `Likelihood.log_prob_sum`)."""
        if runs == 0:
            return -F.cross_entropy(output.reshape(-1, output.shape[-1]), y.reshape(-1).long(), reduction="sum")
        labels = y.long().expand(output.shape[:-1]).reshape(-1)
        nll = F.cross_entropy(output.reshape(-1, output.shape[-1]), labels, reduction="none")
        return -_sum(nll.reshape(output.shape[:-1]), runs)

    def check_output(self, out_dim: int) -> None:
        if out_dim < 2:
            raise ValueError(f"a Categorical likelihood needs >= 2 logits, the network outputs {out_dim}; "
                             "use Bernoulli for binary labels with one logit.")

    def check_targets(self, y, out_dim):
        self.check_output(out_dim)
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.dim() != 1:
            raise ValueError(f"Categorical targets must be class indices of shape (N,), got shape {tuple(y.shape)}; "
                             "for one-hot labels pass y.argmax(-1).")
        y = _integer_labels(y, "Categorical")
        bad = (y < 0) | (y >= out_dim)
        if bad.any():
            raise ValueError(
                f"class label {int(y[bad][0])} does not fit a network with {out_dim} logits (labels must be in "
                f"0..{out_dim - 1}); give the last layer as many outputs as there are classes."
            )
        return y


class Bernoulli(Likelihood):
    """Bernoulli likelihood for binary labels; the network outputs one logit (sigmoid link)."""

    kind = "classification"

    def distribution(self, output, params=None):
        return dist.Bernoulli(logits=output.squeeze(-1))

    def log_prob_sum(self, output, y, params=None, runs=0):
        """Σᵢ [yᵢ log σ(fᵢ) + (1 − yᵢ) log(1 − σ(fᵢ))] = −BCE-with-logits(f, y, reduction="sum"), in closed form
        (per run: `Likelihood.log_prob_sum`)."""
        logits = output.squeeze(-1)
        targets = y.to(logits.dtype).expand(logits.shape)
        if runs == 0:
            return -F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
        return -_sum(F.binary_cross_entropy_with_logits(logits, targets, reduction="none"), runs)

    def check_output(self, out_dim: int) -> None:
        if out_dim != 1:
            raise ValueError(f"a Bernoulli likelihood needs 1 logit, the network outputs {out_dim}; "
                             "use Categorical for more than two classes.")

    def check_targets(self, y, out_dim):
        self.check_output(out_dim)
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.dim() != 1:
            raise ValueError(f"Bernoulli targets must have shape (N,), got {tuple(y.shape)}")
        y = _integer_labels(y, "Bernoulli")
        if ((y != 0) & (y != 1)).any():
            raise ValueError("Bernoulli labels must be 0 or 1; for more classes use likelihoods.Categorical.")
        return y.to(torch.get_default_dtype())
