"""Per-image real-valued covariates: validation, storage, and batches that carry them with x and y."""

import copy

import numpy as np
import pytest
import torch

from pyro_vae import data
from pyro_vae.errors import DataError


@pytest.fixture(scope="module")
def digits_with_ink():
    """60 real 8x8 digits with two covariates each: their ink (mean pixel) and the row of its centre."""
    train, _ = data.load("digits")
    images = train.images[:60]
    rows = torch.arange(8, dtype=torch.float32).view(1, 1, 8, 1)
    ink = images.mean(dim=(1, 2, 3))
    centre = (images * rows).sum(dim=(1, 2, 3)) / images.sum(dim=(1, 2, 3))
    return images, train.labels[:60], torch.stack([ink, centre], dim=1)


def test_covariates_are_stored_as_float32_rows(digits_with_ink):
    images, labels, covariates = digits_with_ink
    dataset = data.from_tensor(images, labels, covariates=covariates.double().numpy(), name="digits")
    assert dataset.covariates.dtype == torch.float32 and dataset.covariates.shape == (60, 2)
    torch.testing.assert_close(dataset.covariates, covariates)
    assert dataset.covariates.device == dataset.images.device
    assert "covariates (D=2)" in repr(dataset)
    # (N,) is one covariate per image; integers and booleans are numbers too
    assert data.from_tensor(images, covariates=covariates[:, 0]).covariates.shape == (60, 1)
    assert data.from_tensor(images, covariates=np.arange(60)).covariates.dtype == torch.float32
    assert data.from_tensor(images, covariates=covariates[:, 0] > 0.3).covariates.sum() > 0
    plain = data.from_tensor(images)
    assert plain.covariates is None and "covariates" not in repr(plain)
    assert data.ImageDataset(images, covariates=covariates).covariates.shape == (60, 2)


def test_batches_yield_pairs_by_default_and_triples_on_request(digits_with_ink):
    images, labels, covariates = digits_with_ink
    dataset = data.from_tensor(images, torch.arange(60), covariates=covariates)
    assert all(len(batch) == 2 for batch in dataset.batches(16))
    generator = torch.Generator().manual_seed(3)
    seen = []
    for x, y, c in dataset.batches(16, generator=generator, with_covariates=True):
        # y holds each image's index: the covariates must be that image's, after shuffling
        assert torch.equal(c, covariates[y]) and torch.equal(x, images[y]) and c.shape == (len(y), 2)
        seen += y.tolist()
    assert sorted(seen) == list(range(60)) and seen != list(range(60))
    # the same generator gives the same order with and without covariates
    pairs = [y for _, y in dataset.batches(16, generator=torch.Generator().manual_seed(3))]
    assert torch.equal(torch.cat(pairs), torch.tensor(seen))
    # shards split c exactly as they split y, padding included
    for rank in range(4):
        for x, y, c in dataset.batches(7, generator=torch.Generator().manual_seed(1), shard=(rank, 4),
                                       with_covariates=True):
            assert torch.equal(c, covariates[y])
    # without covariates the third item is None
    assert {c for _, _, c in data.from_tensor(images).batches(32, with_covariates=True)} == {None}


def test_subset_to_and_copies_carry_covariates(digits_with_ink):
    images, labels, covariates = digits_with_ink
    dataset = data.from_tensor(images, labels, covariates=covariates, binarize="static", seed=2)
    part = dataset.subset([5, 0, 7])
    assert torch.equal(part.covariates, covariates[[5, 0, 7]])
    mask = covariates[:, 0] > covariates[:, 0].median()
    assert torch.equal(dataset.subset(mask).covariates, covariates[mask])
    moved = dataset.to("cpu")
    assert torch.equal(moved.covariates, dataset.covariates) and moved.covariates.device == moved.device
    assert copy.copy(dataset).covariates is dataset.covariates
    if torch.cuda.is_available():
        assert dataset.to("cuda").covariates.device.type == "cuda"


@pytest.mark.parametrize("covariates, match", [
    (torch.zeros(59, 2), "got 59 rows of covariates for 60 images; pass one row per image"),
    (torch.zeros(60, 2, 1), "must be 1-D \\(N,\\) or 2-D \\(N, D\\), got shape \\(60, 2, 1\\)"),
    (torch.zeros(60, 0), "have no columns"),
    (torch.tensor([0.0] * 41 + [float("nan")] + [0.0] * 18), "NaN or inf \\(first in row 41\\)"),
    (np.r_[np.zeros(59), np.inf], "NaN or inf \\(first in row 59\\)"),
    (np.full(60, 1e300), "overflow float32"),
    (np.array(["tall"] * 60), "covariates must be numbers, got numpy dtype <U4"),
    (np.array([{}] * 60, dtype=object), "covariates must be numbers, got numpy dtype object"),
    (torch.zeros(60, dtype=torch.complex64), "real numbers"),
])
def test_bad_covariates_are_refused(digits_with_ink, covariates, match):
    with pytest.raises(DataError, match=match) as info:
        data.from_tensor(digits_with_ink[0], covariates=covariates)
    assert "\n" not in str(info.value)


def test_classes_name_the_labels(digits_with_ink):
    images, labels, _ = digits_with_ink
    names = [str(k) for k in range(10)]
    dataset = data.from_tensor(images, labels, classes=names)
    assert dataset.classes == tuple(names) and dataset.subset([0, 1]).classes == tuple(names)
    with pytest.raises(DataError, match="label 9 has no name among the 3 classes"):
        data.from_tensor(images, labels, classes=["a", "b", "c"])
    with pytest.raises(DataError, match="no labels were given"):
        data.from_tensor(images, classes=names)
    with pytest.raises(DataError, match="sequence of class names"):
        data.from_tensor(images, labels, classes="0123456789")
