"""Tests for pyro_vae.plots, using a tiny stand-in VAE on the scikit-learn 8x8 digits."""

import math

import matplotlib.image
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

import pyro
import pyro.distributions as dist

import pyro_vae as pv
from pyro_vae import plots
from pyro_vae.viz import walks

sklearn_datasets = pytest.importorskip("sklearn.datasets")


class FakeVAE(nn.Module):
    """Linear encoder/decoder with the interface the pictures read, declared as the real VAE declares it
    (z ~ N(0, I) is its code and its top latent; the top_* methods and the prior draws are the VAE's own).

    It checks that the plotting code never builds autograd graphs and always moves inputs to its device.
    """

    code_site, obs_site, top_sites = "z", "x", None
    label_role, num_classes, classifies = "ignored", None, False
    top_dim = pv.VAE.top_dim
    top_codes = pv.VAE.top_codes
    decode_top = pv.VAE.decode_top
    trace_prior = pv.VAE.trace_prior
    sample_codes = pv.VAE.sample_codes

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

    def model(self, x, y=None):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(probs=self.generate(z)).to_event(3), obs=x)

    def encode(self, x, y=None):
        self._check(x)
        loc, raw_scale = self.encoder(x.flatten(-3)).chunk(2, dim=-1)
        return loc, nn.functional.softplus(raw_scale) + 1e-3

    def generate(self, z, y=None):
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
    expected = {"reconstructions", "samples", "latent_scatter", "curves", "interpolation", "traversal"}
    if latent_dim == 2:
        expected.add("latent_manifold")
    assert set(paths) == expected
    assert {p.name for p in (tmp_path / "figs").iterdir()} == {f"{name}.png" for name in expected}
    for path in paths.values():
        read_png(path)


def test_save_all_without_labels(digits, tmp_path):
    paths = plots.save_all(FakeVAE(), digits[0][:200], None, None, [], tmp_path)
    assert all(p.is_file() for p in paths.values())


# --- interpolation and traversal, on briefly trained models of every kind ----------------------------

KINDS = ("vae", "cvae", "m2", "hvae")


@pytest.fixture(scope="module", params=KINDS)
def trained(request, digits_binary, train_small_model):
    train, test = digits_binary
    return request.param, train_small_model(request.param, train), test


def _shown(fig):
    """The image of a grid figure as a ``(3, H, W)`` tensor."""
    return torch.tensor(fig.axes[0].images[0].get_array().data).permute(2, 0, 1)


def _labelled(vae):
    return vae.label_role != "ignored"


def _reference_slerp(a, b, t):
    """Textbook slerp of the directions (sin-weights), with the length interpolated linearly."""
    la, lb = a.norm(), b.norm()
    ua, ub = a / la, b / lb
    omega = torch.arccos((ua @ ub).clamp(-1, 1))
    direction = (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / torch.sin(omega)
    return ((1 - t) * la + t * lb) * direction


@pytest.mark.parametrize("spherical", [False, True])
def test_interpolation_decodes_the_path_between_top_codes(trained, tmp_path, spherical):
    kind, vae, test = trained
    x_a, x_b = test.images[:2], test.images[10:12]
    y = test.labels[:2] if _labelled(vae) else None
    steps = 5
    fig = plots.interpolation(vae, x_a, x_b, steps=steps, spherical=spherical, y=y, path=tmp_path / "interp.png")
    read_png(tmp_path / "interp.png")
    t = torch.linspace(0, 1, steps)
    with torch.no_grad():
        a, b = vae.top_codes(x_a, y), vae.top_codes(x_b, y)
        assert a.shape == (2, vae.top_dim)
        rows = []
        for i in range(2):
            codes = torch.stack([_reference_slerp(a[i], b[i], s) if spherical else a[i] + s * (b[i] - a[i]) for s in t])
            decoded = vae.decode_top(codes, None if y is None else y[i])
            rows.append(torch.cat([x_a[i : i + 1], decoded, x_b[i : i + 1]]))
    expected = plots.image_grid(torch.cat(rows), nrow=steps + 2)
    assert torch.allclose(_shown(fig), expected, atol=1e-5)
    ax = fig.axes[0]
    ticks = [label.get_text() for label in ax.get_xticklabels()]
    assert ticks[0] == "x_a" and ticks[-1] == "x_b"
    assert [label.get_text() for label in ax.get_yticklabels()] == ([f"y={int(c)}" for c in y] if y is not None else [])


def test_interpolation_of_single_images_and_a_midpoint(trained):
    kind, vae, test = trained
    fig = plots.interpolation(vae, test.images[0], test.images[1], steps=1)
    # one row of x_a, the decoded midpoint, x_b
    assert _shown(fig).shape == (3, 8 + 4, 3 * 10 + 2)
    assert [label.get_text() for label in fig.axes[0].get_xticklabels()] == ["x_a", "0.5", "x_b"]


def test_interpolation_label_defaults_to_the_class_of_x_a(trained):
    kind, vae, test = trained
    if not _labelled(vae):
        pytest.skip("models that use labels only")
    x_a, x_b = test.images[:3], test.images[3:6]
    torch.manual_seed(5)
    expected_next = torch.rand(1)
    torch.manual_seed(5)
    fig = plots.interpolation(vae, x_a, x_b, steps=4)
    assert torch.equal(torch.rand(1), expected_next)   # the conditional VAE's sampled classifier used a fork
    used = [int(label.get_text().removeprefix("y=")) for label in fig.axes[0].get_yticklabels()]
    assert len(used) == 3 and all(0 <= c < 10 for c in used)
    if kind == "m2":   # M2 classifies with q(y|x), deterministically
        assert used == vae.classify(x_a).tolist()
    given = plots.interpolation(vae, x_a, x_b, steps=4, y=torch.tensor(used))
    assert torch.equal(_shown(fig), _shown(given))
    # -1 means "classify this one"; the others keep the label given
    mixed = plots.interpolation(vae, x_a, x_b, steps=4, y=torch.tensor([-1, 7, -1])).axes[0].get_yticklabels()
    assert mixed[1].get_text() == "y=7"
    if kind == "m2":   # the conditional VAE's classifier samples, so its guesses depend on what else it classifies
        assert [label.get_text() for label in mixed] == [f"y={c}" for c in (used[0], 7, used[2])]
    # an int is one label for every row
    rows = plots.interpolation(vae, x_a, x_b, steps=4, y=7).axes[0].get_yticklabels()
    assert [label.get_text() for label in rows] == ["y=7"] * 3


def test_interpolation_is_reproducible(trained):
    kind, vae, test = trained
    first = _shown(plots.interpolation(vae, test.images[:2], test.images[2:4], steps=3))
    assert torch.equal(first, _shown(plots.interpolation(vae, test.images[:2], test.images[2:4], steps=3)))


def test_slerp_keeps_the_length_and_turns_at_constant_speed():
    torch.manual_seed(0)
    a = torch.randn(3, 5)
    b = torch.randn(3, 5)
    b = b / b.norm(dim=-1, keepdim=True) * a.norm(dim=-1, keepdim=True)   # equal lengths
    t = torch.linspace(0, 1, 7)
    path = walks.interpolate_codes(a, b, t, spherical=True)
    assert path.shape == (3, 7, 5)
    assert torch.allclose(path[:, 0], a, atol=1e-5) and torch.allclose(path[:, -1], b, atol=1e-5)
    assert torch.allclose(path.norm(dim=-1), a.norm(dim=-1, keepdim=True).expand(-1, 7), atol=1e-5)
    unit = path / path.norm(dim=-1, keepdim=True)
    steps = torch.arccos((unit[:, 1:] * unit[:, :-1]).sum(-1).clamp(-1, 1))
    assert torch.allclose(steps, steps[:, :1].expand_as(steps), atol=1e-4)
    # the straight line is the default
    assert torch.allclose(walks.interpolate_codes(a, b, t)[:, 3], (a + b) / 2, atol=1e-6)


def test_slerp_degenerate_codes():
    t = torch.linspace(0, 1, 5)
    a = torch.tensor([[1.0, 2.0, -2.0]])
    line = walks.interpolate_codes
    # parallel: the circle degenerates to the straight line (its limit)
    assert torch.allclose(line(a, 3 * a, t, spherical=True), line(a, 3 * a, t), atol=1e-5)
    # a zero code has no direction: the straight line
    zero = torch.zeros_like(a)
    assert torch.allclose(line(zero, a, t, spherical=True), line(zero, a, t))
    # antiparallel: half a great circle through a fixed perpendicular direction, finite, length kept
    half = line(a, -a, t, spherical=True)
    assert torch.isfinite(half).all()
    assert torch.allclose(half[:, 0], a, atol=1e-5) and torch.allclose(half[:, -1], -a, atol=1e-5)
    assert torch.allclose(half.norm(dim=-1), torch.full((1, 5), 3.0), atol=1e-5)
    assert abs(float(half[0, 2] @ a[0])) < 1e-5   # the midpoint is perpendicular to both ends
    assert torch.equal(half, line(a, -a, t, spherical=True))   # the same turn every time
    # antiparallel in 1-D: no perpendicular exists, the straight line through 0
    one = torch.tensor([[2.0]])
    assert torch.allclose(line(one, -one, t, spherical=True), line(one, -one, t))


def test_interpolation_refuses_bad_input(trained):
    kind, vae, test = trained
    big = torch.zeros(2, 1, 28, 28)
    with pytest.raises(pv.DataError, match=r"\(1, 28, 28\).*\(1, 8, 8\)") as error:
        plots.interpolation(vae, big, big)
    assert "\n" not in str(error.value)
    with pytest.raises(pv.DataError, match="channels|shape"):
        plots.interpolation(vae, test.images[:2].permute(0, 2, 3, 1), test.images[:2])
    with pytest.raises(pv.DataError, match="x_a has 2 images but x_b has 3"):
        plots.interpolation(vae, test.images[:2], test.images[:3])
    for steps in (0, -1, 2.5, True):
        with pytest.raises(pv.ConfigError, match="steps must be a positive integer"):
            plots.interpolation(vae, test.images[0], test.images[1], steps=steps)
    if _labelled(vae):
        with pytest.raises(pv.ConfigError, match="out of range"):
            plots.interpolation(vae, test.images[0], test.images[1], y=10)


def test_traversal_moves_one_coordinate_of_the_top_code(trained, tmp_path):
    kind, vae, test = trained
    x = test.images[5]
    y = int(test.labels[5]) if _labelled(vae) else None
    fig = plots.traversal(vae, x, y=y, data=test, path=tmp_path / "traversal.png")
    read_png(tmp_path / "traversal.png")
    with torch.no_grad():
        # activity: variance of the top posterior means over the data, each image under its own label
        codes = vae.top_codes(test.images, test.labels if _labelled(vae) else None)
        activity = codes.var(dim=0)
        start = vae.top_codes(x[None], None if y is None else torch.tensor([y]))[0]
        dims = torch.argsort(activity, descending=True, stable=True).tolist()
        offsets = torch.linspace(-3.0, 3.0, 9)   # N(0, I) prior: exactly +-span
        rows = []
        for d in dims:
            z = start.repeat(9, 1)
            z[:, d] += offsets
            rows.append(vae.decode_top(z, y))
    assert len(dims) == vae.top_dim   # all of them: at most 10 rows
    assert torch.allclose(_shown(fig), plots.image_grid(torch.cat(rows), nrow=9), atol=1e-5)
    with torch.no_grad():   # the middle column is the start code decoded
        assert torch.allclose(rows[0][4], vae.decode_top(start, y), atol=1e-6)
    ax = fig.axes[0]
    name = "z2" if kind == "hvae" else "z"
    assert [label.get_text() for label in ax.get_yticklabels()] == [
        f"{name}[{d}]  var {float(activity[d]):.2f}" for d in dims]
    assert [label.get_text() for label in ax.get_xticklabels()][0] == "-3"
    assert "standard deviations" in ax.get_xlabel()


def test_traversal_of_chosen_dims_and_of_one_image(trained):
    kind, vae, test = trained
    y = int(test.labels[0]) if _labelled(vae) else None
    fig = plots.traversal(vae, test.images[0], dims=[2, 0], steps=3, span=1.5, y=y)
    labels = [label.get_text() for label in fig.axes[0].get_yticklabels()]
    # one image: no activity to show, rows in the order asked
    assert labels == [f"{'z2' if kind == 'hvae' else 'z'}[2]", f"{'z2' if kind == 'hvae' else 'z'}[0]"]
    assert _shown(fig).shape == (3, 2 * 10 + 2, 3 * 10 + 2)
    with torch.no_grad():
        start = vae.top_codes(test.images[:1], None if y is None else torch.tensor([y]))[0]
        z = start.repeat(3, 1)
        z[:, 2] += torch.tensor([-1.5, 0.0, 1.5])
        first_row = vae.decode_top(z, y)
    assert torch.allclose(_shown(fig)[:, :12, :], plots.image_grid(first_row, nrow=3)[:, :12, :], atol=1e-5)
    # a batch without data: activity over the batch, and its first image is the start
    batch = plots.traversal(vae, test.images[:40], y=y)
    assert all("var" in label.get_text() for label in batch.axes[0].get_yticklabels())


def test_traversal_uses_the_prior_marginal_scale(digits_binary):
    vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=3, hidden=(16,), prior=pv.priors.LearnedNormal())
    with torch.no_grad():
        vae.prior.loc.copy_(torch.tensor([1.0, -2.0, 0.0]))
        vae.prior.raw_scale.copy_(torch.tensor([0.5, 2.0, 1.0]).expm1().log())   # softplus^-1
    exact = torch.nn.functional.softplus(vae.prior.raw_scale.detach()) + 1e-4
    x = digits_binary[1].images[:30]
    torch.manual_seed(3)
    expected_next = torch.rand(1)
    torch.manual_seed(3)
    result = walks.traversal_frames(vae, x, span=2.0, steps=5)
    assert torch.equal(torch.rand(1), expected_next)   # the prior draws used a forked, seeded stream
    assert torch.allclose(result.scale, exact, rtol=0.03)
    assert torch.equal(result.scale, walks.traversal_frames(vae, x, span=2.0, steps=5).scale)   # fixed seed
    with torch.no_grad():
        d = result.dims[0]
        z = result.start.repeat(5, 1)
        z[:, d] += torch.linspace(-2.0, 2.0, 5) * result.scale[d]
        assert torch.allclose(result.images[0], vae.generate(z), atol=1e-6)


def test_traversal_picks_at_most_ten_of_the_most_active_dims(digits_binary):
    torch.manual_seed(0)
    vae = FakeVAE(latent_dim=12)   # the VAE's own top_* methods: z is the top latent
    with torch.no_grad():
        # posterior mean k is (k + 1) times the same projection of the pixels: its variance grows with k
        vae.encoder.weight[:12] = torch.arange(1, 13).float()[:, None] * vae.encoder.weight[:1]
        vae.encoder.bias[:12] = 0.0
    images = digits_binary[1].images
    fig = plots.traversal(vae, images[0], data=images)
    dims = [int(label.get_text().split("]")[0].removeprefix("z[")) for label in fig.axes[0].get_yticklabels()]
    with torch.no_grad():
        activity = vae.encode(images)[0].var(dim=0)
    assert dims == torch.argsort(activity, descending=True)[:10].tolist() == list(range(11, 1, -1))


@pytest.mark.parametrize("dims", [[7], [-1], [1.5], ["a"], [], 7, [True], torch.tensor([0.0])])
def test_traversal_refuses_dims_that_do_not_exist(trained, dims):
    kind, vae, test = trained
    with pytest.raises(pv.ConfigError, match=rf"dims must be .* in 0\.\.{vae.top_dim - 1}") as error:
        plots.traversal(vae, test.images[0], dims=dims)
    assert "\n" not in str(error.value)


def test_traversal_refuses_bad_input(trained):
    kind, vae, test = trained
    with pytest.raises(pv.DataError, match=r"\(3, 8, 8\).*\(1, 8, 8\)"):
        plots.traversal(vae, torch.zeros(3, 8, 8))
    with pytest.raises(pv.DataError, match="data has images of shape"):
        plots.traversal(vae, test.images[0], data=torch.zeros(5, 1, 28, 28))
    for bad in (0, 2.0, None):
        with pytest.raises(pv.ConfigError, match="steps"):
            plots.traversal(vae, test.images[0], steps=bad)
    for bad in (0, -1.0, float("nan"), float("inf"), "3"):
        with pytest.raises(pv.ConfigError, match="span"):
            plots.traversal(vae, test.images[0], span=bad)


def test_pair_prefers_another_class():
    assert walks.pair(torch.tensor([3, 3, -1, 5, 1]), 5) == (0, 3)
    assert walks.pair(torch.tensor([3, 3, 3]), 3) == (0, 1)     # one class only
    assert walks.pair(torch.tensor([-1, 2, 4]), 3) == (0, 1)    # first label unknown
    assert walks.pair(None, 4) == (0, 1)
    assert walks.pair(None, 1) == (0, 0)


def test_save_all_interpolates_between_classes(trained, tmp_path, monkeypatch):
    kind, vae, test = trained
    calls = []
    drawn = plots.interpolation

    def recorded(vae, x_a, x_b, **kwargs):
        calls.append((x_a, x_b, kwargs.get("y")))
        return drawn(vae, x_a, x_b, **kwargs)

    monkeypatch.setattr(plots, "interpolation", recorded)
    paths = plots.save_all(vae, test.images[:100], test.labels[:100], test.images, [], tmp_path,
                           test_labels=test.labels)
    for name in ("interpolation", "traversal"):
        assert paths[name] == tmp_path / f"{name}.png"
        read_png(paths[name])
    (x_a, x_b, y), = calls
    b = int(next(i for i in range(len(test)) if test.labels[i] != test.labels[0]))
    assert torch.equal(x_a, test.images[0]) and torch.equal(x_b, test.images[b])   # the test images, two classes
    assert y == int(test.labels[0])   # the true label, which spares a conditional VAE its classifier
