"""Evaluation against independent computations: the linear-Gaussian model (probabilistic PCA) has a
closed-form marginal likelihood p(x) = N(x | b, W W^T + sigma^2 I)."""

import math

import pytest
import torch
from torch import nn

import pyro_vae as pv
from pyro_vae import evaluate, likelihoods

SIGMA, SHAPE, LATENT = 0.3, (1, 4, 4), 3


class LinearDecoder(nn.Module):
    def __init__(self, weight, bias):
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)

    def forward(self, z):
        return (z @ self.weight.T + self.bias).unflatten(-1, SHAPE)


class PosteriorEncoder(nn.Module):
    """q(z|x) for pPCA. With ``exact=True`` it is the true posterior (diagonal because W's columns are
    orthogonal); otherwise it is deliberately off (shifted mean, widened scale)."""

    def __init__(self, weight, bias, exact=True):
        super().__init__()
        self.weight, self.bias, self.exact = weight, bias, exact
        self.precision = (weight ** 2).sum(0) + SIGMA ** 2          # diagonal of M = W^T W + sigma^2 I

    def forward(self, x):
        loc = (x.flatten(-3) - self.bias) @ self.weight / self.precision
        scale = (SIGMA / self.precision.sqrt()).expand(loc.shape)
        if not self.exact:
            loc, scale = loc + 0.3, scale * 1.6
        return loc, scale


@pytest.fixture
def ppca():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(16, LATENT, generator=g))
    weight = q * torch.tensor([2.0, 1.0, 0.5])                 # orthogonal columns, distinct lengths
    bias = torch.randn(16, generator=g)
    marginal = torch.distributions.MultivariateNormal(bias, weight @ weight.T + SIGMA ** 2 * torch.eye(16))
    x = marginal.sample((300,), ).reshape(300, *SHAPE)
    exact_log_px = marginal.log_prob(x.flatten(-3))

    def make(exact):
        return pv.VAE(image_shape=SHAPE, latent_dim=LATENT, encoder=PosteriorEncoder(weight, bias, exact),
                      decoder=LinearDecoder(weight, bias), likelihood=likelihoods.Normal(scale=SIGMA))
    return make, x, exact_log_px


def test_exact_posterior_gives_exact_log_likelihood(ppca):
    make, x, exact = ppca
    vae = make(exact=True)
    # with the true posterior every importance weight equals p(x): one sample suffices
    estimate = evaluate.log_likelihood(vae, x, num_samples=1, reduce=False)
    assert torch.allclose(estimate, exact, atol=1e-3)
    # ... and the ELBO is tight
    assert evaluate.elbo(vae, x)["elbo"] == pytest.approx(exact.mean().item(), abs=1e-3)


def test_importance_sampling_converges_and_beats_elbo(ppca):
    make, x, exact = ppca
    vae = make(exact=False)
    torch.manual_seed(0)
    elbo = evaluate.elbo(vae, x, num_samples=50)["elbo"]
    k1 = evaluate.log_likelihood(vae, x, num_samples=1)
    k2000 = evaluate.log_likelihood(vae, x, num_samples=2000, reduce=False)
    true = exact.mean().item()
    assert elbo < true - 0.5                       # a poor q leaves a visible gap ...
    assert k1 == pytest.approx(elbo, abs=0.3)      # K=1 is the ELBO in expectation
    assert elbo < k2000.mean().item() <= true + 0.02   # ... which importance sampling closes
    assert k2000.mean().item() == pytest.approx(true, abs=0.05)
    assert (k2000 - exact).abs().max() < 0.5


def test_chunking_does_not_change_the_estimate(ppca):
    make, x, exact = ppca
    vae = make(exact=True)
    small = evaluate.log_likelihood(vae, x[:40], num_samples=5000, reduce=False, max_pairs=512)
    assert small.shape == (40,)
    assert torch.allclose(small, exact[:40], atol=1e-3)


def test_reconstruction_and_kl_parts(ppca):
    make, x, _ = ppca
    vae = make(exact=False)
    torch.manual_seed(0)
    parts = evaluate.elbo(vae, x, num_samples=4000)
    loc, scale = vae.encode(x)
    analytic_kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(loc, scale), torch.distributions.Normal(0.0, 1.0)).sum(-1).mean()
    assert parts["kl"] == pytest.approx(analytic_kl.item(), abs=0.05)
    assert parts["elbo"] == pytest.approx(parts["reconstruction"] - parts["kl"])


def test_active_units(ppca):
    make, x, _ = ppca
    vae = make(exact=True)
    assert evaluate.active_units(vae, x) == 3
    vae.encoder.weight = vae.encoder.weight * torch.tensor([1.0, 1.0, 0.0])   # third unit ignores x
    assert evaluate.active_units(vae, x) == 2


def test_bits_per_dim():
    assert evaluate.bits_per_dim(784 * math.log(2), (1, 28, 28)) == pytest.approx(1.0)


def test_report_on_real_data(mnist5k):
    train, test = mnist5k
    vae = pv.VAE(latent_dim=8, hidden=(64,))
    pv.fit(vae, train.subset(range(1000)), epochs=1, progress=False)
    small = test.subset(range(100))
    result = evaluate.report(vae, small, num_samples=50)
    assert result["binarize"] == "static" and result["num_samples"] == 50 and result["num_datapoints"] == 100
    assert result["log_likelihood"] >= result["elbo"] - 0.5
    assert 0 < result["nll_bits_per_dim"] < 1
    assert 0 <= result["active_units"] <= 8


def test_grey_data_refused_for_bernoulli(digits_grey):
    vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=2)
    with pytest.raises(pv.DataError, match="binarize"):
        evaluate.elbo(vae, digits_grey[1])


def test_a_failed_evaluation_leaves_the_model_in_its_own_mode(digits_binary):
    vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=2, hidden=(16,))
    test = digits_binary[1].subset(range(20))
    cropped = test.images[:, :, :4]   # the model check (elbo, log_likelihood) or the network (active_units) fails
    evaluations = {"elbo": lambda data: evaluate.elbo(vae, data),
                   "log_likelihood": lambda data: evaluate.log_likelihood(vae, data, num_samples=2),
                   "active_units": lambda data: evaluate.active_units(vae, data)}
    for name, evaluation in evaluations.items():
        for training in (True, False):
            vae.train(training)
            with pytest.raises((RuntimeError, pv.ConfigError)):
                evaluation(cropped)
            assert vae.training is training, f"{name} left the model in the wrong mode after an error"
            evaluation(test)
            assert vae.training is training, name
