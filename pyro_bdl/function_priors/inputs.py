"""Measurement inputs: where a function-space prior is compared with its target (a box, given points, or a sampler)."""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch

from .._util.checks import check_int


class Box:
    """Measurement inputs drawn uniformly from the box [low, high] (per input dimension).

    ``low``/``high`` are numbers (then give ``dim``) or tensors of shape ``(input_dim,)``.
    """

    def __init__(self, low: Union[float, torch.Tensor], high: Union[float, torch.Tensor], dim: Optional[int] = None):
        low_t = torch.as_tensor(low, dtype=torch.get_default_dtype())
        high_t = torch.as_tensor(high, dtype=torch.get_default_dtype())
        if dim is None:
            dim = max(low_t.numel(), high_t.numel()) if max(low_t.dim(), high_t.dim()) > 0 else 1
        check_int(dim, 'Box dim', 1)
        try:
            low_t, high_t = low_t.expand(dim).clone(), high_t.expand(dim).clone()
        except RuntimeError:
            raise ValueError(f"Box bounds of shapes {tuple(low_t.shape)} and {tuple(high_t.shape)} do not fit "
                             f"dim={dim}") from None
        if not (high_t > low_t).all() or not torch.isfinite(low_t).all() or not torch.isfinite(high_t).all():
            raise ValueError(f"Box needs finite bounds with high > low, got low={low!r}, high={high!r}")
        self.low, self.high, self.dim = low_t, high_t, dim

    def sample(self, num_points: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``num_points`` measurement inputs drawn uniformly from the box: x = low + (high - low) ⊙ u, u ~ U[0, 1]^d."""
        u = torch.rand(num_points, self.dim, generator=generator)
        return self.low + (self.high - self.low) * u

    def __repr__(self) -> str:
        return f"Box(low={self.low.tolist()}, high={self.high.tolist()})"


def measurement_sampler(inputs: Any, num_points: Optional[int]) -> Callable[[torch.Generator], torch.Tensor]:
    """Turn ``inputs`` into a function ``generator -> X`` that draws a fresh measurement set.

    * a tensor ``(N, input_dim)`` (e.g. the training inputs): ``num_points`` rows drawn without
      replacement every step, or all N rows every step (a fixed, user-given set) when
      ``num_points`` is None or ≥ N;
    * a [`Box`][pyro_bdl.function_priors.Box]: ``num_points`` (default 64) uniform draws;
    * a callable ``fn(num_points, generator) -> (num_points, input_dim)``.
    """
    if num_points is not None:
        check_int(num_points, "num_points", 2)
    if torch.is_tensor(inputs):
        if inputs.dim() != 2 or inputs.shape[0] < 2:
            raise ValueError(f"measurement inputs must have shape (n >= 2, input_dim), got {tuple(inputs.shape)}; "
                             "for 1-D inputs use x.unsqueeze(-1)")
        if not torch.isfinite(inputs).all():
            raise ValueError("measurement inputs contain NaN or inf")
        x = inputs.detach().to(torch.get_default_dtype())
        if num_points is None or num_points >= len(x):
            return lambda generator: x
        return lambda generator: x[torch.randperm(len(x), generator=generator)[:num_points]]
    n = 64 if num_points is None else num_points
    if isinstance(inputs, Box):
        return lambda generator: inputs.sample(n, generator)
    if callable(inputs):
        def draw(generator: torch.Generator) -> torch.Tensor:
            x = torch.as_tensor(inputs(n, generator))
            if x.dim() != 2 or x.shape[0] != n:
                raise ValueError(f"the measurement-input function returned shape {tuple(x.shape)}; it must return "
                                 f"(num_points, input_dim) = ({n}, input_dim)")
            return x.to(torch.get_default_dtype())
        return draw
    raise TypeError(f"inputs must be a tensor of measurement inputs (n, input_dim), a pyro_bdl.function_priors.Box(low, high), "
                    f"or a function fn(num_points, generator); got {type(inputs).__name__}")
