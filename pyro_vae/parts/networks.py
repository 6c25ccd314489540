"""Encoder and decoder networks: plain ``nn.Module`` s, no Pyro inside.

Contract shared by every encoder and decoder here (and by any user module put in their place):

* an **encoder** maps images ``x`` of shape ``(..., C, H, W)`` to ``(loc, scale)`` of the diagonal Normal
  q(z|x), each of shape ``(..., latent_dim)``, with ``scale > 0`` by construction;
* a **decoder** maps codes ``z`` of shape ``(..., latent_dim)`` to the parameters a likelihood takes,
  of shape ``(..., P * C, H, W)`` where ``P`` is the likelihood's ``params_per_pixel``.

Leading dimensions are arbitrary: importance sampling and multi-particle ELBOs put extra sample
dimensions in front, so nothing here reshapes to ``(-1, 784)``.
"""

import math

import torch
from torch import nn

from ..errors import ConfigError
from ..checks import MAX_CLASSES, MAX_LATENT_DIM, MAX_WIDTH, parameter_budget, positive, positive_int
from ..checks import image_shape as image_shape_of


def widths(hidden, name="hidden", required=False):
    """The hidden widths ``hidden`` as ints, each checked (``required``: at least one layer)."""
    out = [positive_int(f"{name} width", h, MAX_WIDTH) for h in hidden]
    if required and not out:
        raise ConfigError(f"{name} needs at least one hidden layer, got {list(hidden)!r}")
    return out


def concat(a, b):
    """``[a, b]`` along the last dim, after broadcasting the leading (sample, enumeration, batch) dims."""
    batch = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(batch + a.shape[-1:]), b.expand(batch + b.shape[-1:])], dim=-1)


#: the element-wise torch.nn activations a network may be built with, by name (a name keeps a run's config
#: JSON). A closed list: any other torch.nn class named in a config (Module, Upsample, Softmax2d, Flatten)
#: would build, then fail on the first batch or change the shapes the network promises.
ACTIVATIONS = ("CELU", "ELU", "GELU", "Hardshrink", "Hardsigmoid", "Hardswish", "Hardtanh", "LeakyReLU",
               "LogSigmoid", "Mish", "PReLU", "ReLU", "ReLU6", "RReLU", "SELU", "SiLU", "Sigmoid", "Softplus",
               "Softshrink", "Softsign", "Tanh", "Tanhshrink")


def _activation(name):
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {str(name)[:40]!r}; use one of {', '.join(ACTIVATIONS)}")
    return getattr(nn, name)


def mlp(sizes, activation, who):
    parameter_budget(who, sum(fan_in * fan_out + fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:])))
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def _run_batched(net, x, event_dims):
    """Apply ``net`` (which wants one batch dim) to ``x`` with any number of leading dims."""
    batch_shape = x.shape[: x.dim() - event_dims]
    out = net(x.reshape((-1,) + x.shape[x.dim() - event_dims:]))
    return out.reshape(batch_shape + out.shape[1:])


def _check_conv_size(image_shape, who):
    if min(image_shape[1:]) < 4:
        raise ConfigError(f"{who} needs images of at least 4x4 pixels (two stride-2 convolutions), got "
                          f"{image_shape[1]}x{image_shape[2]}; use the MLP networks (--network mlp)")


class MLPEncoder(nn.Module):
    """Fully connected q(z|x) network.

    :param tuple image_shape: ``(C, H, W)`` of one image.
    :param int latent_dim: size of z.
    :param tuple hidden: widths of the hidden layers.
    :param str activation: name of a ``torch.nn`` activation class. SiLU rather than the softplus of
        Pyro's tutorial: on mnist5k it learned faster (test ELBO after 30 epochs: -126 vs -136 nats
        with 512-256 MLPs, -120 vs -124 with one layer of 400; see benchmarks/README.md).
    """

    def __init__(self, image_shape, latent_dim, hidden=(512, 256), activation="SiLU"):
        super().__init__()
        self.image_shape = image_shape_of(image_shape)
        self.latent_dim = positive_int("latent_dim", latent_dim, MAX_LATENT_DIM)
        self.hidden = widths(hidden)
        self.activation = activation
        self.net = mlp([math.prod(self.image_shape), *self.hidden, 2 * self.latent_dim], _activation(activation),
                        "MLPEncoder")

    def config(self):
        return {"hidden": self.hidden, "activation": self.activation}

    def forward(self, x):
        """:param x: images ``(..., C, H, W)``. :returns: ``(loc, scale)``, each ``(..., latent_dim)``."""
        loc, raw_scale = self.net(x.flatten(-3)).chunk(2, dim=-1)
        return loc, positive(raw_scale)


class MLPDecoder(nn.Module):
    """Fully connected p(x|z) network.

    :param tuple image_shape: ``(C, H, W)`` of one image.
    :param int latent_dim: size of z.
    :param tuple hidden: widths of the hidden layers, from z upwards.
    :param int params_per_pixel: how many numbers the likelihood needs per pixel (1 for Bernoulli logits).
    :param str activation: name of a ``torch.nn`` activation class.

    ``config()`` returns the keyword arguments (besides shapes) that rebuild a network; the VAE saves
    them in a run's ``config.json``.
    """

    def __init__(self, image_shape, latent_dim, hidden=(256, 512), params_per_pixel=1, activation="SiLU"):
        super().__init__()
        self.image_shape = image_shape_of(image_shape)
        c, h, w = self.image_shape
        self.out_shape = (params_per_pixel * c, h, w)
        self.hidden = widths(hidden)
        self.activation = activation
        self.net = mlp([positive_int("latent_dim", latent_dim, MAX_LATENT_DIM), *self.hidden,
                        math.prod(self.out_shape)], _activation(activation), "MLPDecoder")

    def config(self):
        return {"hidden": self.hidden, "activation": self.activation}

    def forward(self, z):
        """:param z: codes ``(..., latent_dim)``. :returns: likelihood parameters ``(..., P*C, H, W)``."""
        return self.net(z).unflatten(-1, self.out_shape)


def _conv_sizes(who, image_shape, latent_dim, channels, hidden):
    """``(image_shape, latent_dim, channels, hidden)`` of a conv network, each checked."""
    image_shape = image_shape_of(image_shape)
    _check_conv_size(image_shape, who)
    return (image_shape, positive_int("latent_dim", latent_dim, MAX_LATENT_DIM),
            positive_int("channels", channels, MAX_WIDTH), positive_int("hidden", hidden, MAX_WIDTH))


class ConvEncoder(nn.Module):
    """Convolutional q(z|x) network: two stride-2 convolutions, then a linear layer.

    :param tuple image_shape: ``(C, H, W)``, H and W at least 4 (each convolution halves them, rounding
        down); any size works, the linear layer takes whatever the convolutions leave.
    :param int latent_dim: size of z.
    :param int channels: channels of the first convolution (the second has twice as many).
    :param int hidden: width of the linear layer.
    """

    def __init__(self, image_shape, latent_dim, channels=32, hidden=256):
        super().__init__()
        self.image_shape, latent_dim, channels, hidden = _conv_sizes("ConvEncoder", image_shape, latent_dim, channels,
                                                                     hidden)
        c, h, w = self.image_shape
        parameter_budget("ConvEncoder", 16 * (c * channels + 2 * channels * channels) + 3 * channels
                         + (2 * channels * (h // 4) * (w // 4) + 1) * hidden + (hidden + 1) * 2 * latent_dim)
        self.conv = nn.Sequential(
            nn.Conv2d(c, channels, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, c, h, w)).shape[-1]
        self.head = nn.Sequential(nn.Linear(flat, hidden), nn.SiLU(), nn.Linear(hidden, 2 * int(latent_dim)))
        self._config = {"channels": int(channels), "hidden": int(hidden)}

    def config(self):
        return dict(self._config)

    def forward(self, x):
        """:param x: images ``(..., C, H, W)``. :returns: ``(loc, scale)``, each ``(..., latent_dim)``."""
        loc, raw_scale = self.head(_run_batched(self.conv, x, 3)).chunk(2, dim=-1)
        return loc, positive(raw_scale)


class ConvDecoder(nn.Module):
    """Convolutional p(x|z) network, the mirror image of :class:`ConvEncoder`.

    :param tuple image_shape: ``(C, H, W)`` of one image.
    :param int latent_dim: size of z.
    :param int params_per_pixel: numbers per pixel the likelihood needs.
    """

    def __init__(self, image_shape, latent_dim, params_per_pixel=1, channels=32, hidden=256):
        super().__init__()
        self.image_shape, latent_dim, channels, hidden = _conv_sizes("ConvDecoder", image_shape, latent_dim, channels,
                                                                     hidden)
        c, h, w = self.image_shape
        self.out_shape = (params_per_pixel * c, h, w)
        self.start = (2 * channels, -(-h // 4), -(-w // 4))
        parameter_budget("ConvDecoder", (latent_dim + 1) * hidden + (hidden + 1) * math.prod(self.start)
                         + 16 * (2 * channels * channels + channels * self.out_shape[0]) + channels + self.out_shape[0])
        self.head = nn.Sequential(nn.Linear(int(latent_dim), hidden), nn.SiLU(),
                                  nn.Linear(hidden, math.prod(self.start)), nn.SiLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(channels, params_per_pixel * c, 4, stride=2, padding=1),
        )
        self._config = {"channels": int(channels), "hidden": int(hidden)}

    def config(self):
        return dict(self._config)

    def forward(self, z):
        """:param z: codes ``(..., latent_dim)``. :returns: likelihood parameters ``(..., P*C, H, W)``."""
        h = self.head(z).unflatten(-1, self.start)
        out = _run_batched(self.deconv, h, 3)
        # the transposed convolutions produce a multiple of 4; crop back to the image size
        return out[..., : self.out_shape[1], : self.out_shape[2]]


# --- networks for models with labels and for classifying images ----------------------------------


class LabelledMLPEncoder(nn.Module):
    """Network of q(z|x, y): an MLP on the pixels of ``x`` concatenated with the one-hot label ``y``.

    :param tuple image_shape: ``(C, H, W)`` of one image.
    :param int latent_dim: size of z.
    :param int num_classes: size of the one-hot label.
    :param tuple hidden: widths of the hidden layers (at least one).
    """

    def __init__(self, image_shape, latent_dim, num_classes, hidden=(512, 256)):
        super().__init__()
        self.image_shape = image_shape_of(image_shape)
        self.hidden = widths(hidden, "LabelledMLPEncoder", required=True)
        latent_dim = positive_int("latent_dim", latent_dim, MAX_LATENT_DIM)
        # The first layer on [x, y] is W [x; y] = W_x x + W_y y. Keeping the two halves apart means that
        # when y is enumerated over K classes (M2), the image half is computed once instead of K times.
        num_classes = positive_int("num_classes", num_classes, MAX_CLASSES)
        parameter_budget("LabelledMLPEncoder", (math.prod(self.image_shape) + 1 + num_classes) * self.hidden[0])
        self.x_in = nn.Linear(math.prod(self.image_shape), self.hidden[0])
        self.y_in = nn.Linear(num_classes, self.hidden[0], bias=False)
        self.rest = nn.Sequential(nn.Softplus(), mlp([*self.hidden, 2 * latent_dim], nn.Softplus,
                                                                      "LabelledMLPEncoder"))

    def config(self):
        return {"hidden": self.hidden}

    def forward(self, x, y):
        """:param x: images ``(..., C, H, W)``. :param y: one-hot labels ``(..., num_classes)``, leading dims
        broadcastable with those of ``x``. :returns: ``(loc, scale)``, each ``(broadcast..., latent_dim)``."""
        loc, raw_scale = self.rest(self.x_in(x.flatten(-3)) + self.y_in(y)).chunk(2, dim=-1)
        return loc, positive(raw_scale)


class MLPClassifier(nn.Module):
    """Network of q(y|x): an MLP from pixels to class logits.

    :param tuple image_shape: ``(C, H, W)`` of one image.
    :param int num_classes: number of classes K.
    :param tuple hidden: widths of the hidden layers.
    """

    def __init__(self, image_shape, num_classes, hidden=(512,)):
        super().__init__()
        self.hidden = widths(hidden, "MLPClassifier", required=True)
        self.net = mlp([math.prod(image_shape_of(image_shape)), *self.hidden,
                                         positive_int("num_classes", num_classes, MAX_CLASSES)], nn.Softplus,
                                         "MLPClassifier")

    def forward(self, x):
        """:param x: images ``(..., C, H, W)``. :returns: logits ``(..., num_classes)``."""
        return self.net(x.flatten(-3))


class GaussianMLP(nn.Module):
    """An MLP mapping a code ``(..., in_dim)`` to the ``(loc, scale)`` of a diagonal Normal over ``out_dim``.

    Used for the conditionals p(z1|z2) and q(z2|z1) of :class:`HierarchicalVAE`.
    """

    def __init__(self, in_dim, out_dim, hidden=(256,)):
        super().__init__()
        self.net = mlp([positive_int("in_dim", in_dim, MAX_LATENT_DIM), *widths(hidden, "GaussianMLP", required=True),
                                         2 * positive_int("out_dim", out_dim, MAX_LATENT_DIM)], nn.Softplus,
                                         "GaussianMLP")

    def forward(self, h):
        """:param h: ``(..., in_dim)``. :returns: ``(loc, scale)``, each ``(..., out_dim)``, scale > 0."""
        loc, raw_scale = self.net(h).chunk(2, dim=-1)
        return loc, positive(raw_scale)
