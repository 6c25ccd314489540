"""Images held in memory as tensors, batched by index: :class:`ImageDataset`, :func:`from_tensor`, and the
checks that turn what a user passes (tensors, arrays) into its tensors.

A VAE training loop over small images is dominated by per-sample Python overhead when it goes through a
``DataLoader``; keeping the whole dataset as one tensor lets it draw a batch with a single index operation,
on the GPU if the dataset lives there.
"""

import math
import numbers

import numpy as np
import torch

from ..checks import positive_int
from ..errors import ConfigError, DataError
from .augment import check_shift, random_shifts

__all__ = ["BINARIZATIONS", "ImageDataset", "from_tensor", "check_binarize", "check_class_labels",
           "validate_images", "validate_covariates"]

BINARIZATIONS = ("none", "static", "dynamic")


def check_binarize(binarize, argument="binarize"):
    """``binarize`` if it is one of :data:`BINARIZATIONS`, else :class:`DataError` naming ``argument``."""
    if binarize not in BINARIZATIONS:
        raise DataError(f"unknown {argument}={binarize!r}; use one of {', '.join(map(repr, BINARIZATIONS))}")
    return binarize


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


def validate_images(images):
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


def validate_covariates(covariates, num_images, device):
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


def check_class_labels(labels, what, fix):
    """``labels`` (a numpy array) as int64 if they are non-negative integers, else raise :class:`DataError`.

    :param str what: names the labels in the message; ``fix`` says what to do about them.
    """
    # casting float or signed labels to int64 would truncate 2.7 to 2 and keep -1, which M2 reads as
    # "unlabelled", without a word
    if labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise DataError(f"{what} must be non-negative integer class indices, got dtype {labels.dtype}"
                        + (f" with minimum {labels.min()}" if labels.size and labels.dtype.kind in "iuf" else "")
                        + f"; {fix}")
    return labels.astype(np.int64)


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
    ``name``; ``shift``, the augmentation of shuffled batches (0: none; see :meth:`augmented`).
    """

    def __init__(self, images, labels=None, binarize="none", seed=0, name="array", covariates=None,
                 classes=None):
        binarize = check_binarize(binarize)
        # the range torch.Generator.manual_seed takes; anything else (text, 1.5, None) is refused, used or not
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not -2 ** 63 <= seed < 2 ** 64:
            raise ConfigError(f"seed must be a whole number (0 to 2**64 - 1), got {seed!r:.40}")
        images = validate_images(images)
        labels = _validate_labels(labels, images.shape[0], images.device)
        covariates = validate_covariates(covariates, images.shape[0], images.device)
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
        self.shift = 0

    @classmethod
    def _wrap(cls, images, labels, binarize, name, covariates=None, classes=None, shift=0):
        """Build a dataset from already validated (and, if static, already binarized) tensors."""
        dataset = cls.__new__(cls)
        dataset._set(images, labels, binarize, name, covariates, classes)
        dataset.shift = shift
        return dataset

    def augmented(self, shift):
        """The same images, with every *shuffled* batch translated at random by up to ``shift`` pixels.

        Training (:func:`~pyro_vae.fit`, which shuffles) sees every image moved by a fresh offset in
        ``{-shift, ..., shift}`` per axis each time it is drawn (before dynamic binarization); in-order
        iteration (``shuffle=False``: scoring, pictures) sees the images as they are. ``shift=0`` turns it off.

        :param int shift: the largest offset in pixels, 0 to :data:`~pyro_vae.data.augment.MAX_SHIFT`.
        :rtype: ImageDataset
        """
        return self._wrap(self.images, self.labels, self.binarize, self.name, self.covariates, self.classes,
                          check_shift(shift))

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
        return self._wrap(self.images.to(device), labels, self.binarize, self.name, covariates, self.classes,
                          self.shift)

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
        return self._wrap(images, labels, self.binarize, self.name, covariates, self.classes, self.shift)

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
        batch_size = positive_int("batch_size", batch_size)
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
            (B, C, H, W), shifted at random when shuffled with :attr:`shift` > 0 (:meth:`augmented`),
            resampled to 0/1 for dynamic binarization; ``y`` int64 of shape (B,), or ``None``
            without labels; ``c`` float32 of shape (B, D), or ``None`` without covariates. ``y`` and ``c``
            are taken at the same indices as ``x``, shuffled and sharded alike.
        """
        batch_size = positive_int("batch_size", batch_size)
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
            if shuffle and self.shift:
                x = random_shifts(x, self.shift)
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


def from_tensor(images, labels=None, covariates=None, binarize="none", seed=0, name="array", classes=None):
    """Wrap in-memory images as an :class:`ImageDataset`; see that class for the parameters.

    :param images: float pixels in [0, 1] of shape (N, C, H, W) or (N, H, W).
    :param labels: integer labels of shape (N,), or ``None``.
    :param covariates: real-valued covariates of shape (N, D) or (N,), or ``None``.
    :rtype: ImageDataset
    """
    return ImageDataset(images, labels=labels, binarize=binarize, seed=seed, name=name, covariates=covariates,
                        classes=classes)
