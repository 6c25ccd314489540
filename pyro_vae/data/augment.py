"""Data augmentation for training batches: random translations of each image by a few pixels.

On small training sets (mnist5k's 3,600 training digits) the default VAE's validation ELBO peaks before
epoch 100 and then falls; moving every training image by up to ``shift`` pixels in each direction, freshly
for every batch, shows it more digits than it has. What it buys is measured in benchmarks/README.md
("Quality on small data", the exploratory runs).
"""

import torch
from torch.nn import functional as F

from ..checks import positive_int

__all__ = ["MAX_SHIFT", "check_shift", "random_shifts"]

#: the largest shift accepted: past a quarter of a 28-pixel image the digit can leave the frame
MAX_SHIFT = 7


def check_shift(shift, argument="shift"):
    """``shift`` as an int in ``[0, MAX_SHIFT]``; :class:`~pyro_vae.errors.ConfigError` naming ``argument``."""
    if shift == 0 and not isinstance(shift, bool):
        return 0
    return positive_int(argument, shift, MAX_SHIFT)


def random_shifts(x, shift, generator=None):
    """Translate every image of ``x`` by its own random offset of at most ``shift`` pixels per axis.

    The offsets ``(dy, dx)`` are drawn uniformly from ``{-shift, ..., shift}`` with ``generator`` (``None``:
    the global torch RNG of ``x``'s device, so a seeded run is reproducible); the border that moves in repeats
    the edge pixels (zeros for MNIST's black background).

    :param x: images ``(B, C, H, W)``. :param int shift: the largest offset, ``0`` returns ``x`` itself.
    :returns: shifted images, ``(B, C, H, W)``, same dtype and device.
    """
    if shift == 0:
        return x
    batch, _, height, width = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
    offsets = torch.randint(0, 2 * shift + 1, (2, batch), device=x.device, generator=generator)
    rows = offsets[0][:, None] + torch.arange(height, device=x.device)   # (B, H)
    cols = offsets[1][:, None] + torch.arange(width, device=x.device)    # (B, W)
    images = torch.arange(batch, device=x.device)[:, None, None]
    # (B, H+2s, W+2s, C) indexed by (B, 1, 1), (B, H, 1), (B, 1, W) -> (B, H, W, C)
    moved = padded.permute(0, 2, 3, 1)[images, rows[:, :, None], cols[:, None, :]]
    return moved.permute(0, 3, 1, 2).contiguous()
