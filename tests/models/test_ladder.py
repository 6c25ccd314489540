"""HierarchicalVAE's ladder guide: the precision merge against an independent computation, the guide's
structure, and a ladder model trained on real digits that keeps its second layer in use."""

import pytest
import torch

import pyro
import pyro.distributions as dist
from pyro import poutine

import pyro_vae as pv
from pyro_vae.models.hierarchical import precision_merge


def test_precision_merge_is_the_normalised_product_of_the_two_normals():
    # the product N(z; m, s) N(z; mu, sigma), normalised on a fine grid: its mean and sd, by numerical integration
    m, s = torch.tensor([0.3, -2.0, 1.0]), torch.tensor([0.5, 1.5, 0.2])
    mu, sigma = torch.tensor([1.0, 0.5, -1.0]), torch.tensor([2.0, 0.4, 0.2])
    grid = torch.linspace(-8, 8, 200001, dtype=torch.float64)[:, None]
    log_product = (dist.Normal(m.double(), s.double()).log_prob(grid)
                   + dist.Normal(mu.double(), sigma.double()).log_prob(grid))
    weights = torch.softmax(log_product, dim=0)
    mean = (weights * grid).sum(0)
    sd = (weights * (grid - mean) ** 2).sum(0).sqrt()
    loc, scale = precision_merge(m, s, mu, sigma)
    torch.testing.assert_close(loc.double(), mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(scale.double(), sd, atol=1e-5, rtol=0)
    assert (scale < torch.minimum(s, sigma)).all()   # the merge is sharper than either


def test_the_ladder_guide_draws_z2_first_and_shares_p_z1_with_the_model(digits_binary):
    train, _ = digits_binary
    vae = pv.extended.HierarchicalVAE(image_shape=(1, 8, 8), latent_dims=(4, 2), hidden=(16,), latent_hidden=(8,),
                                      inference="ladder")
    x = next(train.batches(32, shuffle=False))[0]
    guide = poutine.trace(vae.guide).get_trace(x)
    sites = [name for name, site in guide.nodes.items() if site["type"] == "sample" and not site["is_observed"]
             and name != "data"]
    assert sites == ["z2", "z1"]
    # q(z1|x, z2) is the merge of the encoder's estimate with the model's own p(z1|z2) at the drawn z2
    loc, scale = precision_merge(*vae.encoder(x), *vae.p_z1(guide.nodes["z2"]["value"]))
    torch.testing.assert_close(guide.nodes["z1"]["fn"].base_dist.loc, loc)
    torch.testing.assert_close(guide.nodes["z1"]["fn"].base_dist.scale, scale)
    assert vae.config["inference"] == "ladder"
    rebuilt = pv.build_vae(vae.config)
    assert rebuilt.inference == "ladder"
    # an older config without the entry rebuilds the bottom-up guide it was trained with
    old = {k: v for k, v in vae.config.items() if k != "inference"}
    assert pv.build_vae(old).inference == "bottom-up"
    with pytest.raises(pv.ConfigError, match="inference"):
        pv.extended.HierarchicalVAE(image_shape=(1, 8, 8), latent_dims=(4, 2), inference="top-down")


def test_a_trained_ladder_model_keeps_both_layers_active(mnist5k):
    train, test = mnist5k
    train, test = train.subset(range(1000)), test.subset(range(200))
    pyro.set_rng_seed(0)
    vae = pv.extended.HierarchicalVAE(latent_dims=(16, 8), hidden=(200,), latent_hidden=(64,), inference="ladder")
    history = pv.fit(vae, train, test, epochs=8, progress=False, device="cpu")
    assert history[-1]["test_elbo"] > history[0]["test_elbo"] + 20
    # KL per dimension of each layer: a dimension above 0.01 nats carries information about the image
    kl = pv.evaluate.diagnostics.kl_per_dim(vae, test)
    used = {site: int((values > 0.01).sum()) for site, values in kl.items()}
    assert used["z1"] >= 3 and used["z2"] >= 1, used
    # encode gives q(z1|x)'s merged parameters at z2 = the mean of q(z2|x)
    x = test.images[:5]
    loc, scale = precision_merge(*vae.encoder(x), *vae.p_z1(vae.q_z2(vae.encoder(x)[0])[0]))
    torch.testing.assert_close(vae.encode(x)[0], loc)
