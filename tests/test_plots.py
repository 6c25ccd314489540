"""Tests for pyro_vae.plots, using a tiny stand-in VAE on the scikit-learn 8x8 digits."""

import math

import matplotlib.image
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from pyro_vae import plots

sklearn_datasets = pytest.importorskip("sklearn.datasets")


class FakeVAE(nn.Module):
    """Linear encoder/decoder with the same duck-typed interface as the real VAE.

    It checks that the plotting code never builds autograd graphs and always moves inputs to its device.
    """

    def __init__(self, latent_dim=2, image_shape=(1, 8, 8)):
        super().__init__()
        self.image_shape = image_shape
        self.latent_dim = latent_dim
        pixels = math.prod(image_shape)
        self.encoder = nn.Linear(pixels, 2 * latent_dim)
        self.decoder = nn.Linear(latent_dim, pixels)

    @property
    def device(self):
        return next(self.parameters()).device

    def _check(self, t):
        assert not torch.is_grad_enabled(), "plots must call the VAE under torch.no_grad()"
        assert t.device == self.device

    def encode(self, x):
        self._check(x)
        loc, raw_scale = self.encoder(x.flatten(-3)).chunk(2, dim=-1)
        return loc, nn.functional.softplus(raw_scale) + 1e-3

    def generate(self, z):
        self._check(z)
        return torch.sigmoid(self.decoder(z)).unflatten(-1, self.image_shape)

    def reconstruct(self, x):
        return self.generate(self.encode(x)[0])

    def sample(self, n):
        return self.generate(torch.randn(n, self.latent_dim, device=self.device))


@pytest.fixture(scope="module")
def digits():
    data = sklearn_datasets.load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).div(16.0).unsqueeze(1)  # (N, 1, 8, 8)
    labels = torch.tensor(data.target)
    return images, labels


@pytest.fixture
def vae():
    torch.manual_seed(0)
    return FakeVAE(latent_dim=2)


def read_png(path):
    """Read a PNG back and return its pixel array (H, W, channels)."""
    assert path.is_file() and path.stat().st_size > 0
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] >= 100 and pixels.shape[1] >= 100
    return pixels


def test_image_grid_shape_and_range():
    images = torch.linspace(-1, 2, 6 * 8 * 8).reshape(6, 1, 8, 8)
    grid = plots.image_grid(images, nrow=3, padding=2)
    # 2 rows x 3 columns of 8x8 tiles, 2 px padding around and between; grey is expanded to RGB.
    assert grid.shape == (3, 2 * 10 + 2, 3 * 10 + 2)
    assert grid.min() >= 0 and grid.max() <= 1
    assert plots.image_grid(images, nrow=3, padding=0).shape == (3, 16, 24)


def test_show_images(digits, tmp_path):
    fig = plots.show_images(digits[0][:16], title="digits", nrow=4, path=tmp_path / "sub" / "show.png")
    assert isinstance(fig, Figure)
    read_png(tmp_path / "sub" / "show.png")
    # Atomic save leaves no temporary files behind.
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["show.png"]


def test_show_images_without_path_writes_nothing(digits, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert isinstance(plots.show_images(digits[0][:4]), Figure)
    assert list(tmp_path.iterdir()) == []


def test_reconstructions(vae, digits, tmp_path):
    fig = plots.reconstructions(vae, digits[0], n=8, path=tmp_path / "recon.png")
    assert isinstance(fig, Figure)
    pixels = read_png(tmp_path / "recon.png")
    assert pixels.shape[1] > pixels.shape[0]  # a wide 2 x 8 grid
    shown = fig.axes[0].images[0].get_array()
    assert shown.shape == (2 * 10 + 2, 8 * 10 + 2, 3)


def test_samples_seeded_and_leaves_global_rng_alone(vae, tmp_path):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = plots.samples(vae, n=16, path=tmp_path / "samples.png", seed=7)
    assert torch.equal(torch.rand(1), expected_next)
    b = plots.samples(vae, n=16, seed=7)
    assert (a.axes[0].images[0].get_array() == b.axes[0].images[0].get_array()).all()
    read_png(tmp_path / "samples.png")


@pytest.mark.parametrize("n", [5, 20])
def test_latent_manifold_tiles(vae, tmp_path, n):
    fig = plots.latent_manifold(vae, n=n, path=tmp_path / "manifold.png")
    assert isinstance(fig, Figure)
    read_png(tmp_path / "manifold.png")
    # n x n tiles of 8x8 pixels without padding.
    assert fig.axes[0].images[0].get_array().shape == (n * 8, n * 8, 3)


def test_latent_manifold_grid_orientation(vae):
    # Top-left tile decodes (low z1, high z2); bottom-right decodes (high z1, low z2).
    n = 4
    grid = torch.tensor(plots.latent_manifold(vae, n=n).axes[0].images[0].get_array().data).permute(2, 0, 1)
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))
    with torch.no_grad():
        top_left = vae.generate(torch.stack([q[0], q[-1]]))[0]
        bottom_right = vae.generate(torch.stack([q[-1], q[0]]))[0]
    assert torch.allclose(grid[0, :8, :8], top_left, atol=1e-6)
    assert torch.allclose(grid[0, -8:, -8:], bottom_right, atol=1e-6)


@pytest.mark.parametrize("latent_dim", [1, 3])
def test_latent_manifold_rejects_other_dims(latent_dim):
    with pytest.raises(ValueError, match="latent_dim == 2"):
        plots.latent_manifold(FakeVAE(latent_dim=latent_dim))


@pytest.mark.parametrize("latent_dim", [1, 2, 5])
@pytest.mark.parametrize("with_labels", [False, True])
def test_latent_scatter(digits, tmp_path, latent_dim, with_labels):
    images, labels = digits
    vae = FakeVAE(latent_dim=latent_dim)
    path = tmp_path / "scatter.png"
    fig = plots.latent_scatter(vae, images, labels if with_labels else None, path=path, max_points=500)
    assert isinstance(fig, Figure)
    read_png(path)
    ax = fig.axes[0]
    if latent_dim == 5:
        assert ax.get_xlabel().startswith("PC1") and ax.get_ylabel().startswith("PC2")
    elif latent_dim == 2:
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("z1", "z2")
    assert (ax.get_legend() is not None) == with_labels
    if latent_dim > 1:
        assert sum(len(c.get_offsets()) for c in ax.collections) == 500


def test_latent_scatter_continuous_labels_get_colorbar(digits):
    images, _ = digits
    fig = plots.latent_scatter(FakeVAE(), images[:100], torch.rand(100))
    assert len(fig.axes) == 2  # the scatter and its colorbar


def test_curves(tmp_path):
    history = [
        {"epoch": 1, "train_elbo": -120.0, "test_elbo": None, "seconds": 1.0},
        {"epoch": 2, "train_elbo": -100.0, "test_elbo": -105.0},
        {"epoch": 3, "train_elbo": -95.0, "test_elbo": -99.0},
    ]
    fig = plots.curves(history, path=tmp_path / "curves.png")
    assert isinstance(fig, Figure)
    read_png(tmp_path / "curves.png")
    ax = fig.axes[0]
    train, test = ax.lines
    assert list(train.get_xdata()) == [1, 2, 3]
    assert list(test.get_xdata()) == [2, 3]
    assert "nats" in ax.get_ylabel()
    # No test ELBO at all, and no history at all, still make a figure.
    assert len(plots.curves([{"epoch": 1, "train_elbo": -1.0, "test_elbo": None}]).axes[0].lines) == 1
    assert isinstance(plots.curves([]), Figure)


@pytest.mark.parametrize("latent_dim", [2, 3])
def test_save_all(digits, tmp_path, latent_dim):
    images, labels = digits
    history = [{"epoch": e, "train_elbo": -50.0 + e, "test_elbo": -52.0 + e} for e in range(1, 4)]
    vae = FakeVAE(latent_dim=latent_dim)
    paths = plots.save_all(vae, images[:1000], labels[:1000], images[1000:], history, tmp_path / "figs")
    expected = {"reconstructions", "samples", "latent_scatter", "curves"}
    if latent_dim == 2:
        expected.add("latent_manifold")
    assert set(paths) == expected
    assert {p.name for p in (tmp_path / "figs").iterdir()} == {f"{name}.png" for name in expected}
    for path in paths.values():
        read_png(path)


def test_save_all_without_labels(digits, tmp_path):
    paths = plots.save_all(FakeVAE(), digits[0][:200], None, None, [], tmp_path)
    assert all(p.is_file() for p in paths.values())
