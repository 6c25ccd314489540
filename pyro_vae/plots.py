"""Figures for inspecting a trained VAE: reconstructions, samples, the latent space and ELBO curves.

Every function builds a :class:`matplotlib.figure.Figure` directly instead of going through
``pyplot``, so nothing here touches global figure state: it works headless, in threads, and never
needs a display backend. Each returns the figure and, when ``path`` is given, also writes it as a PNG.

The VAE is duck-typed; it needs ``image_shape``, ``latent_dim``, ``device`` and the methods
``encode``, ``generate``, ``reconstruct`` and ``sample`` (see :mod:`pyro_vae.model`).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torchvision.utils import make_grid

from pyro_vae.errors import ConfigError
from pyro_vae.evaluate import encoder_takes_labels
from pyro_vae.model import VAE
from pyro_vae.priors import StandardNormal

__all__ = [
    "image_grid",
    "show_images",
    "reconstructions",
    "samples",
    "latent_manifold",
    "latent_scatter",
    "curves",
    "save_all",
]

_DPI = 100
# Encoding a whole test set at once can exhaust GPU memory for large images.
_ENCODE_BATCH = 512
# Integer labels with at most this many distinct values get one colour each and a legend.
_MAX_CLASSES = 20


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
        if labels is not None and encoder_takes_labels(vae):
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
    so they cover its mass evenly rather than its range: exact standard Normal quantiles for the N(0, I)
    prior, otherwise quantiles of 20,000 codes from ``vae.sample_codes`` (a mixture or flow prior; the
    hierarchical VAE's z1, drawn through z2), with a fixed seed and the caller's random state untouched.
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
    device = torch.device(vae.device)
    return torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])


def _prior_quantiles(vae, probs) -> torch.Tensor:
    """Quantiles ``(len(probs), 2)`` of each coordinate of the model's codes (see :func:`latent_manifold`)."""
    # exact for N(0, I) codes; also the grid of a model of one's own that cannot draw its codes
    if not hasattr(vae, "sample_codes") or (isinstance(getattr(vae, "prior", None), StandardNormal)
                                            and type(vae).sample_codes is VAE.sample_codes):
        return torch.distributions.Normal(0.0, 1.0).icdf(probs)[:, None].expand(-1, 2)
    with torch.no_grad(), _forked_rng(vae):
        torch.manual_seed(0)
        draws = vae.sample_codes(20000).cpu()
    return torch.quantile(draws, probs, dim=0)


def _encode_means(vae, images, labels=None) -> torch.Tensor:
    """Posterior means ``(N, latent_dim)`` on the CPU, encoded in batches, given ``labels`` where the
    model conditions on them. (For a flow posterior such as IAF, the mean of its base Normal.)"""
    images = torch.as_tensor(images)
    with_labels = labels is not None and encoder_takes_labels(vae)
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


def save_all(vae, train_images, train_labels, test_images, history, out_dir, *, test_labels=None) -> dict:
    """Write the standard set of figures into ``out_dir``.

    Reconstructions use the test images (train images if there are none). The latent scatter uses
    whichever images have labels, preferring the test set; unlabelled test images otherwise.

    :param vae: the VAE.
    :param train_images: training images ``(N, C, H, W)``.
    :param train_labels: labels ``(N,)`` of the training images, or ``None``.
    :param test_images: test images ``(M, C, H, W)``, or ``None``.
    :param history: list of per-epoch dicts, as for :func:`curves`.
    :param out_dir: folder to write into (created if needed).
    :param test_labels: labels ``(M,)`` of the test images, or ``None``.
    :return: dict mapping figure name (e.g. ``"samples"``) to the :class:`~pathlib.Path` written.
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
    if vae.latent_dim == 2:
        paths["latent_manifold"] = out_dir / "latent_manifold.png"
        latent_manifold(vae, path=paths["latent_manifold"])
    return paths
