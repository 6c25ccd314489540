"""NumPy ``.npy`` / ``.npz`` files as datasets, saved by the tests from real digits; pickles are refused."""

import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from pyro_vae import data
from pyro_vae.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 1,797 real 8x8 digits: pixels 0..16 as uint8 0-255 (N, 8, 8), labels (N,)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.round(bunch.images * (255 / 16)).astype(np.uint8), bunch.target


def test_npy_of_uint8_images_is_scaled_and_split_90_10(tmp_path, digits):
    images, _ = digits
    path = tmp_path / "digits.npy"
    np.save(path, images)
    train, test = data.load(str(path))
    assert train.name == "digits/train" and test.name == "digits/test"
    assert (len(train), len(test)) == (1617, 180)
    assert train.images.shape == (1617, 1, 8, 8) and train.labels is None and train.covariates is None
    everything = torch.cat([train.images, test.images])
    assert everything.max() == 1.0 and everything.min() == 0.0
    # the same images, scaled by 1/255, in the order of the fixed split
    expected = np.sort((images.reshape(len(images), -1) / np.float32(255)).astype(np.float32), axis=0)
    np.testing.assert_array_equal(np.sort(everything.flatten(1).numpy(), axis=0), expected)
    again, held_out = data.load(path, seed=9)
    assert torch.equal(held_out.images, test.images)


def test_npy_of_float_images_and_four_dimensional_arrays(tmp_path, digits):
    images, _ = digits
    scaled = images[:, None].astype(np.float64) / 255      # (N, 1, H, W) in [0, 1]
    np.save(tmp_path / "float.npy", scaled)
    train, _ = data.load(tmp_path / "float.npy")
    assert train.image_shape == (1, 8, 8)
    colour = np.concatenate([scaled[:599], scaled[599:1198], scaled[1198:]], axis=1)
    np.save(tmp_path / "colour.npy", colour.astype(np.float32))
    train, test = data.load(tmp_path / "colour.npy")
    assert train.image_shape == (3, 8, 8) and len(train) + len(test) == 599


def test_npz_with_labels_and_covariates(tmp_path, digits):
    images, labels = digits
    # a real per-image covariate: the fraction of inked pixels, and its square
    ink = (images > 0).mean(axis=(1, 2))
    path = tmp_path / "labelled.npz"
    np.savez_compressed(path, images=images, labels=labels, covariates=np.stack([ink, ink**2], axis=1))
    train, test = data.load(path)
    assert train.labels.dtype == torch.int64 and set(train.labels.tolist()) == set(range(10))
    assert train.covariates.shape == (len(train), 2) and test.covariates.dtype == torch.float32
    # labels and covariates stay with their own image through the split
    for split in (train, test):
        measured = (split.images > 0).float().mean(dim=(1, 2, 3))
        torch.testing.assert_close(split.covariates[:, 0], measured)
    found = {bytes(row): label for row, label in zip(images.reshape(len(images), -1), labels)}
    rows = (test.images * 255).round().to(torch.uint8).flatten(1).numpy()
    assert [found[bytes(row)] for row in rows] == test.labels.tolist()
    np.savez(tmp_path / "plain.npz", images=images[:20])
    train, _ = data.load(tmp_path / "plain.npz")
    assert train.labels is None and len(train) == 18
    one_column = tmp_path / "ink.npz"
    np.savez(one_column, images=images[:20], covariates=ink[:20])
    assert data.load(one_column)[0].covariates.shape == (18, 1)


def test_pickled_object_arrays_are_refused_never_executed(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.npy"
    np.save(path, np.array([Payload()], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="holds Python objects \\(dtype object\\).*refused"):
        data.load(path)
    archive = tmp_path / "evil.npz"
    np.savez(archive, images=np.zeros((4, 3, 3), np.uint8), labels=np.array([Payload()] * 4, dtype=object))
    with pytest.raises(DataError, match="array 'labels' of .*evil.npz' holds Python objects"):
        data.load(archive)
    # a plain pickle renamed to .npy is not a .npy file at all
    (tmp_path / "plain.npy").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(DataError, match="is not a readable .npy array"):
        data.load(tmp_path / "plain.npy")
    assert not marker.exists()


def test_bad_numpy_files(tmp_path, digits):
    images, labels = digits
    cases = {
        "ints.npy": (np.int64, "integer dtype int64; save uint8 pixels 0-255 or floats in \\[0, 1\\]"),
        "flat.npy": ("flat", "have shape \\(1797, 64\\); save \\(N, H, W\\) or \\(N, C, H, W\\)"),
        "counts.npy": ("counts", "got range \\[0, 16\\]; they look like whole-number counts 0..16: divide by 16"),
        "one.npy": ("one", "holds 1 image\\(s\\); a train/test split needs at least 2"),
        "strings.npy": ("strings", "has dtype <U1; save plain numbers"),
    }
    for name, (kind, match) in cases.items():
        array = {"flat": images.reshape(len(images), -1), "counts": np.round(images / (255 / 16)).astype(float),
                 "one": images[:1], "strings": np.array([["a"]]), np.int64: images.astype(np.int64)}[kind]
        np.save(tmp_path / name, array)
        with pytest.raises(DataError, match=match) as info:
            data.load(tmp_path / name)
        assert name in str(info.value)
    with pytest.raises(DataError, match="holds no 'images' array \\(found 'x'\\)"):
        np.savez(tmp_path / "x.npz", x=images)
        data.load(tmp_path / "x.npz")
    with pytest.raises(DataError, match="arrays other than images, labels, covariates: label"):
        np.savez(tmp_path / "typo.npz", images=images, label=labels)   # a misspelt name is not dropped silently
        data.load(tmp_path / "typo.npz")
    with pytest.raises(DataError, match="labels in .* must be non-negative integer class indices"):
        np.savez(tmp_path / "neg.npz", images=images, labels=labels - 1)
        data.load(tmp_path / "neg.npz")
    with pytest.raises(DataError, match="labels in .* have shape \\(5,\\), expected \\(1797,\\)"):
        np.savez(tmp_path / "short.npz", images=images, labels=labels[:5])
        data.load(tmp_path / "short.npz")
    with pytest.raises(DataError, match="covariates in .*: covariates contain NaN or inf \\(first in row 3\\)"):
        covariates = np.ones(len(images))
        covariates[3] = np.nan
        np.savez(tmp_path / "nan.npz", images=images, covariates=covariates)
        data.load(tmp_path / "nan.npz")
    with pytest.raises(DataError, match="NumPy file .* does not exist"):
        data.load(tmp_path / "absent.npy")
    (tmp_path / "table.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="is a file but not a .npy or .npz array"):
        data.load(tmp_path / "table.csv")
    (tmp_path / "broken.npz").write_bytes(b"PK\3\4 not really a zip")
    with pytest.raises(DataError, match="is not a readable .npz archive"):
        data.load(tmp_path / "broken.npz")


def test_declared_sizes_are_checked_before_reading(tmp_path, digits):
    images, _ = digits
    path = tmp_path / "digits.npy"
    np.save(path, images)
    with pytest.raises(DataError, match="declares 115,008 bytes of data, above the limit of 1,000 bytes "
                                        ".*MAX_DATA_BYTES.*max_bytes=N"):
        data.load_numpy(path, max_bytes=1000)
    # the budget is what the images take as they are held (float32), not as stored
    with pytest.raises(DataError, match="460,032 bytes as float32, above the limit of 115,008 bytes"):
        data.load_numpy(path, max_bytes=115_008)
    assert data.load_numpy(path, max_bytes=460_032)[0].shape == (1797, 1, 8, 8)
    with pytest.raises(ConfigError, match="max_bytes must be a positive integer"):
        data.load_numpy(path, max_bytes=-1)
    # a header promising far more than the file holds: refused from the file size, nothing allocated
    header = np.lib.format.header_data_from_array_1_0(images)
    header["shape"] = (10**8, 8, 8)
    with open(tmp_path / "short.npy", "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        handle.write(images.tobytes())
    with pytest.raises(DataError, match="is truncated: shape \\(100000000, 8, 8\\) of uint8 needs 6,400,000,000 "
                                        "bytes"):
        data.load_numpy(tmp_path / "short.npy", max_bytes=10**10)
    # the same inside an .npz: the member's recorded size tells
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as archive:
        archive.write(tmp_path / "short.npy", "images.npy")
    with pytest.raises(DataError, match="array 'images' of .*short.npz' is truncated"):
        data.load_numpy(tmp_path / "short.npz", max_bytes=10**10)
    assert os.path.getsize(tmp_path / "short.npz") < 200_000
