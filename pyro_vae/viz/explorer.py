"""A latent-space explorer: one self-contained HTML page, and the command's pictures.

:func:`write_html` writes ``explorer.html``, a single file that opens in any browser without a server or
a network: every picture is a PNG embedded as a ``data:`` URI, the styles are inline and the script is a
few lines of plain JavaScript that only switches between pictures rendered here in advance. The page has

- a header saying what the model is (class, latent sizes, prior, likelihood, labels, data set);
- the 2-D manifold of the top latent when it is 2-D (otherwise the traversal grid of its most active
  dimensions);
- one traversal per most active dimension, each a strip of all its steps and a slider that shows one
  decoded step at a time;
- an interpolation between two images (of different classes when labels are known), also with a slider;
- reconstructions and samples from the prior.

:func:`explore` writes ``interpolation.png`` and ``traversal.png`` (and the page on request) into a folder;
``pyro-vae explore RUN [--html]`` calls it. The pictures are those of :func:`pyro_vae.plots.interpolation`
and :func:`pyro_vae.plots.traversal`, with the same choices of images, labels and dimensions.
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path

import torch
from PIL import Image

from ..files import atomic_write
from ..models.vae import uses_labels
from .figures import image_grid, save_explorations
from .walks import (data_parts, decode_top, image_batch, interpolation_frames, manifold_codes, pair, seeded,
                    top_dim, top_name, traversal_frames)

__all__ = ["write_html", "explore"]

# Images are embedded at their own size and enlarged by the browser (pixelated), so that the page stays small;
# these are the on-screen sizes, in CSS pixels, of a tile in a grid and of the frame a slider shows.
_TILE_PX = 40
_FRAME_PX = 160
_MANIFOLD_N = 12
_RECONSTRUCTIONS = 8
_SAMPLES = 32
# Sliders for at most this many of the most active dimensions (the traversal grid shows up to 10).
_SLIDERS = 6

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem auto; max-width: 70rem;
       padding: 0 1rem; color: #222; background: #fafafa; }
h1 { font-size: 1.4rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.1rem; margin-top: 2rem; border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; }
h3 { font-size: 0.95rem; margin: 0.8rem 0 0.3rem; font-weight: 600; }
p.meta { margin-top: 0; color: #444; }
p.note { color: #555; font-size: 0.9rem; max-width: 50rem; }
img.px { image-rendering: pixelated; image-rendering: crisp-edges; background: #fff; }
.row { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
.viewer { display: flex; align-items: center; gap: 1rem; }
.viewer .frames img { display: block; border: 1px solid #bbb; }
.viewer .frames img[hidden] { display: none; }
.viewer label { display: flex; flex-direction: column; gap: 0.3rem; font-size: 0.85rem; }
.viewer input[type=range] { width: 14rem; }
output { font-variant-numeric: tabular-nums; min-height: 1.2em; }
#diagnostics th { text-align: left; font-weight: 600; padding: 0.15rem 1rem 0.15rem 0; }
"""

# Each slider position shows one pre-rendered frame; "#step=K" in the address sets every slider to K as
# dragging it would, which lets a headless browser check the handler and lets a link point at a step.
_SCRIPT = """
(function () {
  "use strict";
  var viewers = document.querySelectorAll(".viewer");
  viewers.forEach(function (viewer) {
    var slider = viewer.querySelector("input[type=range]");
    var frames = viewer.querySelectorAll(".frame");
    var shown = viewer.querySelector("output");
    function show() {
      var k = Number(slider.value);
      frames.forEach(function (frame, i) { frame.hidden = i !== k; });
      shown.textContent = frames[k].dataset.label;
    }
    slider.addEventListener("input", show);
    show();
  });
  var step = /^#step=(\\d+)$/.exec(window.location.hash);
  if (step) {
    document.querySelectorAll(".viewer input[type=range]").forEach(function (slider) {
      slider.value = step[1];
      slider.dispatchEvent(new Event("input"));
    });
  }
  document.body.setAttribute("data-sliders", String(viewers.length));
})();
"""


def _png_uri(image: torch.Tensor) -> str:
    """A ``data:`` URI of ``image`` ``(C, H, W)`` in ``[0, 1]`` (C is 1 or 3) as an 8-bit PNG."""
    pixels = image.detach().cpu().float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    # Pillow (which matplotlib needs anyway) rather than torchvision.io, whose PNG coder is deprecated
    array = pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(image: torch.Tensor, zoom: int, css: str, alt: str, **attributes) -> str:
    """An ``<img>`` of ``image`` ``(C, H, W)`` shown ``zoom`` times its size; ``attributes`` become HTML attributes
    (``data_label="x"`` -> ``data-label="x"``; ``hidden=True`` -> ``hidden``)."""
    _, h, w = image.shape
    extra = "".join(f" {k.replace('_', '-')}" if v is True else f' {k.replace("_", "-")}="{escape(str(v))}"'
                    for k, v in attributes.items() if v is not False)
    return (f'<img class="px {css}" src="{_png_uri(image)}" width="{w * zoom}" height="{h * zoom}" '
            f'alt="{escape(alt)}"{extra}>')


def _zoom(image_shape, pixels: int) -> int:
    return max(1, round(pixels / max(image_shape[1:])))


def _viewer(frames: torch.Tensor, labels: list[str], start: int, zoom: int, name: str) -> str:
    """A slider over ``frames`` ``(T, C, H, W)``: position k shows frame k, captioned ``labels[k]``."""
    images = "".join(_img(frame, zoom, "frame", f"{name}, {label}", data_label=label, hidden=k != start)
                     for k, (frame, label) in enumerate(zip(frames, labels)))
    return (f'<div class="viewer"><div class="frames">{images}</div>'
            f'<label>{escape(name)}<input type="range" min="0" max="{len(frames) - 1}" step="1" '
            f'value="{start}" aria-label="{escape(name)}"><output></output></label></div>')


def _header(vae, images: torch.Tensor, dataset: str | None, groups) -> str:
    """The page's header; ``groups`` ``((site, size), ...)`` are the sites of the top code."""
    name = type(vae).__name__
    code_site = vae.code_site
    tops = ", ".join(f"{site}: {size} dimensions" for site, size in groups)
    if code_site in [site for site, _ in groups]:
        latents = f"latent {tops}"
    else:   # a hierarchy: pictures decode code_site, interpolations and traversals move the top
        latents = f"latent {code_site}: {vae.latent_dim} dimensions, top latent {tops}"
    facts = [latents]
    parts = dict(vae.named_children())   # the modules it is built of (a wrapped pair may have none of these)
    for part in ("prior", "likelihood", "posterior"):
        if part in parts:
            facts.append(f"{part} {type(parts[part]).__name__}")
    if uses_labels(vae):
        classes = vae.num_classes
        facts.append(f"labels {vae.label_role}" + (f" ({classes} classes)" if classes else ""))
    data = f"{dataset} ({len(images)} images)" if dataset else f"{len(images)} images"
    facts.append(f"data {data}")
    return (f"<header><h1>Latent space of a {escape(name)}</h1>"
            f'<p class="meta">{" · ".join(escape(f) for f in facts)}</p></header>')


def _manifold_section(vae, label, prior, n: int, tile: int) -> str:
    """Decoded means over an ``n x n`` grid of the 5%..95% quantiles of a 2-D top latent under the model's own
    prior (``prior``, the draws of :func:`pyro_vae.viz.walks.top_prior` under ``label``)."""
    names = prior.names
    with seeded(vae):
        values = prior.quantiles(torch.linspace(0.05, 0.95, n))    # (n, 2)
        # z1 grows left to right and z2 bottom to top, as in plots.latent_manifold
        z = manifold_codes(values)                                 # (n * n, 2)
        decoded = decode_top(vae, z.to(vae.device), label).cpu()
    name = top_name(vae)
    under = "" if label is None else f", decoded under the label y={label}"
    # padded, unlike plots.latent_manifold: at a few pixels per image the tiles are otherwise hard to tell apart
    grid = image_grid(decoded, nrow=n)
    return (f'<section id="manifold"><h2>Manifold of {name}</h2>'
            f'<p class="note">Decoded means over the {n}&times;{n} grid of the 5% to 95% prior quantiles of each '
            f"coordinate of {name}; {names[0]} grows left to right, {names[1]} bottom to top{under}.</p>"
            f'{_img(grid, tile, "grid manifold", f"manifold of {name}")}</section>')


def write_html(vae, images, path, labels=None, *, dataset: str | None = None, steps: int = 9,
               span: float = 3.0, metrics: dict | None = None) -> Path:
    """Write a self-contained latent-space explorer page (see the module docstring for what it shows).

    The traversals start from the first image and rank dimensions by the variance of the top posterior means
    over the first 1,000 images, as :func:`pyro_vae.plots.traversal`; the interpolation runs from the first
    image to the first one of another class (the second image without labels). Models that use labels decode
    the manifold, traversals and interpolation under the label of the first image (classified by the model
    when unknown), and reconstruct each image under its own. The file is written to a temporary name and
    renamed, so a reader never sees half a page.

    :param vae: the VAE (any model of this package).
    :param images: images ``(N, C, H, W)`` in ``[0, 1]``, e.g. a test set; or an
        :class:`~pyro_vae.data.ImageDataset`, whose labels and name are used unless given.
    :param path: the HTML file to write (its folder is created).
    :param labels: labels ``(N,)`` (-1 unknown), or ``None``.
    :param dataset: the data set's name, for the header.
    :param steps: frames per traversal and interpolation.
    :param span: traversals move each coordinate ``span`` prior standard deviations either side.
    :param metrics: a run's metrics.json; its ``diagnostics`` and ``sample_quality`` entries (written by
        ``pyro-vae evaluate RUN --diagnostics``) add a section with their picture and numbers.
    :return: the path written.
    :raises DataError: images of a shape other than ``vae.image_shape``.
    """
    images, labels, dataset = _inputs(images, labels, dataset)
    images = image_batch(vae, images, "images")
    a, b = pair(labels, len(images))
    y_a = int(labels[a]) if labels is not None and int(labels[a]) >= 0 else None
    tile, frame_zoom = _zoom(vae.image_shape, _TILE_PX), _zoom(vae.image_shape, _FRAME_PX)
    name = top_name(vae)

    walk = traversal_frames(vae, images[a], span=span, steps=steps, y=y_a, data_images=images, data_labels=labels)
    label = walk.label   # the first image's label (given or classified) that every decoded picture uses
    under = "" if label is None else f" All are decoded under the label y={label} of the first image."
    sections = []
    if top_dim(vae) == 2:
        sections.append(_manifold_section(vae, label, walk.prior, _MANIFOLD_N, tile))
    else:
        grid = image_grid(walk.images.flatten(0, 1), nrow=walk.images.shape[1])
        rows = ", ".join(walk.names[d] for d in walk.dims)
        sections.append(f'<section id="manifold"><h2>Traversal grid of {name}</h2>'
                        f'<p class="note">The top latent has {top_dim(vae)} dimensions, so instead of a 2-D '
                        f"manifold: one row per most active dimension ({rows}), each moved from &minus;{span:g} "
                        f"to +{span:g} prior standard deviations about the first image's code.{under}</p>"
                        f'{_img(grid, tile, "grid traversal-grid", f"traversal grid of {name}")}</section>')

    mid = (steps - 1) // 2
    strips = []
    for row, d in enumerate(walk.dims[:_SLIDERS]):
        frames = walk.images[row]
        values = walk.start[d] + walk.offsets * walk.scale[d]
        coordinate = walk.names[d]
        captions = [f"{float(o):+.2f} sd ({coordinate} = {float(v):.2f})" for o, v in zip(walk.offsets, values)]
        active = "" if walk.activity is None else f" · variance of posterior means {float(walk.activity[d]):.3f}"
        strip = image_grid(frames, nrow=len(frames))
        strips.append(f'<div class="traversal" data-dim="{d}"><h3>{coordinate}{active}</h3><div class="row">'
                      f'{_img(strip, tile, "strip", f"traversal of {coordinate}")}'
                      f'{_viewer(frames, captions, mid, frame_zoom, coordinate)}</div></div>')
    sections.append(f'<section id="traversals"><h2>Traversals</h2>'
                    f'<p class="note">Starting from the code of the first image, one coordinate at a time moves '
                    f"&minus;{span:g} to +{span:g} standard deviations of its prior marginal; the slider shows "
                    f"one step at a time, the strip all of them. Most active dimensions first.{under}</p>"
                    + "".join(strips) + "</section>")

    path_ab = interpolation_frames(vae, images[a], images[b], steps=steps, y=y_a)
    decoded = path_ab.images[0]
    strip = image_grid(torch.cat([path_ab.inputs_a, decoded, path_ab.inputs_b]), nrow=len(decoded) + 2)
    captions = [f"t = {float(t):.2f}" for t in path_ab.fractions]
    sections.append(f'<section id="interpolation"><h2>Interpolation</h2>'
                    f'<p class="note">From image {a} (left) to image {b} (right) along the straight line between '
                    f"their posterior means of {name}; the slider moves t from 0 to 1.{under}</p>"
                    f'<div class="row">{_img(strip, tile, "strip", "interpolation")}'
                    f'{_viewer(decoded, captions, 0, frame_zoom, "interpolation")}</div></section>')

    x = images[:_RECONSTRUCTIONS]
    with seeded(vae):
        if uses_labels(vae) and labels is not None:
            recon = vae.reconstruct(x.to(vae.device), labels[: len(x)].to(vae.device)).cpu()
        else:
            recon = vae.reconstruct(x.to(vae.device)).cpu()
        drawn = vae.sample(_SAMPLES).cpu()
    sections.append(f'<section id="reconstructions"><h2>Reconstructions</h2>'
                    f'<p class="note">Top: the first {len(x)} images; bottom: their decoded posterior means.</p>'
                    f'{_img(image_grid(torch.cat([x, recon]), nrow=len(x)), tile, "grid", "reconstructions")}'
                    f"</section>")
    sections.append(f'<section id="samples"><h2>Samples</h2>'
                    f'<p class="note">Mean images of {_SAMPLES} codes drawn from the prior (fixed seed).</p>'
                    f'{_img(image_grid(drawn, nrow=8), tile, "grid", "samples")}</section>')

    if metrics and metrics.get("diagnostics"):
        sections.append(_diagnostics_section(metrics))

    header = _header(vae, images, dataset, walk.prior.groups)
    page = ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8"><title>{escape(type(vae).__name__)} explorer</title>'
            f"<style>{_STYLE}</style></head>\n<body>\n{header}\n" + "\n".join(sections)
            + f"\n<script>{_SCRIPT}</script>\n</body></html>\n")
    return _write_text(page, path)


def _figure_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _diagnostics_section(metrics: dict) -> str:
    """The diagnostics of ``pyro-vae evaluate --diagnostics``: their picture, the gaps and the sample quality."""
    from ..evaluate import diagnostics
    from ..evaluate import quality
    d = metrics["diagnostics"]
    rows = [("log p(x)", f"{d['log_likelihood']:.2f} nats (K={d['num_samples']}, first {d['num_images']} images)"),
            ("ELBO of the encoder's q", f"{d['elbo_encoder']:.2f}"),
            ("amortisation gap", f"{d['amortization_gap']:.2f} nats: what fitting q to each image alone gains"),
            ("approximation gap", f"{d['approximation_gap']:.2f} nats: what the best q of the family still misses"),
            ("active units", str(d["active_units"])),
            ("I(x; z)", f"{d['mutual_information']:.2f} nats (at most log {d['mutual_information_images']})")]
    q = metrics.get("sample_quality")
    if q:
        rows += [("Fréchet distance", f"{q['fd']:.2f} (floor {q['floor_fd']:.2f}: training vs test images)"),
                 ("precision / recall", f"{q['precision']:.3f} / {q['recall']:.3f} (floor {q['floor_precision']:.3f} / "
                                        f"{q['floor_recall']:.3f})"),
                 ("feature classifier", f"test accuracy {q['classifier_accuracy']:.4f}; {q['note']}")]
    checks = metrics.get("posterior_predictive")
    if checks:
        for name, stat in checks.get("statistics", {}).items():
            rows.append((f"{name.replace('_', ' ')} (samples vs test)",
                         f"{stat['samples_mean']:.3g} vs {stat['test_mean']:.3g} "
                         f"({stat['standardized_difference']:+.2f} test sd)"))
        if "class_frequencies" in checks:
            rows.append(("class frequencies", f"total variation {checks['class_frequencies']['total_variation']:.3f}"))
    table = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    picture = _figure_uri(diagnostics.plot(d))
    ppc = ""
    if checks and "values" in checks:
        ppc = f'<img src="{_figure_uri(quality.plot_posterior_predictive(checks))}" alt="posterior predictive checks">'
    return (f'<section id="diagnostics"><h2>Diagnostics</h2>'
            f'<p class="note">From <code>pyro-vae evaluate RUN --diagnostics</code>. Bars: the KL of each latent '
            f"dimension, largest first (near 0: a collapsed dimension). A large amortisation gap points at the "
            f"encoder; a large approximation gap at the posterior family (try an IAF guide or IWAE).</p>"
            f'<div class="row"><img src="{picture}" alt="KL per dimension and the gaps">{ppc}</div>'
            f"<table>{table}</table></section>")


def _write_text(text: str, path) -> Path:
    """Write ``text`` to ``path`` as UTF-8, atomically (:func:`pyro_vae.files.atomic_write`); return the path."""
    path = Path(path)
    # a name read from a file system may hold bytes that are not UTF-8 (lone surrogates): written as "?"
    data = text.encode("utf-8", errors="replace")
    atomic_write(path, lambda f: f.write(data))
    return path


def _inputs(images, labels, dataset):
    """``(images, labels (N,) int64 CPU or None, dataset name)``, reading them from an ImageDataset if given one."""
    if hasattr(images, "images"):   # an ImageDataset
        dataset = getattr(images, "name", None) if dataset is None else dataset
        images, own = data_parts(images)
        labels = own if labels is None else labels
    if labels is not None:
        labels = torch.as_tensor(labels).detach().cpu().to(torch.int64)
    return images, labels, dataset


def explore(vae, images, out_dir, labels=None, html: bool = False, *, dataset: str | None = None,
            metrics: dict | None = None) -> dict:
    """Write the latent-space pictures of ``vae`` into ``out_dir``: ``interpolation.png`` (from the first image to
    the first of another class, or the second image without labels) and ``traversal.png`` (from the first
    image, dimensions ranked by activity over the first 1,000), and with ``html=True`` also ``explorer.html``
    (:func:`write_html`).

    :param vae: the VAE.
    :param images: images ``(N, C, H, W)``, or an :class:`~pyro_vae.data.ImageDataset`.
    :param out_dir: folder to write into (created if needed).
    :param labels: labels ``(N,)`` (-1 unknown), or ``None``.
    :param html: also write the explorer page.
    :param dataset: the data set's name, for the page's header.
    :param metrics: a run's metrics.json, whose diagnostics the page shows (see :func:`write_html`).
    :return: ``{"interpolation": path, "traversal": path[, "explorer": path]}``.
    """
    images, labels, dataset = _inputs(images, labels, dataset)
    paths = save_explorations(vae, images, labels, out_dir)
    if html:
        paths["explorer"] = write_html(vae, images, Path(out_dir) / "explorer.html", labels=labels, dataset=dataset,
                                       metrics=metrics)
    return paths
