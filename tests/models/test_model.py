"""The model/guide pair: site names, shapes, swappable parts, save/load."""

import pytest
import torch

import pyro
import pyro.poutine as poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import pyro_vae as pv
from pyro_vae import likelihoods, networks, priors

PRIORS = {
    "standard": lambda: priors.StandardNormal(),
    "learned-normal": lambda: priors.LearnedNormal(),
    "mog": lambda: priors.MixtureOfGaussians(4),
}
LIKELIHOODS = {
    "bernoulli": lambda: likelihoods.Bernoulli(),
    "continuous-bernoulli": lambda: likelihoods.ContinuousBernoulli(),
    "normal": lambda: likelihoods.Normal(scale=0.2),
    "normal-learned": lambda: likelihoods.Normal(scale="learned"),
}


def _data_for(likelihood_name, digits_binary, digits_grey):
    return (digits_binary if likelihood_name == "bernoulli" else digits_grey)[0]


def _shapes(trace):
    trace.compute_log_prob()
    return {name: (tuple(trace.nodes[name]["fn"].batch_shape), tuple(trace.nodes[name]["fn"].event_shape),
                   tuple(trace.nodes[name]["log_prob"].shape))
            for name in trace.stochastic_nodes + trace.observation_nodes if name != "data"}


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_sites_and_shapes(prior, likelihood, digits_binary, digits_grey):
    train = _data_for(likelihood, digits_binary, digits_grey)
    vae = pv.VAE(image_shape=train.image_shape, latent_dim=3, prior=PRIORS[prior](),
                 likelihood=LIKELIHOODS[likelihood](), hidden=(32,))
    x, _ = next(train.batches(5, shuffle=False))
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    # one data plate of size 5; z is one 3-vector per image, x one (1, 8, 8) image per image
    assert _shapes(model_trace) == {"z": ((5,), (3,), (5,)), "x": ((5,), (1, 8, 8), (5,))}
    assert _shapes(guide_trace) == {"z": ((5,), (3,), (5,))}
    assert model_trace.nodes["x"]["is_observed"] and not model_trace.nodes["z"]["is_observed"]
    assert model_trace.nodes["data"]["type"] == "sample" and model_trace.nodes["data"]["value"].shape == (5,)
    # one ELBO gradient step is finite for every combination
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in vae.parameters() if p.grad is not None)
    # sampling from the prior works for every prior and gives images of the right shape
    assert vae.sample(7).shape == (7, 1, 8, 8)
    assert vae.prior.sample(7).shape == (7, 3)


def test_format_shapes_names_sites(digits_binary):
    vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=2, hidden=(16,))
    x, _ = next(digits_binary[0].batches(4, shuffle=False))
    text = poutine.trace(vae.model).get_trace(x).format_shapes()
    lines = {line.split()[0]: line.split() for line in text.splitlines() if " dist " in line}
    assert lines["z"] == ["z", "dist", "4", "|", "2"]
    assert lines["x"] == ["x", "dist", "4", "|", "1", "8", "8"]


def test_leading_sample_dims_do_not_reshape(digits_binary):
    vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=2, hidden=(16,))
    x, _ = next(digits_binary[0].batches(4, shuffle=False))
    loc, scale = vae.encode(x.expand(3, 4, 1, 8, 8))
    assert loc.shape == scale.shape == (3, 4, 2) and (scale > 0).all()
    assert vae.generate(torch.zeros(6, 5, 2)).shape == (6, 5, 1, 8, 8)
    conv = pv.VAE(image_shape=(1, 8, 8), latent_dim=2, encoder=networks.ConvEncoder((1, 8, 8), 2),
                  decoder=networks.ConvDecoder((1, 8, 8), 2))
    assert conv.encode(x.expand(3, 4, 1, 8, 8))[0].shape == (3, 4, 2)
    assert conv.generate(torch.zeros(6, 5, 2)).shape == (6, 5, 1, 8, 8)


def test_conv_networks_odd_image_size():
    enc, dec = networks.ConvEncoder((3, 30, 30), 5), networks.ConvDecoder((3, 30, 30), 5, params_per_pixel=2)
    loc, scale = enc(torch.rand(2, 3, 30, 30))
    assert loc.shape == (2, 5)
    assert dec(loc).shape == (2, 6, 30, 30)


def test_user_modules_replace_networks(digits_binary):
    class TinyEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(64, 4)

        def forward(self, x):
            loc, raw = self.lin(x.flatten(-3)).chunk(2, -1)
            return loc, torch.nn.functional.softplus(raw) + 1e-3

    decoder = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Unflatten(-1, (1, 8, 8)))
    vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=2, encoder=TinyEncoder(), decoder=decoder)
    assert vae.config["encoder"] is None
    pv.fit(vae, digits_binary[0], epochs=1, progress=False)
    with pytest.raises(pv.ConfigError, match="custom encoder"):
        pv.build_vae(vae.config)
    rebuilt = pv.build_vae(vae.config, encoder=TinyEncoder(), decoder=decoder)
    assert isinstance(rebuilt.encoder, TinyEncoder)


@pytest.mark.parametrize("prior", PRIORS)
def test_config_rebuilds_identical_model(prior):
    vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=3, prior=PRIORS[prior](),
                 likelihood=likelihoods.Normal(scale="learned"), hidden=(16, 8))
    rebuilt = pv.build_vae(vae.config)
    rebuilt.load_state_dict(vae.state_dict())
    assert rebuilt.config == vae.config
    z = torch.randn(4, 3)
    assert torch.equal(rebuilt.generate(z), vae.generate(z))
    assert torch.equal(rebuilt.prior().log_prob(z), vae.prior().log_prob(z))


def test_prior_cannot_be_shared_across_sizes():
    prior = priors.MixtureOfGaussians(3)
    pv.VAE(image_shape=(1, 8, 8), latent_dim=2, prior=prior)
    with pytest.raises(pv.ConfigError, match="latent_dim"):
        pv.VAE(image_shape=(1, 8, 8), latent_dim=4, prior=prior)


def test_a_prior_passed_to_a_second_vae_is_shared_not_reset():
    first = pv.VAE(image_shape=(1, 8, 8), latent_dim=2, prior=priors.MixtureOfGaussians(3))
    with torch.no_grad():
        for p in first.prior.parameters():
            p.add_(1.0)   # as if trained
    learned = {k: v.clone() for k, v in first.prior.state_dict().items()}
    second = pv.VAE(image_shape=(1, 8, 8), latent_dim=2, prior=first.prior)
    assert second.prior is first.prior
    assert all(torch.equal(learned[k], v) for k, v in first.prior.state_dict().items())
    # a VampPrior evaluates its owner's encoder: a second VAE cannot take it over
    vamp = priors.VampPrior(5)
    owner = pv.VAE(image_shape=(1, 8, 8), latent_dim=2, prior=vamp)
    with pytest.raises(pv.ConfigError, match="create a new VampPrior"):
        pv.VAE(image_shape=(1, 8, 8), latent_dim=2, prior=vamp)
    assert vamp.encoder is owner.encoder


@pytest.mark.parametrize("bad", [dict(latent_dim=0), dict(image_shape=(8, 8)), dict(image_shape=(1, 0, 8))])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(pv.ConfigError):
        pv.VAE(**{"image_shape": (1, 8, 8), "latent_dim": 2, **bad})


def test_normal_scale_is_validated_and_positive():
    with pytest.raises(pv.ConfigError, match="positive"):
        likelihoods.Normal(scale=-1.0)
    learned = likelihoods.Normal(scale="learned")
    with torch.no_grad():
        learned.raw_scale.fill_(-100.0)  # softplus underflows to 0: the floor must hold
    assert learned.scale > 0


def test_meanfield_elbo_uses_analytic_kl_for_normal_prior(digits_binary):
    """TraceMeanField_ELBO's KL for N(0, I) equals torch's closed form (an independent computation)."""
    vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=3, hidden=(16,))
    x, _ = next(digits_binary[1].batches(6, shuffle=False))
    loc, scale = vae.encode(x)
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(loc, scale),
                                           torch.distributions.Normal(0.0, 1.0)).sum()
    pyro.set_rng_seed(1)
    z = poutine.trace(vae.guide).get_trace(x).nodes["z"]["value"]
    pyro.set_rng_seed(1)  # the loss below draws the same z
    loss = TraceMeanField_ELBO().loss(vae.model, vae.guide, x)
    log_lik = vae.likelihood(vae.decoder(z)).log_prob(x).sum()
    assert loss == pytest.approx((-log_lik + kl).item(), rel=1e-5)
