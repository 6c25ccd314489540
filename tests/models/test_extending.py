"""A user's own model is as safe as the built-in ones: a subclass with two latent groups is sampled from its
own priors, warned about and reloaded; per-image covariates reach model and guide; scores say what they are."""

import os
import subprocess
import sys
import warnings

import pytest
import torch

import pyro
import pyro.distributions as dist

import pyro_vae as pv
from pyro_vae.train import RebuildWarning


class TwoGroupVAE(pv.VAE):
    """z = (style, content): two latent groups with priors of their own, N(0, 0.5^2) and N(0, 2^2)."""

    top_sites = ("style", "content")   # what generate() decodes, declared: the pictures walk these sites

    def __init__(self, style_dim=2, **kwargs):
        super().__init__(**kwargs)
        self.style_dim = style_dim

    def model(self, x, y=None, covariates=None):
        pyro.module("vae", self)
        with pyro.plate("data", x.shape[-4]):
            style = pyro.sample("style", dist.Normal(x.new_zeros(self.style_dim), 0.5).to_event(1))
            content = pyro.sample("content", dist.Normal(x.new_zeros(self.latent_dim - self.style_dim), 2.0)
                                  .to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(torch.cat([style, content], -1))), obs=x)

    def guide(self, x, y=None, covariates=None):
        pyro.module("vae", self)
        loc, scale = self.encoder(x)
        s = self.style_dim
        with pyro.plate("data", x.shape[-4]):
            pyro.sample("style", dist.Normal(loc[..., :s], scale[..., :s]).to_event(1))
            pyro.sample("content", dist.Normal(loc[..., s:], scale[..., s:]).to_event(1))

    @property
    def config(self):
        return {**super().config, "style_dim": self.style_dim}


def two_groups():
    return TwoGroupVAE(style_dim=2, image_shape=(1, 8, 8), latent_dim=4, hidden=(32,))


def test_samples_of_a_subclass_come_from_its_own_priors():
    vae = two_groups()
    torch.manual_seed(0)
    trace = vae.trace_prior(20000)
    assert trace.nodes["style"]["value"].std().item() == pytest.approx(0.5, rel=0.03)
    assert trace.nodes["content"]["value"].std().item() == pytest.approx(2.0, rel=0.03)
    # the pictures decode those codes, not codes from vae.prior (N(0, I) over all four dimensions)
    torch.manual_seed(1)
    images = vae.sample(6)
    torch.manual_seed(1)
    codes = vae.trace_prior(6)
    z = torch.cat([codes.nodes["style"]["value"], codes.nodes["content"]["value"]], -1)
    assert torch.allclose(images, vae.generate(z))


def test_a_subclass_run_warns_at_save_time_and_reloads_with_its_class(digits_binary, tmp_path):
    train, test = digits_binary
    vae = two_groups()
    with pytest.warns(RebuildWarning, match="model_class=TwoGroupVAE"):
        pv.fit(vae, train, test=test, epochs=2, progress=False, checkpoint_dir=tmp_path, eval_samples=5)
    with pytest.raises(pv.ConfigError, match="model_class=TwoGroupVAE"):
        pv.load_run(tmp_path)
    loaded, config, state = pv.load_run(tmp_path, model_class=TwoGroupVAE)
    assert type(loaded) is TwoGroupVAE and loaded.style_dim == 2 and state["epoch"] == 2
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), vae.state_dict().values()))
    with pytest.raises(pv.ConfigError, match="describes a 'TwoGroupVAE', not a VAE"):
        pv.load_run(tmp_path, model_class=pv.VAE)
    # the run's pictures are of the subclass's own samples, and its scores are of log p(x)
    assert (tmp_path / "samples.png").exists()
    assert pv.checkpoint.RunFolder(tmp_path).read_metrics()["test"]["quantity"] == "log p(x)"


def test_a_model_of_this_package_does_not_warn(digits_binary, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RebuildWarning)
        pv.fit(pv.VAE(image_shape=(1, 8, 8), latent_dim=2, hidden=(16,)), digits_binary[0], epochs=1,
               progress=False, checkpoint_dir=tmp_path, eval_samples=0, pictures=False)


class CovariateVAE(pv.VAE):
    """p(x | z, c): the decoder reads the code and the image's covariates ``c`` (N, D)."""

    def __init__(self, num_covariates=1, image_shape=(1, 8, 8), latent_dim=3, hidden=(32,), **kwargs):
        decoder = kwargs.pop("decoder", None) or pv.networks.MLPDecoder(image_shape, latent_dim + num_covariates,
                                                                         hidden)
        super().__init__(image_shape=image_shape, latent_dim=latent_dim, hidden=hidden, decoder=decoder, **kwargs)
        self.num_covariates = num_covariates

    def model(self, x, y=None, covariates=None):
        pyro.module("vae", self)
        with pyro.plate("data", x.shape[-4]):
            z = pyro.sample("z", self.prior())
            c = covariates.expand(z.shape[:-1] + covariates.shape[-1:])   # sample dims in front of z
            pyro.sample("x", self.likelihood(self.decoder(torch.cat([z, c], -1))), obs=x)


@pytest.fixture(scope="module")
def with_brightness():
    """digits with one real-valued covariate per image: its mean grey level, standardised."""
    train, test = pv.data.load("digits", binarize="none")
    def wrap(data, binarize):
        brightness = data.images.mean((1, 2, 3))
        c = ((brightness - 0.3) / 0.1)[:, None]
        return pv.data.from_tensor(data.images, labels=data.labels, covariates=c, binarize=binarize, name=data.name)
    return wrap(train, "dynamic"), wrap(test, "static")


def test_covariates_reach_model_guide_and_scores(with_brightness, tmp_path):
    train, test = with_brightness
    pyro.set_rng_seed(0)
    vae = CovariateVAE()
    history = pv.fit(vae, train, test=test, epochs=4, progress=False)
    assert history[-1]["test_elbo"] > history[0]["test_elbo"] + 1.0   # it learns
    report = pv.evaluate.report(vae, test, num_samples=20)
    assert report["quantity"] == "log p(x|covariates)" and report["log_likelihood"] > report["elbo"] - 1.0
    # the covariate is used: another covariate gives another likelihood
    shifted = pv.data.from_tensor(test.images, covariates=test.covariates + 10.0, binarize="none")
    shifted.binarize, shifted.images = test.binarize, test.images
    assert pv.evaluate.elbo(vae, shifted)["elbo"] < report["elbo"] - 1.0
    with torch.no_grad():
        assert vae.sample(5, covariates=torch.zeros(5, 1)).shape == (5, 1, 8, 8)
    # a run folder of a covariate model: scores yes, standard pictures not (they would decode without them)
    with pytest.warns(UserWarning, match="covariates"):
        pv.fit(CovariateVAE(), train, test=test, epochs=1, progress=False, checkpoint_dir=tmp_path / "run",
               eval_samples=5)
    assert "test" in pv.checkpoint.RunFolder(tmp_path / "run").read_metrics()


def test_scores_of_a_model_that_observes_the_labels_say_so(digits_binary):
    from test_weighting import readme_labelled_vae
    vae = readme_labelled_vae()(image_shape=(1, 8, 8), latent_dim=2, hidden=(16,))
    test = digits_binary[1].subset(range(40))
    assert pv.evaluate.report(vae, test, num_samples=3)["quantity"] == "log p(x, y)"
    assert pv.evaluate.quantity(pv.VAE(image_shape=(1, 8, 8), latent_dim=2, hidden=(16,)), test) == "log p(x)"
    cvae = pv.extended.ConditionalVAE(image_shape=(1, 8, 8), latent_dim=2, num_classes=10, hidden=(16,))
    m2 = pv.extended.M2(image_shape=(1, 8, 8), latent_dim=2, num_classes=10, hidden=(16,), classifier_hidden=(16,))
    assert pv.evaluate.quantity(cvae, test) == "log p(x|y)" and pv.evaluate.quantity(m2, test) == "log p(x)"


@pytest.mark.slow
def test_no_pyro_internals_leak_to_the_user(tmp_path):
    """Pyro's 'Guessed max_plate_nesting' INFO line and torch.jit's deprecation warning are not the user's."""
    common = [sys.executable, "-m", "pyro_vae.cli", "train", "--dataset", "digits", "--epochs", "1", "--hidden",
              "16", "--latent-dim", "2", "--eval-samples", "3", "--no-progress"]
    for extra in (["--objective", "iwae"], ["--jit"], ["--num-particles", "2"]):
        done = subprocess.run(common + extra + ["--out", str(tmp_path / extra[-1])], capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "default"}, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        assert "Guessed max_plate_nesting" not in done.stderr and "FutureWarning" not in done.stderr, done.stderr
