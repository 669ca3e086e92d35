"""Training data for [`pyro_bdl.fit`][pyro_bdl.fit]: tensors or a DataLoader, seen as minibatches or in full.

Inputs are what `pyro_bdl.model.inputs` calls an input batch: one tensor, or a tuple of
tensors for a network whose ``forward`` takes several (``forward(x1, x2)``); a DataLoader then
yields ``((x1, x2), y)`` batches.

Device and dtype follow the network (`FitData.device`, `FitData.dtype`): floating inputs and
targets are cast to the network's dtype (a float64 network needs no change of torch's default
dtype), integer inputs and class labels stay integer, and every batch is moved to the network's
device as it is yielded — the data set itself stays where it was given (host memory for a large
data set and a GPU network), except that `full` keeps one copy on the device.
"""
from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, TensorDataset

from ..model.bayesian_model import BayesianModel
from ..model.inputs import Inputs, as_args, cat_rows, check_data, is_multi, map_inputs, num_rows, take_rows
from .._util.checks import check_int

Batch = Tuple[Inputs, torch.Tensor]

LOADER_BATCHES = ("the DataLoader must yield (x, y) batches, x a tensor or a tuple of tensors (x1, x2) for a "
                  "network whose forward takes several inputs, e.g. a dataset whose items are ((x1, x2), y)")


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
        self._on_device: Optional[Batch] = None  # `full` on the network's device, made on first use
        self.user_loader = isinstance(x, DataLoader)  # the data come from the user's loader, not tensors
        if isinstance(x, DataLoader):
            if y is not None:
                raise TypeError("pass either a DataLoader or tensors x, y, not both")
            if batch_size is not None:
                raise TypeError("batch_size is set by the DataLoader; do not pass it to fit as well")
            self.loader = x
            first = next(iter(x), None)
            if first is None:
                raise ValueError(f"the DataLoader is empty; {LOADER_BATCHES}")
            self._batch_parts(first)
            check_data(model, first[0], first[1])
            try:
                self.dataset_size = len(x.dataset)
            except TypeError:
                raise ValueError("the DataLoader's dataset must have a length (fit needs N to scale minibatches)") from None
            self._x = self._y = None
            self._own_loader = False
        else:
            self._x, self._y = self._typed(*check_data(model, x, y))
            self.dataset_size = num_rows(self._x)
            check_int(batch_size, "batch_size", 1, allow_none=True)
            self.loader = None
            self._own_loader = True  # when there is a loader, it is ours, over the tensors above
            if batch_size is not None and batch_size < self.dataset_size:
                self.loader = DataLoader(TensorDataset(*as_args(self._x), self._y), batch_size=batch_size, shuffle=True)

    @property
    def device(self) -> torch.device:
        """The network's device: every batch is yielded there."""
        return self.model.network.device

    @property
    def dtype(self) -> torch.dtype:
        """The network's floating dtype: floating inputs and targets are cast to it."""
        return self.model.network.dtype

    def _typed(self, x: Inputs, y: torch.Tensor) -> Batch:
        """Floating inputs and targets in the network's dtype (integer ones kept: token ids, labels)."""
        dtype = self.dtype
        return map_inputs(lambda t: t.to(dtype) if t.is_floating_point() else t, x), \
            (y.to(dtype) if y.is_floating_point() else y)

    def to_device(self, batch: Batch) -> Batch:
        """``(x, y)`` on the network's device (a no-op for data already there)."""
        device = self.device
        x, y = batch
        return map_inputs(lambda t: t.to(device, non_blocking=True), x), y.to(device, non_blocking=True)

    @property
    def minibatched(self) -> bool:
        return self.loader is not None

    @property
    def num_batches(self) -> int:
        return len(self.loader) if self.loader is not None else 1

    def _host_full(self) -> Batch:
        """The whole data set where it was given (concatenating the loader's batches if need be)."""
        if self._x is None:
            xs, ys = zip(*[self._checked(b) for b in self.loader])
            self._x, self._y = cat_rows(xs), torch.cat(ys)
        return self._x, self._y

    def full(self) -> Batch:
        """The whole data set as ``(x, y)`` on the network's device (one copy kept there)."""
        device = self.device
        if self._on_device is None or self._on_device[1].device != device:
            self._on_device = self.to_device(self._host_full())
        return self._on_device

    def example_x(self, rows: int = 2) -> Inputs:
        """The first ``rows`` training inputs, on the network's device (to discover sites and shapes
        without touching all the data)."""
        x = self._x if self._x is not None else self._checked(next(iter(self.loader)))[0]
        return self.to_device((take_rows(x, slice(0, rows)), torch.zeros(())))[0]

    @staticmethod
    def _batch_parts(batch) -> None:
        if isinstance(batch, dict):
            raise TypeError(f"the DataLoader yields dicts (keys {sorted(map(str, batch))}); dict batches are not "
                            f"supported: {LOADER_BATCHES}. Wrap the dataset so that its items are ((x1, x2), y) "
                            "in the order of forward's arguments (docs: Multi-input networks).")
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            what = f"{type(batch).__name__} of length {len(batch)}" if isinstance(batch, (tuple, list)) else \
                type(batch).__name__
            raise ValueError(f"the DataLoader yields a {what}; {LOADER_BATCHES}")

    def _checked(self, batch) -> Batch:
        if self._own_loader and is_multi(self._x):  # our own TensorDataset(x1, x2, ..., y)
            return tuple(batch[:-1]), batch[-1]
        self._batch_parts(batch)
        return self._typed(*check_data(self.model, batch[0], batch[1]))

    def epoch(self, generator: Optional[torch.Generator] = None) -> Iterator[Batch]:
        """One pass over the data in minibatches (one full batch when not minibatched), augmented if asked."""
        if self.loader is None and self.augment is None:
            yield self.full()  # the device copy, not moved again every epoch
            return
        for xb, yb in self._raw_epoch(generator):
            # Augmentation runs where the data are, with the fit's (CPU) generator, before the move.
            yield self.to_device(((self.augment(xb, generator) if self.augment is not None else xb), yb))

    def _raw_epoch(self, generator: Optional[torch.Generator]) -> Iterator[Batch]:
        if self.loader is None:
            yield self._host_full()
            return
        if generator is not None and self._own_loader:
            # our own loader: shuffle with the fit's seeded generator for reproducibility
            perm = self.permutation(generator)
            for rows in self.batch_rows():
                idx = perm[rows]
                yield take_rows(self._x, idx), self._y[idx]
            return
        for batch in self.loader:
            yield self._checked(batch)

    @property
    def indexable(self) -> bool:
        """True when an epoch's minibatches are rows of the tensors picked by `permutation` and `batch_rows`
        (our own loader over tensors, no augmentation), so K runs' batches can be gathered at once (`rows`)."""
        return self.loader is not None and self._own_loader and self.augment is None

    def permutation(self, generator: torch.Generator) -> torch.Tensor:
        """One epoch's order of the rows, drawn from ``generator`` (the own loader's shuffle)."""
        return torch.randperm(self.dataset_size, generator=generator).to(self._y.device)

    def batch_rows(self) -> List[slice]:
        """The positions in `permutation` of each minibatch of an epoch (the last may be shorter)."""
        bs = self.loader.batch_size
        return [slice(i, i + bs) for i in range(0, self.dataset_size, bs)]

    def rows(self, index: torch.Tensor) -> Batch:
        """``(x[index], y[index])`` on the network's device; ``index`` of any shape, e.g. ``(K, B)`` for the
        batches of K runs at once (one gather instead of K, `pyro_bdl.infer.driver.MemberBatches`)."""
        return self.to_device((take_rows(self._x, index), self._y[index]))

    @property
    def random_batch_size(self) -> int:
        """The size of `random_batches`' batches: the loader's batch size (N without minibatches)."""
        return getattr(self.loader, "batch_size", None) or max(1, self.dataset_size // self.num_batches)

    def random_batches(self, num_batches: int, generator: Optional[torch.Generator] = None) -> Iterator[Batch]:
        """``num_batches`` minibatches of the loader's batch size drawn independently *with replacement*,
        augmented if asked: i.i.d. gradient noise, which SWAG's stationary-covariance argument needs
        (reshuffled epochs sum their noise to zero, so epoch-end iterates hardly spread)."""
        x, y = self._host_full()
        size = self.random_batch_size
        for _ in range(num_batches):
            idx = torch.randint(self.dataset_size, (size,), generator=generator)  # on the generator's device
            idx = idx.to(y.device)
            xb = take_rows(x, idx)
            yield self.to_device(((self.augment(xb, generator) if self.augment is not None else xb), y[idx]))

    def paired_batches(self, num_batches: int, generator: Optional[torch.Generator] = None) -> Iterator[Tuple]:
        """Like `random_batches`, but each batch under two independent augmentations: ``(x₁, x₂, y)``. Their
        gradients' difference is the augmentation's share of the minibatch noise alone (SWAG's
        `GradientNoise.update_pair`, SG-MCMC's `augmentation_noise`)."""
        x, y = self._host_full()
        for _ in range(num_batches):
            idx = torch.randint(self.dataset_size, (self.random_batch_size,), generator=generator).to(y.device)
            xb, yb = take_rows(x, idx), y[idx]
            (x1, y1), (x2, _) = (self.to_device((self.augment(xb, generator), yb)) for _ in range(2))
            yield x1, x2, y1

    def steps(self, num_steps: int, generator: Optional[torch.Generator] = None) -> Iterator[Batch]:
        """``num_steps`` minibatches, cycling through epochs."""
        done = 0
        while done < num_steps:
            for batch in self.epoch(generator):
                yield batch
                done += 1
                if done == num_steps:
                    return
