"""The fixed train/test splits of data that come without one (the bundled datasets, image folders, arrays).

The split must not move with the user's seed, otherwise test scores of runs with different seeds would be
measured on different test sets: it is drawn from :data:`SPLIT_SEED` alone.
"""

import numpy as np
import torch

from ..errors import DataError

__all__ = ["SPLIT_SEED", "TEST_FRACTION", "fixed_split", "take", "train_count"]

#: seed of every fixed split
SPLIT_SEED = 0
#: share of a user's images or array held out for testing when they come without a train/test split
TEST_FRACTION = 0.1


def fixed_split(count, train_count):
    """``(train, test)`` integer index arrays: a permutation of ``range(count)`` drawn from :data:`SPLIT_SEED`,
    cut after ``train_count``."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(SPLIT_SEED)).numpy()
    return order[:train_count], order[train_count:]


def take(values, index):
    """``values`` (a list or an array, or None) at the integer positions ``index``."""
    if values is None or isinstance(values, np.ndarray):
        return None if values is None else values[index]
    return [values[i] for i in index]


def train_count(count, what):
    """Training images of a fixed split of ``count``: about 90%, leaving at least one test image.

    :raises DataError: if ``count < 2`` (``what`` names the data in the message).
    """
    if count < 2:
        raise DataError(f"{what} holds {count} image(s); a train/test split needs at least 2")
    return count - max(1, round(count * TEST_FRACTION))
