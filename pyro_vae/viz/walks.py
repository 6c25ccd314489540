"""Walks through a model's latent space, as tensors: interpolations, traversals and the 2-D manifold's grid.

The pictures (:mod:`pyro_vae.viz.figures`) and the explorer page (:mod:`pyro_vae.viz.explorer`) draw what these
functions compute, so both show the same codes, the same labels and the same spreads. Nothing here needs
matplotlib.

They read the model interface that :class:`~pyro_vae.models.vae.VAE` declares (and
:class:`~pyro_vae.models.wrapped.Wrapped` copies): interpolations and traversals move along the *top* latent
variable (``top_dim``, ``top_sites``, ``top_codes``, ``decode_top``: z for the one-layer models, z2 for
:class:`~pyro_vae.extended.HierarchicalVAE`), spread by the model's own prior (``trace_prior``); labels reach
the model only when its ``label_role`` uses them, are checked against ``num_classes`` and, when unknown, come
from ``classify`` (for models whose ``classifies`` is true).
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import numpy as np
import torch

from ..checks import MAX_IMAGES, forked_rng, positive_int
from ..errors import ConfigError, DataError
from ..models.vae import VAE, uses_labels

__all__ = [
    "seeded", "top_dim", "top_sites", "top_name", "top_codes", "decode_top", "image_batch", "checked_labels",
    "classified", "encode_means", "fractions", "perpendicular", "interpolate_codes", "Interpolation",
    "interpolation_frames", "SitesError", "TopPrior", "standard_coordinates", "prior_draws", "top_prior",
    "prior_quantiles", "manifold_codes", "activity", "check_dims", "Traversal", "traversal_frames", "pair",
    "data_parts",
]

# Encoding a whole test set at once can exhaust GPU memory for large images.
ENCODE_BATCH = 512
# Traversals show at most this many latent dimensions (rows) when they choose the dimensions themselves.
MAX_TRAVERSAL_ROWS = 10
# Activity (variance of the posterior means) is measured on at most this many images: enough to rank
# dimensions, and cheap even for a conditional VAE that has to classify every unlabelled image.
ACTIVITY_IMAGES = 1000
# Ancestral draws of the top code from the model's own prior (its standard deviations and quantiles; about 1.5%
# standard error for a standard deviation, finer than a picture shows), made in chunks of PRIOR_CHUNK images:
# each runs the whole model, decoder included, so the chunk bounds the memory of a convolutional decoder.
PRIOR_DRAWS = 5000
PRIOR_CHUNK = 1000
# The 2-D manifold's grid is made of quantiles, which need more draws than a standard deviation does.
MANIFOLD_DRAWS = 20000


@contextlib.contextmanager
def seeded(vae, seed: int = 0):
    """No autograd, and random draws (a conditional VAE's importance-sampled classifier, draws from a prior)
    from a fixed seed on a forked stream (CPU, and the model's GPU if it has one): pictures are reproducible and
    the caller's random state is untouched."""
    with torch.no_grad(), forked_rng(vae.device):
        torch.manual_seed(seed)
        yield


# --- the top code --------------------------------------------------------------------------------


def top_dim(vae) -> int:
    """Size of the top code, the one interpolations and traversals move (:attr:`VAE.top_dim`)."""
    return int(vae.top_dim)


def top_sites(vae) -> tuple:
    """The latent sites whose values, concatenated in this order, make the top code (:attr:`VAE.top_sites`;
    ``None`` there means its ``code_site`` alone).

    :raises ConfigError: ``top_sites`` that is not a site name or a non-empty sequence of them.
    """
    sites = vae.top_sites
    if sites is None:
        return (vae.code_site,)
    sites = (sites,) if isinstance(sites, str) else tuple(sites)
    if not sites or not all(isinstance(s, str) for s in sites):
        raise ConfigError(f"{type(vae).__name__}.top_sites must name latent sites (a tuple of strings), got "
                          f"{sites!r:.80}")
    return sites


def top_name(vae) -> str:
    """How pictures name the top latent: its site (z, or z2 in a two-layer hierarchy), or its sites in
    parentheses when the top code joins several."""
    sites = top_sites(vae)
    return sites[0] if len(sites) == 1 else f"({', '.join(sites)})"


def top_codes(vae, x, y=None) -> torch.Tensor:
    """Top posterior means ``(N, top_dim)`` of images ``x`` ``(N, C, H, W)``; ``y`` ``(N,)`` reaches only models
    that use labels (``None`` or -1 entries: the model classifies those images)."""
    return vae.top_codes(x, y) if uses_labels(vae) else vae.top_codes(x)


def decode_top(vae, z, y=None) -> torch.Tensor:
    """Mean images ``(..., C, H, W)`` of top codes ``z`` ``(..., top_dim)``, under labels ``y`` (broadcast
    against ``z``'s batch dims) where the model uses labels."""
    return vae.decode_top(z, y) if uses_labels(vae) else vae.decode_top(z)


# --- checked inputs ------------------------------------------------------------------------------


def image_batch(vae, x, what: str, limit: int | None = None) -> torch.Tensor:
    """``x`` as a float32 CPU batch ``(N, C, H, W)``: one image ``(C, H, W)`` becomes a batch of one, and only
    the first ``limit`` images are kept.

    :param what: how error messages name ``x``.
    :raises DataError: if the images are not of the model's ``image_shape``, or there are none.
    """
    x = torch.as_tensor(x)
    expected = tuple(vae.image_shape)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or tuple(x.shape[1:]) != expected:
        got = tuple(x.shape[1:]) if x.dim() == 4 else tuple(x.shape)
        raise DataError(f"{what} has images of shape {got} but the model takes {expected}; pass one image "
                        f"(C, H, W) or a batch (N, C, H, W) of that shape")
    if len(x) == 0:
        raise DataError(f"{what} is an empty batch; pass at least one image")
    return x[:limit].detach().cpu().float()


def checked_labels(vae, n: int, y):
    """``y`` as int64 labels ``(n,)`` on the CPU, -1 where unknown, or ``None`` for a model that ignores labels.

    :param y: an int (the same class for all ``n`` images), labels ``(n,)``, or ``None`` (all unknown).
    :raises ConfigError: for labels that are not integers or outside ``-1 .. num_classes - 1``.
    :raises DataError: for a number of labels other than ``n``.
    """
    if not uses_labels(vae):
        return None
    if y is None:
        return torch.full((n,), -1, dtype=torch.int64)
    y = torch.as_tensor(y).detach().cpu()
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ConfigError(f"labels y must be integer classes, got {y.dtype}")
    y = y.expand(n) if y.dim() == 0 else y
    if tuple(y.shape) != (n,):
        raise DataError(f"labels y have shape {tuple(y.shape)} for {n} images; pass one label, or one per image")
    y = y.to(torch.int64).clone()
    num_classes = vae.num_classes
    bad = (y < -1) | ((y >= num_classes) if num_classes is not None else False)
    if bad.any():
        valid = f"0..{num_classes - 1}" if num_classes is not None else "0 and above"
        raise ConfigError(f"label {int(y[bad][0])} is out of range: labels y lie in {valid}, or -1 to let the "
                          f"model classify the image")
    return y


def classified(vae, x, labels):
    """``labels`` ``(N,)`` with the unknown (-1) ones replaced by the class the model gives their image of ``x``
    ``(N, C, H, W)`` (``vae.classify``); ``None`` stays ``None``. Call under :func:`seeded` (a conditional VAE's
    classifier samples).

    :raises ConfigError: unknown labels for a model that conditions on labels but cannot classify.
    """
    if labels is None or not (labels < 0).any():
        return labels
    if not vae.classifies:
        raise ConfigError(f"{type(vae).__name__} conditions on labels but cannot classify images; pass y=")
    labels = labels.clone()
    unknown = labels < 0
    labels[unknown] = vae.classify(x[unknown].to(vae.device)).cpu()
    return labels


def encode_means(vae, images, labels=None) -> torch.Tensor:
    """Posterior means ``(N, latent_dim)`` on the CPU of ``images`` ``(N, C, H, W)``, encoded in batches, given
    ``labels`` ``(N,)`` where the model conditions on them. (For a flow posterior such as IAF, the mean of its
    base Normal.)"""
    images = torch.as_tensor(images)
    with_labels = labels is not None and uses_labels(vae)
    ys = torch.as_tensor(labels)[: len(images)].split(ENCODE_BATCH) if with_labels else None
    means = []
    with torch.no_grad():
        for i, b in enumerate(images.split(ENCODE_BATCH)):
            b = b.to(vae.device)
            posterior = vae.encode(b, ys[i].to(vae.device)) if with_labels else vae.encode(b)
            means.append(posterior[0].cpu())
    return torch.cat(means)


# --- interpolation -------------------------------------------------------------------------------


def fractions(steps: int) -> torch.Tensor:
    """``(steps,)`` evenly spaced fractions from 0 to 1 inclusive; one step is the midpoint."""
    return torch.linspace(0.0, 1.0, steps) if steps > 1 else torch.tensor([0.5])


def perpendicular(u: torch.Tensor) -> torch.Tensor:
    """A unit vector ``(..., D)`` orthogonal to each unit vector ``u`` ``(..., D)``: the coordinate axis least
    aligned with it, made orthogonal; zero when ``D == 1``, where none exists."""
    k = u.abs().argmin(dim=-1, keepdim=True)
    v = torch.zeros_like(u).scatter_(-1, k, 1.0) - u.gather(-1, k) * u
    norm = v.norm(dim=-1, keepdim=True)
    # |v|^2 = 1 - u_k^2 >= 1 - 1/D for the least aligned axis, so it is only ever small for D == 1
    return torch.where(norm > 0.5, v / norm.clamp_min(1e-12), torch.zeros_like(v))


def interpolate_codes(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor, spherical: bool = False) -> torch.Tensor:
    """Codes on the path from ``a`` to ``b``.

    Linear: ``(1 - t) a + t b``. Spherical (slerp): the direction turns from ``a/|a|`` to ``b/|b|`` along the
    great circle at constant angular speed while the length changes linearly from ``|a|`` to ``|b|`` (for codes
    of equal length, the usual slerp). Codes pointing the same way give the straight line, which is the limit
    of the circle; opposite codes have no single great circle, so the path turns through a fixed direction
    perpendicular to ``a`` (see :func:`perpendicular`); a zero code, or opposite codes in 1-D, fall back to the
    line.

    :param a: start codes ``(N, D)``.
    :param b: end codes ``(N, D)``.
    :param t: fractions ``(T,)``: 0 gives ``a``, 1 gives ``b``.
    :param spherical: slerp instead of the straight line.
    :return: codes ``(N, T, D)``.
    """
    t = t.to(a)[:, None]                    # (T, 1), against codes (N, 1, D)
    a, b = a[:, None, :], b[:, None, :]
    linear = a + t * (b - a)
    if not spherical:
        return linear
    tiny = 1e-6
    len_a, len_b = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / len_a.clamp_min(tiny), b / len_b.clamp_min(tiny)
    cos = (ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    across = ub - cos * ua                  # the part of b's direction orthogonal to a's; its length is sin(angle)
    sin = across.norm(dim=-1, keepdim=True)
    angle = torch.atan2(sin, cos)           # accurate near 0 and pi, unlike acos
    flat = sin < tiny
    opposite = flat & (cos < 0)
    turn = perpendicular(ua)
    # the unit vector a's direction turns towards; irrelevant (zero) for parallel codes, where the angle is 0
    u = torch.where(flat, torch.where(opposite, turn, torch.zeros_like(across)), across / sin.clamp_min(tiny))
    angle = torch.where(flat, torch.where(opposite, torch.full_like(angle, math.pi), torch.zeros_like(angle)), angle)
    path = ((1 - t) * len_a + t * len_b) * (torch.cos(t * angle) * ua + torch.sin(t * angle) * u)
    degenerate = (len_a < tiny) | (len_b < tiny) | (opposite & (turn.norm(dim=-1, keepdim=True) < 0.5))
    return torch.where(degenerate, linear, path)


class Interpolation(NamedTuple):
    """What :func:`interpolation_frames` computes: the decoded paths between pairs of images."""

    inputs_a: torch.Tensor       # (N, C, H, W) the start images, CPU
    inputs_b: torch.Tensor       # (N, C, H, W) the end images
    images: torch.Tensor         # (N, T, C, H, W) decoded path
    fractions: torch.Tensor      # (T,) where along the path each column is
    labels: torch.Tensor | None  # (N,) the label each row is decoded under, None for label-free models


def interpolation_frames(vae, x_a, x_b, steps=10, spherical=False, y=None) -> Interpolation:
    """The images :func:`pyro_vae.plots.interpolation` shows, as tensors (see it for the arguments): row ``i``
    decodes ``steps`` codes on the path from the top posterior mean of ``x_a[i]`` to that of ``x_b[i]``, both
    ends encoded and the row decoded under one label (``y``, else the class of ``x_a[i]``).

    :param x_a: start image ``(C, H, W)`` or images ``(N, C, H, W)``; ``x_b`` shaped alike.
    :raises DataError: images of a shape other than ``vae.image_shape``, or unequal numbers of them.
    :raises ConfigError: ``steps < 1``, or a label out of range.
    """
    steps = positive_int("steps", steps, MAX_IMAGES)
    x_a, x_b = image_batch(vae, x_a, "x_a"), image_batch(vae, x_b, "x_b")
    if len(x_a) != len(x_b):
        raise DataError(f"x_a has {len(x_a)} images but x_b has {len(x_b)}; pass as many of each (one pair per row)")
    t = fractions(steps)
    device = vae.device
    with seeded(vae):
        labels = classified(vae, x_a, checked_labels(vae, len(x_a), y))
        y_dev = None if labels is None else labels.to(device)
        # both ends under the same label, so the whole row is one class and only the style moves
        a, b = top_codes(vae, x_a.to(device), y_dev), top_codes(vae, x_b.to(device), y_dev)
        codes = interpolate_codes(a, b, t.to(device), spherical)                   # (N, T, top_dim)
        images = decode_top(vae, codes, None if y_dev is None else y_dev[:, None]).cpu()
    return Interpolation(x_a, x_b, images, t, labels)


# --- the model's own prior over a code -----------------------------------------------------------


class SitesError(ConfigError):
    """The sites a model declares for its codes (``top_sites``, ``code_site``) are not latent sites of the sizes
    its codes have: the pictures that move codes cannot say how far to move them."""


class TopPrior(NamedTuple):
    """A code (the top code, or the codes generate() decodes) under the model's own prior: its layout by site,
    and draws of it."""

    groups: tuple           # ((site, size), ...): the top code is these sites' values concatenated, in order
    draws: torch.Tensor     # (n, top_dim) ancestral draws (CPU); n = 0 when every coordinate is exact
    exact: torch.Tensor     # (top_dim,) bool: coordinates drawn from N(0, 1) itself, at every draw made

    @property
    def names(self) -> list:
        """``(top_dim,)`` coordinate names, ``site[i]``: ``z[3]``, ``z_style[0]``, ``z2[1]``."""
        return [f"{site}[{i}]" for site, size in self.groups for i in range(size)]

    def scale(self) -> torch.Tensor:
        """Marginal standard deviation ``(top_dim,)`` of each coordinate: 1 where exact, else that of the draws."""
        if self.exact.all():
            return torch.ones(len(self.exact))
        return torch.where(self.exact, torch.ones(()), self.draws.std(dim=0))

    def quantiles(self, probs) -> torch.Tensor:
        """Marginal quantiles ``(len(probs), top_dim)`` of each coordinate at ``probs`` ``(P,)``."""
        exact = torch.distributions.Normal(0.0, 1.0).icdf(probs)[:, None].expand(-1, len(self.exact))
        if self.exact.all():
            return exact
        return torch.where(self.exact, exact, torch.quantile(self.draws, probs, dim=0))


def standard_coordinates(fn, value) -> torch.Tensor:
    """Which coordinates ``(size,)`` (bool, CPU) of a site's draws ``value`` ``(n, size)`` its distribution ``fn``
    gave N(0, 1) at every draw: a Normal (under ``to_event``) with loc 0 and scale 1 there."""
    base = fn
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    if not isinstance(base, torch.distributions.Normal):
        return torch.zeros(value.shape[-1], dtype=torch.bool)
    standard = (base.loc == 0) & (base.scale == 1)
    return torch.broadcast_to(standard, value.shape).reshape(-1, value.shape[-1]).all(dim=0).cpu()


def prior_draws(vae, sites, size, declared, labels=None, draws=PRIOR_DRAWS) -> TopPrior:
    """The layout of a code made of the latent ``sites`` (its values there joined in order, ``size`` in all) and
    ``draws`` draws ``(draws, size)`` of it from the model's own prior: :meth:`VAE.trace_prior` (ancestral
    sampling through ``model``, so a model whose latents have priors of their own is drawn from those, not from
    ``vae.prior``). A seeded, forked stream makes the draws the same every time and leaves the caller's random
    state alone.

    Coordinates whose distribution is N(0, 1) at each of the first ``PRIOR_CHUNK`` draws are taken as exactly
    N(0, 1) (a prior's marginal is then N(0, 1) whatever the parents drawn); when every coordinate is, no more
    draws are made.

    :param str declared: the model's attribute that names the sites (``"top_sites"``, ``"code_site"``), for errors.
    :param labels: ``n -> y`` (labels ``(n,)``) for models that use them, else ``None``.
    :raises SitesError: (a :class:`ConfigError`) a site the model does not sample as a latent of shape
        ``(batch, size)``, or sizes that do not add up to ``size``.
    """
    name = type(vae).__name__
    fix = f"set {name}.{declared} to the latent site{'s' if declared == 'top_sites' else ''} that " + (
        "top_codes returns, in order" if declared == "top_sites" else "generate() decodes")
    groups, exact, chunks = None, None, []
    with seeded(vae):
        for _ in range(max(1, draws // PRIOR_CHUNK)):
            trace = vae.trace_prior(PRIOR_CHUNK, None if labels is None else labels(PRIOR_CHUNK))
            values, standard = [], []
            for site in sites:
                node = trace.nodes.get(site)
                if node is None or node["type"] != "sample" or node["is_observed"]:
                    raise SitesError(f"{name}'s model has no latent site {site!r} to draw codes from; {fix}")
                value = node["value"]
                if value.dim() != 2 or value.shape[0] != PRIOR_CHUNK:
                    raise SitesError(f"{name}'s site {site!r} draws values of shape {tuple(value.shape)} for "
                                     f"{PRIOR_CHUNK} images; a site of the codes pictures move must be (batch, "
                                     f"size): inside pyro.plate('data') with .to_event(1)")
                values.append(value)
                standard.append(standard_coordinates(node["fn"], value))
            if groups is None:
                groups = tuple((site, value.shape[-1]) for site, value in zip(sites, values))
                if sum(n for _, n in groups) != size:
                    counted = "top_dim" if declared == "top_sites" else "latent_dim"
                    raise SitesError(f"{name}'s codes have {size} coordinates ({counted}) but its {declared} "
                                     f"draw{'' if declared == 'top_sites' else 's'} "
                                     f"{' + '.join(f'{s} {n}' for s, n in groups)}; {fix}")
                exact = torch.cat(standard)
                if exact.all():
                    return TopPrior(groups, torch.zeros(0, size), exact)
            else:
                exact = exact & torch.cat(standard)
            chunks.append(torch.cat(values, dim=-1).cpu())
    return TopPrior(groups, torch.cat(chunks), exact)


def top_prior(vae, label=None) -> TopPrior:
    """The top code (:func:`top_sites`, ``top_dim`` coordinates in all) under the model's own prior
    (:func:`prior_draws`), drawn under ``label`` (an int) for models that use labels, else ``None``."""
    labels = None if label is None else (
        lambda n: torch.full((n,), int(label), dtype=torch.int64, device=vae.device))
    return prior_draws(vae, top_sites(vae), top_dim(vae), "top_sites", labels)


def prior_quantiles(vae, probs) -> torch.Tensor:
    """Quantiles ``(len(probs), latent_dim)`` of each coordinate of the codes :meth:`VAE.generate` decodes, under
    the model's own prior: from 20,000 draws of its :meth:`VAE.sample_codes` when the model draws codes its own
    way, else of its ``code_site`` (:func:`prior_draws`; under uniform labels for a model conditioned on them).
    Fixed seed, the caller's random state untouched."""
    if type(vae).sample_codes is not VAE.sample_codes:   # codes drawn its own way
        with seeded(vae):
            draws = vae.sample_codes(MANIFOLD_DRAWS).cpu()
        return torch.quantile(draws, probs, dim=0)
    labels = None
    if vae.label_role == "conditioned":
        # generate() without a label averages over uniform labels, so the codes are drawn under those
        labels = lambda n: torch.randint(vae.num_classes, (n,), device=vae.device)
    return prior_draws(vae, (vae.code_site,), vae.latent_dim, "code_site", labels, MANIFOLD_DRAWS).quantiles(probs)


def manifold_codes(values: torch.Tensor) -> torch.Tensor:
    """The 2-D codes ``(n * n, 2)`` of an ``n x n`` manifold grid whose coordinates take the ``values`` ``(n, 2)``
    (column ``k``: those of coordinate ``k``, increasing), in the row-major order of the tiles of an
    :func:`~pyro_vae.plots.image_grid` of ``n`` per row: the first coordinate grows left to right, the second
    bottom to top, like an ordinary plot."""
    n = len(values)
    z1, z2 = torch.meshgrid(values[:, 0], values[:, 1].flip(0), indexing="xy")   # each (n, n), row-major tiles
    return torch.stack([z1, z2], dim=-1).reshape(n * n, 2)


# --- traversal -----------------------------------------------------------------------------------


def activity(vae, images, labels) -> torch.Tensor | None:
    """Variance over ``images`` ``(N, C, H, W)`` of each top posterior mean, ``(top_dim,)`` (as in
    :func:`pyro_vae.evaluate.active_units`), or ``None`` for fewer than two images. ``labels`` ``(N,)`` (-1 or
    ``None``: classified by the model) reach only models that use labels.

    :raises DataError: a number of labels other than ``N``.
    """
    if len(images) < 2:
        return None
    if labels is not None:
        labels = torch.as_tensor(labels).cpu()[: len(images)]
        if len(labels) != len(images):
            raise DataError(f"data has {len(images)} images but {len(labels)} labels")
    codes = []
    for i, batch in enumerate(images.split(ENCODE_BATCH)):
        y = None if labels is None else labels[i * ENCODE_BATCH : (i + 1) * ENCODE_BATCH].to(vae.device)
        codes.append(top_codes(vae, batch.to(vae.device), y).cpu())
    return torch.cat(codes).var(dim=0)


def check_dims(dims, top: int, name: str) -> list[int]:
    """``dims`` (an int, or a sequence of ints) as a list of dimensions of a ``top``-dimensional latent ``name``.

    :raises ConfigError: no dimensions, or one that is not an integer in ``0 .. top - 1``.
    """
    items = dims.tolist() if isinstance(dims, (torch.Tensor, np.ndarray)) else dims
    if isinstance(items, (int, np.integer)) and not isinstance(items, bool):
        items = [items]
    try:
        items = list(items)
    except TypeError:
        items = []
    if not items or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 0 <= d < top
                        for d in items):
        raise ConfigError(f"dims must be dimensions of the top latent {name}, integers in 0..{top - 1}, "
                          f"got {dims!r:.80}")
    return [int(d) for d in items]


class Traversal(NamedTuple):
    """What :func:`traversal_frames` computes: rows of decoded codes, each moving one coordinate."""

    images: torch.Tensor            # (R, T, C, H, W): row r moves coordinate dims[r]
    dims: list                      # the R dimensions shown
    offsets: torch.Tensor           # (T,) offsets from the start code, in prior standard deviations
    scale: torch.Tensor             # (top_dim,) prior marginal standard deviation of each coordinate
    start: torch.Tensor             # (top_dim,) the code the traversal starts from
    activity: torch.Tensor | None   # (top_dim,) variance of the top posterior means, None with < 2 images
    label: int | None               # the label every image is decoded under, None for label-free models
    prior: TopPrior                 # the top code's sites and prior draws (under that label)

    @property
    def names(self) -> list:
        """``(top_dim,)`` coordinate names by site: ``z[3]``, ``z_style[0]``."""
        return self.prior.names


def traversal_frames(vae, x, dims=None, span=3.0, steps=9, y=None, data_images=None, data_labels=None) -> Traversal:
    """The images :func:`pyro_vae.plots.traversal` shows, as tensors (see it for what they are and for the
    arguments).

    :param x: image ``(C, H, W)`` or images ``(N, C, H, W)``; the first is the start.
    :param data_images: images ``(M, C, H, W)`` to measure activity on (their first 1,000), with labels
        ``data_labels`` ``(M,)`` or ``None``; ``None``: the batch ``x`` and its labels ``y``.
    :raises ConfigError: a dimension that does not exist, ``steps < 1``, ``span <= 0``, a label out of range.
    :raises DataError: images of a shape other than ``vae.image_shape``.
    """
    steps = positive_int("steps", steps, MAX_IMAGES)
    if isinstance(span, bool) or not isinstance(span, (int, float, np.number)) or not math.isfinite(span) or span <= 0:
        raise ConfigError(f"span must be a positive number of prior standard deviations, got {span!r}")
    x = image_batch(vae, x, "x")
    top = top_dim(vae)
    if dims is not None:
        dims = check_dims(dims, top, top_name(vae))
    labels = checked_labels(vae, len(x), y)
    if data_images is not None:
        data_images = image_batch(vae, data_images, "data", limit=ACTIVITY_IMAGES)
    else:
        data_images, data_labels = x[:ACTIVITY_IMAGES], labels
    device = vae.device
    with seeded(vae):
        spread = activity(vae, data_images, data_labels)
        label = classified(vae, x[:1], None if labels is None else labels[:1])
        start = top_codes(vae, x[:1].to(device), None if label is None else label.to(device))[0].cpu()
        label = None if label is None else int(label[0])
        prior = top_prior(vae, label)
        scale = prior.scale()
        if dims is None:
            # most active first; a stable sort keeps index order among ties (all of them with one image)
            order = torch.arange(top) if spread is None else torch.argsort(spread, descending=True, stable=True)
            dims = order[:MAX_TRAVERSAL_ROWS].tolist()
        offsets = torch.linspace(-float(span), float(span), steps) if steps > 1 else torch.zeros(1)
        codes = start.expand(len(dims), steps, top).clone()
        for row, d in enumerate(dims):
            codes[row, :, d] += offsets * scale[d]
        images = decode_top(vae, codes.to(device), label).cpu()
    return Traversal(images, dims, offsets, scale, start, spread, label, prior)


# --- which images ----------------------------------------------------------------------------------


def pair(labels, n: int) -> tuple[int, int]:
    """Indices of two of ``n`` images to interpolate between: the first, and the first of another known class
    (labels ``(n,)``, -1 unknown), else the second (the first again when there is only one)."""
    if labels is not None and n > 1:
        labels = torch.as_tensor(labels).cpu()[:n]
        if labels[0] >= 0:
            other = ((labels != labels[0]) & (labels >= 0)).nonzero().flatten()
            if len(other):
                return 0, int(other[0])
    return 0, min(1, n - 1)


def data_parts(data):
    """``(images, labels)`` of ``data``: a dataset with ``images`` ``(N, C, H, W)`` (and ``labels`` ``(N,)``), a
    tensor of images (no labels), or ``None`` (neither)."""
    if data is None:
        return None, None
    if hasattr(data, "images"):
        return data.images, getattr(data, "labels", None)
    return data, None
