"""Tests for pyro_vae.plots, using a tiny stand-in VAE on the scikit-learn 8x8 digits."""

import math

import matplotlib.image
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

import pyro_vae as pv
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


def test_latent_manifold_covers_the_prior_it_was_given():
    # a prior centred at (5, -3): an N(0, I) grid would decode codes the model never generates
    vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=2, hidden=(16,), prior=pv.priors.LearnedNormal())
    with torch.no_grad():
        vae.prior.loc.copy_(torch.tensor([5.0, -3.0]))
    torch.manual_seed(1)
    before = torch.rand(1)
    torch.manual_seed(1)
    ax = plots.latent_manifold(vae, n=5).axes[0]
    assert torch.equal(torch.rand(1), before)   # the caller's random stream is untouched
    scale = torch.nn.functional.softplus(vae.prior.raw_scale.detach()) + 1e-4
    exact = torch.distributions.Normal(torch.tensor([5.0, -3.0]), scale).icdf(torch.linspace(0.05, 0.95, 5)[:, None])
    shown_z1 = [float(t.get_text()) for t in ax.get_xticklabels()]
    shown_z2 = [float(t.get_text()) for t in ax.get_yticklabels()]
    assert shown_z1 == pytest.approx(exact[:, 0].tolist(), abs=0.05)
    assert shown_z2 == pytest.approx(exact[:, 1].flip(0).tolist(), abs=0.05)   # z2 grows bottom to top


def test_hierarchical_codes_are_z1_drawn_through_z2():
    hvae = pv.extended.HierarchicalVAE(image_shape=(1, 8, 8), latent_dims=(2, 3), latent_hidden=(8,), hidden=(16,))
    codes = hvae.sample_codes(500)
    assert codes.shape == (500, 2)   # what generate() decodes, not z2
    assert plots.latent_manifold(hvae, n=4).axes[0].images[0].get_array().shape == (32, 32, 3)


def test_figures_of_a_conditional_vae_use_the_true_labels(digits):
    images, labels = digits[0][:8], digits[1][:8]
    torch.manual_seed(0)
    cvae = pv.extended.ConditionalVAE(image_shape=(1, 8, 8), latent_dim=2, num_classes=10, hidden=(16,))
    cvae.eval()
    with torch.no_grad():
        expected = plots.image_grid(torch.cat([images, cvae.reconstruct(images, labels)]), nrow=8)
        guessed = plots.image_grid(torch.cat([images, cvae.reconstruct(images)]), nrow=8)
        means = cvae.encode(images, labels)[0]
    shown = torch.tensor(plots.reconstructions(cvae, images, labels=labels).axes[0].images[0].get_array().data)
    assert torch.allclose(shown.permute(2, 0, 1), expected, atol=1e-6)
    assert not torch.allclose(expected, guessed, atol=1e-3)   # the labels matter for this model
    ax = plots.latent_scatter(cvae, images, labels).axes[0]
    points = torch.tensor([list(p) for c in ax.collections for p in c.get_offsets()])
    assert torch.allclose(points[points[:, 0].argsort()], means[means[:, 0].argsort()].double(), atol=1e-5)


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
    # with beta, warm-up or M2's classification term the training line is not an ELBO: it is named for what it is
    assert [line.get_label() for line in ax.lines] == ["training objective", "test ELBO"]
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
