"""Checks and small helpers that several modules share (one copy of each, so they cannot drift apart)."""

import math
import numbers

import torch
import torch.nn.functional as F

from .errors import ConfigError

#: Floor on every scale a network or likelihood learns: keeps log-densities finite when a scale collapses.
MIN_SCALE = 1e-4

#: Upper bounds on sizes, so a typo (``--latent-dim 100000000``) is a one-line error instead of an attempt
#: to allocate tens of gigabytes. Each is far above anything these models are used with.
MAX_LATENT_DIM = 4096
MAX_WIDTH = 65536
MAX_COMPONENTS = 10000      # mixture components, pseudo-inputs, flows
MAX_PARTICLES = 10000       # samples per datapoint in a training objective
MAX_IMAGES = 10000          # images drawn in one picture or one `pyro-vae sample`
MAX_CLASSES = 10000
MAX_VALUES_PER_IMAGE = 2 ** 26   # C * H * W of one image
MAX_PARAMETERS = 2 ** 30         # weights of one network (4 GiB in float32)


def positive_int(name, value, limit=None):
    """``value`` as an ``int`` if it is an integer from 1 to ``limit``, else :class:`ConfigError`.

    Floats (``2.7``, even ``2.0``) and booleans are refused rather than truncated or read as 1.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if limit is not None and value > limit:
        raise ConfigError(f"{name} is {int(value)}, above the limit of {limit}; use a smaller value")
    return int(value)


def image_shape(value):
    """``(C, H, W)`` as a tuple of ints, each a positive whole number, else :class:`ConfigError`."""
    try:
        shape = tuple(value)
    except TypeError:
        shape = None
    if shape is None or len(shape) != 3:
        raise ConfigError(f"image_shape must be three positive sizes (C, H, W), got {value!r:.80}")
    shape = tuple(positive_int("each image_shape size", s, MAX_WIDTH) for s in shape)
    if math.prod(shape) > MAX_VALUES_PER_IMAGE:
        raise ConfigError(f"image_shape {shape} holds {math.prod(shape)} values per image, above the limit of "
                          f"{MAX_VALUES_PER_IMAGE}; use smaller images")
    return shape


def parameter_budget(who, count):
    """Refuses (:class:`ConfigError`) a network of more than :data:`MAX_PARAMETERS` weights before it is built."""
    if count > MAX_PARAMETERS:
        raise ConfigError(f"{who} would have {count} weights, above the limit of {MAX_PARAMETERS}; use smaller "
                          f"hidden widths, channels or latent_dim")


def positive_number(name, value):
    """``value`` as a ``float`` if it is finite and positive, else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def positive(raw):
    """A positive scale from an unconstrained network output: ``softplus(raw) + MIN_SCALE`` (softplus rather
    than ``exp``, which overflows for large outputs and lets NaNs follow)."""
    return F.softplus(raw) + MIN_SCALE


def forked_rng(device):
    """A block whose random draws (CPU, and ``device`` if it is a GPU) leave the caller's streams as they were."""
    device = torch.device(device)
    return torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])


def alternating_order(size, index):
    """Autoregressive order of the ``index``-th flow: ``0 .. size-1``, reversed for odd ``index``.

    Alternating makes every coordinate depend on every other one after two flows; a fixed order (rather than
    Pyro's random default) makes construction deterministic, so a rebuilt model equals the saved one even
    before its weights are loaded.
    """
    order = torch.arange(size)
    return order if index % 2 == 0 else order.flip(0)
