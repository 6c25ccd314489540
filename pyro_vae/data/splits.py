"""The fixed train/test splits of data that come without one (the bundled datasets, image folders, arrays),
and the validation split carved from a training set.

The splits must not move with the user's seed, otherwise test scores of runs with different seeds would be
measured on different test sets (and early stopping of different seeds would watch different images): they
are drawn from :data:`SPLIT_SEED` alone.
"""

import numbers

import numpy as np
import torch

from ..errors import ConfigError, DataError

__all__ = ["SPLIT_SEED", "TEST_FRACTION", "VALIDATION_FRACTION", "fixed_split", "take", "train_count",
           "validation_count", "validation_split"]

#: seed of every fixed split
SPLIT_SEED = 0
#: share of a user's images or array held out for testing when they come without a train/test split
TEST_FRACTION = 0.1
#: share of the training images held out for validation when early stopping or a plateau schedule asks for a
#: validation split and its size is not given (``pyro-vae train --early-stopping`` without ``--validation``)
VALIDATION_FRACTION = 0.1


def fixed_split(count, train_count):
    """``(train, test)`` integer index arrays: a permutation of ``range(count)`` drawn from :data:`SPLIT_SEED`,
    cut after ``train_count``."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(SPLIT_SEED)).numpy()
    return order[:train_count], order[train_count:]


def take(values, index):
    """``values`` (a list, an array, a tensor, or None) at the integer positions ``index``."""
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        return values[torch.as_tensor(index)]
    if isinstance(values, np.ndarray):
        return values[index]
    return [values[i] for i in index]


def train_count(count, what):
    """Training images of a fixed split of ``count``: about 90%, leaving at least one test image.

    :raises DataError: if ``count < 2`` (``what`` names the data in the message).
    """
    if count < 2:
        raise DataError(f"{what} holds {count} image(s); a train/test split needs at least 2")
    return count - max(1, round(count * TEST_FRACTION))


def validation_count(validation, count):
    """How many of ``count`` training images a ``validation`` request holds out: a whole number N (1 to
    ``count - 1``) or a fraction in (0, 1) of ``count`` (rounded, at least 1).

    :raises ConfigError: for anything else, or a request that would leave no training image.
    """
    if isinstance(validation, bool) or not isinstance(validation, (numbers.Integral, numbers.Real)):
        raise ConfigError(f"validation must be a number of images or a fraction in (0, 1), got {validation!r:.40}")
    if isinstance(validation, numbers.Integral):
        held = int(validation)
    elif 0 < validation < 1:
        held = max(1, round(validation * count))
    else:
        raise ConfigError(f"validation must be a whole number of images or a fraction in (0, 1), got {validation!r}")
    if not 1 <= held < count:
        raise ConfigError(f"validation={validation!r} asks for {held} of the {count} training images; hold out "
                          f"1 to {count - 1} (e.g. validation={max(1, round(VALIDATION_FRACTION * count))})")
    return held


def validation_split(count, validation, labels=None, seed=SPLIT_SEED):
    """``(train, validation)`` integer index arrays into a training set of ``count`` images.

    With ``labels`` (shape (count,)) the split is stratified: every class gives the same share of its images,
    to within one image (each class's images are shuffled and the ones whose rank within their class is
    earliest, relative to the class's size, are held out). Drawn from ``seed`` alone, so every run of one
    dataset watches the same validation images.

    :param int count: training images.
    :param validation: images to hold out, a whole number or a fraction (:func:`validation_count`).
    :param labels: integer labels (tensor or array) or ``None`` for a plain shuffled split.
    :returns: two sorted int64 arrays that together cover ``range(count)`` once.
    """
    held = validation_count(validation, count)
    shuffled = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).numpy()
    if labels is None:
        chosen = shuffled[:held]
    else:
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)[shuffled]
        _, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
        rank = np.empty(count, dtype=np.int64)
        for value in range(len(sizes)):
            members = np.flatnonzero(inverse == value)
            rank[members] = np.arange(len(members))
        # the middle of each image's slot within its class: classes interleave in proportion to their sizes
        position = (rank + 0.5) / sizes[inverse]
        chosen = shuffled[np.argsort(position, kind="stable")[:held]]
    mask = np.zeros(count, dtype=bool)
    mask[chosen] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)
