"""Traversals and the explorer follow the model's own priors: each latent group is moved by the spread of the
model's ancestral draws at its site (``trace_prior``), not by ``vae.prior``, and coordinates are named by site."""

import math

import pytest
import torch

import pyro
import pyro.distributions as dist

import pyro_vae as pv
from pyro_vae import explorer, plots
from pyro_vae.viz import walks

LAPLACE_SCALE = 0.25
MEANS = torch.tensor([[-2.0, 3.0], [0.0, -1.0], [2.5, 0.5]])   # (components, size of z)
COMPONENT_SCALE = 0.3


class TwoGroupVAE(pv.VAE):
    r"""Two latent groups with priors of their own, decoded together::

        z_style_n ~ Laplace(0, 0.25)                                   event shape (2,)
        z_n       ~ sum_k 1/3 N(MEANS[k], 0.3^2 I)                     event shape (2,)
        x_n       ~ likelihood(decoder([z_style_n, z_n]))              event shape (C, H, W)

    ``vae.prior`` stays the default N(0, I), which the model never uses.
    """

    top_sites = ("z_style", "z")

    def __init__(self, image_shape=(1, 8, 8), latent_dim=4, hidden=(16,), **parts):
        super().__init__(image_shape=image_shape, latent_dim=latent_dim, hidden=hidden, **parts)

    def model(self, x, y=None, covariates=None):
        self.register()
        with pyro.plate("data", x.shape[-4]):
            style = pyro.sample("z_style", dist.Laplace(x.new_zeros(2), LAPLACE_SCALE).to_event(1))
            mixture = dist.MixtureSameFamily(dist.Categorical(logits=x.new_zeros(len(MEANS))),
                                             dist.Normal(MEANS.to(x), COMPONENT_SCALE).to_event(1))
            z = pyro.sample("z", mixture)
            pyro.sample("x", self.likelihood(self.decoder(torch.cat([style, z], -1))), obs=x)

    def guide(self, x, y=None, covariates=None):
        self.register()
        with pyro.plate("data", x.shape[-4]):
            loc, scale = self.encoder(x)
            pyro.sample("z_style", dist.Normal(loc[..., :2], scale[..., :2]).to_event(1))
            pyro.sample("z", dist.Normal(loc[..., 2:], scale[..., 2:]).to_event(1))


def _exact_spread():
    """Marginal standard deviations (4,) of [z_style, z], from the distributions' formulas."""
    laplace = torch.full((2,), math.sqrt(2.0) * LAPLACE_SCALE)
    mixture = (COMPONENT_SCALE ** 2 + MEANS.pow(2).mean(0) - MEANS.mean(0).pow(2)).sqrt()
    return torch.cat([laplace, mixture])


@pytest.fixture
def two_groups():
    torch.manual_seed(0)
    return TwoGroupVAE().eval()


def test_each_group_is_moved_by_the_spread_of_its_own_prior(two_groups, digits_binary):
    vae, x = two_groups, digits_binary[1].images[:30]
    torch.manual_seed(5)
    expected_next = torch.rand(1)
    torch.manual_seed(5)
    walk = walks.traversal_frames(vae, x, span=2.0, steps=5)
    assert torch.equal(torch.rand(1), expected_next)   # the prior draws used a forked stream
    # against the formulas, and against the std of many more draws of the model made here, another seed
    assert torch.allclose(walk.scale, _exact_spread(), rtol=0.06)
    with torch.no_grad():
        torch.manual_seed(1)
        trace = vae.trace_prior(20000)
    drawn = torch.cat([trace.nodes["z_style"]["value"], trace.nodes["z"]["value"]], -1).std(0)
    assert torch.allclose(walk.scale, drawn, rtol=0.06)
    assert not torch.allclose(walk.scale, torch.ones(4), rtol=0.2)   # what vae.prior (N(0, I)) would give
    assert torch.equal(walk.scale, walks.traversal_frames(vae, x, span=2.0, steps=5).scale)   # fixed seed
    with torch.no_grad():   # each row moves its coordinate by offsets times that coordinate's spread
        for row, d in enumerate(walk.dims):
            z = walk.start.repeat(5, 1)
            z[:, d] += torch.linspace(-2.0, 2.0, 5) * walk.scale[d]
            assert torch.allclose(walk.images[row], vae.generate(z), atol=1e-6)


def test_traversal_rows_are_named_by_site(two_groups, digits_binary):
    vae, images = two_groups, digits_binary[1].images
    fig = plots.traversal(vae, images[0], data=images[:200])
    names = [label.get_text().split()[0] for label in fig.axes[0].get_yticklabels()]
    assert sorted(names) == ["z[0]", "z[1]", "z_style[0]", "z_style[1]"]
    with torch.no_grad():
        activity = vae.encode(images[:200])[0].var(0)
    order = torch.argsort(activity, descending=True, stable=True).tolist()
    assert names == [["z_style[0]", "z_style[1]", "z[0]", "z[1]"][d] for d in order]
    assert "(z_style, z)" in fig.axes[0].get_title()
    chosen = plots.traversal(vae, images[0], dims=[3, 0])
    assert [label.get_text() for label in chosen.axes[0].get_yticklabels()] == ["z[1]", "z_style[0]"]


def test_explorer_page_names_the_sites(two_groups, digits_binary, tmp_path):
    vae, test = two_groups, digits_binary[1]
    path = explorer.write_html(vae, test.subset(range(60)), tmp_path / "explorer.html", steps=5)
    text = path.read_text(encoding="utf-8")
    header = text[text.index("<header>"): text.index("</header>")]
    assert "latent z_style: 2 dimensions, z: 2 dimensions" in header
    for name in ("z_style[0]", "z_style[1]", "z[0]", "z[1]"):
        assert f'aria-label="{name}"' in text
    walk = walks.traversal_frames(vae, test.images[0], steps=5, data_images=test.images[:60],
                                   data_labels=test.labels[:60])
    d = walk.dims[0]
    value = float(walk.start[d] + walk.offsets[-1] * walk.scale[d])
    assert f"+3.00 sd ({walk.names[d]} = {value:.2f})" in text   # the caption uses the site's own spread


def test_the_hierarchy_moves_z2_by_its_prior(digits_binary):
    torch.manual_seed(0)
    vae = pv.extended.HierarchicalVAE(image_shape=(1, 8, 8), latent_dims=(4, 3), hidden=(16,), latent_hidden=(8,),
                                      prior=pv.priors.LearnedNormal()).eval()
    with torch.no_grad():
        vae.prior.raw_scale.copy_(torch.tensor([0.4, 1.5, 3.0]).expm1().log())   # softplus^-1
    exact = torch.nn.functional.softplus(vae.prior.raw_scale.detach()) + 1e-4
    walk = walks.traversal_frames(vae, digits_binary[1].images[:20], steps=3)
    assert torch.allclose(walk.scale, exact, rtol=0.04)
    assert walk.names == ["z2[0]", "z2[1]", "z2[2]"]


def test_a_standard_normal_site_moves_exactly_one_unit(digits_binary):
    vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=3, hidden=(16,))
    walk = walks.traversal_frames(vae, digits_binary[1].images[:10], steps=3)
    assert torch.equal(walk.scale, torch.ones(3))
    assert walk.names == ["z[0]", "z[1]", "z[2]"]


class _Misdeclared(TwoGroupVAE):
    top_sites = ("z_style", "w")


class _TooFew(TwoGroupVAE):
    top_sites = ("z",)


@pytest.mark.parametrize("cls, match", [(_Misdeclared, r"no latent site 'w'.*set _Misdeclared\.top_sites"),
                                        (_TooFew, r"4 coordinates \(top_dim\) but its top_sites draw z 2; "
                                                  r"set _TooFew\.top_sites")])
def test_a_wrong_top_sites_is_refused_in_one_line(cls, match, digits_binary):
    with pytest.raises(pv.ConfigError, match=match) as error:
        plots.traversal(cls(), digits_binary[1].images[0])
    assert "\n" not in str(error.value)


class LaplaceCodes(pv.VAE):
    """z ~ Laplace(0, 2) of its own (``vae.prior`` stays N(0, I), unused); 2-D, so it has a latent manifold."""

    def model(self, x, y=None, covariates=None):
        self.register()
        with pyro.plate("data", x.shape[-4]):
            z = pyro.sample("z", dist.Laplace(x.new_zeros(self.latent_dim), 2.0).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)


def test_the_latent_manifold_spans_the_models_own_prior():
    vae = LaplaceCodes(image_shape=(1, 8, 8), latent_dim=2, hidden=(16,))
    ax = plots.latent_manifold(vae, n=5).axes[0]
    probs = torch.linspace(0.05, 0.95, 5)
    exact = torch.where(probs < 0.5, 2.0 * torch.log(2 * probs), -2.0 * torch.log(2 * (1 - probs)))  # Laplace icdf
    assert [float(t.get_text()) for t in ax.get_xticklabels()] == pytest.approx(exact.tolist(), abs=0.15)
    assert [float(t.get_text()) for t in ax.get_yticklabels()] == pytest.approx(exact.flip(0).tolist(), abs=0.15)


def test_the_latent_manifold_of_a_conditional_vae_with_a_mixture_prior():
    torch.manual_seed(0)
    cvae = pv.extended.ConditionalVAE(image_shape=(1, 8, 8), latent_dim=2, num_classes=10, hidden=(16,),
                                      prior=pv.priors.MixtureOfGaussians(3))
    ax = plots.latent_manifold(cvae, n=4).axes[0]   # the codes are drawn under uniform labels
    with torch.no_grad():
        draws = cvae.prior().sample((20000,))
    shown = [float(t.get_text()) for t in ax.get_xticklabels()]
    assert shown == pytest.approx(torch.quantile(draws[:, 0], torch.linspace(0.05, 0.95, 4)).tolist(), abs=0.1)


class _Undeclared(TwoGroupVAE):
    """The two groups renamed, and nothing declared: the pictures cannot know which sites make the code."""

    top_sites = None

    def model(self, x, y=None, covariates=None):
        self.register()
        with pyro.plate("data", x.shape[-4]):
            style = pyro.sample("style", dist.Laplace(x.new_zeros(2), LAPLACE_SCALE).to_event(1))
            content = pyro.sample("content", dist.Normal(x.new_zeros(2), 2.0).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(torch.cat([style, content], -1))), obs=x)

    def guide(self, x, y=None, covariates=None):
        self.register()
        with pyro.plate("data", x.shape[-4]):
            loc, scale = self.encoder(x)
            pyro.sample("style", dist.Normal(loc[..., :2], scale[..., :2]).to_event(1))
            pyro.sample("content", dist.Normal(loc[..., 2:], scale[..., 2:]).to_event(1))


def test_undeclared_sites_leave_out_the_traversal_of_a_run_with_a_warning(digits_binary, tmp_path):
    vae, test = _Undeclared(), digits_binary[1]
    with pytest.raises(pv.ConfigError, match=r"no latent site 'z'.*set _Undeclared\.top_sites"):
        plots.traversal(vae, test.images[0])
    with pytest.warns(UserWarning, match=r"traversal\.png is not drawn: .*set _Undeclared\.top_sites"):
        paths = plots.save_all(vae, test.images[:40], test.labels[:40], None, [], tmp_path)
    assert "traversal" not in paths and not (tmp_path / "traversal.png").exists()
    assert all(paths[name].exists() for name in ("reconstructions", "samples", "latent_scatter"))
