"""Checks and small helpers that several modules share (one copy of each, so they cannot drift apart)."""

import contextlib
import contextvars
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


#: Memory one model may take while it trains, in bytes: its weights with their gradients and Adam's two running
#: averages (:data:`BYTES_PER_WEIGHT` each), summed over every network of the model, checked before any is built.
MAX_MODEL_BYTES = 8 * 2 ** 30
#: float32 weight, gradient, and Adam's exp_avg and exp_avg_sq
BYTES_PER_WEIGHT = 16

_MODEL_BUDGET = contextvars.ContextVar("pyro_vae_model_budget", default=None)


class BudgetError(ConfigError):
    """A network, or a whole model, too large to build; ``part`` names the network that was to be built last and
    ``largest`` the one with the most weights, so a caller can name its own setting for them."""

    def __init__(self, message, part, largest):
        super().__init__(message)
        self.part, self.largest = part, largest


@contextlib.contextmanager
def model_budget():
    """Every network built inside the block (through :func:`parameter_budget`) counts toward one budget,
    :data:`MAX_MODEL_BYTES`, checked before each is allocated. Nested blocks count toward the outer one.

    :returns: the running tally ``{"weights": total, "parts": {name: weights}}``.
    """
    tally = _MODEL_BUDGET.get()
    if tally is not None:
        yield tally
        return
    tally = {"weights": 0, "values": 0, "parts": {}}
    token = _MODEL_BUDGET.set(tally)
    try:
        yield tally
    finally:
        _MODEL_BUDGET.reset(token)


def _gib(size):
    return f"{size / 2 ** 30:.1f} GiB"


def parameter_budget(who, count, buffers=0):
    """Refuses (:class:`BudgetError`) a network of more than :data:`MAX_PARAMETERS` weights before it is built,
    and, inside :func:`model_budget`, one that would take the model past :data:`MAX_MODEL_BYTES`.

    :param str who: the network's name.
    :param int count: its weights.
    :param int buffers: other float32 values it holds (e.g. the masks of an autoregressive network).
    """
    if count > MAX_PARAMETERS:
        raise BudgetError(f"{who} would have {count} weights, above the limit of {MAX_PARAMETERS} for one network; "
                          f"use smaller hidden widths, channels or latent_dim", who, who)
    tally = _MODEL_BUDGET.get()
    if tally is None:
        return
    tally["weights"] += count
    tally["values"] += buffers
    tally["parts"][who] = tally["parts"].get(who, 0) + count
    needed = BYTES_PER_WEIGHT * tally["weights"] + 4 * tally["values"]
    if needed > MAX_MODEL_BYTES:
        largest = max(tally["parts"], key=tally["parts"].get)
        raise BudgetError(f"the model would have at least {tally['weights']:,} weights, {_gib(needed)} to train with "
                          f"gradients and Adam's state, above the budget of {_gib(MAX_MODEL_BYTES)} "
                          f"(pyro_vae.checks.MAX_MODEL_BYTES), its largest part {largest} having "
                          f"{tally['parts'][largest]:,} weights; use smaller hidden widths", who, largest)


def autoregressive_weights(input_dim, hidden, context_dim=0, param_dims=2):
    """``(weights, mask values)`` of Pyro's (Conditional)AutoRegressiveNN with two hidden layers of width ``hidden``
    and ``param_dims`` outputs per input: counted before it is built (each layer keeps a mask of its weights' size)."""
    if hidden < input_dim:   # Pyro's MADE masks need a hidden unit per input at least
        raise ConfigError(f"the flows' hidden width {hidden} is below latent_dim {input_dim}; use a hidden width of "
                          f"at least {input_dim}")
    sizes = [input_dim + context_dim, hidden, hidden, param_dims * input_dim]
    weights = sum(fan_in * fan_out + fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:]))
    masks = sum(fan_in * fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:]))
    return weights, masks


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
    if device.type != "cuda":
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[device.index if device.index is not None else torch.cuda.current_device()])


def alternating_order(size, index):
    """Autoregressive order of the ``index``-th flow: ``0 .. size-1``, reversed for odd ``index``.

    Alternating makes every coordinate depend on every other one after two flows; a fixed order (rather than
    Pyro's random default) makes construction deterministic, so a rebuilt model equals the saved one even
    before its weights are loaded.
    """
    order = torch.arange(size)
    return order if index % 2 == 0 else order.flip(0)


def chunks(count, size):
    """Slices ``0:size, size:2*size, ...`` covering ``range(count)``, the last one shorter."""
    for start in range(0, count, size):
        yield slice(start, min(count, start + size))


@contextlib.contextmanager
def small_steps(device):
    """One intra-op CPU thread for the block: for loops of many small steps (a few operations on a few
    thousand rows), where more threads only add synchronisation. On two busy CPU cores, 300 refinement steps
    took 81 s with two threads and 11 s with one."""
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
