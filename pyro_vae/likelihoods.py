"""Likelihoods p(x|z): modules that turn decoder output into a distribution over one image.

A likelihood is called on the decoder's output, of shape ``(..., P * C, H, W)`` with
``P = params_per_pixel``, and returns a Pyro distribution whose event shape is one image ``(C, H, W)``
(``.to_event(3)``). Swapping it is passing another object::

    VAE(likelihood=ContinuousBernoulli())
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

import pyro.distributions as dist

from .errors import ConfigError, DataError

#: floor on learned scales: keeps log-densities finite when a scale collapses
MIN_SCALE = 1e-4


class Likelihood(nn.Module):
    """Base class. Subclasses set :attr:`params_per_pixel` and implement :meth:`forward`."""

    #: numbers the decoder must output per pixel
    params_per_pixel = 1

    def forward(self, params):
        raise NotImplementedError

    def mean(self, params):
        """Mean image of p(x|z), ``(..., C, H, W)``, for pictures."""
        return self(params).mean

    def check_data(self, data):
        """Raise :class:`DataError` if ``data`` (an :class:`~pyro_vae.data.ImageDataset`) is outside the support."""

    def config(self):
        """Keyword arguments that rebuild this likelihood (saved in a run's ``config.json``)."""
        return {}


def _check_unit_interval(data, who):
    low, high = float(data.images.min()), float(data.images.max())
    if low < 0 or high > 1:
        raise DataError(f"{who} needs pixels in [0, 1] but {data.name!r} has values in [{low:g}, {high:g}]; "
                        f"rescale the images (e.g. divide by 255)")


class Bernoulli(Likelihood):
    """Independent Bernoulli pixels parameterised by logits: the binarized-MNIST likelihood.

    Only binary data have a Bernoulli likelihood; on grey levels the number it returns is not a log
    density, so :meth:`check_data` refuses them.
    """

    def forward(self, params):
        return dist.Bernoulli(logits=params, validate_args=False).to_event(3)

    def mean(self, params):
        return torch.sigmoid(params)

    def check_data(self, data):
        if not data.is_binary:
            raise DataError(f"the Bernoulli likelihood needs binary pixels but {data.name!r} has grey levels; "
                            f"binarize it (binarize='dynamic' or 'static') or use ContinuousBernoulli")


class ContinuousBernoulli(Likelihood):
    """The continuous Bernoulli of Loaiza-Ganem & Cunningham (2019): a proper density on [0, 1] pixels."""

    def forward(self, params):
        # clamp keeps the normalising constant's series expansion away from float overflow
        return dist.ContinuousBernoulli(logits=params.clamp(-15, 15), validate_args=False).to_event(3)

    def check_data(self, data):
        _check_unit_interval(data, "ContinuousBernoulli")


class Normal(Likelihood):
    """Gaussian pixels N(x | decoder(z), scale^2) with one scale for every pixel.

    :param scale: a positive float for a fixed scale, or ``"learned"`` for a scale learned by SVI.
    :param float init_scale: starting value of a learned scale.
    """

    def __init__(self, scale=0.1, init_scale=0.1):
        super().__init__()
        self.learned = scale == "learned"
        if not self.learned and not (isinstance(scale, (int, float)) and scale > 0):
            raise ConfigError(f"Normal scale must be a positive number or 'learned', got {scale!r}")
        value = float(init_scale if self.learned else scale)
        self._value = value
        if self.learned:
            # inverse of softplus(raw) + MIN_SCALE, so the learned scale starts at `value`
            start = max(value - MIN_SCALE, 1e-6)
            self.raw_scale = nn.Parameter(torch.tensor(start + math.log(-math.expm1(-start))))
        else:
            self.register_buffer("fixed_scale", torch.tensor(value))

    @property
    def scale(self):
        """The pixel standard deviation (a scalar tensor, > 0 by construction)."""
        return F.softplus(self.raw_scale) + MIN_SCALE if self.learned else self.fixed_scale

    def forward(self, params):
        return dist.Normal(params, self.scale, validate_args=False).to_event(3)

    def mean(self, params):
        return params.clamp(0, 1)

    def config(self):
        return {"scale": "learned", "init_scale": self._value} if self.learned else {"scale": self._value}
