"""Priors, likelihoods and posterior families beyond the AEVB defaults.

Every part is trained for two epochs on the real 8x8 digits inside a VAE, rebuilt from its config, and its
density is checked against an independent computation (float64 CDFs, an explicit mixture, autograd
Jacobians).
"""

import copy
import math

import pytest
import torch

import pyro
import pyro.poutine as poutine

import pyro_vae as pv
from pyro_vae import guides, likelihoods, priors

LATENT = 3


@pytest.fixture(scope="module")
def digits_8bit(digits_grey):
    """Grey digits (counts 0..16 over 16) moved to the nearest 8-bit level k/255."""
    return tuple(pv.data.from_tensor((d.images * 255).round() / 255, labels=d.labels, name="digits-8bit")
                 for d in digits_grey)


@pytest.fixture(scope="module")
def digits_open(digits_grey):
    """Grey digits squeezed into the open interval (0, 1), for the Beta likelihood."""
    return tuple(pv.data.from_tensor(d.images * (1 - 2e-3) + 1e-3, labels=d.labels, name="digits-open")
                 for d in digits_grey)


# name -> (VAE keyword arguments, which data)
PARTS = {
    "vamp-prior": (lambda: dict(prior=priors.VampPrior(num_pseudo_inputs=20)), "binary"),
    "flow-prior": (lambda: dict(prior=priors.FlowPrior(num_flows=2, hidden=16)), "binary"),
    "iaf": (lambda: dict(posterior=guides.IAF(num_flows=2, hidden=16)), "binary"),
    "iaf-unconditional": (lambda: dict(posterior=guides.IAF(num_flows=2, hidden=16, conditional=False)), "binary"),
    "normal-per-pixel": (lambda: dict(likelihood=likelihoods.Normal(scale="per-pixel")), "grey"),
    "laplace": (lambda: dict(likelihood=likelihoods.Laplace()), "grey"),
    "discretized-logistic": (lambda: dict(likelihood=likelihoods.DiscretizedLogistic()), "8bit"),
    "beta": (lambda: dict(likelihood=likelihoods.Beta()), "open"),
}


@pytest.fixture(scope="module")
def datasets(digits_binary, digits_grey, digits_8bit, digits_open):
    return {"binary": digits_binary, "grey": digits_grey, "8bit": digits_8bit, "open": digits_open}


def _vae(part):
    return pv.VAE(image_shape=(1, 8, 8), latent_dim=LATENT, hidden=(32,), **PARTS[part][0]())


def _shapes(trace):
    trace.compute_log_prob()
    return {name: (tuple(trace.nodes[name]["fn"].batch_shape), tuple(trace.nodes[name]["fn"].event_shape),
                   tuple(trace.nodes[name]["log_prob"].shape))
            for name in trace.stochastic_nodes + trace.observation_nodes if name != "data"}


@pytest.mark.parametrize("part", PARTS)
def test_part_trains_saves_and_bounds(part, datasets):
    train, test = datasets[PARTS[part][1]]
    vae = _vae(part)
    x, _ = next(train.batches(5, shuffle=False))
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    assert _shapes(model_trace) == {"z": ((5,), (LATENT,), (5,)), "x": ((5,), (1, 8, 8), (5,))}
    assert _shapes(guide_trace) == {"z": ((5,), (LATENT,), (5,))}
    # Trace_ELBO needs a reparameterised z for low-variance gradients
    assert guide_trace.nodes["z"]["fn"].has_rsample and guide_trace.nodes["z"]["value"].requires_grad

    before = pv.evaluate.elbo(vae, test, num_samples=5)["elbo"]
    history = pv.fit(vae, train, epochs=2, progress=False)
    after = pv.evaluate.elbo(vae, test, num_samples=10)["elbo"]
    assert all(math.isfinite(r["train_elbo"]) for r in history)
    assert math.isfinite(after) and after > before + 1.0
    assert vae.sample(4).shape == (4, 1, 8, 8)
    assert vae.prior.sample(4).shape == (4, LATENT)

    # the importance-sampled bound is never below the ELBO in expectation (both are averages over 297 images)
    log_px = pv.evaluate.log_likelihood(vae, test, num_samples=50)
    assert log_px >= after - 0.2

    copy.deepcopy(vae)   # no tensors of the last step are cached on the modules
    rebuilt = pv.build_vae(vae.config)
    rebuilt.load_state_dict(vae.state_dict())
    assert rebuilt.config == vae.config
    assert set(rebuilt.state_dict()) == set(vae.state_dict())
    vae.eval(), rebuilt.eval()
    z = torch.randn(2, 4, LATENT)
    assert torch.equal(rebuilt.generate(z), vae.generate(z))
    assert torch.equal(rebuilt.prior().log_prob(z), vae.prior().log_prob(z))
    x, _ = next(test.batches(4, shuffle=False))
    assert torch.equal(rebuilt.likelihood(rebuilt.decoder(z)).log_prob(x), vae.likelihood(vae.decoder(z)).log_prob(x))
    traces = []
    for model in (vae, rebuilt):
        pyro.set_rng_seed(3)
        traces.append(poutine.trace(model.guide).get_trace(x))
        traces[-1].compute_log_prob()
    assert torch.equal(traces[0].nodes["z"]["value"], traces[1].nodes["z"]["value"])
    assert torch.equal(traces[0].nodes["z"]["log_prob"], traces[1].nodes["z"]["log_prob"])


# --- priors -------------------------------------------------------------------------------------------


def test_vamp_prior_is_the_mixture_of_encoder_posteriors():
    vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=LATENT, hidden=(16,), prior=priors.VampPrior(7))
    u = vae.prior.pseudo_inputs
    assert u.shape == (7, 1, 8, 8) and ((u > 0) & (u < 1)).all()
    z = torch.randn(5, 4, LATENT)   # a particles dim in front, as importance sampling makes it
    loc, scale = vae.encoder(u)
    components = torch.distributions.Normal(loc, scale).log_prob(z.unsqueeze(-2)).sum(-1)   # (5, 4, 7)
    expected = torch.logsumexp(components, dim=-1) - math.log(7)
    assert torch.allclose(vae.prior().log_prob(z), expected, atol=1e-5)
    # the encoder belongs to the VAE only: saved once, no module cycle
    assert not list(vae.prior.children())
    assert [k for k in vae.state_dict() if k.startswith("prior.")] == ["prior.raw_pseudo_inputs"]
    # the prior's log-density trains the encoder too
    vae.prior().log_prob(z).sum().backward()
    assert all(p.grad is not None for p in vae.encoder.parameters()) and vae.prior.raw_pseudo_inputs.grad is not None


def test_vamp_prior_start_from_images_and_needs_a_vae(digits_grey):
    prior = priors.VampPrior(4)
    vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=2, hidden=(8,), prior=prior)
    images = digits_grey[0].images[:3]
    prior.initialize(images)
    assert torch.allclose(prior.pseudo_inputs[:3], images.clamp(0.01, 0.99), atol=1e-5)
    assert torch.allclose(prior.pseudo_inputs[3], prior.pseudo_inputs[0])
    assert vae.prior.sample(6).shape == (6, 2)
    with pytest.raises(pv.ConfigError, match="encoder"):
        priors.VampPrior(4).setup(2)
    with pytest.raises(pv.ConfigError, match="positive"):
        priors.VampPrior(0)


# --- the diagonal-Normal mixture behind MixtureOfGaussians and VampPrior ----------------------------


def _mixture_float64_loop(logits, loc, scale, z):
    """log p(z), one component at a time, in float64 and the direct (z - mu) / s form: ``z.shape[:-1]``."""
    logits, loc, scale, z = (t.double() for t in (logits, loc, scale, z))
    per_component = [torch.distributions.Normal(loc[k], scale[k]).log_prob(z).sum(-1) for k in range(loc.shape[0])]
    return torch.logsumexp(torch.stack(per_component, dim=-1) + torch.log_softmax(logits, dim=-1), dim=-1)


def _hard_mixture(shape, num_components, latent_dim, dtype, seed=0):
    """Parameters and codes where the expanded quadratic cancels badly: means up to 10, scales from 1e-3
    to 10, and two thirds of the codes drawn from the components (as a trained encoder's codes sit near
    its posteriors, which are the VampPrior's components), the rest broad."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_components, generator=g)
    loc = 20 * torch.rand(num_components, latent_dim, generator=g) - 10
    scale = 10 ** (4 * torch.rand(num_components, latent_dim, generator=g) - 3)
    count = math.prod(shape)
    chosen = torch.randint(num_components, (count,), generator=g)
    near = loc[chosen] + scale[chosen] * torch.randn(count, latent_dim, generator=g)
    broad = 5 * torch.randn(count, latent_dim, generator=g)
    z = torch.where(torch.arange(count).unsqueeze(-1) % 3 < 2, near, broad).reshape(shape + (latent_dim,))
    return [t.to(dtype) for t in (logits, loc, scale, z)]


# (shape of the codes' leading dims, K, D): importance samples x datapoints, a single code, K=1, D=1
MIXTURE_SHAPES = [((3, 40), 500, 50), ((), 10, 50), ((4, 5), 1, 3), ((30,), 8, 1), ((2, 3, 4), 5, 2)]
# Tolerances against the float64 loop on the same inputs. float32: the float64 product's result is
# rounded once to float32, so within ~2 float32 ulps (MixtureSameFamily in float32 itself is off by up to
# ~2e-6 relative on these values); float64: the expanded form loses ~1e-16 * mu^2/s^2 * D, about 1e-7 nats.
MIXTURE_TOLERANCE = {torch.float32: dict(rtol=2e-7, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-6)}
# gradients, elementwise, with a floor relative to the largest entry (where tiny responsibilities cancel)
GRADIENT_TOLERANCE = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-6, 1e-9)}


def _gradients(fn, params):
    params = [p.detach().clone().requires_grad_() for p in params]
    out = fn(*params)
    # unequal weights per output, so that errors in one code's gradient cannot hide in a sum
    (out * torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
    return [p.grad for p in params]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape,num_components,latent_dim", MIXTURE_SHAPES)
def test_diagonal_normal_mixture_matches_a_float64_loop(shape, num_components, latent_dim, dtype):
    logits, loc, scale, z = _hard_mixture(shape, num_components, latent_dim, dtype)
    log_p = priors.DiagonalNormalMixture(logits, loc, scale).log_prob(z)
    assert log_p.shape == shape and log_p.dtype == dtype
    exact = _mixture_float64_loop(logits, loc, scale, z)
    assert torch.allclose(log_p.double(), exact, **MIXTURE_TOLERANCE[dtype])
    # and torch's own mixture, evaluated in float64 on the same inputs
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits.double()),
        torch.distributions.Independent(torch.distributions.Normal(loc.double(), scale.double()), 1))
    assert torch.allclose(log_p.double(), reference.log_prob(z.double()), **MIXTURE_TOLERANCE[dtype])

    ours = _gradients(lambda *p: priors.DiagonalNormalMixture(*p[:3]).log_prob(p[3]), [logits, loc, scale, z])
    expected = _gradients(_mixture_float64_loop, [t.double() for t in (logits, loc, scale, z)])
    rtol, floor = GRADIENT_TOLERANCE[dtype]
    for name, got, want in zip(("logits", "loc", "scale", "z"), ours, expected):
        assert got.dtype == dtype and got.shape == want.shape
        assert ((got.double() - want).abs() <= rtol * want.abs() + floor * want.abs().max()).all(), name


def test_diagonal_normal_mixture_is_the_mixture_same_family_it_replaces():
    K, D = 6, 3
    logits, loc, scale, _ = _hard_mixture((), K, D, torch.float32)
    scale = scale.clamp(0.1, 2.0)
    ours = priors.DiagonalNormalMixture(logits, loc, scale)
    plain = pyro.distributions.MixtureSameFamily(pyro.distributions.Categorical(logits=logits),
                                                 pyro.distributions.Normal(loc, scale).to_event(1))
    assert isinstance(ours, pyro.distributions.MixtureSameFamily)
    assert ours.batch_shape == () and ours.event_shape == (D,) and not ours.has_rsample
    assert torch.allclose(ours.mean, plain.mean) and torch.allclose(ours.variance, plain.variance)
    assert ours.support.check(torch.randn(4, D)).all()
    torch.manual_seed(1)
    drawn = ours.sample((5, 2))
    torch.manual_seed(1)
    assert torch.equal(drawn, plain.sample((5, 2)))   # sampling is inherited, random stream included

    # expand (what pyro.plate does) batches without copying the parameters and keeps the fast log_prob
    batched = ours.expand((4,))
    assert type(batched) is priors.DiagonalNormalMixture and batched.batch_shape == (4,)
    z = torch.randn(7, 4, D)
    assert torch.allclose(batched.log_prob(z), plain.expand((4,)).log_prob(z), atol=1e-5)
    assert batched.log_prob(z[0, 0]).shape == (4,)                 # one code, scored against each batch entry
    assert batched.sample().shape == (4, D) and ours.expand_by((2,)).batch_shape == (2,)
    with pytest.raises(ValueError):                                 # argument validation still applies
        ours.log_prob(torch.randn(4, D + 1))

    with pyro.plate("data", 4):
        site = poutine.trace(lambda: pyro.sample("z", ours)).get_trace().nodes["z"]
    assert site["value"].shape == (4, D) and site["fn"].batch_shape == (4,)
    assert torch.allclose(site["fn"].log_prob(site["value"]), plain.log_prob(site["value"]), atol=1e-5)

    for bad in ((logits, loc[:-1], scale[:-1]), (logits, loc, scale[:, :-1]), (logits[None], loc, scale),
                (logits, loc[None], scale[None])):
        with pytest.raises(pv.ConfigError, match="logits"):
            priors.DiagonalNormalMixture(*bad)


def test_diagonal_normal_mixture_chunks_large_blocks(monkeypatch):
    logits, loc, scale, z = _hard_mixture((6, 50), 20, 4, torch.float32)
    whole, whole_grads = (priors.DiagonalNormalMixture(logits, loc, scale).log_prob(z),
                          _gradients(lambda *p: priors.DiagonalNormalMixture(*p[:3]).log_prob(p[3]),
                                     [logits, loc, scale, z]))
    monkeypatch.setattr(priors, "MAX_BLOCK", 7 * 20)   # 7 codes per block: 43 blocks, the last one short
    chunked = priors.DiagonalNormalMixture(logits, loc, scale).log_prob(z)
    chunked_grads = _gradients(lambda *p: priors.DiagonalNormalMixture(*p[:3]).log_prob(p[3]), [logits, loc, scale, z])
    assert torch.allclose(chunked, whole, rtol=1e-7, atol=0)
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-6 * b.abs().max()) for a, b in zip(chunked_grads, whole_grads))


def test_diagonal_normal_mixture_never_forms_codes_by_components_by_dims():
    K, D, codes = 256, 64, (8, 256)
    mixture = priors.DiagonalNormalMixture(torch.zeros(K), torch.randn(K, D), torch.rand(K, D) + 0.1)
    z = torch.randn(codes + (D,))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        mixture.log_prob(z)
    largest = max(event.cpu_memory_usage for event in prof.events())
    # the (codes, K) block in float64 is 4 MiB; MixtureSameFamily's (codes, K, D) float32 temporary is 128 MiB
    assert 0 < largest <= math.prod(codes) * K * 8


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_mixture_priors_under_mean_field_and_jit_elbos(prior, digits_binary):
    vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=LATENT, hidden=(16,),
                 prior=priors.MixtureOfGaussians(4) if prior == "mog" else priors.VampPrior(6))
    assert type(vae.prior()) is priors.DiagonalNormalMixture
    images = digits_binary[0].images
    losses = {}
    for name, elbo in (("trace", pyro.infer.Trace_ELBO()), ("meanfield", pyro.infer.TraceMeanField_ELBO())):
        pyro.set_rng_seed(5)
        losses[name] = elbo.differentiable_loss(vae.model, vae.guide, images[:10]).item()
    # no analytic KL(Normal || mixture) exists, so the mean-field ELBO falls back to the same Monte Carlo term
    assert losses["meanfield"] == pytest.approx(losses["trace"], rel=1e-6)

    # JitTrace_ELBO: traced on one batch size, replayed on another, it estimates the eager ELBO (its
    # random stream differs, so the comparison is of means over many draws, as in test_train)
    jit = pyro.infer.JitTrace_ELBO(ignore_jit_warnings=True)
    with torch.no_grad():
        jit.differentiable_loss(vae.model, vae.guide, images[:64])
        draws = {name: torch.tensor([elbo.differentiable_loss(vae.model, vae.guide, images[64:80]).item()
                                     for _ in range(150)])
                 for name, elbo in (("jit", jit), ("eager", pyro.infer.Trace_ELBO()))}
    se = math.sqrt(sum(d.var().item() / len(d) for d in draws.values()))
    assert abs(draws["jit"].mean() - draws["eager"].mean()) < 5 * se and draws["jit"].std() > 0
    # the traced density itself, replayed on other values and another number of codes, is the eager one
    logits, loc, scale, z = _hard_mixture((5, 8), 4, LATENT, torch.float32)
    traced = torch.jit.trace(lambda *p: priors.DiagonalNormalMixture(*p[:3]).log_prob(p[3]),
                             (logits, loc, scale, z), check_trace=False)
    logits, loc, scale, z = _hard_mixture((3, 11), 4, LATENT, torch.float32, seed=1)
    eager = priors.DiagonalNormalMixture(logits, loc, scale).log_prob(z)
    assert traced(logits, loc, scale, z).shape == (3, 11)
    assert torch.allclose(traced(logits, loc, scale, z), eager, rtol=1e-6, atol=0)
    # float64 models score in float64: the parameters' dtype, not the float64 accumulation, sets the result's
    assert vae.double().prior().log_prob(torch.randn(2, LATENT, dtype=torch.float64)).dtype == torch.float64


def _perturb(module, seed=0):
    # freshly built flows are close to the identity; random weights make the checks below meaningful
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=generator))


def test_flow_prior_density_matches_jacobian():
    prior = priors.FlowPrior(num_flows=3, hidden=8)
    prior.setup(LATENT)
    _perturb(prior)
    normal = torch.distributions.Normal(torch.zeros(LATENT, dtype=torch.float64), 1.0)

    transforms = prior().transforms

    def to_base(z):   # z -> u, undoing the sampling path; its Jacobian comes from autograd alone
        for t in reversed(transforms):
            z = t.inv(z)
        return z

    points = torch.cat([torch.randn(3, LATENT), prior.sample(3)])
    for z in points:
        jac = torch.autograd.functional.jacobian(to_base, z.clone()).double()
        expected = normal.log_prob(to_base(z.clone()).double()).sum() + torch.linalg.slogdet(jac)[1]
        assert prior().log_prob(z.clone()).double().item() == pytest.approx(expected.item(), abs=1e-4)
    # batch shape () broadcasts under the data plate and accepts a particles dim
    many = torch.randn(5, 4, LATENT)
    assert torch.allclose(prior().log_prob(many), torch.stack([prior().log_prob(z) for z in many]), atol=1e-5)
    with pyro.plate("data", 4):
        assert pyro.sample("z", prior()).shape == (4, LATENT)


# --- posterior ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("conditional", [True, False])
def test_iaf_density_matches_jacobian(conditional):
    posterior = guides.IAF(num_flows=2, hidden=8, conditional=conditional)
    posterior.setup(LATENT)
    _perturb(posterior)
    loc, scale = torch.randn(4, LATENT), torch.rand(4, LATENT) + 0.3
    q = posterior(loc, scale)
    assert q.batch_shape == (4,) and q.event_shape == (LATENT,)
    z = q.rsample()
    cached = q.log_prob(z)                 # the flow's own sample: Jacobian terms from the cache
    inverted = q.log_prob(z.clone())       # a new tensor: the flows are inverted
    assert torch.allclose(cached, inverted, atol=1e-4)

    for n in range(4):
        one = posterior(loc[n], scale[n])

        def forward(z0):
            for t in one.transforms:
                z0 = t(z0)
            return z0

        z0 = torch.randn(LATENT)
        jac = torch.autograd.functional.jacobian(forward, z0).double()
        expected = (torch.distributions.Normal(loc[n].double(), scale[n].double()).log_prob(z0.double()).sum()
                    - torch.linalg.slogdet(jac)[1])
        assert one.log_prob(forward(z0).detach()).item() == pytest.approx(expected.item(), abs=1e-4)
    # extra leading dims (importance samples) broadcast against the per-image flow
    many = torch.randn(6, 4, LATENT)
    assert q.log_prob(many).shape == (6, 4)
    with pytest.raises(pv.ConfigError):
        guides.IAF(num_flows=0)


# --- likelihoods --------------------------------------------------------------------------------------


def _bin_masses_float64(loc, log_scale):
    """Bin probabilities from the logistic CDF, directly and in float64: ``(..., 256)``."""
    loc, scale = loc.double().unsqueeze(-1), log_scale.double().exp().unsqueeze(-1)
    inner = (torch.arange(1, 256, dtype=torch.float64) - 0.5) / 255
    cdf = torch.sigmoid((inner - loc) / scale)
    zeros, ones = torch.zeros_like(cdf[..., :1]), torch.ones_like(cdf[..., :1])
    return torch.diff(torch.cat([zeros, cdf, ones], dim=-1), dim=-1)


def test_discretized_logistic_matches_float64_cdf():
    loc = torch.tensor([0.5, 0.0, 1.0, 0.3, -0.4, 1.7, 0.62])
    log_scale = torch.tensor([-2.0, -4.0, -1.0, 0.5, -3.0, -2.5, -6.9])
    d = likelihoods.DiscretizedLogisticDistribution(loc, log_scale)
    grid = (torch.arange(256, dtype=torch.float32) / 255).unsqueeze(-1)     # (256, 1) against batch (7,)
    log_p = d.log_prob(grid).T                                               # (7, 256)
    assert torch.isfinite(log_p).all()
    assert torch.allclose(log_p.double().exp().sum(-1), torch.ones(7, dtype=torch.float64), atol=1e-5)
    expected = _bin_masses_float64(loc, log_scale)
    # float32 inputs: (x - loc) / scale carries a relative error ~1e-7 * |x - loc| / scale
    assert torch.allclose(log_p.double().exp(), expected, rtol=1e-4, atol=1e-6)
    sizeable = expected > 1e-6   # where the float64 difference is itself accurate
    assert torch.allclose(log_p.double()[sizeable], expected[sizeable].log(), atol=1e-3)
    # mean over the bins
    levels = torch.arange(256, dtype=torch.float64) / 255
    assert torch.allclose(d.mean.double(), (expected * levels).sum(-1), atol=1e-5)


def test_discretized_logistic_tails_and_samples():
    # far outside the data range and with a tiny scale, log-probabilities stay finite (log-sigmoid form)
    d = likelihoods.DiscretizedLogisticDistribution(torch.tensor([-30.0, 40.0, 0.5]), torch.tensor([-7.0, -7.0, 9.0]))
    values = torch.tensor([[0.0, 1.0, 128.0], [255.0, 0.0, 255.0], [102.0, 153.0, 0.0]]) / 255
    assert torch.isfinite(d.log_prob(values)).all()
    assert d.log_prob(torch.tensor([0.0, 1.0, 128 / 255])).exp()[:2].tolist() == pytest.approx([1.0, 1.0])
    # samples lie on the grid and follow the bin masses
    loc, log_scale = torch.tensor([0.2]), torch.tensor([-3.0])
    samples = likelihoods.DiscretizedLogisticDistribution(loc, log_scale).sample((20000,)).squeeze(-1)
    assert ((samples * 255 - (samples * 255).round()).abs() < 1e-3).all()
    frequencies = torch.bincount((samples * 255).round().long(), minlength=256).double() / samples.numel()
    assert 0.5 * (frequencies - _bin_masses_float64(loc, log_scale)[0]).abs().sum() < 0.03
    # the site shape inside a model: one image per datapoint
    params = torch.zeros(3, 2, 8, 8)
    image = likelihoods.DiscretizedLogistic()(params)
    assert image.batch_shape == (3,) and image.event_shape == (1, 8, 8)
    assert image.sample().shape == (3, 1, 8, 8)


def test_discretized_logistic_data_checks(digits_grey, digits_binary, digits_8bit):
    likelihood = likelihoods.DiscretizedLogistic()
    with pytest.raises(pv.DataError, match="k/255"):
        likelihood.check_data(digits_grey[0])         # levels k/16 are not 8-bit levels
    likelihood.check_data(digits_binary[0])           # 0/1 lie on the grid
    likelihood.check_data(digits_8bit[0])


def test_per_pixel_scales_split_the_channels():
    params = torch.randn(2, 2, 8, 8)
    for likelihood, family in ((likelihoods.Normal(scale="per-pixel"), torch.distributions.Normal),
                               (likelihoods.Laplace(), torch.distributions.Laplace)):
        assert likelihood.params_per_pixel == 2 and likelihood.config() == {"scale": "per-pixel"}
        x = torch.rand(2, 1, 8, 8)
        expected = family(params[:, :1], torch.nn.functional.softplus(params[:, 1:]) + likelihoods.MIN_SCALE)
        assert torch.allclose(likelihood(params).log_prob(x), expected.log_prob(x).sum((-3, -2, -1)))
        assert torch.equal(likelihood.mean(params), params[:, :1])
    # the per-pixel setting is per object: the fixed and learned scales keep one output per pixel
    assert likelihoods.Normal().params_per_pixel == 1 and likelihoods.Normal(scale="learned").params_per_pixel == 1
    assert likelihoods.Laplace(scale=0.3).config() == {"scale": 0.3}
    assert likelihoods.Laplace(scale="learned").scale.item() == pytest.approx(0.1, rel=1e-4)
    with pytest.raises(pv.ConfigError, match="per-pixel"):
        likelihoods.Laplace(scale="wide")


def test_per_pixel_normal_refuses_a_decoder_with_one_channel(digits_grey):
    decoder = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Unflatten(-1, (1, 8, 8)))
    vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=2, hidden=(8,), decoder=decoder,
                 likelihood=likelihoods.Normal(scale="per-pixel"))
    with pytest.raises(pv.ConfigError, match="params_per_pixel=2"):
        pv.fit(vae, digits_grey[0], epochs=1, progress=False)


def test_beta_refuses_pixels_on_the_edges(digits_grey, digits_binary, digits_open):
    likelihood = likelihoods.Beta()
    with pytest.raises(pv.DataError, match="squeeze"):
        likelihood.check_data(digits_grey[0])         # the digits have exact zeros
    with pytest.raises(pv.DataError, match="binarized"):
        likelihood.check_data(digits_binary[0])
    likelihood.check_data(digits_open[0])
    params = torch.randn(3, 2, 8, 8)
    a = torch.nn.functional.softplus(params[:, :1]) + likelihoods.MIN_SCALE
    b = torch.nn.functional.softplus(params[:, 1:]) + likelihoods.MIN_SCALE
    assert torch.allclose(likelihood.mean(params), a / (a + b))
    assert torch.allclose(likelihood(params).mean, a / (a + b))
