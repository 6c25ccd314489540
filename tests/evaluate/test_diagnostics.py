"""The diagnostics (pyro_vae.diagnostics), sample-quality scores (pyro_vae.quality) and IWAE gradient estimators
(pyro_vae.estimators), each against an independent computation.

The reference model is linear-Gaussian: p(z) = N(0, I), p(x|z) = N(Wz + b, s^2 I) with a linear encoder, whose
posterior N(Sigma W^T (x - b) / s^2, Sigma), Sigma = (I + W^T W / s^2)^-1, marginal N(b, W W^T + s^2 I), best
diagonal Gaussian q* (the posterior mean, variances 1 / diag(Sigma^-1)) and mutual information are known in
closed form, so every number is checked against a formula computed here with torch.distributions.
"""

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

import pyro.distributions as dist

import pyro_vae as pv
from pyro_vae import diagnostics, quality
from pyro_vae.estimators import IWAE

P, D, SIGMA = 4, 2, 0.5
SHAPE = (1, 2, 2)
B = torch.tensor([0.1, -0.2, 0.3, 0.0])
#: correlated columns: the posterior is not diagonal, so a diagonal q has an approximation gap
W_CORRELATED = torch.tensor([[1.0, 0.6], [0.5, 1.2], [-0.7, 0.4], [0.3, -0.9]])
#: orthogonal columns: the posterior is diagonal, so the encoder can be exact
W_ORTHOGONAL = torch.tensor([[1.0, 0.0], [0.0, 1.2], [-0.7, 0.0], [0.0, -0.9]])


class LinearDecoder(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w, self.b = nn.Parameter(w.clone()), nn.Parameter(B.clone())

    def forward(self, z):
        return (z @ self.w.T + self.b).reshape(z.shape[:-1] + SHAPE)


class LinearEncoder(nn.Module):
    def __init__(self, a, c, log_scale):
        super().__init__()
        self.a, self.c = nn.Parameter(a.clone()), nn.Parameter(c.clone())
        self.log_scale = nn.Parameter(log_scale.clone())

    def forward(self, x):
        loc = x.flatten(-3) @ self.a.T + self.c
        return loc, self.log_scale.exp().expand(loc.shape)


def posterior(w):
    """(Lambda, Sigma, A) of the exact posterior: precision, covariance, and mean = A (x - b)."""
    precision = torch.eye(D) + w.T @ w / SIGMA ** 2
    covariance = torch.linalg.inv(precision)
    return precision, covariance, covariance @ w.T / SIGMA ** 2


def marginal(w):
    return torch.distributions.MultivariateNormal(B, w @ w.T + SIGMA ** 2 * torch.eye(P))


def linear_vae(w, a, c, log_scale):
    return pv.VAE(image_shape=SHAPE, latent_dim=D, encoder=LinearEncoder(a, c, log_scale), decoder=LinearDecoder(w),
                  likelihood=pv.likelihoods.Normal(scale=SIGMA))


def images(w, n, seed=0):
    torch.manual_seed(seed)
    return marginal(w).sample((n,)).reshape((n,) + SHAPE)


def gaussian_kl(m1, s1, m2, s2):
    """KL(N(m1, S1) || N(m2, S2)) for means (..., D) and covariances (D, D)."""
    inverse = torch.linalg.inv(s2)
    diff = m2 - m1
    return 0.5 * (torch.trace(inverse @ s1) + (diff @ inverse * diff).sum(-1) - D + torch.logdet(s2) - torch.logdet(s1))


# an encoder that is neither exact nor optimal: shrunk means, wrong fixed scales
ENCODER = (0.7, torch.zeros(D), torch.log(torch.tensor([0.6, 0.4])))


def suboptimal(w):
    shrink, c, log_scale = ENCODER
    return linear_vae(w, shrink * posterior(w)[2], c, log_scale)


# --- diagnostics ----------------------------------------------------------------------------------


def test_kl_per_dim_matches_closed_form():
    vae, x = suboptimal(W_CORRELATED), images(W_CORRELATED, 500)
    shrink, c, log_scale = ENCODER
    means = x.flatten(-3) @ (shrink * posterior(W_CORRELATED)[2]).T + c
    variances = (2 * log_scale).exp()
    expected = 0.5 * (variances + means.square().mean(0) - 1 - variances.log())
    got = diagnostics.kl_per_dim(vae, x)
    assert set(got) == {"z"}
    torch.testing.assert_close(got["z"], expected, rtol=1e-4, atol=1e-5)
    # the dimensions sum to the ELBO's KL term for a factorised prior
    assert got["z"].sum().item() == pytest.approx(pv.evaluate.elbo(vae, x, num_samples=2000)["kl"], abs=0.03)


def test_kl_per_dim_of_a_mixture_prior_uses_its_marginals():
    vae = suboptimal(W_CORRELATED)
    vae.prior = pv.priors.MixtureOfGaussians(3)
    vae.prior.setup(D, vae)
    x = images(W_CORRELATED, 50)
    got = diagnostics.kl_per_dim(vae, x, num_samples=4000)["z"]
    # independently: Monte Carlo of log q(z_d|x) - log p(z_d) with p(z_d) the 1-D mixture, per image
    mixture = vae.prior()
    weights = mixture.mixture_distribution.probs
    loc, scale = mixture.component_distribution.base_dist.loc, mixture.component_distribution.base_dist.scale
    q_loc, q_scale = vae.encoder(x)
    torch.manual_seed(1)
    with torch.no_grad():
        z = q_loc + q_scale * torch.randn((4000,) + q_loc.shape)
        log_q = torch.distributions.Normal(q_loc, q_scale).log_prob(z)
        log_p = torch.log((weights[:, None] * torch.distributions.Normal(loc, scale).log_prob(z[..., None, :]).exp())
                          .sum(-2))
    torch.testing.assert_close(got, (log_q - log_p).mean((0, 1)), atol=0.03, rtol=0.05)


def test_kl_per_dim_is_none_for_a_flow_posterior():
    vae = pv.VAE(image_shape=(1, 4, 4), latent_dim=3, hidden=(8,), posterior=pv.posteriors.IAF(num_flows=1, hidden=8))
    assert diagnostics.kl_per_dim(vae, torch.rand(5, 1, 4, 4).round()) == {"z": None}


@pytest.mark.slow
def test_mutual_information_matches_closed_form():
    vae = suboptimal(W_CORRELATED)
    x = images(W_CORRELATED, 2000)
    shrink, _, log_scale = ENCODER
    a = shrink * posterior(W_CORRELATED)[2]
    covariance_x = marginal(W_CORRELATED).covariance_matrix
    noise = torch.diag((2 * log_scale).exp())
    expected = 0.5 * (torch.logdet(a @ covariance_x @ a.T + noise) - torch.logdet(noise))   # I of a Gaussian channel
    torch.manual_seed(0)
    got = diagnostics.mutual_information(vae, x, limit=2000, num_samples=4)
    assert got == pytest.approx(expected.item(), abs=0.06)


def test_mutual_information_is_bounded_by_log_n_and_zero_without_information():
    # a nearly noiseless encoder has a huge I(x; z): the minibatch estimator saturates at log N (its bias)
    x = images(W_CORRELATED, 20)
    sharp = linear_vae(W_CORRELATED, posterior(W_CORRELATED)[2], torch.zeros(D), torch.full((D,), -8.0))
    got = diagnostics.mutual_information(sharp, x, limit=20)
    assert got <= math.log(20) + 1e-6 and got == pytest.approx(math.log(20), abs=0.05)
    # an encoder that ignores x carries none
    blind = linear_vae(W_CORRELATED, torch.zeros(D, P), torch.zeros(D), torch.zeros(D))
    assert diagnostics.mutual_information(blind, x, limit=20) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_gaps_match_closed_form():
    vae, x = suboptimal(W_CORRELATED), images(W_CORRELATED, 20)
    precision, covariance, a = posterior(W_CORRELATED)
    flat = x.flatten(-3)
    log_px = marginal(W_CORRELATED).log_prob(flat)
    post_mean = (flat - B) @ a.T
    shrink, c, log_scale = ENCODER
    elbo_encoder = log_px - gaussian_kl(flat @ (shrink * a).T + c, torch.diag((2 * log_scale).exp()), post_mean,
                                        covariance)
    best = torch.diag(1 / torch.diag(precision))             # the best diagonal Gaussian: 1 / diag(precision)
    elbo_best = log_px - gaussian_kl(post_mean, best, post_mean, covariance)
    torch.manual_seed(0)
    got = diagnostics.posterior_gaps(vae, x, limit=20, num_samples=2000, steps=300, elbo_samples=1000)
    assert got["log_likelihood"] == pytest.approx(log_px.mean().item(), abs=0.03)
    assert got["elbo_encoder"] == pytest.approx(elbo_encoder.mean().item(), abs=0.05)
    assert got["elbo_refined"] == pytest.approx(elbo_best.mean().item(), abs=0.05)
    assert got["amortization_gap"] == pytest.approx((elbo_best - elbo_encoder).mean().item(), abs=0.07)
    assert got["approximation_gap"] == pytest.approx((log_px - elbo_best).mean().item(), abs=0.05)
    assert got["approximation_gap"] > 0.02   # correlated posterior: a diagonal q cannot be exact


@pytest.mark.slow
def test_refined_posterior_is_the_best_diagonal_gaussian():
    vae, x = suboptimal(W_CORRELATED), images(W_CORRELATED, 10)
    precision, _, a = posterior(W_CORRELATED)
    torch.manual_seed(0)
    refined = diagnostics.refine_posterior(vae, x, steps=300, num_particles=16)
    torch.testing.assert_close(refined["loc"], (x.flatten(-3) - B) @ a.T, atol=0.05, rtol=0)
    torch.testing.assert_close(refined["scale"], (1 / torch.diag(precision)).sqrt().expand(10, D), atol=0.03, rtol=0)
    assert (refined["elbo_refined"] > refined["elbo_encoder"]).all()
    # the model's weights were fixed and are trainable again
    assert all(p.requires_grad and p.grad is None for p in vae.parameters())


def test_exact_encoder_has_no_amortization_gap():
    precision, covariance, a = posterior(W_ORTHOGONAL)
    exact = linear_vae(W_ORTHOGONAL, a, -a @ B, 0.5 * torch.diag(covariance).log())
    torch.manual_seed(0)
    got = diagnostics.posterior_gaps(exact, images(W_ORTHOGONAL, 10), limit=10, num_samples=100, steps=200,
                                     elbo_samples=200)
    # every log weight of the exact posterior is log p(x): both scores are exact, whatever the draws
    log_px = marginal(W_ORTHOGONAL).log_prob(images(W_ORTHOGONAL, 10).flatten(-3)).mean().item()
    assert got["log_likelihood"] == pytest.approx(log_px, abs=1e-4)
    assert got["elbo_encoder"] == pytest.approx(log_px, abs=1e-4)
    # refinement can only wander off the optimum, by little
    assert got["amortization_gap"] == pytest.approx(0.0, abs=0.01)
    assert got["approximation_gap"] == pytest.approx(0.0, abs=0.01)


def test_refinement_leaves_a_vamp_prior_alone():
    torch.manual_seed(0)
    vae = pv.VAE(image_shape=(1, 4, 4), latent_dim=3, hidden=(8,), prior=pv.priors.VampPrior(num_pseudo_inputs=4))
    x = torch.rand(6, 1, 4, 4).round()
    with torch.no_grad():
        prior_before = vae.prior().log_prob(torch.zeros(3))
    refined = diagnostics.refine_posterior(vae, x, steps=20, num_particles=2, elbo_samples=20)
    assert refined["elbo_refined"].mean() > refined["elbo_encoder"].mean()
    with torch.no_grad():
        assert torch.equal(vae.prior().log_prob(torch.zeros(3)), prior_before)


@pytest.mark.slow
def test_diagnose_end_to_end_and_picture(tmp_path):
    train, test = pv.data.load("digits", binarize="dynamic")
    train, test = train.subset(torch.arange(300)), test.subset(torch.arange(60))
    torch.manual_seed(0)
    vae = pv.VAE(image_shape=train.image_shape, latent_dim=4, hidden=(32,))
    pv.fit(vae, train, epochs=2, progress=False, device="cpu")
    cache = tmp_path / "classifier.pt"
    settings = {"gap_images": 8, "refine_steps": 20, "refine_particles": 2, "elbo_samples": 10}
    fast = {"min_steps": 100}
    result = diagnostics.diagnose(vae, test, train=train, num_samples=20, cache=str(cache), classifier_settings=fast,
                                  **settings)
    json.dumps(result)   # JSON-ready
    d = result["diagnostics"]
    assert set(d) >= {"kl_per_dim", "active_units", "mutual_information", "amortization_gap", "approximation_gap"}
    assert len(d["kl_per_dim"]["z"]) == 4 and d["kl_per_dim"]["z"] == sorted(d["kl_per_dim"]["z"], reverse=True)
    assert 0 <= d["mutual_information"] <= math.log(60) + 1e-6
    q = result["sample_quality"]
    assert set(q) >= {"fd", "precision", "recall", "classifier_accuracy", "floor_fd"}
    assert q["fd"] > 0 and 0 <= q["precision"] <= 1 and q["classifier_accuracy"] > 0.4
    assert cache.exists() and torch.load(cache, weights_only=True)["config"]["dataset"] == train.name
    again = diagnostics.diagnose(vae, test, train=train, num_samples=20, cache=str(cache), classifier_settings=fast,
                                 **settings)
    assert again["sample_quality"]["classifier_accuracy"] == q["classifier_accuracy"]
    checks = result["posterior_predictive"]
    assert set(checks["statistics"]) == {"mean_intensity", "edges"}
    assert sum(checks["class_frequencies"]["samples"]) == pytest.approx(1.0)
    diagnostics.plot(d, path=tmp_path / "diagnostics.png")
    quality.plot_posterior_predictive(checks, path=tmp_path / "ppc.png")
    assert (tmp_path / "diagnostics.png").stat().st_size > 0 and (tmp_path / "ppc.png").stat().st_size > 0
    # the same through evaluate.report
    report = pv.evaluate.report(vae, test, num_samples=20, diagnostics=True, train=train, classifier_cache=str(cache),
                                diagnostics_settings={**settings, "classifier_settings": fast})
    assert report["diagnostics"]["active_units"] == report["active_units"] and "sample_quality" in report


def test_diagnostics_refuse_m2():
    vae = pv.extended.M2(image_shape=(1, 4, 4), latent_dim=2, num_classes=3, hidden=(8,))
    with pytest.raises(pv.ConfigError, match="discrete label"):
        diagnostics.kl_per_dim(vae, torch.rand(4, 1, 4, 4).round())


# --- sample quality -------------------------------------------------------------------------------


def scipy_frechet(a, b):
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_frechet_distance_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(300, 6)) * 2.0 + 1.0
    assert quality.frechet_distance(a, b) == pytest.approx(scipy_frechet(a, b), rel=1e-6)
    assert quality.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # two Gaussians: the distance tends to the closed form ||mu_a - mu_b||^2 + tr(...) as samples grow
    c = rng.normal(size=(200000, 2))
    d_ = rng.normal(size=(200000, 2)) * 3 + np.array([1.0, 2.0])
    assert quality.frechet_distance(c, d_) == pytest.approx(5.0 + 2 * (1 + 9 - 2 * 3), rel=0.01)


def test_precision_recall_on_toy_point_sets():
    grid = torch.stack(torch.meshgrid(torch.arange(10.0), torch.arange(10.0), indexing="ij"), -1).reshape(-1, 2)
    assert quality.precision_recall(grid, grid + 0.01, k=3) == (1.0, 1.0)
    assert quality.precision_recall(grid, grid + 100.0, k=3) == (0.0, 0.0)
    # samples on the left half only: all realistic (precision 1); their balls (radius 1, the third neighbour
    # one grid step away) reach one column further, so 6 of the 10 columns of data are covered
    left = grid[grid[:, 0] < 5]
    precision, recall = quality.precision_recall(grid, left, k=3)
    assert precision == 1.0 and recall == 0.6
    # by hand: reals 0, 1, 2, 10 on a line, k=1: radii 1, 1, 1, 8; fakes 0.5 (inside), 5 (inside 10's ball), 30
    real = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    fake = torch.tensor([[0.5], [5.0], [30.0]])
    precision, recall = quality.precision_recall(real, fake, k=1)
    # fakes' radii (k=1): 4.5, 4.5, 25 -> reals within: 0 (0.5), 1 (0.5 and 5), 2 (5), 10 (5): all four
    assert precision == pytest.approx(2 / 3) and recall == 1.0


def test_classifier_cache_is_reloaded_with_weights_only(tmp_path):
    train, test = pv.data.load("digits", binarize="none")
    train = train.subset(torch.arange(200))
    cache = tmp_path / "clf.pt"
    first, info = quality.classifier_for(train, test, cache=str(cache), epochs=2, min_steps=1)
    assert info["cached"] is False and 0 < info["test_accuracy"] <= 1
    second, info2 = quality.classifier_for(train, test, cache=str(cache), epochs=2, min_steps=1)
    assert info2["cached"] is True and info2["test_accuracy"] == info["test_accuracy"]
    x = test.images[:5]
    torch.testing.assert_close(quality.features(first, x), quality.features(second, x))
    third, info3 = quality.classifier_for(train, test, cache=str(cache), epochs=3, min_steps=1)   # retrained
    assert info3["cached"] is False


def test_image_statistics_by_hand():
    image = torch.zeros(1, 1, 3, 3)
    image[0, 0, 1, 1] = 1.0          # one pixel on: four edges around it
    stats = quality.image_statistics(image)
    assert stats["edges"].item() == 4 and stats["mean_intensity"].item() == pytest.approx(1 / 9)
    image[0, 0, 1, 2] = 0.7          # a neighbour on the right border joins it: 1 + 2 + 2 edges (the border is none)
    assert quality.image_statistics(image)["edges"].item() == 5


# --- IWAE gradients -------------------------------------------------------------------------------


def _definition(vae, x, k, seed, gradient):
    """The estimators written out: per-particle gradients of log w~ with log q's parameters frozen, weighted by
    w~_k (stl) or w~_k^2 (dreg); the model's gradient sum_k w~_k d log p(x, z_k) for all."""
    torch.manual_seed(seed)
    eps = torch.empty(k, x.shape[0], D).normal_()
    encoder, decoder = vae.encoder, vae.decoder
    enc_params, dec_params = list(encoder.parameters()), list(decoder.parameters())
    loc, scale = encoder(x)
    z = loc + scale * eps
    log_p = dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + dist.Normal(decoder(z), SIGMA).log_prob(x).sum((-3, -2, -1))
    log_q_frozen = dist.Normal(loc.detach(), scale.detach()).log_prob(z).sum(-1)
    log_w = log_p - log_q_frozen
    weights = torch.softmax(log_w.detach(), 0)
    power = {"stl": 1, "dreg": 2}[gradient]
    enc = [torch.zeros_like(p) for p in enc_params]
    dec = [torch.zeros_like(p) for p in dec_params]
    for i in range(k):
        for n in range(x.shape[0]):
            g_enc = torch.autograd.grad(log_w[i, n], enc_params, retain_graph=True)
            g_dec = torch.autograd.grad(log_p[i, n], dec_params, retain_graph=True)
            for acc, g in zip(enc, g_enc):
                acc -= weights[i, n] ** power * g
            for acc, g in zip(dec, g_dec):
                acc -= weights[i, n] * g
    return enc, dec


@pytest.mark.parametrize("gradient", ["stl", "dreg"])
def test_iwae_gradients_match_their_definitions(gradient):
    vae, x = suboptimal(W_CORRELATED), images(W_CORRELATED, 4)
    vae.register_params = False
    torch.manual_seed(7)
    IWAE(num_particles=5, gradient=gradient).differentiable_loss(vae.model, vae.guide, x).backward()
    enc, dec = _definition(vae, x, 5, 7, gradient)
    for p, expected in zip(vae.encoder.parameters(), enc):
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-5)
    for p, expected in zip(vae.decoder.parameters(), dec):
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-5)


def test_iwae_loss_is_the_importance_weighted_bound():
    vae, x = suboptimal(W_CORRELATED), images(W_CORRELATED, 4)
    vae.register_params = False
    values = []
    for gradient in ("iwae", "stl", "dreg"):
        torch.manual_seed(3)
        values.append(IWAE(5, gradient).differentiable_loss(vae.model, vae.guide, x).item())
    torch.manual_seed(3)
    eps = torch.empty(5, 4, D).normal_()
    with torch.no_grad():
        loc, scale = vae.encoder(x)
        z = loc + scale * eps
        log_w = (dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
                 + dist.Normal(vae.decoder(z), SIGMA).log_prob(x).sum((-3, -2, -1))
                 - dist.Normal(loc, scale).log_prob(z).sum(-1))
    expected = -(torch.logsumexp(log_w, 0) - math.log(5)).sum().item()
    assert values == pytest.approx([expected] * 3, rel=1e-5)


def test_stl_and_dreg_stick_the_landing_at_the_exact_posterior():
    _, covariance, a = posterior(W_ORTHOGONAL)
    exact = linear_vae(W_ORTHOGONAL, a, -a @ B, 0.5 * torch.diag(covariance).log())
    exact.register_params = False
    x = images(W_ORTHOGONAL, 6)
    norms = {}
    for gradient in ("iwae", "stl", "dreg"):
        exact.zero_grad()
        IWAE(5, gradient).differentiable_loss(exact.model, exact.guide, x).backward()
        norms[gradient] = max(p.grad.abs().max().item() for p in exact.encoder.parameters())
    assert norms["stl"] < 1e-5 and norms["dreg"] < 1e-5 and norms["iwae"] > 0.1


@pytest.mark.slow
def test_dreg_is_unbiased_for_the_iwae_gradient():
    vae, x = suboptimal(W_CORRELATED), images(W_CORRELATED, 50)
    vae.register_params = False
    means = {}
    for gradient in ("iwae", "dreg"):
        total = torch.zeros_like(vae.encoder.a)
        torch.manual_seed(11)
        for _ in range(300):
            vae.zero_grad()
            IWAE(4, gradient).differentiable_loss(vae.model, vae.guide, x).backward()
            total += vae.encoder.a.grad
        means[gradient] = total / 300
    torch.testing.assert_close(means["dreg"], means["iwae"], atol=0.15 * means["iwae"].abs().max().item(), rtol=0)


def test_iwae_refuses_what_it_cannot_do():
    with pytest.raises(pv.ConfigError, match="unknown IWAE gradient"):
        IWAE(5, "reinforce")
    x = torch.rand(4, 1, 4, 4).round()
    hvae = pv.extended.HierarchicalVAE(image_shape=(1, 4, 4), latent_dims=(3, 2), hidden=(8,), latent_hidden=(8,))
    hvae.register_params = False
    with pytest.raises(pv.ConfigError, match="depends on another latent site"):
        IWAE(3, "dreg").differentiable_loss(hvae.model, hvae.guide, x)
    iaf = pv.VAE(image_shape=(1, 4, 4), latent_dim=3, hidden=(8,), posterior=pv.posteriors.IAF(num_flows=1, hidden=8))
    iaf.register_params = False
    with pytest.raises(pv.ConfigError, match="TransformedDistribution"):
        IWAE(3, "stl").differentiable_loss(iaf.model, iaf.guide, x)
    IWAE(3, "iwae").differentiable_loss(hvae.model, hvae.guide, x).backward()   # the plain gradient works


def test_fit_trains_with_dreg():
    train, test = pv.data.load("digits", binarize="dynamic")
    train = train.subset(torch.arange(200))
    vae = pv.VAE(image_shape=train.image_shape, latent_dim=4, hidden=(32,))
    history = pv.fit(vae, train, epochs=3, loss=IWAE(5, "dreg"), progress=False, device="cpu", lr=3e-3)
    assert history[-1]["train_elbo"] > history[0]["train_elbo"]


# --- the command line -----------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_evaluate_diagnostics_and_explorer(tmp_path, monkeypatch, capsys):
    from pyro_vae import cli
    # the defaults refine 100 images for 300 steps and train the classifier for 1000 steps: smaller here
    monkeypatch.setitem(diagnostics.DEFAULTS, "gap_images", 5)
    monkeypatch.setitem(diagnostics.DEFAULTS, "refine_steps", 10)
    monkeypatch.setitem(quality.CLASSIFIER, "min_steps", 30)
    run = tmp_path / "run"
    assert cli.main(["train", "--dataset", "digits", "--epochs", "1", "--latent-dim", "3", "--hidden", "32",
                     "--eval-samples", "5", "--out", str(run), "--no-progress"]) == 0
    assert cli.main(["evaluate", str(run), "--num-samples", "10", "--diagnostics", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "amortisation gap" in printed and "floor" in printed and "not Inception FID" in printed
    metrics = json.loads((run / "metrics.json").read_text())
    d, q = metrics["diagnostics"], metrics["sample_quality"]
    assert {"kl_per_dim", "active_units", "mutual_information", "amortization_gap", "approximation_gap"} <= set(d)
    assert {"fd", "precision", "recall", "classifier_accuracy", "floor_fd"} <= set(q)
    assert metrics["evaluations"][-1]["diagnostics"] == d
    assert "values" not in metrics["posterior_predictive"]   # the per-image arrays stay out of metrics.json
    assert (run / "diagnostics.png").stat().st_size > 0 and (run / "posterior-predictive.png").stat().st_size > 0
    assert torch.load(run / "classifier.pt", weights_only=True)["config"]["dataset"].startswith("digits")
    assert cli.main(["explore", str(run), "--html"]) == 0
    page = (run / "explorer.html").read_text()
    assert 'id="diagnostics"' in page and "amortisation gap" in page


def test_cli_gradient_flag(tmp_path, capsys):
    from pyro_vae import cli
    for flags, needle in ((["--gradient", "dreg"], "--objective elbo"),
                          (["--objective", "iwae", "--gradient", "stl", "--model", "hvae"], "--model hvae"),
                          (["--objective", "iwae", "--gradient", "dreg", "--guide", "iaf"], "--guide iaf")):
        assert cli.main(["train", "--dataset", "digits", *flags, "--out", str(tmp_path / "no")]) == 2
        assert needle in capsys.readouterr().err
    run = tmp_path / "run"
    assert cli.main(["train", "--dataset", "digits", "--epochs", "1", "--latent-dim", "3", "--hidden", "16",
                     "--objective", "iwae", "--num-particles", "3", "--gradient", "dreg", "--eval-samples", "5",
                     "--out", str(run), "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["objective"] == {"name": "iwae", "loss": "IWAE", "num_particles": 3, "gradient": "dreg"}
    assert config["fit"]["loss"] == "IWAE"


def test_mutual_information_of_a_flow_posterior_is_finite():
    torch.manual_seed(0)
    vae = pv.VAE(image_shape=(1, 4, 4), latent_dim=3, hidden=(8,), posterior=pv.posteriors.IAF(num_flows=2, hidden=8))
    got = diagnostics.mutual_information(vae, torch.rand(30, 1, 4, 4).round(), limit=30, chunk=7)
    assert math.isfinite(got) and got <= math.log(30) + 1e-6
