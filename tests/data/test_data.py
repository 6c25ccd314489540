"""Tests of pyro_vae.data: real bundled datasets, binarization, batching, validation and IDX reading."""

import gzip
import os
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_vae import data
from pyro_vae.errors import ConfigError, DataError

IDX_TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array):
    """Encode ``array`` in the IDX format, written independently of the reader under test."""
    array = np.asarray(array)
    header = bytes([0, 0, IDX_TYPE_CODES[array.dtype], array.ndim])
    header += b"".join(struct.pack(">I", size) for size in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array, compress=False):
    payload = idx_bytes(array)
    if compress:
        payload = gzip.compress(payload)
    with open(path, "wb") as handle:
        handle.write(payload)
    return path


def random_idx_arrays(seed=0, n_train=20, n_test=10, size=28):
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_idx_folder(folder, arrays, compress=False):
    os.makedirs(folder, exist_ok=True)
    for key, filename in IDX_NAMES.items():
        write_idx(os.path.join(folder, filename + (".gz" if compress else "")), arrays[key], compress)
    return folder


@pytest.fixture(scope="module")
def mnist5k():
    return data.load("mnist5k")


# --- bundled datasets -----------------------------------------------------------------------------------


def test_mnist5k_shapes_range_and_labels(mnist5k):
    train, test = mnist5k
    assert train.images.shape == (4000, 1, 28, 28)
    assert test.images.shape == (1000, 1, 28, 28)
    assert train.image_shape == (1, 28, 28)
    for split in (train, test):
        assert split.images.dtype == torch.float32
        assert split.labels.dtype == torch.int64
        assert split.images.min() == 0.0 and split.images.max() == 1.0
        assert set(split.labels.tolist()) == set(range(10))
        assert not split.is_binary  # grey levels
    # Digits are mostly background: a sane fraction of ink.
    assert 0.05 < train.images.mean().item() < 0.25


def test_mnist5k_split_is_fixed_across_calls_and_seeds(mnist5k):
    train, test = mnist5k
    other_train, other_test = data.load("mnist5k", seed=123)
    assert torch.equal(train.images, other_train.images)
    assert torch.equal(test.labels, other_test.labels)
    # Train and test are disjoint pieces of the 5,000 digits.
    train_rows = {bytes(row.numpy()) for row in (train.images * 255).round().to(torch.uint8).flatten(1)}
    test_rows = [bytes(row.numpy()) for row in (test.images * 255).round().to(torch.uint8).flatten(1)]
    assert sum(row in train_rows for row in test_rows) < 5  # MNIST has a handful of duplicate digits


def test_digits_shapes_and_range():
    train, test = data.load("digits")
    assert train.images.shape == (1497, 1, 8, 8)
    assert test.images.shape == (300, 1, 8, 8)
    assert train.images.min() == 0.0 and train.images.max() == 1.0
    assert set(train.labels.tolist()) == set(range(10))
    again, _ = data.load("digits", seed=7)
    assert torch.equal(train.images, again.images)


def test_load_default_test_binarization_protocol():
    train, test = data.load("digits", binarize="dynamic", seed=3)
    assert train.binarize == "dynamic" and test.binarize == "static"
    assert test.is_binary and train.is_binary
    assert not ((train.images == 0) | (train.images == 1)).all()  # grey levels kept for resampling
    _, test_again = data.load("digits", binarize="dynamic", seed=3)
    assert torch.equal(test.images, test_again.images)
    # the binary test set does not move with the training seed, so runs with other seeds are comparable
    train_other, test_other = data.load("digits", binarize="static", seed=4)
    assert torch.equal(test.images, test_other.images)
    assert not torch.equal(train_other.images, data.load("digits", binarize="static", seed=5)[0].images)
    train, test = data.load("digits", binarize="static", test_binarize="none")
    assert train.binarize == "static" and test.binarize == "none"


def test_unknown_dataset_and_binarize_raise():
    with pytest.raises(DataError, match="mnist5k"):
        data.load("cifar-1000")
    with pytest.raises(DataError, match="dynamic"):
        data.load("digits", binarize="yes")
    with pytest.raises(DataError, match="test_binarize"):
        data.load("digits", test_binarize="sometimes")
    with pytest.raises(DataError, match="data_dir"):
        data.load("idx")


@pytest.mark.skipif(
    not os.path.isdir(data.FASHION_MNIST_DEBIAN_DIR), reason="Debian package dataset-fashion-mnist not installed"
)
def test_fashion_mnist_from_debian_package():
    train, test = data.load("fashion-mnist")
    assert train.images.shape == (60000, 1, 28, 28)
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.labels.shape == (60000,) and test.labels.shape == (10000,)
    assert set(test.labels.tolist()) == set(range(10))
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0


# --- binarization and batching -----------------------------------------------------------------------------


def grey_images(n=200, seed=0):
    return torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(seed))


def test_static_binarization_is_deterministic_and_binary():
    images = grey_images()
    first = data.from_tensor(images, binarize="static", seed=5)
    second = data.from_tensor(images, binarize="static", seed=5)
    other = data.from_tensor(images, binarize="static", seed=6)
    assert torch.equal(first.images, second.images)
    assert not torch.equal(first.images, other.images)
    assert first.is_binary
    assert ((first.images == 0) | (first.images == 1)).all()
    assert abs(first.images.mean().item() - images.mean().item()) < 0.03
    # Batches of a static set are the stored sample, not a fresh one.
    x, _ = next(first.batches(len(first), shuffle=False))
    assert torch.equal(x, first.images)


def test_dynamic_binarization_resamples_each_epoch():
    images = grey_images(n=500)
    dataset = data.from_tensor(images, binarize="dynamic")
    assert torch.equal(dataset.images, images)
    # Not seed 0: grey_images() drew its pixels from that same uniform stream, so Bernoulli(u < p) with u == p
    # would come out all zeros.
    torch.manual_seed(2024)
    epoch1 = torch.cat([x for x, _ in dataset.batches(128, shuffle=False)])
    epoch2 = torch.cat([x for x, _ in dataset.batches(128, shuffle=False)])
    assert ((epoch1 == 0) | (epoch1 == 1)).all()
    assert not torch.equal(epoch1, epoch2)
    # 18,000 Bernoulli pixels: the mean is within a few standard errors (~0.004) of the grey mean.
    assert abs(epoch1.mean().item() - images.mean().item()) < 0.02
    assert abs(epoch2.mean().item() - images.mean().item()) < 0.02
    torch.manual_seed(2024)
    replay = torch.cat([x for x, _ in dataset.batches(128, shuffle=False)])
    assert torch.equal(epoch1, replay)


def test_binary_images_without_binarization_are_binary():
    assert data.from_tensor(torch.bernoulli(grey_images())).is_binary
    assert not data.from_tensor(grey_images()).is_binary


@pytest.mark.parametrize("drop_last", [False, True])
def test_shuffled_batches_cover_each_index_once(drop_last):
    n, batch_size = 103, 10
    dataset = data.from_tensor(grey_images(n), labels=torch.arange(n))
    generator = torch.Generator().manual_seed(1)
    batches = list(dataset.batches(batch_size, shuffle=True, generator=generator, drop_last=drop_last))
    assert len(batches) == dataset.num_batches(batch_size, drop_last=drop_last)
    seen = torch.cat([y for _, y in batches])
    if drop_last:
        assert len(batches) == 10 and all(len(y) == batch_size for _, y in batches)
        assert len(set(seen.tolist())) == 100
    else:
        assert len(batches) == 11 and len(batches[-1][1]) == 3
        assert sorted(seen.tolist()) == list(range(n))
        assert seen.tolist() != list(range(n))  # actually shuffled
    for x, y in batches:
        assert torch.equal(x, dataset.images[y])


@pytest.mark.parametrize("n,world", [(3, 8), (3, 7), (2, 16), (10, 4), (3, 3), (5, 1)])
@pytest.mark.parametrize("batch_size,drop_last", [(1, False), (2, False), (1, True)])
def test_every_shard_yields_num_batches_and_together_they_visit_every_image(n, world, batch_size, drop_last):
    # real digits, labelled by their index so that a batch says which images it holds
    digits, _ = data.load("digits")
    dataset = data.from_tensor(digits.images[:n], labels=torch.arange(n), name="digits")
    seen = []
    for rank in range(world):
        # every process draws the same permutation, as distributed training does
        generator = torch.Generator().manual_seed(4)
        batches = list(dataset.batches(batch_size, generator=generator, drop_last=drop_last, shard=(rank, world)))
        # a rank with fewer steps than the others would leave them waiting forever in the all-reduce
        assert len(batches) == dataset.num_batches(batch_size, drop_last=drop_last, shard=(rank, world)) >= 1
        for x, y in batches:
            assert torch.equal(x, dataset.images[y])
        seen += [y for _, y in batches]
    seen = torch.cat(seen)
    assert len(seen) == -(-n // world) * world               # padded to a whole number per rank
    assert sorted(set(seen.tolist())) == list(range(n))     # and no image left out


@pytest.mark.parametrize("shard", [(8, 8), (-1, 2), (0, 0), (0.5, 2), 3, (0, 2, 1)])
def test_bad_shard_is_refused(shard):
    dataset = data.from_tensor(grey_images(5))
    with pytest.raises(ConfigError, match="0 <= rank < world_size"):
        dataset.num_batches(2, shard=shard)
    with pytest.raises(ConfigError, match="0 <= rank < world_size"):
        next(dataset.batches(2, shard=shard))


def test_batches_order_follows_generator_and_unshuffled_order():
    dataset = data.from_tensor(grey_images(30), labels=torch.arange(30))

    def order(seed):
        return torch.cat([y for _, y in dataset.batches(7, generator=torch.Generator().manual_seed(seed))])

    assert torch.equal(order(2), order(2))
    assert not torch.equal(order(2), order(3))
    unshuffled = torch.cat([y for _, y in dataset.batches(7, shuffle=False)])
    assert unshuffled.tolist() == list(range(30))


def test_batches_without_labels_yield_none():
    dataset = data.from_tensor(grey_images(5))
    assert [y for _, y in dataset.batches(2)] == [None, None, None]
    with pytest.raises(ValueError):
        list(dataset.batches(0))


def test_subset_and_to_keep_static_sample():
    dataset = data.from_tensor(grey_images(), labels=torch.arange(200), binarize="static", seed=9, name="toy")
    part = dataset.subset([3, 1, 4])
    assert len(part) == 3 and part.binarize == "static" and part.name == "toy"
    assert torch.equal(part.images, dataset.images[[3, 1, 4]])
    assert part.labels.tolist() == [3, 1, 4]
    moved = dataset.to("cpu")
    assert torch.equal(moved.images, dataset.images) and moved.device == torch.device("cpu")
    dynamic = data.from_tensor(grey_images(), binarize="dynamic").subset(torch.arange(10))
    assert dynamic.binarize == "dynamic" and not ((dynamic.images == 0) | (dynamic.images == 1)).all()
    with pytest.raises(DataError):
        dataset.subset([])
    with pytest.raises(DataError):
        dataset.subset([500])
    assert "toy" in repr(dataset) and "static" in repr(dataset)


# --- validation -------------------------------------------------------------------------------------------


def test_from_tensor_accepts_numpy_and_adds_channel_dim():
    array = np.random.default_rng(0).random((4, 5, 6))
    dataset = data.from_tensor(array, labels=np.array([0, 1, 2, 3]))
    assert dataset.images.shape == (4, 1, 5, 6) and dataset.images.dtype == torch.float32
    assert dataset.labels.dtype == torch.int64
    assert len(dataset) == 4 and dataset.image_shape == (1, 5, 6)


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.full((2, 3, 3), float("nan")), "NaN"),
        (torch.tensor([[[0.5, float("inf")]]]), "NaN or inf"),
        (torch.full((2, 3, 3), 1.5), r"\[0, 1\]"),
        (torch.full((2, 3, 3), -0.1), r"\[0, 1\]"),
        (torch.rand(4, 9), "3-D"),
        (torch.rand(2, 28, 28, 3), "channels-last"),
        (torch.rand(2, 1, 3, 3, 1), "4-D"),
        (torch.zeros(0, 1, 3, 3), "empty"),
        (torch.randint(0, 256, (2, 3, 3), dtype=torch.uint8), "255"),
        (torch.rand(2, 3, 3) * 255, "divide by 255"),
    ],
)
def test_from_tensor_rejects_bad_images(images, match):
    with pytest.raises(DataError, match=match):
        data.from_tensor(images)


def test_out_of_range_hint_names_the_range_and_follows_the_data():
    from sklearn.datasets import load_digits

    # scikit-learn's digits before scaling: counts 0..16, for which "divide by 255" would be wrong advice
    counts = load_digits().images
    with pytest.raises(DataError, match=r"got range \[0, 16\]; they look like whole-number counts 0..16: divide by "
                                        r"16, their maximum") as info:
        data.from_tensor(counts)
    assert "255" not in str(info.value)
    assert data.from_tensor(counts / 16).images.max() == 1.0   # the advice works
    with pytest.raises(DataError, match=r"integer dtype torch.uint8 \(values 0..16\).*e.g. images.float\(\) / 16"):
        data.from_tensor(counts.astype(np.uint8))
    # real 8-bit digits, as floats and as integers
    eight_bit = np.round(counts * 255 / 16)
    with pytest.raises(DataError, match=r"got range \[0, 255\]; they look like 8-bit pixels \(0..255\): divide by 255"):
        data.from_tensor(eight_bit)
    with pytest.raises(DataError, match=r"e.g. images.float\(\) / 255"):
        data.from_tensor(eight_bit.astype(np.int32))


@pytest.mark.parametrize("images, match", [
    (torch.rand(2, 3, 3) * 2 - 1, r"normalised to \[-1, 1\]: map them with \(x \+ 1\) / 2"),
    (torch.full((2, 3, 3), 4095.0), "16-bit pixels \\(0..65535\\): divide by 65535"),
    (torch.full((2, 3, 3), 99.5), "rescale them, e.g. divide by their maximum 99.5"),
    (torch.linspace(-5, 5, 18).view(2, 3, 3), r"rescale them, e.g. \(x - \(-5\)\) / 10"),
    (torch.ones(2, 3, 3, dtype=torch.int64), r"convert them to float, e.g. images.float\(\)$"),
])
def test_out_of_range_hints(images, match):
    with pytest.raises(DataError, match=match):
        data.from_tensor(images)


def test_from_tensor_rejects_bad_labels_and_binarize():
    with pytest.raises(DataError, match="labels"):
        data.from_tensor(torch.rand(3, 2, 2), labels=torch.arange(4))
    with pytest.raises(DataError, match="1-D"):
        data.from_tensor(torch.rand(3, 2, 2), labels=torch.zeros(3, 1))
    with pytest.raises(DataError, match="'none', 'static', 'dynamic'"):
        data.from_tensor(torch.rand(3, 2, 2), binarize="sometimes")


# --- IDX files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([7, 0, 9], dtype=np.uint8),
        np.array([[-5, 70000], [1, 2]], dtype=np.int32),
        np.array([0.25, -1.5], dtype=np.float32),
    ],
)
def test_idx_round_trip(tmp_path, array, compress):
    path = write_idx(tmp_path / "file-idx", array, compress)
    result = data.read_idx(path)
    assert result.shape == array.shape and result.dtype == array.dtype
    np.testing.assert_array_equal(result, array)


def test_idx_truncated_wrong_magic_and_missing(tmp_path):
    good = idx_bytes(np.zeros((3, 4, 4), dtype=np.uint8))
    truncated = tmp_path / "truncated"
    truncated.write_bytes(good[:-5])
    with pytest.raises(DataError, match="corrupt or truncated"):
        data.read_idx(truncated)
    bad_gzip = tmp_path / "bad.gz"
    bad_gzip.write_bytes(gzip.compress(good)[:-10])
    with pytest.raises(DataError, match="bad.gz"):
        data.read_idx(bad_gzip)
    wrong_magic = tmp_path / "wrong-magic"
    wrong_magic.write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(DataError, match="magic"):
        data.read_idx(wrong_magic)
    trailing = tmp_path / "trailing"
    trailing.write_bytes(good + b"\x00")
    with pytest.raises(DataError, match="download"):
        data.read_idx(trailing)
    with pytest.raises(DataError, match="does not exist"):
        data.read_idx(tmp_path / "nope")


def test_load_idx_folder_gz_and_raw(tmp_path):
    arrays = random_idx_arrays()
    for compress in (False, True):
        folder = write_idx_folder(tmp_path / f"compress-{compress}", arrays, compress)
        result = data.load_idx_folder(folder)
        for got, key in zip(result, ["train_images", "train_labels", "test_images", "test_labels"]):
            np.testing.assert_array_equal(got, arrays[key])


def test_load_idx_folder_missing_pieces(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.load_idx_folder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        data.load_idx_folder(tmp_path / "empty")
    folder = write_idx_folder(tmp_path / "partial", random_idx_arrays())
    os.remove(folder / IDX_NAMES["test_labels"])
    with pytest.raises(DataError, match="t10k-labels"):
        data.load_idx_folder(folder)
    arrays = random_idx_arrays()
    arrays["test_labels"] = arrays["test_labels"][:3]
    folder = write_idx_folder(tmp_path / "mismatch", arrays)
    with pytest.raises(DataError, match="labels"):
        data.load_idx_folder(folder)


def test_load_from_idx_folder_path_and_idx_name(tmp_path):
    arrays = random_idx_arrays(n_train=12, n_test=6, size=5)
    folder = write_idx_folder(tmp_path / "tiny", arrays, compress=True)
    train, test = data.load(str(folder))
    assert train.images.shape == (12, 1, 5, 5) and test.images.shape == (6, 1, 5, 5)
    np.testing.assert_allclose(train.images[:, 0].numpy(), arrays["train_images"] / 255.0, rtol=1e-6)
    assert test.labels.tolist() == arrays["test_labels"].tolist()
    assert train.name == "tiny/train"
    same, _ = data.load("idx", data_dir=folder)
    assert torch.equal(same.images, train.images)


def test_idx_labels_that_are_not_class_indices_are_refused(tmp_path):
    # a cast to int64 would silently turn 2.7 into 2 and keep -1, which M2 reads as "unlabelled"
    for name, labels in (("float", np.array([0.0, 1.5, 2.7, 3.0, 4.0, 9.2, 1.0, 2.0, 3.0, 4.0], np.float32)),
                         ("negative", np.array([-1, 1, 2, 3, 4, 5, 6, 7, 8, 9], np.int32))):
        arrays = random_idx_arrays()
        arrays["test_labels"] = labels
        folder = write_idx_folder(tmp_path / name, arrays)
        with pytest.raises(DataError, match="non-negative integer class indices"):
            data.load(str(folder))


# --- torchvision path, offline -------------------------------------------------------------------------------


def test_torchvision_mnist_reads_raw_files_offline(tmp_path):
    pytest.importorskip("torchvision")
    arrays = random_idx_arrays()
    # torchvision looks for the uncompressed files in <root>/MNIST/raw/ and reads them itself.
    write_idx_folder(tmp_path / "MNIST" / "raw", arrays)
    train, test = data.load("mnist", data_dir=tmp_path, download=False)
    assert train.images.shape == (20, 1, 28, 28) and test.images.shape == (10, 1, 28, 28)
    np.testing.assert_allclose(test.images[:, 0].numpy(), arrays["test_images"] / 255.0, rtol=1e-6)
    assert train.labels.tolist() == arrays["train_labels"].tolist()
    assert train.labels.dtype == torch.int64


def test_torchvision_missing_files_and_failed_download(tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    with pytest.raises(DataError, match="download=True"):
        data.load("kmnist", data_dir=tmp_path, download=False)

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError, match="could not download 'mnist' \\(no network\\?\\)") as info:
        data.load("mnist", data_dir=tmp_path, download=True)
    assert "\n" not in str(info.value)


# --- robustness of the IDX reader ---------------------------------------------------------------------------

VALID_IDX = idx_bytes(np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.one_of(
        st.binary(max_size=64),
        st.integers(0, len(VALID_IDX)).map(lambda n: VALID_IDX[:n]),
        st.integers(0, len(VALID_IDX)).map(lambda n: gzip.compress(VALID_IDX)[:n]),
        st.tuples(st.integers(0, len(VALID_IDX) - 1), st.integers(0, 255)).map(
            lambda edit: VALID_IDX[: edit[0]] + bytes([edit[1]]) + VALID_IDX[edit[0] + 1 :]
        ),
    )
)
def test_read_idx_returns_array_or_raises_data_error(tmp_path, payload):
    path = tmp_path / "fuzz-idx"
    path.write_bytes(payload)
    try:
        result = data.read_idx(path)
    except DataError:
        return
    assert isinstance(result, np.ndarray)
