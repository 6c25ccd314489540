"""beta and KL warm-up weight every latent site of any model from outside: the README's subclass and a model
and guide written from scratch train the beta-VAE objective, checked against an independent computation."""

import math
import re
from pathlib import Path

import pytest
import torch
import torch.distributions as td
from torch import nn

import pyro
import pyro.distributions as dist
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

import pyro_vae as pv
from pyro_vae.inference.traces import LatentWeight

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_labelled_vae():
    block = next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
                 if "class LabelledVAE" in b)
    namespace = {}
    exec(block, namespace)
    return namespace["LabelledVAE"]


class Scratch(nn.Module):
    """A VAE written from scratch (not a pv.VAE): Pyro model and guide, its own networks and names."""

    obs_site, code_site = "pixels", "code"   # the contract: a model naming its own sites declares them

    def __init__(self, pixels=64, latent=3):
        super().__init__()
        self.enc = nn.Linear(pixels, 2 * latent)
        self.dec = nn.Linear(latent, pixels)
        self.latent = latent

    def encode(self, x):
        loc, raw = self.enc(x.flatten(-3)).chunk(2, -1)
        return loc, nn.functional.softplus(raw) + 1e-3

    def model(self, x, y=None):
        pyro.module("scratch", self)
        with pyro.plate("data", x.shape[0]):
            code = pyro.sample("code", dist.Normal(x.new_zeros(self.latent), 1.0).to_event(1))
            pyro.sample("pixels", dist.Bernoulli(logits=self.dec(code).unflatten(-1, x.shape[1:])).to_event(3), obs=x)

    def guide(self, x, y=None):
        pyro.module("scratch", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("code", dist.Normal(*self.encode(x)).to_event(1))


def _independent_objective(encode, decode, x, beta, seed, log_py=0.0):
    """-(log p(x|z) + log p(y) + beta (log p(z) - log q(z|x))), summed over the batch, for the z that Pyro's
    guide draws first after seeding (one reparameterised Normal draw): torch.distributions only, no Pyro."""
    torch.manual_seed(seed)
    loc, scale = encode(x)
    z = td.Normal(loc, scale).rsample()
    reconstruction = td.Bernoulli(logits=decode(z)).log_prob(x).flatten(1).sum(-1)
    kl = td.Normal(loc, scale).log_prob(z).sum(-1) - td.Normal(0.0, 1.0).log_prob(z).sum(-1)
    return -(reconstruction + log_py - beta * kl).sum()


def _fit_objective(model_obj, data, beta, seed, warmup=0, epochs=1):
    """The training objective fit reports for one step over the whole dataset (the loss before that step)."""
    history = pv.fit(model_obj, data, epochs=epochs, batch_size=len(data), beta=beta, warmup=warmup, seed=seed,
                     lr=1e-12, optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr), progress=False)
    return history


@pytest.fixture(scope="module")
def static_digits():
    train, _ = pv.data.load("digits", binarize="static")
    return train.subset(range(96))


def _ordered(data, seed):
    """The images in the order of fit's first epoch (its shuffle generator is seeded with the seed)."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.images[order], data.labels[order]


@pytest.mark.parametrize("beta", [1.0, 4.0, 50.0])
def test_readme_subclass_trains_reconstruction_plus_beta_kl(beta, static_digits):
    pyro.set_rng_seed(0)
    vae = readme_labelled_vae()(image_shape=(1, 8, 8), latent_dim=3, hidden=(16,))
    reported = _fit_objective(vae, static_digits, beta, seed=3)[0]["train_elbo"] * len(static_digits)
    x, y = _ordered(static_digits, 3)
    expected = _independent_objective(vae.encoder, lambda z: vae.decoder(z), x, beta, seed=3,
                                      log_py=-math.log(10))
    assert -reported == pytest.approx(expected.item(), rel=1e-5)
    if beta == 1.0:   # the plain ELBO, as Pyro's Trace_ELBO computes it
        pyro.set_rng_seed(3)
        assert -reported == pytest.approx(Trace_ELBO().loss(vae.model, vae.guide, x, y), rel=1e-5)


@pytest.mark.parametrize("beta", [1.0, 4.0])
def test_model_and_guide_from_scratch_are_weighted_too(beta, static_digits):
    pyro.set_rng_seed(0)
    scratch = Scratch()
    reported = _fit_objective(scratch, static_digits, beta, seed=5)[0]["train_elbo"] * len(static_digits)
    x, _ = _ordered(static_digits, 5)
    expected = _independent_objective(scratch.encode, lambda z: scratch.dec(z).unflatten(-1, (1, 8, 8)), x, beta,
                                      seed=5)
    assert -reported == pytest.approx(expected.item(), rel=1e-5)


def test_warmup_ramps_the_weight_of_every_latent_site(static_digits):
    vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=3, hidden=(16,))
    seen = []

    class Watch(pv.hooks.Hook):
        in_run = True

        def on_epoch_end(self, trainer, record):
            seen.append(trainer.kl_weight.value)

    pv.fit(vae, static_digits, epochs=4, beta=2.0, warmup=2, progress=False, hooks=[Watch()])
    assert seen == [1.0, 2.0, 2.0, 2.0]


def test_latent_weight_scales_latent_sites_only():
    # M2's model has an observed y, a latent y_unobserved and z; its guide y_unobserved and z
    m2 = pv.extended.M2(image_shape=(1, 8, 8), latent_dim=2, num_classes=3, hidden=(8,), classifier_hidden=(8,))
    x = torch.rand(4, 1, 8, 8).bernoulli()
    y = torch.tensor([0, -1, 2, -1])
    weight = LatentWeight(0.25)
    model = pyro.poutine.trace(weight(m2.model)).get_trace(x, y)
    scales = {name: site["scale"] for name, site in model.nodes.items() if site["type"] == "sample"}
    # "data" is the plate's own index site, which has no density
    assert scales == {"data": 1.0, "y": 1.0, "y_unobserved": 0.25, "z": 0.25, "x": 1.0, "y_aux": m2.alpha}
    guide = pyro.poutine.trace(weight(m2.guide)).get_trace(x, y)
    assert {n: s["scale"] for n, s in guide.nodes.items() if s["type"] == "sample"} == {
        "data": 1.0, "y_unobserved": 0.25, "z": 0.25}
    # and the enumerated ELBO accepts the common weight of the enumerated site in model and guide
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(weight(m2.model), weight(m2.guide), x, y)
    assert torch.isfinite(loss)
