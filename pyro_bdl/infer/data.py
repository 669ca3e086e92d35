"""Training data for [`pyro_bdl.fit`][pyro_bdl.fit]: tensors or a DataLoader, seen as minibatches or in full."""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple

import torch
from torch.utils.data import DataLoader, TensorDataset

from ..model.bayesian_model import BayesianModel
from ..model.inputs import check_data
from .._util.checks import check_int

Batch = Tuple[torch.Tensor, torch.Tensor]


class FitData:
    """The data set of one fit.

    ``dataset_size`` is N, the number of training points, which every minibatch method passes
    to the model so that the likelihood of B points is scaled by N/B.

    ``augment(x, generator) -> x`` (optional) transforms the inputs of every minibatch drawn by
    `epoch` / `steps` (data augmentation, e.g. random pixel shifts); `full`
    always returns the data as given.
    """

    def __init__(self, model: BayesianModel, x, y=None, batch_size: Optional[int] = None,
                 augment: Optional[Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor]] = None):
        self.model = model
        if augment is not None and not callable(augment):
            raise TypeError(f"augment must be a function (x, generator) -> x, got {type(augment).__name__}")
        self.augment = augment
        if isinstance(x, DataLoader):
            if y is not None:
                raise TypeError("pass either a DataLoader or tensors x, y, not both")
            if batch_size is not None:
                raise TypeError("batch_size is set by the DataLoader; do not pass it to fit as well")
            self.loader = x
            first = next(iter(x), None)
            if first is None or len(first) != 2:
                raise ValueError("the DataLoader must yield (x, y) batches and must not be empty")
            check_data(model, first[0], first[1])
            try:
                self.dataset_size = len(x.dataset)
            except TypeError:
                raise ValueError("the DataLoader's dataset must have a length (fit needs N to scale minibatches)") from None
            self._x = self._y = None
        else:
            self._x, self._y = check_data(model, x, y)
            self.dataset_size = self._x.shape[0]
            check_int(batch_size, "batch_size", 1, allow_none=True)
            self.loader = None
            if batch_size is not None and batch_size < self.dataset_size:
                self.loader = DataLoader(TensorDataset(self._x, self._y), batch_size=batch_size, shuffle=True)

    @property
    def minibatched(self) -> bool:
        return self.loader is not None

    @property
    def num_batches(self) -> int:
        return len(self.loader) if self.loader is not None else 1

    def full(self) -> Batch:
        """The whole data set as two tensors (concatenating the loader's batches if need be)."""
        if self._x is None:
            xs, ys = zip(*[self._checked(b) for b in self.loader])
            self._x, self._y = torch.cat(xs), torch.cat(ys)
        return self._x, self._y

    def _checked(self, batch) -> Batch:
        return check_data(self.model, batch[0], batch[1])

    def epoch(self, generator: Optional[torch.Generator] = None) -> Iterator[Batch]:
        """One pass over the data in minibatches (one full batch when not minibatched), augmented if asked."""
        for xb, yb in self._raw_epoch(generator):
            yield (self.augment(xb, generator) if self.augment is not None else xb), yb

    def _raw_epoch(self, generator: Optional[torch.Generator]) -> Iterator[Batch]:
        if self.loader is None:
            yield self.full()
            return
        if generator is not None and self._x is not None:
            # our own loader: shuffle with the fit's seeded generator for reproducibility
            perm = torch.randperm(self.dataset_size, generator=generator)
            bs = self.loader.batch_size
            for i in range(0, self.dataset_size, bs):
                idx = perm[i:i + bs]
                yield self._x[idx], self._y[idx]
            return
        for batch in self.loader:
            yield self._checked(batch)

    def steps(self, num_steps: int, generator: Optional[torch.Generator] = None) -> Iterator[Batch]:
        """``num_steps`` minibatches, cycling through epochs."""
        done = 0
        while done < num_steps:
            for batch in self.epoch(generator):
                yield batch
                done += 1
                if done == num_steps:
                    return
