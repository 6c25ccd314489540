"""pv.wrap: a Pyro model/guide pair written elsewhere (Pyro's own VAE tutorial) trains, evaluates, reloads and
draws pictures with no edit."""

import importlib.util
import pathlib

import pytest
import torch
from torch import nn

import pyro
import pyro.distributions as dist
from pyro.infer import Trace_ELBO

import pyro_vae as pv
from pyro_vae.errors import ConfigError

TUTORIAL = pathlib.Path(__file__).parent.parent / "fixtures" / "pyro_tutorial_vae.py"


@pytest.fixture(scope="module")
def tutorial():
    spec = importlib.util.spec_from_file_location("pyro_tutorial_vae", TUTORIAL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits28(mnist5k):
    train, test = mnist5k
    return train.subset(range(256)), test.subset(range(64))


def test_the_tutorial_vae_trains_evaluates_reloads_and_draws(tutorial, digits28, tmp_path):
    train, test = digits28
    torch.manual_seed(0)
    vae = pv.wrap(tutorial.VAE(z_dim=8, hidden_dim=64), image_shape=(1, 28, 28),
                  init_kwargs={"z_dim": 8, "hidden_dim": 64})
    assert (vae.code_site, vae.obs_site, vae.latent_dim) == ("latent", "obs", 8)   # found from one trace
    history = pv.fit(vae, train, test=test, epochs=2, progress=False, checkpoint_dir=tmp_path, eval_samples=20)
    assert history[-1]["train_elbo"] > history[0]["train_elbo"]
    for picture in ("samples.png", "reconstructions.png", "latent_scatter.png", "interpolation.png",
                    "traversal.png", "curves.png"):
        assert (tmp_path / picture).exists(), picture
    report = pv.evaluate.report(vae, test, num_samples=20)
    assert report["quantity"] == "log p(obs)" and report["log_likelihood"] >= report["elbo"] - 1.0

    # the ELBO pv.evaluate reports is Pyro's own Trace_ELBO on the same model and guide
    vae.eval()
    with torch.no_grad():
        pyro.set_rng_seed(1)
        ours = pv.evaluate.elbo(vae, test, num_samples=200)["elbo"]
        pyro.set_rng_seed(2)
        pyros = -Trace_ELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=1).loss(
            vae.module.model, vae.module.guide, test.images) / len(test)
    assert ours == pytest.approx(pyros, abs=0.5)

    again, config, state = pv.load_run(tmp_path, model_class=tutorial.VAE)
    assert config["vae"]["model"] == "VAE" and config["vae"]["wrapped"]["code_site"] == "latent"
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), vae.state_dict().values()))
    pyro.set_rng_seed(3)
    first = pv.evaluate.elbo(vae, test, num_samples=3)["elbo"]
    pyro.set_rng_seed(3)
    assert pv.evaluate.elbo(again, test, num_samples=3)["elbo"] == first
    with pytest.raises(ConfigError, match="model_class=VAE"):
        pv.load_run(tmp_path)
    assert again.sample(5).shape == (5, 1, 28, 28) and again.reconstruct(test.images[:3]).shape == (3, 1, 28, 28)


def test_wrap_refuses_what_it_cannot_use(tutorial):
    with pytest.raises(ConfigError, match="pass an instance"):
        pv.wrap(tutorial.VAE, image_shape=(1, 28, 28))
    with pytest.raises(ConfigError, match="code_site='z' is not a latent site of the guide"):
        pv.wrap(tutorial.VAE(z_dim=2, hidden_dim=8), image_shape=(1, 28, 28), code_site="z")

    class Unplated(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(2, 784)

        def model(self, x):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(2))
            pyro.sample("x", dist.Bernoulli(logits=self.net(z)).to_event(2), obs=x.reshape(-1, 784))

        def guide(self, x):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(2))

    with pytest.raises(ConfigError, match="outside the data plate"):
        pv.wrap(Unplated(), image_shape=(1, 28, 28))
