"""Small data sets that need no download, with fixed splits and standardisation.

* scikit-learn's bundled tables: ``"digits"`` (8×8 images, 10 classes), ``"wine"`` (3 classes),
  ``"breast_cancer"`` (2 classes), ``"diabetes"`` (regression). Their ``fetch_*`` cousins need
  the internet and are not used.
* :func:`gap_regression` — synthetic 1-D regression with a gap in the inputs, where a good
  posterior's predictive band widens away from the data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

DATASETS = {
    "digits": ("load_digits", "classification"),
    "wine": ("load_wine", "classification"),
    "breast_cancer": ("load_breast_cancer", "classification"),
    "diabetes": ("load_diabetes", "regression"),
}


@dataclass
class Dataset:
    """A train/test split. Regression targets are standardised with the training statistics
    (``y_mean``, ``y_std`` undo it); classification targets are class indices."""

    name: str
    task: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: Optional[int] = None
    y_mean: float = 0.0
    y_std: float = 1.0

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def output_dim(self) -> int:
        """Network outputs this task needs: one logit per class, or 1 for regression."""
        return self.num_classes if self.task == "classification" else 1

    def loader(self, batch_size: int, seed: int = 0, shuffle: bool = True) -> DataLoader:
        """A DataLoader over the training split with a seeded shuffle."""
        g = torch.Generator().manual_seed(seed)
        return DataLoader(TensorDataset(self.x_train, self.y_train), batch_size=batch_size, shuffle=shuffle,
                          generator=g)


def load_dataset(name: str, test_fraction: float = 0.25, seed: int = 0, train_size: Optional[int] = None,
                 standardize: bool = True) -> Dataset:
    """Load a bundled scikit-learn data set with a fixed stratified (classification) split.

    Features are standardised with the training mean and std (constant features left at 0).
    ``train_size`` subsamples the training split (e.g. 1000 digits).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; bundled data sets: {sorted(DATASETS)}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    import sklearn.datasets
    from sklearn.model_selection import train_test_split

    loader, task = DATASETS[name]
    bunch = getattr(sklearn.datasets, loader)()
    x, y = bunch.data.astype(np.float64), bunch.target
    stratify = y if task == "classification" else None
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=stratify)
    if train_size is not None:
        if train_size > len(x_tr):
            raise ValueError(f"train_size={train_size} exceeds the {len(x_tr)} training points of {name}")
        rng = np.random.default_rng(seed)
        keep = rng.permutation(len(x_tr))[:train_size]
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    if standardize:
        mu, sd = x_tr.mean(0), x_tr.std(0)
        sd[sd == 0] = 1.0
        x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    dtype = torch.get_default_dtype()
    X_tr, X_te = torch.tensor(x_tr, dtype=dtype), torch.tensor(x_te, dtype=dtype)
    if task == "classification":
        return Dataset(name, task, X_tr, torch.tensor(y_tr).long(), X_te, torch.tensor(y_te).long(),
                       num_classes=int(y.max()) + 1)
    y_mean, y_std = float(y_tr.mean()), float(y_tr.std())
    return Dataset(name, task, X_tr, torch.tensor((y_tr - y_mean) / y_std, dtype=dtype), X_te,
                   torch.tensor((y_te - y_mean) / y_std, dtype=dtype), y_mean=y_mean, y_std=y_std)


def gap_regression(n: int = 80, noise: float = 0.1, seed: int = 0, gap=(-0.5, 1.0)) -> Dataset:
    """1-D regression y = sin(3x) + 0.3x + ε on x ∈ [−2, 2] minus a gap, test inputs on [−3, 3].

    Training inputs avoid ``gap``; the test grid covers the gap and both outer regions, so a
    posterior's predictive band should widen inside the gap and beyond ±2.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4 * n, generator=g) * 4 - 2
    x = x[(x < gap[0]) | (x > gap[1])][:n]
    if len(x) < n:
        raise ValueError("gap too wide for the requested number of points")
    f = lambda t: torch.sin(3 * t) + 0.3 * t  # noqa: E731
    y = f(x) + noise * torch.randn(n, generator=g)
    x_test = torch.linspace(-3, 3, 200)
    y_test = f(x_test) + noise * torch.randn(200, generator=g)
    return Dataset("gap", "regression", x.unsqueeze(-1), y, x_test.unsqueeze(-1), y_test)


def shift_images(x: torch.Tensor, generator: Optional[torch.Generator] = None, *, image_shape=(8, 8),
                 max_shift: int = 1, mean=None, std=None, flip: bool = False) -> torch.Tensor:
    """Random translations (and optional horizontal flips) of images stored as flat rows.

    Each row of ``x`` (shape ``(B, H·W)``) is an ``H×W`` image; every image is shifted by its own
    (dy, dx) drawn uniformly from {−max_shift, …, max_shift}², pixels moved in from outside set to
    the background 0, and with ``flip=True`` mirrored left-right with probability ½ (right for
    natural images, wrong for digits, where a mirrored 2 is no 2). When the features were
    standardised, pass the training ``mean`` and ``std`` per pixel: the image is unstandardised,
    shifted in pixel space (so the background stays the true background) and standardised again.

    It is an ``augment(x, generator)`` hook for :func:`pyro_bdl.fit`; bind the options with
    ``functools.partial(shift_images, mean=m, std=s)`` (picklable, for process pools). This is the
    ±1-pixel shift of the cold-posterior studies (Wenzel et al. 2020; Izmailov et al. 2021).
    """
    h, w = (int(s) for s in image_shape)
    if x.dim() != 2 or x.shape[1] != h * w:
        raise ValueError(f"shift_images needs rows of {h}×{w}={h * w} pixels, got x of shape {tuple(x.shape)}")
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift must be a non-negative integer, got {max_shift!r}")
    mean = None if mean is None else torch.as_tensor(mean, dtype=x.dtype)
    std = None if std is None else torch.as_tensor(std, dtype=x.dtype)
    pixels = x if std is None else x * std
    pixels = pixels if mean is None else pixels + mean
    b, m = x.shape[0], max_shift
    images = torch.nn.functional.pad(pixels.reshape(b, h, w), (m, m, m, m))
    dy = torch.randint(-m, m + 1, (b, 1, 1), generator=generator)
    dx = torch.randint(-m, m + 1, (b, 1, 1), generator=generator)
    cols = torch.arange(w).reshape(1, 1, w)
    if flip:
        mirror = torch.rand(b, 1, 1, generator=generator) < 0.5
        cols = torch.where(mirror, w - 1 - cols, cols)
    rows = torch.arange(h).reshape(1, h, 1) + m - dy
    out = images[torch.arange(b).reshape(b, 1, 1), rows, cols + m - dx].reshape(b, h * w)
    out = out if mean is None else out - mean
    return out if std is None else out / std
