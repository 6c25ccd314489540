"""Figures for inspecting a trained VAE: reconstructions, samples, the latent space and ELBO curves.

Every function builds a :class:`matplotlib.figure.Figure` directly instead of going through
``pyplot``, so nothing here touches global figure state: it works headless, in threads, and never
needs a display backend. Each returns the figure and, when ``path`` is given, also writes it as a PNG.

The VAE is duck-typed; it needs ``image_shape``, ``latent_dim``, ``device`` and the methods
``encode``, ``generate``, ``reconstruct`` and ``sample`` (see :mod:`pyro_vae.model`). Interpolations and
traversals move along the model's *top* latent variable (``top_dim``, ``top_codes``, ``decode_top``: z for
the one-layer models, z2 for :class:`~pyro_vae.extended.HierarchicalVAE`); a model without those methods
is taken to have z as its top latent (``latent_dim``, ``encode(x)[0]``, ``generate``).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torchvision.utils import make_grid

from ..errors import ConfigError, DataError
from ..models.vae import VAE, uses_labels
from ..checks import MAX_IMAGES, forked_rng, positive_int

__all__ = [
    "image_grid",
    "show_images",
    "reconstructions",
    "samples",
    "latent_manifold",
    "latent_scatter",
    "curves",
    "interpolation",
    "traversal",
    "save_all",
]

_DPI = 100
# Encoding a whole test set at once can exhaust GPU memory for large images.
_ENCODE_BATCH = 512
# Integer labels with at most this many distinct values get one colour each and a legend.
_MAX_CLASSES = 20
# Traversals show at most this many latent dimensions (rows) when they choose the dimensions themselves.
_MAX_TRAVERSAL_ROWS = 10
# Activity (variance of the posterior means) is measured on at most this many images: enough to rank
# dimensions, and cheap even for a conditional VAE that has to classify every unlabelled image.
_ACTIVITY_IMAGES = 1000
# Ancestral draws of the top code from the model's own prior (its standard deviations and quantiles; about 1.5%
# standard error for a standard deviation, finer than a picture shows), made in chunks of _PRIOR_CHUNK images:
# each runs the whole model, decoder included, so the chunk bounds the memory of a convolutional decoder.
_PRIOR_DRAWS = 5000
_PRIOR_CHUNK = 1000
# The 2-D manifold's grid is made of quantiles, which need more draws than a standard deviation does.
_MANIFOLD_DRAWS = 20000


def _save(fig: Figure, path) -> None:
    """Write ``fig`` to ``path`` as a PNG, atomically, so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=_DPI)
        # mkstemp creates the file private (0600); figures are meant to be shared.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finish(fig: Figure, path) -> Figure:
    if path is not None:
        _save(fig, path)
    return fig


def image_grid(images, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """Tile a batch of images into one RGB image.

    :param images: tensor ``(N, C, H, W)`` with values meant to lie in ``[0, 1]``; ``C`` is 1 or 3.
    :param nrow: number of images per row.
    :param padding: pixels of white border between tiles.
    :return: CPU tensor ``(3, H', W')`` in ``[0, 1]``; with ``padding=0`` and ``N = nrow * k``
        it is exactly ``(3, k * H, nrow * W)``.
    """
    images = torch.as_tensor(images).detach().cpu().float().clamp(0.0, 1.0)
    # White padding separates tiles clearly on the dark backgrounds typical of digit data sets.
    return make_grid(images, nrow=nrow, padding=padding, pad_value=1.0)


def _grid_figure(grid: torch.Tensor, title: str | None, inches: float = 6.0) -> tuple[Figure, object]:
    """Show a ``(3, H, W)`` grid on a figure sized to the grid's aspect ratio."""
    _, h, w = grid.shape
    scale = inches / max(h, w)
    fig = Figure(figsize=(max(w * scale, 2.0), max(h * scale, 2.0) + (0.4 if title else 0.0)))
    ax = fig.add_subplot()
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig, ax


def show_images(images, title: str | None = None, nrow: int = 8, path=None) -> Figure:
    """Plot a batch of images as one grid.

    :param images: tensor ``(N, C, H, W)`` in ``[0, 1]``.
    :param title: optional figure title.
    :param nrow: number of images per row.
    :param path: where to write a PNG, or ``None``.
    :return: the figure.
    """
    fig, _ = _grid_figure(image_grid(images, nrow=nrow), title)
    return _finish(fig, path)


def reconstructions(vae, x, n: int = 8, path=None, labels=None) -> Figure:
    """Plot the first ``n`` inputs (top row) above their reconstructions (bottom row).

    :param vae: the VAE.
    :param x: input images ``(N, C, H, W)``.
    :param n: how many images to show.
    :param path: where to write a PNG, or ``None``.
    :param labels: optional labels ``(N,)``, given to models that condition on them (otherwise such a
        model would decode under the label its classifier guesses).
    :return: the figure.
    """
    x = torch.as_tensor(x)[:n]
    with torch.no_grad():
        if labels is not None and uses_labels(vae):
            recon = vae.reconstruct(x.to(vae.device), torch.as_tensor(labels)[:n].to(vae.device)).cpu()
        else:
            recon = vae.reconstruct(x.to(vae.device)).cpu()
    grid = image_grid(torch.cat([x.cpu().to(recon.dtype), recon]), nrow=len(x))
    fig, _ = _grid_figure(grid, "Top: inputs · bottom: reconstructions")
    return _finish(fig, path)


def samples(vae, n: int = 64, path=None, seed: int | None = None) -> Figure:
    """Plot the mean images of ``n`` latent codes drawn from the prior.

    :param vae: the VAE.
    :param n: number of samples.
    :param path: where to write a PNG, or ``None``.
    :param seed: seed for reproducible figures; the caller's RNG state is left untouched.
    :return: the figure.
    """
    # forked so that seeding a figure does not change the caller's random stream.
    with _forked_rng(vae), torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        images = vae.sample(n).cpu()
    fig, _ = _grid_figure(image_grid(images, nrow=math.ceil(math.sqrt(n))), "Samples from the prior")
    return _finish(fig, path)


def latent_manifold(vae, n: int = 20, path=None) -> Figure:
    """Plot decoded images over a grid of a 2-D latent space (Kingma & Welling, 2014, fig. 4).

    Grid points are the 5% to 95% quantiles of each coordinate of the codes the model generates from,
    so they cover its mass evenly rather than its range: quantiles of 20,000 ancestral draws of the model at
    its ``code_site`` (:meth:`~pyro_vae.VAE.trace_prior`: a mixture or flow prior, a subclass's own prior, the
    hierarchical VAE's z1 drawn through z2; under uniform labels for a conditional VAE), with a fixed seed and
    the caller's random state untouched; exact standard Normal quantiles for a site drawn from N(0, 1) itself.
    ``z1`` grows left to right and ``z2`` bottom to top, like an ordinary plot.

    :param vae: the VAE; ``vae.latent_dim`` must be 2.
    :param n: grid points per dimension; the figure shows ``n * n`` images.
    :param path: where to write a PNG, or ``None``.
    :return: the figure; its image is the ``(n * H, n * W)`` tiling without padding.
    :raises ConfigError: (a ``ValueError``) if the latent space is not 2-D.
    """
    if vae.latent_dim != 2:
        raise ConfigError(f"latent_manifold needs latent_dim == 2, got {vae.latent_dim}; use latent_scatter instead")
    values = _prior_quantiles(vae, torch.linspace(0.05, 0.95, n))   # (n, 2)
    z1, z2 = torch.meshgrid(values[:, 0], values[:, 1].flip(0), indexing="xy")  # each (n, n), row-major tiles
    z = torch.stack([z1, z2], dim=-1).reshape(n * n, 2)
    with torch.no_grad():
        images = vae.generate(z.to(vae.device)).cpu()
    fig, ax = _grid_figure(image_grid(images, nrow=n, padding=0), "Latent manifold (decoded means)")
    # Label a handful of tile centres with their latent coordinate.
    _, h, w = vae.image_shape
    idx = list(range(0, n, max(1, n // 5)))
    ax.set_axis_on()
    ax.set_xticks([(i + 0.5) * w - 0.5 for i in idx], [f"{values[i, 0]:.2f}" for i in idx])
    ax.set_yticks([(i + 0.5) * h - 0.5 for i in idx], [f"{values[:, 1].flip(0)[i]:.2f}" for i in idx])
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    fig.tight_layout()
    return _finish(fig, path)


def _forked_rng(vae):
    """A block whose random draws (CPU, and the model's GPU if it has one) leave the caller's streams alone."""
    return forked_rng(vae.device)


def _prior_quantiles(vae, probs) -> torch.Tensor:
    """Quantiles ``(len(probs), 2)`` of each coordinate of the model's codes (see :func:`latent_manifold`)."""
    if getattr(type(vae), "sample_codes", VAE.sample_codes) is not VAE.sample_codes:   # codes drawn its own way
        with torch.no_grad(), _forked_rng(vae):
            torch.manual_seed(0)
            draws = vae.sample_codes(_MANIFOLD_DRAWS).cpu()
        return torch.quantile(draws, probs, dim=0)
    labels = None
    if getattr(vae, "label_role", "ignored") == "conditioned":
        # generate() without a label averages over uniform labels, so the codes are drawn under those
        classes = getattr(vae, "num_classes", 1)
        labels = lambda n: torch.randint(classes, (n,), device=vae.device)   # noqa: E731
    code_site = getattr(vae, "code_site", "z")
    return _prior_draws(vae, (code_site,), vae.latent_dim, "code_site", labels, _MANIFOLD_DRAWS).quantiles(probs)


def _encode_means(vae, images, labels=None) -> torch.Tensor:
    """Posterior means ``(N, latent_dim)`` on the CPU, encoded in batches, given ``labels`` where the
    model conditions on them. (For a flow posterior such as IAF, the mean of its base Normal.)"""
    images = torch.as_tensor(images)
    with_labels = labels is not None and uses_labels(vae)
    ys = torch.as_tensor(labels)[: len(images)].split(_ENCODE_BATCH) if with_labels else None
    means = []
    with torch.no_grad():
        for i, b in enumerate(images.split(_ENCODE_BATCH)):
            b = b.to(vae.device)
            posterior = vae.encode(b, ys[i].to(vae.device)) if with_labels else vae.encode(b)
            means.append(posterior[0].cpu())
    return torch.cat(means)


def latent_scatter(vae, images, labels=None, path=None, max_points: int = 2000) -> Figure:
    """Scatter the posterior means of ``images``, coloured by ``labels``.

    Latent spaces above 2-D are projected onto their first two principal components;
    a 1-D latent space is shown as a (stacked per label) histogram.

    :param vae: the VAE.
    :param images: images ``(N, C, H, W)``; only the first ``max_points`` are used.
    :param labels: optional labels ``(N,)``: integer classes get a legend, other values a colorbar; a
        model that conditions on labels (``encode(x, y)``) is also encoded with them.
    :param path: where to write a PNG, or ``None``.
    :param max_points: cap on plotted points, to keep the figure readable and fast.
    :return: the figure.
    """
    z = _encode_means(vae, torch.as_tensor(images)[:max_points], labels).double()
    if labels is not None:
        labels = torch.as_tensor(labels)[: len(z)].cpu().numpy()
    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.add_subplot()
    classes = None
    if labels is not None and labels.dtype.kind in "iub" and len(np.unique(labels)) <= _MAX_CLASSES:
        classes = np.unique(labels)
        cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]

    if z.shape[1] == 1:
        z = z[:, 0].numpy()
        if classes is not None:
            ax.hist([z[labels == c] for c in classes], bins=40, stacked=True, histtype="stepfilled",
                    color=[cmap(i) for i in range(len(classes))], label=[str(c) for c in classes])
            ax.legend(title="label", fontsize="small")
        else:
            ax.hist(z, bins=40, color="tab:blue")
        ax.set_xlabel("z1")
        ax.set_ylabel("count")
        ax.set_title("Posterior means (1-D latent)")
        fig.tight_layout()
        return _finish(fig, path)

    if z.shape[1] > 2:
        # PCA via SVD of the centred means: rows of vh are the principal directions.
        centred = z - z.mean(dim=0)
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        xy = (centred @ vh[:2].T).numpy()
        share = (s**2 / (s**2).sum()).numpy()
        xlabel, ylabel = f"PC1 ({share[0]:.0%} of variance)", f"PC2 ({share[1]:.0%} of variance)"
        title = f"Posterior means ({z.shape[1]}-D latent, PCA)"
    else:
        xy = z.numpy()
        xlabel, ylabel, title = "z1", "z2", "Posterior means"

    style = dict(s=6, alpha=0.7, linewidths=0)
    if classes is not None:
        for i, c in enumerate(classes):
            pts = xy[labels == c]
            ax.scatter(pts[:, 0], pts[:, 1], color=cmap(i), label=str(c), **style)
        ax.legend(title="label", fontsize="small", markerscale=3, loc="best")
    elif labels is not None:
        points = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="viridis", **style)
        fig.colorbar(points, ax=ax, label="label")
    else:
        ax.scatter(xy[:, 0], xy[:, 1], color="tab:blue", **style)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return _finish(fig, path)


def curves(history, path=None) -> Figure:
    """Plot the training objective and the test ELBO per epoch.

    The training line is what ``fit`` optimised, averaged over the epoch: the ELBO itself, except with
    ``beta != 1`` or warm-up (the KL weighted) and for M2 (plus its classification term), so only the
    test line is an ELBO in every case.

    :param history: list of dicts ``{"epoch": int, "train_elbo": float, "test_elbo": float | None, ...}``,
        ELBOs in nats per image; ``None`` or missing test values are skipped.
    :param path: where to write a PNG, or ``None``.
    :return: the figure.
    """
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    for key, name in (("train_elbo", "training objective"), ("test_elbo", "test ELBO")):
        pts = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
        if pts:
            epochs, elbo = zip(*pts)
            # Markers make short runs (a handful of epochs) readable; they would clutter long ones.
            ax.plot(epochs, elbo, marker="o" if len(pts) <= 30 else None, markersize=3, label=name)
    if ax.lines:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no history yet", ha="center", va="center", transform=ax.transAxes)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image")
    ax.set_title("Training objective and test ELBO (higher is better)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _finish(fig, path)


# --- moving through the top latent: interpolation and traversal ------------------------------------


@contextlib.contextmanager
def _seeded(vae, seed: int = 0):
    """No autograd, and random draws (a conditional VAE's importance-sampled classifier, draws from a prior)
    from a fixed seed on a forked stream: pictures are reproducible and the caller's random state is untouched."""
    with torch.no_grad(), _forked_rng(vae):
        torch.manual_seed(seed)
        yield


def _top_dim(vae) -> int:
    return int(vae.top_dim) if hasattr(vae, "top_dim") else int(vae.latent_dim)


def _top_sites(vae) -> tuple:
    """The latent sites whose values, concatenated in this order, make the top code (:attr:`VAE.top_sites`, by
    default its ``code_site``; a model with neither attribute has z)."""
    sites = getattr(vae, "top_sites", None)
    if sites is None:
        return (getattr(vae, "code_site", "z"),)
    sites = (sites,) if isinstance(sites, str) else tuple(sites)
    if not sites or not all(isinstance(s, str) for s in sites):
        raise ConfigError(f"{type(vae).__name__}.top_sites must name latent sites (a tuple of strings), got "
                          f"{sites!r:.80}")
    return sites


def _top_name(vae) -> str:
    """How pictures name the top latent: its site (z, or z2 in a two-layer hierarchy), or its sites in
    parentheses when the top code joins several."""
    sites = _top_sites(vae)
    return sites[0] if len(sites) == 1 else f"({', '.join(sites)})"


def _top_codes(vae, x, y=None) -> torch.Tensor:
    """Top posterior means ``(N, top_dim)`` of images ``x`` ``(N, C, H, W)``; ``y`` reaches only models that use
    labels (``None`` or -1 entries: the model classifies those images)."""
    if not hasattr(vae, "top_codes"):
        return vae.encode(x)[0]
    return vae.top_codes(x, y) if uses_labels(vae) else vae.top_codes(x)


def _decode_top(vae, z, y=None) -> torch.Tensor:
    """Mean images ``(..., C, H, W)`` of top codes ``z`` ``(..., top_dim)``, under ``y`` where the model uses labels."""
    if not hasattr(vae, "decode_top"):
        return vae.generate(z)
    return vae.decode_top(z, y) if uses_labels(vae) else vae.decode_top(z)


def _count(name: str, value) -> int:
    return positive_int(name, value, MAX_IMAGES)


def _image_batch(vae, x, what: str, limit: int | None = None) -> torch.Tensor:
    """``x`` as a float32 CPU batch ``(N, C, H, W)``: one image ``(C, H, W)`` becomes a batch of one, and only
    the first ``limit`` images are kept.

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


def _checked_labels(vae, n: int, y):
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
    num_classes = getattr(vae, "num_classes", None)
    bad = (y < -1) | ((y >= num_classes) if num_classes is not None else False)
    if bad.any():
        valid = f"0..{num_classes - 1}" if num_classes is not None else "0 and above"
        raise ConfigError(f"label {int(y[bad][0])} is out of range: labels y lie in {valid}, or -1 to let the "
                          f"model classify the image")
    return y


def _classified(vae, x, labels):
    """``labels`` with the unknown (-1) ones replaced by the class the model gives their image (``vae.classify``);
    call under :func:`_seeded` (a conditional VAE's classifier samples)."""
    if labels is None or not (labels < 0).any():
        return labels
    if not hasattr(vae, "classify"):
        raise ConfigError(f"{type(vae).__name__} conditions on labels but cannot classify images; pass y=")
    labels = labels.clone()
    unknown = labels < 0
    labels[unknown] = vae.classify(x[unknown].to(vae.device)).cpu()
    return labels


def _fractions(steps: int) -> torch.Tensor:
    """``steps`` evenly spaced fractions from 0 to 1 inclusive; one step is the midpoint."""
    return torch.linspace(0.0, 1.0, steps) if steps > 1 else torch.tensor([0.5])


def _perpendicular(u: torch.Tensor) -> torch.Tensor:
    """A unit vector orthogonal to each unit vector ``u`` ``(..., D)``: the coordinate axis least aligned with it,
    made orthogonal; zero when ``D == 1``, where none exists."""
    k = u.abs().argmin(dim=-1, keepdim=True)
    v = torch.zeros_like(u).scatter_(-1, k, 1.0) - u.gather(-1, k) * u
    norm = v.norm(dim=-1, keepdim=True)
    # |v|^2 = 1 - u_k^2 >= 1 - 1/D for the least aligned axis, so it is only ever small for D == 1
    return torch.where(norm > 0.5, v / norm.clamp_min(1e-12), torch.zeros_like(v))


def _interpolate_codes(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor, spherical: bool = False) -> torch.Tensor:
    """Codes on the path from ``a`` to ``b``.

    Linear: ``(1 - t) a + t b``. Spherical (slerp): the direction turns from ``a/|a|`` to ``b/|b|`` along the
    great circle at constant angular speed while the length changes linearly from ``|a|`` to ``|b|`` (for codes
    of equal length, the usual slerp). Codes pointing the same way give the straight line, which is the limit
    of the circle; opposite codes have no single great circle, so the path turns through a fixed direction
    perpendicular to ``a`` (see :func:`_perpendicular`); a zero code, or opposite codes in 1-D, fall back to the line.

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
    turn = _perpendicular(ua)
    # the unit vector a's direction turns towards; irrelevant (zero) for parallel codes, where the angle is 0
    u = torch.where(flat, torch.where(opposite, turn, torch.zeros_like(across)), across / sin.clamp_min(tiny))
    angle = torch.where(flat, torch.where(opposite, torch.full_like(angle, math.pi), torch.zeros_like(angle)), angle)
    path = ((1 - t) * len_a + t * len_b) * (torch.cos(t * angle) * ua + torch.sin(t * angle) * u)
    degenerate = (len_a < tiny) | (len_b < tiny) | (opposite & (turn.norm(dim=-1, keepdim=True) < 0.5))
    return torch.where(degenerate, linear, path)


class _Interpolation(NamedTuple):
    inputs_a: torch.Tensor       # (N, C, H, W) the start images, CPU
    inputs_b: torch.Tensor       # (N, C, H, W) the end images
    images: torch.Tensor         # (N, T, C, H, W) decoded path
    fractions: torch.Tensor      # (T,) where along the path each column is
    labels: torch.Tensor | None  # (N,) the label each row is decoded under, None for label-free models


def _interpolation_frames(vae, x_a, x_b, steps=10, spherical=False, y=None) -> _Interpolation:
    """The images :func:`interpolation` shows, as tensors (also used by :mod:`pyro_vae.explorer`)."""
    steps = _count("steps", steps)
    x_a, x_b = _image_batch(vae, x_a, "x_a"), _image_batch(vae, x_b, "x_b")
    if len(x_a) != len(x_b):
        raise DataError(f"x_a has {len(x_a)} images but x_b has {len(x_b)}; pass as many of each (one pair per row)")
    t = _fractions(steps)
    device = vae.device
    with _seeded(vae):
        labels = _classified(vae, x_a, _checked_labels(vae, len(x_a), y))
        y_dev = None if labels is None else labels.to(device)
        # both ends under the same label, so the whole row is one class and only the style moves
        a, b = _top_codes(vae, x_a.to(device), y_dev), _top_codes(vae, x_b.to(device), y_dev)
        codes = _interpolate_codes(a, b, t.to(device), spherical)                   # (N, T, top_dim)
        images = _decode_top(vae, codes, None if y_dev is None else y_dev[:, None]).cpu()
    return _Interpolation(x_a, x_b, images, t, labels)


def _label_tiles(ax, image_shape, columns: dict, rows: dict, padding: int = 2) -> None:
    """Tick labels at tile centres of an :func:`image_grid` image; ``columns``/``rows`` map a tile index to its text."""
    _, h, w = image_shape
    ax.set_axis_on()
    ax.set_xticks([padding + i * (w + padding) + (w - 1) / 2 for i in columns], list(columns.values()),
                  fontsize="small")
    ax.set_yticks([padding + i * (h + padding) + (h - 1) / 2 for i in rows], list(rows.values()), fontsize="small")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)


def interpolation(vae, x_a, x_b, steps: int = 10, spherical: bool = False, y=None, path=None) -> Figure:
    """Decode the path between the top posterior means of two images.

    Each row shows ``x_a``, then ``steps`` decoded points at evenly spaced fractions ``t`` from 0 to 1 (so the
    first and last are the decoded codes of ``x_a`` and ``x_b``; ``steps=1`` decodes the midpoint), then
    ``x_b``. Batches of images give one row per pair ``(x_a[i], x_b[i])``. The top latent is z (z2 for the
    hierarchical VAE, decoded through the mean of p(z1|z2)).

    Models that use labels decode a whole row, and encode both its ends, under one fixed label: ``y`` when
    given, else (or for entries -1) the class the model assigns to ``x_a`` (``vae.classify``: M2's classifier,
    the conditional VAE's importance-sampled Bayes rule, with a fixed seed). Other models ignore ``y``.

    :param vae: the VAE.
    :param x_a: start image ``(C, H, W)`` or images ``(N, C, H, W)``.
    :param x_b: end image(s), shaped like ``x_a``.
    :param steps: number of decoded points per row, at least 1.
    :param spherical: interpolate spherically (slerp about the origin: the direction turns along a great
        circle while the length changes linearly) instead of along the straight line; codes pointing in
        opposite directions turn through a fixed perpendicular direction.
    :param y: label for models that use labels: an int, labels ``(N,)``, or ``None``.
    :param path: where to write a PNG, or ``None``.
    :return: the figure; its image is the :func:`image_grid` of ``N`` rows of ``steps + 2`` tiles.
    :raises DataError: images of a shape other than ``vae.image_shape``, or unequal numbers of them.
    :raises ConfigError: ``steps < 1``, or a label out of range.
    """
    result = _interpolation_frames(vae, x_a, x_b, steps, spherical, y)
    t = result.images.shape[1]
    dtype = result.images.dtype
    rows = torch.cat([result.inputs_a[:, None].to(dtype), result.images, result.inputs_b[:, None].to(dtype)], dim=1)
    grid = image_grid(rows.flatten(0, 1), nrow=t + 2)
    kind = "Spherical" if spherical else "Linear"
    fig, ax = _grid_figure(grid, f"{kind} interpolation between posterior means of {_top_name(vae)}")
    every = max(1, math.ceil(t / 8))   # a tick per column would crowd long rows
    columns = {0: "x_a", **{1 + i: f"{float(f):.2g}" for i, f in enumerate(result.fractions)
                            if i % every == 0 or i == t - 1}, t + 1: "x_b"}
    rows = {} if result.labels is None else {i: f"y={int(c)}" for i, c in enumerate(result.labels)}
    _label_tiles(ax, vae.image_shape, columns, rows)
    ax.set_xlabel("t (fraction of the way from x_a to x_b)")
    fig.tight_layout()
    return _finish(fig, path)


class _SitesError(ConfigError):
    """The sites a model declares for its codes (``top_sites``, ``code_site``) are not latent sites of the sizes
    its codes have: the pictures that move codes cannot say how far to move them."""


class _TopPrior(NamedTuple):
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


def _standard_coordinates(fn, value) -> torch.Tensor:
    """Which coordinates ``(size,)`` of a site's draws ``value`` ``(n, size)`` its distribution ``fn`` gave
    N(0, 1) at every draw: a Normal (under ``to_event``) with loc 0 and scale 1 there."""
    base = fn
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    if not isinstance(base, torch.distributions.Normal):
        return torch.zeros(value.shape[-1], dtype=torch.bool)
    standard = (base.loc == 0) & (base.scale == 1)
    return torch.broadcast_to(standard, value.shape).reshape(-1, value.shape[-1]).all(dim=0).cpu()


def _prior_draws(vae, sites, size, declared, labels=None, draws=_PRIOR_DRAWS) -> _TopPrior:
    """The layout of a code made of the latent ``sites`` (its values there joined in order, ``size`` in all) and
    ``draws`` draws of it from the model's own prior: :meth:`VAE.trace_prior` (ancestral sampling through
    ``model``, so a model whose latents have priors of their own is drawn from those, not from ``vae.prior``). A
    seeded, forked stream makes the draws the same every time and leaves the caller's random state alone.

    Coordinates whose distribution is N(0, 1) at each of the first ``_PRIOR_CHUNK`` draws are taken as exactly
    N(0, 1) (a prior's marginal is then N(0, 1) whatever the parents drawn); when every coordinate is, no more
    draws are made. A model without ``trace_prior`` (duck-typed) is taken to have N(0, I) codes.

    :param str declared: the model's attribute that names the sites (``"top_sites"``, ``"code_site"``), for errors.
    :param labels: ``n -> y`` (labels ``(n,)``) for models that use them, else ``None``.
    :raises ConfigError: (:class:`_SitesError`) a site the model does not sample as a latent of shape
        ``(batch, size)``, or sizes that do not add up to ``size``.
    """
    name = type(vae).__name__
    if getattr(vae, "trace_prior", None) is None:
        return _TopPrior(((sites[0], size),), torch.zeros(0, size), torch.ones(size, dtype=torch.bool))
    fix = f"set {name}.{declared} to the latent site{'s' if declared == 'top_sites' else ''} that " + (
        "top_codes returns, in order" if declared == "top_sites" else "generate() decodes")
    groups, exact, chunks = None, None, []
    with _seeded(vae):
        for _ in range(max(1, draws // _PRIOR_CHUNK)):
            trace = vae.trace_prior(_PRIOR_CHUNK, None if labels is None else labels(_PRIOR_CHUNK))
            values, standard = [], []
            for site in sites:
                node = trace.nodes.get(site)
                if node is None or node["type"] != "sample" or node["is_observed"]:
                    raise _SitesError(f"{name}'s model has no latent site {site!r} to draw codes from; {fix}")
                value = node["value"]
                if value.dim() != 2 or value.shape[0] != _PRIOR_CHUNK:
                    raise _SitesError(f"{name}'s site {site!r} draws values of shape {tuple(value.shape)} for "
                                      f"{_PRIOR_CHUNK} images; a site of the codes pictures move must be (batch, "
                                      f"size): inside pyro.plate('data') with .to_event(1)")
                values.append(value)
                standard.append(_standard_coordinates(node["fn"], value))
            if groups is None:
                groups = tuple((site, value.shape[-1]) for site, value in zip(sites, values))
                if sum(n for _, n in groups) != size:
                    counted = "top_dim" if declared == "top_sites" else "latent_dim"
                    raise _SitesError(f"{name}'s codes have {size} coordinates ({counted}) but its {declared} "
                                      f"draw{'' if declared == 'top_sites' else 's'} "
                                      f"{' + '.join(f'{s} {n}' for s, n in groups)}; {fix}")
                exact = torch.cat(standard)
                if exact.all():
                    return _TopPrior(groups, torch.zeros(0, size), exact)
            else:
                exact = exact & torch.cat(standard)
            chunks.append(torch.cat(values, dim=-1).cpu())
    return _TopPrior(groups, torch.cat(chunks), exact)


def _top_prior(vae, label=None) -> _TopPrior:
    """The top code (:func:`_top_sites`, ``top_dim`` in all) under the model's own prior (:func:`_prior_draws`),
    drawn under ``label`` (an int) for models that use labels, else ``None``."""
    labels = None if label is None else (
        lambda n: torch.full((n,), int(label), dtype=torch.int64, device=vae.device))
    return _prior_draws(vae, _top_sites(vae), _top_dim(vae), "top_sites", labels)


def _activity(vae, images, labels) -> torch.Tensor | None:
    """Variance over ``images`` ``(N, C, H, W)`` of each top posterior mean, ``(top_dim,)`` (as in
    :func:`pyro_vae.evaluate.active_units`), or ``None`` for fewer than two images. ``labels`` ``(N,)`` (-1 or
    ``None``: classified by the model) reach only models that use labels."""
    if len(images) < 2:
        return None
    if labels is not None:
        labels = torch.as_tensor(labels).cpu()[: len(images)]
        if len(labels) != len(images):
            raise DataError(f"data has {len(images)} images but {len(labels)} labels")
    codes = []
    for i, batch in enumerate(images.split(_ENCODE_BATCH)):
        y = None if labels is None else labels[i * _ENCODE_BATCH : (i + 1) * _ENCODE_BATCH].to(vae.device)
        codes.append(_top_codes(vae, batch.to(vae.device), y).cpu())
    return torch.cat(codes).var(dim=0)


def _check_dims(dims, top: int, name: str) -> list[int]:
    """``dims`` (an int, or a sequence of ints) as a list of dimensions of a ``top``-dimensional latent."""
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


class _Traversal(NamedTuple):
    images: torch.Tensor            # (R, T, C, H, W): row r moves coordinate dims[r]
    dims: list                      # the R dimensions shown
    offsets: torch.Tensor           # (T,) offsets from the start code, in prior standard deviations
    scale: torch.Tensor             # (top_dim,) prior marginal standard deviation of each coordinate
    start: torch.Tensor             # (top_dim,) the code the traversal starts from
    activity: torch.Tensor | None   # (top_dim,) variance of the top posterior means, None with < 2 images
    label: int | None               # the label every image is decoded under, None for label-free models
    prior: _TopPrior                # the top code's sites and prior draws (under that label)

    @property
    def names(self) -> list:
        """``(top_dim,)`` coordinate names by site: ``z[3]``, ``z_style[0]``."""
        return self.prior.names


def _traversal_frames(vae, x, dims=None, span=3.0, steps=9, y=None, data_images=None, data_labels=None) -> _Traversal:
    """The images :func:`traversal` shows, as tensors (also used by :mod:`pyro_vae.explorer`)."""
    steps = _count("steps", steps)
    if isinstance(span, bool) or not isinstance(span, (int, float, np.number)) or not math.isfinite(span) or span <= 0:
        raise ConfigError(f"span must be a positive number of prior standard deviations, got {span!r}")
    x = _image_batch(vae, x, "x")
    top = _top_dim(vae)
    if dims is not None:
        dims = _check_dims(dims, top, _top_name(vae))
    labels = _checked_labels(vae, len(x), y)
    if data_images is not None:
        data_images = _image_batch(vae, data_images, "data", limit=_ACTIVITY_IMAGES)
    else:
        data_images, data_labels = x[:_ACTIVITY_IMAGES], labels
    device = vae.device
    with _seeded(vae):
        activity = _activity(vae, data_images, data_labels)
        label = _classified(vae, x[:1], None if labels is None else labels[:1])
        start = _top_codes(vae, x[:1].to(device), None if label is None else label.to(device))[0].cpu()
        label = None if label is None else int(label[0])
        prior = _top_prior(vae, label)
        scale = prior.scale()
        if dims is None:
            # most active first; a stable sort keeps index order among ties (all of them with one image)
            order = torch.arange(top) if activity is None else torch.argsort(activity, descending=True, stable=True)
            dims = order[:_MAX_TRAVERSAL_ROWS].tolist()
        offsets = torch.linspace(-float(span), float(span), steps) if steps > 1 else torch.zeros(1)
        codes = start.expand(len(dims), steps, top).clone()
        for row, d in enumerate(dims):
            codes[row, :, d] += offsets * scale[d]
        images = _decode_top(vae, codes.to(device), label).cpu()
    return _Traversal(images, dims, offsets, scale, start, activity, label, prior)


def _data_parts(data):
    """``(images, labels)`` of ``data``: a dataset with ``images`` (and ``labels``), a tensor of images, or ``None``."""
    if data is None:
        return None, None
    if hasattr(data, "images"):
        return data.images, getattr(data, "labels", None)
    return data, None


def _traversal_figure(vae, result: _Traversal) -> Figure:
    t = result.images.shape[1]
    grid = image_grid(result.images.flatten(0, 1), nrow=t)
    name = _top_name(vae)
    decoded = "" if result.label is None else f", decoded as y={result.label}"
    fig, ax = _grid_figure(grid, f"Traversal of {name} from one image's code{decoded}", inches=7.0)
    every = max(1, math.ceil(t / 9))
    columns = {i: f"{float(o):+.2g}" for i, o in enumerate(result.offsets) if i % every == 0 or i == t - 1}
    rows = {i: result.names[d] + ("" if result.activity is None else f"  var {float(result.activity[d]):.2f}")
            for i, d in enumerate(result.dims)}
    _label_tiles(ax, vae.image_shape, columns, rows)
    ax.set_xlabel("offset from the image's code, in prior standard deviations")
    fig.tight_layout()
    return fig


def traversal(vae, x, dims=None, span: float = 3.0, steps: int = 9, y=None, path=None, data=None) -> Figure:
    """Decode the top code of an image with one coordinate at a time moved: one row per latent dimension.

    The start is the top posterior mean of ``x`` (its first image, for a batch). Row ``r`` sets coordinate
    ``d = dims[r]`` to ``start[d] + s * sd[d]`` for ``steps`` evenly spaced ``s`` from ``-span`` to ``+span``
    (the middle column of an odd ``steps`` is the start itself) and leaves the others at the start. ``sd[d]``
    is the marginal standard deviation of coordinate ``d`` under the model's own prior: the standard deviation
    of 5,000 ancestral draws of the model (:meth:`~pyro_vae.VAE.trace_prior`, under the decoded label for
    models that use labels) at the site the coordinate belongs to, with a fixed seed, the caller's random
    state untouched; 1 for a site drawn from N(0, 1) itself, so the offsets are then exactly ``±span``. The top
    code is the model's :attr:`~pyro_vae.VAE.top_sites` (by default its ``code_site``, z; z2 for the
    hierarchical VAE, decoded through the mean of p(z1|z2)), joined in order when there are several, e.g. a
    model with a Laplace group ``z_style`` and a mixture group ``z`` has each group moved by its own spread.
    Rows are labelled by site and coordinate (``z_style[0]``, ``z[3]``).

    ``dims=None`` shows the most active dimensions, at most 10, most active first: activity is the variance of
    the top posterior means over ``data`` (its first 1,000 images) when given, else over the batch ``x``. Each
    row is labelled with its coordinate and, with two images or more to measure it on, its activity.

    Models that use labels decode every image under one label, that of the start image: ``y`` (an int for
    all of ``x``, or labels ``(N,)``), or the model's classification of the image where ``y`` is ``None`` or
    -1. Activity is measured with the labels of ``data`` when it has them (classified otherwise), or with
    those of ``x``.

    :param vae: the VAE.
    :param x: image ``(C, H, W)`` or images ``(N, C, H, W)``.
    :param dims: dimension indices of the top latent (an int or a sequence), or ``None``.
    :param span: how far to move, in prior standard deviations either side of the start; positive.
    :param steps: images per row, at least 1.
    :param y: label(s) for models that use labels, as above.
    :param path: where to write a PNG, or ``None``.
    :param data: images to measure activity on: an :class:`~pyro_vae.data.ImageDataset` (its labels used) or a
        tensor ``(M, C, H, W)``.
    :return: the figure; its image is the :func:`image_grid` of ``len(dims)`` rows of ``steps`` tiles.
    :raises ConfigError: a dimension that does not exist, ``steps < 1``, ``span <= 0``, a label out of range.
    :raises DataError: images of a shape other than ``vae.image_shape``.
    """
    images, labels = _data_parts(data)
    result = _traversal_frames(vae, x, dims, span, steps, y, images, labels)
    return _finish(_traversal_figure(vae, result), path)


def _pair(labels, n: int) -> tuple[int, int]:
    """Indices of two images to interpolate between: the first, and the first of another known class (labels
    ``(n,)``, -1 unknown), else the second (the first again when there is only one)."""
    if labels is not None and n > 1:
        labels = torch.as_tensor(labels).cpu()[:n]
        if labels[0] >= 0:
            other = ((labels != labels[0]) & (labels >= 0)).nonzero().flatten()
            if len(other):
                return 0, int(other[0])
    return 0, min(1, n - 1)


def _explorations(vae, images, labels, out_dir) -> dict:
    """Write ``interpolation.png`` (between the two images :func:`_pair` picks) and ``traversal.png`` (from the
    first image; activity over the first 1,000) into ``out_dir``; return ``{name: path}``."""
    out_dir = Path(out_dir)
    images = torch.as_tensor(images)
    a, b = _pair(labels, len(images))
    known = labels is not None and int(torch.as_tensor(labels)[a]) >= 0
    y_a = int(torch.as_tensor(labels)[a]) if known else None    # the true label spares a conditional VAE's classifier
    paths = {"interpolation": out_dir / "interpolation.png", "traversal": out_dir / "traversal.png"}
    interpolation(vae, images[a], images[b], y=y_a, path=paths["interpolation"])
    frames = _traversal_frames(vae, images[a], y=y_a, data_images=images, data_labels=labels)
    _finish(_traversal_figure(vae, frames), paths["traversal"])
    return paths


def save_all(vae, train_images, train_labels, test_images, history, out_dir, *, test_labels=None) -> dict:
    """Write the standard set of figures into ``out_dir``.

    Reconstructions use the test images (train images if there are none). The latent scatter uses
    whichever images have labels, preferring the test set; unlabelled test images otherwise. The
    interpolation runs between the first of those reconstructed images and the first of another class
    (the second image when labels are unknown), the traversal starts from that first image and ranks
    dimensions by their activity over the first 1,000. For a model whose declared code sites
    (:attr:`~pyro_vae.VAE.top_sites`, ``code_site``) are not latent sites of its model, the traversal and the
    latent manifold are left out with a warning that names the attribute to set (the other pictures stand).

    :param vae: the VAE.
    :param train_images: training images ``(N, C, H, W)``.
    :param train_labels: labels ``(N,)`` of the training images, or ``None``.
    :param test_images: test images ``(M, C, H, W)``, or ``None``.
    :param history: list of per-epoch dicts, as for :func:`curves`.
    :param out_dir: folder to write into (created if needed).
    :param test_labels: labels ``(M,)`` of the test images, or ``None``.
    :return: dict mapping figure name (e.g. ``"samples"``, ``"interpolation"``, ``"traversal"``) to the
        :class:`~pathlib.Path` written.
    """
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"{name}.png" for name in ("reconstructions", "samples", "latent_scatter", "curves")}
    eval_images = test_images if test_images is not None else train_images
    eval_labels = test_labels if test_images is not None else train_labels
    if test_images is not None and test_labels is not None:
        scatter_images, scatter_labels = test_images, test_labels
    elif train_labels is not None:
        scatter_images, scatter_labels = train_images, train_labels
    else:
        scatter_images, scatter_labels = eval_images, None

    reconstructions(vae, eval_images, path=paths["reconstructions"], labels=eval_labels)
    samples(vae, path=paths["samples"], seed=0)
    latent_scatter(vae, scatter_images, scatter_labels, path=paths["latent_scatter"])
    curves(history, path=paths["curves"])
    # after training, a model whose code sites are not declared loses only the pictures that need them
    if vae.latent_dim == 2:
        try:
            latent_manifold(vae, path=out_dir / "latent_manifold.png")
            paths["latent_manifold"] = out_dir / "latent_manifold.png"
        except _SitesError as e:
            warnings.warn(f"latent_manifold.png is not drawn: {e}", UserWarning, stacklevel=2)
    try:
        paths.update(_explorations(vae, eval_images, eval_labels, out_dir))
    except _SitesError as e:
        warnings.warn(f"traversal.png is not drawn: {e}", UserWarning, stacklevel=2)
    return paths
