"""Likelihoods p(x|z): modules that turn decoder output into a distribution over one image.

A likelihood is called on the decoder's output, of shape ``(..., P * C, H, W)`` with
``P = params_per_pixel``, and returns a Pyro distribution whose event shape is one image ``(C, H, W)``
(``.to_event(3)``). Swapping it is passing another object::

    VAE(likelihood=ContinuousBernoulli())

Likelihoods with two numbers per pixel (``params_per_pixel == 2``: per-pixel Normal / Laplace,
:class:`DiscretizedLogistic`, :class:`Beta`) read the decoder's channel dimension as two halves: the
first ``C`` channels are the first parameter (e.g. the location), the next ``C`` the second.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

import pyro.distributions as dist
from pyro.distributions import constraints

from ..errors import ConfigError, DataError
from ..checks import MIN_SCALE, positive


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


def _split_channels(params, who):
    """Two ``(..., C, H, W)`` halves of decoder output ``(..., 2C, H, W)``."""
    channels = params.shape[-3]
    if channels % 2:
        raise ConfigError(f"{who} needs 2*C decoder channels per image (C for each of its two parameters) but "
                          f"the decoder gave {channels}; build the decoder with params_per_pixel=2")
    return params.split(channels // 2, dim=-3)


class _LocationScale(Likelihood):
    """Shared by :class:`Normal` and :class:`Laplace`: location from the decoder, scale fixed, learned
    (one scalar) or per pixel (from the decoder)."""

    #: the Pyro distribution family, ``family(loc, scale)``
    family = None

    def __init__(self, scale, init_scale):
        super().__init__()
        name = type(self).__name__
        self.per_pixel = scale == "per-pixel"
        self.learned = scale == "learned"
        if not (self.learned or self.per_pixel) and not (
                isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0):
            raise ConfigError(f"{name} scale must be a positive number, 'learned' or 'per-pixel', got {scale!r}")
        if not (isinstance(init_scale, (int, float)) and init_scale > 0):
            raise ConfigError(f"{name} init_scale must be a positive number, got {init_scale!r}")
        value = float(init_scale if (self.learned or self.per_pixel) else scale)
        self._value = value
        if self.per_pixel:
            # an instance attribute: the VAE builds its decoder with this many outputs per pixel
            self.params_per_pixel = 2
        elif self.learned:
            # inverse of softplus(raw) + MIN_SCALE, so the learned scale starts at `value`
            start = max(value - MIN_SCALE, 1e-6)
            self.raw_scale = nn.Parameter(torch.tensor(start + math.log(-math.expm1(-start))))
        else:
            self.register_buffer("fixed_scale", torch.tensor(value))

    @property
    def scale(self):
        """The pixel scale shared by all pixels (a scalar tensor, > 0), or ``None`` when it is per pixel."""
        if self.per_pixel:
            return None
        return positive(self.raw_scale) if self.learned else self.fixed_scale

    def _loc_scale(self, params):
        if self.per_pixel:
            loc, raw_scale = _split_channels(params, f"{type(self).__name__}(scale='per-pixel')")
            return loc, positive(raw_scale)
        return params, self.scale

    def forward(self, params):
        """:param params: decoder output ``(..., C, H, W)``, or ``(..., 2C, H, W)`` (locations, then raw
        scales, ``scale = softplus(raw) + MIN_SCALE``) when the scale is per pixel."""
        return self.family(*self._loc_scale(params), validate_args=False).to_event(3)

    def mean(self, params):
        # the true mean, the location, even outside [0, 1]: pictures clamp when they are drawn
        # (plots.image_grid), while anything computed from the mean must see the model's own value
        return self._loc_scale(params)[0]

    def config(self):
        if self.per_pixel:
            return {"scale": "per-pixel"}
        return {"scale": "learned", "init_scale": self._value} if self.learned else {"scale": self._value}


class Normal(_LocationScale):
    """Gaussian pixels N(x | loc, scale^2), loc from the decoder.

    :param scale: a positive float for one fixed scale; ``"learned"`` for one scale learned by SVI;
        ``"per-pixel"`` for a scale per pixel and image from the decoder (``params_per_pixel = 2``).
    :param float init_scale: starting value of a ``"learned"`` scale.
    """

    family = dist.Normal

    def __init__(self, scale=0.1, init_scale=0.1):
        super().__init__(scale, init_scale)


class Laplace(_LocationScale):
    """Laplace pixels, density exp(-|x - loc| / scale) / (2 scale): heavier tails than :class:`Normal`,
    so the reconstruction term is an L1 rather than an L2 error.

    :param scale: ``"per-pixel"`` (default: a scale per pixel from the decoder, ``params_per_pixel = 2``),
        ``"learned"`` (one learned scalar) or a positive float (fixed).
    :param float init_scale: starting value of a ``"learned"`` scale.
    """

    family = dist.Laplace

    def __init__(self, scale="per-pixel", init_scale=0.1):
        super().__init__(scale, init_scale)


class _OnGrid(constraints.Constraint):
    """Values k / (num_bins - 1), k = 0 .. num_bins - 1."""

    is_discrete = True

    def __init__(self, num_bins):
        self.num_bins = num_bins
        super().__init__()

    def check(self, value):
        scaled = value * (self.num_bins - 1)
        # float32 stores k/255 inexactly; 1e-3 of a bin is far below the spacing of the grid
        return (value >= 0) & (value <= 1) & ((scaled - scaled.round()).abs() < 1e-3)


class DiscretizedLogisticDistribution(dist.TorchDistribution):
    r"""Pixels quantised to ``num_bins`` levels k / (num_bins - 1) of a logistic (Salimans et al. 2017).

    P(x = k/(B-1)) = F(x + h) - F(x - h), with h = 1 / (2 (B-1)) and F the logistic CDF with
    location ``loc`` and scale ``exp(log_scale)``; the first bin takes the whole left tail (F(h)), the
    last the whole right tail (1 - F(1 - h)), so the B masses sum to 1. Each term is computed in log
    space with log-sigmoids, using sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(b - a)),
    which loses no precision in either tail.

    :param loc: logistic location, any shape (one entry per pixel).
    :param log_scale: log of the logistic scale, broadcastable with ``loc``; clamped to
        ``[MIN_LOG_SCALE, MAX_LOG_SCALE]`` so neither the bin width in units of the scale overflows
        nor the mass of a bin underflows to 0.
    :param int num_bins: number of levels (256 for 8-bit images).
    """

    arg_constraints = {"loc": constraints.real, "log_scale": constraints.real}
    has_rsample = False
    #: a scale ~1/4 of an 8-bit bin already puts almost all mass on one level (PixelCNN++ uses -7 too)
    MIN_LOG_SCALE = -7.0
    MAX_LOG_SCALE = 7.0

    def __init__(self, loc, log_scale, num_bins=256, validate_args=None):
        self.loc, log_scale = torch.broadcast_tensors(loc, log_scale)
        self.log_scale = log_scale.clamp(self.MIN_LOG_SCALE, self.MAX_LOG_SCALE)
        self.num_bins = int(num_bins)
        super().__init__(self.loc.shape, torch.Size(), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return _OnGrid(self.num_bins)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiscretizedLogisticDistribution, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape)
        new.log_scale = self.log_scale.expand(batch_shape)
        new.num_bins = self.num_bins
        super(DiscretizedLogisticDistribution, new).__init__(batch_shape, torch.Size(), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        half_bin = 0.5 / (self.num_bins - 1)
        inv_scale = torch.exp(-self.log_scale)
        upper = inv_scale * (value - self.loc + half_bin)        # standardised bin edges
        lower = inv_scale * (value - self.loc - half_bin)
        left_tail = F.logsigmoid(upper)                          # log F(x + h)
        right_tail = F.logsigmoid(-lower)                        # log (1 - F(x - h))
        # upper - lower = inv_scale / (B - 1) exactly, so it is not formed by cancellation
        interior = left_tail + right_tail + torch.log(-torch.expm1(-inv_scale * (2 * half_bin)))
        return torch.where(value < half_bin, left_tail, torch.where(value > 1 - half_bin, right_tail, interior))

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            uniform = dist.Uniform(self.loc.new_zeros(()), self.loc.new_ones(())).expand(shape)
            logistic = dist.TransformedDistribution(uniform, [dist.transforms.SigmoidTransform().inv,
                                                              dist.transforms.AffineTransform(self.loc,
                                                                                              self.log_scale.exp())])
            levels = self.num_bins - 1
            # clamping first gives the edge bins their tails, matching log_prob
            return torch.round(logistic.sample().clamp(0, 1) * levels) / levels

    @property
    def mean(self):
        # E[X] = sum_{k=1}^{B-1} P(X >= k/(B-1)) / (B-1), one threshold at a time: memory stays one image
        levels = self.num_bins - 1
        inv_scale = torch.exp(-self.log_scale)
        total = torch.zeros_like(self.loc)
        for k in range(1, self.num_bins):
            total = total + torch.sigmoid(inv_scale * (self.loc - (k - 0.5) / levels))
        return total / levels


def _off_grid(images, levels):
    scaled = images * levels
    return (scaled - scaled.round()).abs() > 1e-3


class DiscretizedLogistic(Likelihood):
    """8-bit pixels k/255 from a discretized logistic per pixel (PixelCNN++, Salimans et al. 2017).

    The decoder gives a location and a log-scale per pixel (``params_per_pixel = 2``: C channels of
    locations, then C of log-scales); see :class:`DiscretizedLogisticDistribution` for the bins.

    log p(x|z) is a log *probability* (not a density), so ``-log p(x)`` in nats turned into bits by
    :func:`pyro_vae.evaluate.bits_per_dim` is the standard discrete bits/dim of 8-bit images (the
    number reported for PixelCNN and friends; rescaling pixels to [0, 1] does not change a probability).

    :meth:`check_data` accepts only pixels on the grid k/255 (binarized data, 0/1, are on it).
    """

    params_per_pixel = 2
    num_bins = 256

    def forward(self, params):
        """:param params: decoder output ``(..., 2C, H, W)``: locations, then log-scales."""
        loc, log_scale = _split_channels(params, "DiscretizedLogistic")
        return DiscretizedLogisticDistribution(loc, log_scale, self.num_bins, validate_args=False).to_event(3)

    def check_data(self, data):
        _check_unit_interval(data, "DiscretizedLogistic")
        if data.is_binary:
            return
        off = _off_grid(data.images, self.num_bins - 1)
        if off.any():
            example = float(data.images[off][0])
            raise DataError(f"DiscretizedLogistic needs 8-bit pixels k/255 but {data.name!r} has values off that "
                            f"grid (e.g. {example:g}); use 8-bit data with binarize='none' (e.g. round(x*255)/255) "
                            f"or a continuous likelihood such as ContinuousBernoulli")


class Beta(Likelihood):
    """Beta pixels Beta(x | a, b), both concentrations per pixel from the decoder (``params_per_pixel = 2``:
    C channels for a, then C for b, each ``softplus(raw) + MIN_SCALE``).

    A density on the open interval (0, 1): pixels exactly 0 or 1 have density 0 or infinity there, so
    :meth:`check_data` refuses them.
    """

    params_per_pixel = 2

    def _concentrations(self, params):
        raw1, raw0 = _split_channels(params, "Beta")
        return positive(raw1), positive(raw0)

    def forward(self, params):
        """:param params: decoder output ``(..., 2C, H, W)``: raw a, then raw b."""
        return dist.Beta(*self._concentrations(params), validate_args=False).to_event(3)

    def mean(self, params):
        a, b = self._concentrations(params)
        return a / (a + b)

    def check_data(self, data):
        _check_unit_interval(data, "Beta")
        if data.binarize != "none":
            raise DataError(f"the Beta likelihood needs grey levels strictly inside (0, 1) but {data.name!r} is "
                            f"binarized ({data.binarize}); use binarize='none', or Bernoulli for binary data")
        edges = int(((data.images == 0) | (data.images == 1)).sum())
        if edges:
            raise DataError(f"the Beta likelihood needs pixels strictly inside (0, 1) but {data.name!r} has {edges} "
                            f"pixels equal to 0 or 1; squeeze the data, e.g. x * (1 - 2e-3) + 1e-3")
