"""Labels of a dataset: keep a class-balanced few (semi-supervised training) or drop them."""

import copy

import torch

from ..errors import DataError


def keep_labels(dataset, num_labelled, seed=0):
    """A copy of ``dataset`` in which only ``num_labelled`` images keep their label; the rest get -1.

    The kept labels are class-balanced: ``num_labelled // K`` per class, the remainder spread over
    randomly chosen classes. Images and binarization are shared with ``dataset`` (not copied).

    :param dataset: an :class:`~pyro_vae.data.ImageDataset` with labels ``(N,)``.
    :param int num_labelled: how many labels to keep (0 .. N).
    :param int seed: which images keep theirs.
    :raises DataError: no labels, or a class with fewer images than its share.
    """
    if dataset.labels is None:
        raise DataError(f"{dataset.name!r} has no labels to keep")
    if isinstance(num_labelled, bool) or int(num_labelled) != num_labelled or not 0 <= num_labelled <= len(dataset):
        raise DataError(f"num_labelled must be a whole number in 0..{len(dataset)}, got {num_labelled!r}")
    labels = dataset.labels.cpu()
    classes = torch.unique(labels[labels >= 0])
    generator = torch.Generator().manual_seed(int(seed))
    share = torch.full((len(classes),), int(num_labelled) // len(classes))
    share[torch.randperm(len(classes), generator=generator)[: int(num_labelled) % len(classes)]] += 1
    kept = []
    for c, count in zip(classes.tolist(), share.tolist()):
        members = (labels == c).nonzero().flatten()
        if count > len(members):
            raise DataError(f"class {c} of {dataset.name!r} has {len(members)} labelled images, fewer than its "
                            f"share {count} of {num_labelled}; keep fewer labels")
        kept.append(members[torch.randperm(len(members), generator=generator)[:count]])
    kept = torch.cat(kept)
    partial = torch.full_like(labels, -1)
    partial[kept] = labels[kept]
    out = copy.copy(dataset)
    out.labels = partial.to(dataset.labels.device)
    return out


def without_labels(dataset):
    """A copy of ``dataset`` with ``labels = None`` (images shared). Scoring :class:`M2` does not need it:
    :mod:`~pyro_vae.evaluate` already sums out M2's labels, so its scores are of log p(x) either way."""
    out = copy.copy(dataset)
    out.labels = None
    return out
