"""Tests for pyro_vae.explorer: the self-contained HTML page and the ``explore`` pictures, on real digits."""

import base64
import io
import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

import pyro_vae as pv
from pyro_vae import explorer
from pyro_vae.viz import walks

KINDS = ("vae", "cvae", "m2", "hvae")
STEPS = 9


@pytest.fixture(scope="module", params=KINDS)
def page(request, digits_binary, tmp_path_factory, train_small_model):
    """``(kind, vae, test set, path of its explorer.html)``. Top latents: 4-D (vae), 2-D (cvae, hvae's z2),
    3-D (m2), so the page is checked with and without the 2-D manifold."""
    train, test = digits_binary
    vae = train_small_model(request.param, train, top_latent=2)
    path = explorer.write_html(vae, test, tmp_path_factory.mktemp(request.param) / "explorer.html", steps=STEPS)
    return request.param, vae, test, path


class Page(HTMLParser):
    """Every tag with its attributes, the viewers (frames followed by their slider), outputs' text and the body."""

    def __init__(self, text):
        super().__init__()
        self.tags, self.viewers, self.outputs, self.body = [], [], [], {}
        self._frames, self._in_output = [], False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        classes = attrs.get("class", "").split()
        if tag == "img" and "frame" in classes:
            self._frames.append(attrs)
        elif tag == "input" and attrs.get("type") == "range":
            self.viewers.append({"slider": attrs, "frames": self._frames})
            self._frames = []
        elif tag == "output":
            self._in_output = True
            self.outputs.append("")
        elif tag == "body":
            self.body = attrs

    def handle_endtag(self, tag):
        if tag == "output":
            self._in_output = False

    def handle_data(self, data):
        if self._in_output:
            self.outputs[-1] += data

    def images(self, css=None):
        return [a for t, a in self.tags if t == "img" and (css is None or css in a.get("class", "").split())]


def _png(attrs):
    """Decode an ``<img>``'s data URI: ``(C, H, W)`` uint8."""
    prefix = "data:image/png;base64,"
    assert attrs["src"].startswith(prefix)
    with Image.open(io.BytesIO(base64.b64decode(attrs["src"][len(prefix):], validate=True))) as image:
        assert image.format == "PNG"
        pixels = torch.from_numpy(np.array(image))
    return pixels[None] if pixels.dim() == 2 else pixels.permute(2, 0, 1)


def _grid_shape(rows, columns, padding=2, tile=8):
    return (3, rows * (tile + padding) + padding, columns * (tile + padding) + padding)


def test_page_is_self_contained(page):
    kind, vae, test, path = page
    text = path.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    assert "@import" not in text and "url(" not in text   # no fonts or style sheets fetched from CSS either
    parsed = Page(text)
    tags = [t for t, _ in parsed.tags]
    assert "link" not in tags and "iframe" not in tags and "object" not in tags and "embed" not in tags
    assert tags.count("script") == 1 and all("src" not in a for t, a in parsed.tags if t == "script")
    for tag, attrs in parsed.tags:
        for name in ("src", "href", "srcset", "poster", "action", "data"):
            if name in attrs:
                assert attrs[name].startswith("data:"), f"<{tag} {name}={attrs[name][:40]!r}> points outside the page"
    assert len(parsed.images()) > 20


def test_every_embedded_image_decodes_at_its_size(page):
    kind, vae, test, path = page
    parsed = Page(path.read_text(encoding="utf-8"))
    for attrs in parsed.images():
        pixels = _png(attrs)
        # shown at a whole multiple of its own size (pixelated), never resampled
        zoom_w, zoom_h = int(attrs["width"]) / pixels.shape[2], int(attrs["height"]) / pixels.shape[1]
        assert zoom_w == zoom_h and zoom_w == int(zoom_w) >= 1
    frames = parsed.images("frame")
    assert frames and all(tuple(_png(a).shape) == vae.image_shape for a in frames)
    strips = [tuple(_png(a).shape) for a in parsed.images("strip")]
    dims_with_sliders = min(vae.top_dim, 6)
    assert strips == [_grid_shape(1, STEPS)] * dims_with_sliders + [_grid_shape(1, STEPS + 2)]
    (manifold,) = [a for a in parsed.images("grid") if {"manifold", "traversal-grid"} & set(a["class"].split())]
    if vae.top_dim == 2:
        assert "manifold" in manifold["class"] and tuple(_png(manifold).shape) == _grid_shape(12, 12)
    else:
        assert "traversal-grid" in manifold["class"]
        assert tuple(_png(manifold).shape) == _grid_shape(min(vae.top_dim, 10), STEPS)
    shapes = [tuple(_png(a).shape) for a in parsed.images("grid")]
    assert _grid_shape(2, 8) in shapes and _grid_shape(4, 8) in shapes   # reconstructions, samples


def test_each_slider_has_one_frame_per_position(page):
    kind, vae, test, path = page
    parsed = Page(path.read_text(encoding="utf-8"))
    assert len(parsed.viewers) == min(vae.top_dim, 6) + 1   # the traversals and the interpolation
    for viewer in parsed.viewers:
        slider, frames = viewer["slider"], viewer["frames"]
        assert len(frames) == STEPS
        assert (slider["min"], slider["step"], int(slider["max"])) == ("0", "1", len(frames) - 1)
        shown = [i for i, f in enumerate(frames) if "hidden" not in f]
        assert shown == [int(slider["value"])]   # without the script the page still shows the slider's frame
        assert all(f.get("data-label") for f in frames)
    assert parsed.outputs == [""] * len(parsed.viewers)   # filled by the script


def test_frames_are_the_decoded_traversal_and_interpolation(page):
    kind, vae, test, path = page
    parsed = Page(path.read_text(encoding="utf-8"))
    y = int(test.labels[0]) if vae.label_role != "ignored" else None
    walk = walks.traversal_frames(vae, test.images[0], steps=STEPS, y=y, data_images=test.images,
                                   data_labels=test.labels)
    first = torch.stack([_png(a) for a in parsed.viewers[0]["frames"]])
    assert torch.equal(first, walk.images[0].mul(255).round().to(torch.uint8))
    name = "z2" if kind == "hvae" else "z"
    assert parsed.viewers[0]["slider"]["aria-label"] == f"{name}[{walk.dims[0]}]"
    b = int(next(i for i in range(len(test)) if test.labels[i] != test.labels[0]))
    line = walks.interpolation_frames(vae, test.images[0], test.images[b], steps=STEPS, y=y)
    last = torch.stack([_png(a) for a in parsed.viewers[-1]["frames"]])
    assert torch.equal(last, line.images[0].mul(255).round().to(torch.uint8))


def test_header_says_what_the_model_is(page):
    kind, vae, test, path = page
    text = path.read_text(encoding="utf-8")
    header = text[text.index("<header>") : text.index("</header>")]
    assert type(vae).__name__ in header and "digits/test (300 images)" in header
    assert f"{'top latent z2' if kind == 'hvae' else 'latent z'}: {vae.top_dim} dimensions" in header
    assert f"<title>{type(vae).__name__} explorer</title>" in text


def test_write_html_is_atomic_and_shareable(page, tmp_path):
    kind, vae, test, _ = page
    target = tmp_path / "deep" / "explorer.html"
    target.parent.mkdir()
    target.write_text("old")
    images = test.images[:12]
    assert explorer.write_html(vae, images, target, labels=test.labels[:12], dataset="mine") == target
    assert os.listdir(target.parent) == ["explorer.html"]   # no temporary file left behind
    assert target.stat().st_mode & 0o777 == 0o644
    assert "mine (12 images)" in target.read_text(encoding="utf-8")


def test_explore_writes_the_pictures_and_optionally_the_page(page, tmp_path):
    kind, vae, test, _ = page
    paths = explorer.explore(vae, test.images[:50], tmp_path / "a", labels=test.labels[:50])
    assert set(paths) == {"interpolation", "traversal"}
    assert sorted(os.listdir(tmp_path / "a")) == ["interpolation.png", "traversal.png"]
    paths = explorer.explore(vae, test.subset(range(60)), tmp_path / "b", html=True)
    assert set(paths) == {"interpolation", "traversal", "explorer"}
    assert all(p.parent == tmp_path / "b" and p.stat().st_size > 0 for p in paths.values())


def test_explorer_refuses_images_of_another_shape(page, tmp_path):
    kind, vae, test, _ = page
    with pytest.raises(pv.DataError, match=r"\(1, 28, 28\).*\(1, 8, 8\)"):
        explorer.write_html(vae, torch.zeros(4, 1, 28, 28), tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()


CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)


def _dump_dom(url):
    """The DOM of ``url`` after its scripts ran, from a headless Chromium."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "<body" in result.stdout, result.stderr[-2000:]
    return Page(result.stdout)


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium installed")
def test_the_script_runs_in_a_browser(page):
    kind, vae, test, path = page
    if kind != "hvae":
        pytest.skip("the script is the same on every page: one (with the manifold, two layers) suffices")
    loaded = _dump_dom(path.as_uri())
    assert loaded.body.get("data-sliders") == str(len(loaded.viewers))
    for viewer, output in zip(loaded.viewers, loaded.outputs):
        shown = [i for i, f in enumerate(viewer["frames"]) if "hidden" not in f]
        assert shown == [int(viewer["slider"]["value"])]
        assert output == viewer["frames"][shown[0]]["data-label"] != ""   # the script captioned the frame
    # the page's hook moves every slider by setting its value and firing "input", as dragging it does
    moved = _dump_dom(path.as_uri() + "#step=0")
    for viewer, output in zip(moved.viewers, moved.outputs):
        assert [i for i, f in enumerate(viewer["frames"]) if "hidden" not in f] == [0]
        assert output == viewer["frames"][0]["data-label"]
