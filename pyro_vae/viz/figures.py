"""Figures for inspecting a trained VAE: reconstructions, samples, the latent space and ELBO curves.

Every function builds a :class:`matplotlib.figure.Figure` directly instead of going through
``pyplot``, so nothing here touches global figure state: it works headless, in threads, and never
needs a display backend. Each returns the figure and, when ``path`` is given, also writes it as a PNG
(atomically, :func:`pyro_vae.files.atomic_write`).

The VAE needs ``image_shape``, ``latent_dim``, ``device`` and the methods ``encode``, ``generate``,
``reconstruct`` and ``sample`` (see :mod:`pyro_vae.model`), and the interface that
:class:`~pyro_vae.models.vae.VAE` declares for pictures (``code_site``, ``top_sites``, ``label_role``, ...).
Interpolations and traversals move along the model's *top* latent variable (``top_dim``, ``top_codes``,
``decode_top``: z for the one-layer models, z2 for :class:`~pyro_vae.extended.HierarchicalVAE`); the codes they
decode are computed in :mod:`pyro_vae.viz.walks`.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torchvision.utils import make_grid

from ..checks import forked_rng
from ..errors import ConfigError
from ..files import save_figure
from ..models.vae import uses_labels
from .walks import (SitesError, Traversal, data_parts, encode_means, interpolation_frames, manifold_codes, pair,
                    prior_quantiles, top_name, traversal_frames)

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
    "save_explorations",
    "save_all",
]

_DPI = 100
# Integer labels with at most this many distinct values get one colour each and a legend.
_MAX_CLASSES = 20


def _finish(fig: Figure, path) -> Figure:
    """``fig``, written to ``path`` as a PNG first (atomically) unless ``path`` is ``None``.

    :raises WriteError: the folder cannot be written (disk full, say); an older file at ``path`` is intact.
    """
    return save_figure(fig, path, dpi=_DPI)


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
    with forked_rng(vae.device), torch.no_grad():
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
    values = prior_quantiles(vae, torch.linspace(0.05, 0.95, n))   # (n, 2)
    z = manifold_codes(values)                                     # (n * n, 2), row-major tiles
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
    z = encode_means(vae, torch.as_tensor(images)[:max_points], labels).double()
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

    :param history: list of dicts ``{"epoch": int, "train_elbo": float, "test_elbo": float | None, ...}``
        (``validation_elbo`` too with a validation set), ELBOs in nats per image; ``None`` or missing
        values are skipped.
    :param path: where to write a PNG, or ``None``.
    :return: the figure.
    """
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    for key, name in (("train_elbo", "training objective"), ("validation_elbo", "validation ELBO"),
                      ("test_elbo", "test ELBO")):
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
    result = interpolation_frames(vae, x_a, x_b, steps, spherical, y)
    t = result.images.shape[1]
    dtype = result.images.dtype
    rows = torch.cat([result.inputs_a[:, None].to(dtype), result.images, result.inputs_b[:, None].to(dtype)], dim=1)
    grid = image_grid(rows.flatten(0, 1), nrow=t + 2)
    kind = "Spherical" if spherical else "Linear"
    fig, ax = _grid_figure(grid, f"{kind} interpolation between posterior means of {top_name(vae)}")
    every = max(1, math.ceil(t / 8))   # a tick per column would crowd long rows
    columns = {0: "x_a", **{1 + i: f"{float(f):.2g}" for i, f in enumerate(result.fractions)
                            if i % every == 0 or i == t - 1}, t + 1: "x_b"}
    rows = {} if result.labels is None else {i: f"y={int(c)}" for i, c in enumerate(result.labels)}
    _label_tiles(ax, vae.image_shape, columns, rows)
    ax.set_xlabel("t (fraction of the way from x_a to x_b)")
    fig.tight_layout()
    return _finish(fig, path)


def _traversal_figure(vae, result: Traversal) -> Figure:
    """The figure of :func:`traversal`: ``result.images`` ``(R, T, C, H, W)`` as R rows of T tiles, rows labelled
    by coordinate (and activity), columns by offset."""
    t = result.images.shape[1]
    grid = image_grid(result.images.flatten(0, 1), nrow=t)
    name = top_name(vae)
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
    images, labels = data_parts(data)
    result = traversal_frames(vae, x, dims, span, steps, y, images, labels)
    return _finish(_traversal_figure(vae, result), path)


def save_explorations(vae, images, labels, out_dir) -> dict:
    """Write ``interpolation.png`` and ``traversal.png`` into ``out_dir`` (created if needed), as
    :func:`save_all` and ``pyro-vae explore`` draw them: the interpolation runs between the two images
    :func:`~pyro_vae.viz.walks.pair` picks (the first, and the first of another class), the traversal starts
    from the first and ranks dimensions by their activity over the first 1,000 images.

    :param images: images ``(N, C, H, W)``.
    :param labels: labels ``(N,)`` (-1 unknown), or ``None``.
    :return: ``{"interpolation": path, "traversal": path}``.
    :raises SitesError: (a :class:`ConfigError`) the model's declared code sites are not latent sites of its model.
    """
    out_dir = Path(out_dir)
    images = torch.as_tensor(images)
    a, b = pair(labels, len(images))
    known = labels is not None and int(torch.as_tensor(labels)[a]) >= 0
    y_a = int(torch.as_tensor(labels)[a]) if known else None    # the true label spares a conditional VAE's classifier
    paths = {"interpolation": out_dir / "interpolation.png", "traversal": out_dir / "traversal.png"}
    interpolation(vae, images[a], images[b], y=y_a, path=paths["interpolation"])
    frames = traversal_frames(vae, images[a], y=y_a, data_images=images, data_labels=labels)
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
        except SitesError as e:
            warnings.warn(f"latent_manifold.png is not drawn: {e}", UserWarning, stacklevel=2)
    try:
        paths.update(save_explorations(vae, eval_images, eval_labels, out_dir))
    except SitesError as e:
        warnings.warn(f"traversal.png is not drawn: {e}", UserWarning, stacklevel=2)
    return paths
