"""The sync-free step (pyro_vae.fast): Trace_ELBO's estimator, its gradients, handlers, shapes, no host reads."""

import math

import pytest
import torch

import pyro
import pyro.poutine as poutine
from pyro.infer import JitTrace_ELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger

import pyro_vae as pv
from pyro_vae import extended, guides, likelihoods, priors
from pyro_vae.fast import make_step, sync_free_loss

SHAPE = (1, 8, 8)


def tiny(cls=pv.VAE, **kwargs):
    """A model with tiny networks (digits are 8x8), so that tracing and stepping take milliseconds."""
    if cls is extended.HierarchicalVAE:
        return cls(image_shape=SHAPE, **{"latent_dims": (3, 2), "hidden": (16,), "latent_hidden": (8,), **kwargs})
    if cls is extended.ConditionalVAE:
        return cls(image_shape=SHAPE, **{"latent_dim": 2, "num_classes": 10, "hidden": (16,), **kwargs})
    return cls(image_shape=SHAPE, **{"latent_dim": 2, "hidden": (16,), **kwargs})


def batch(data, size=64, seed=0):
    """One batch of real digits (dynamic binarization draws from the global stream: seeded here)."""
    torch.manual_seed(seed)
    return next(data.batches(size, generator=torch.Generator().manual_seed(seed)))


def clear_grads(vae):
    for p in vae.parameters():
        p.grad = None


def reference(vae, x, y=None, seed=0, elbo=None, **kwargs):
    """Pyro's own ``Trace_ELBO.differentiable_loss`` and its gradients, from the random state ``seed``."""
    clear_grads(vae)
    pyro.set_rng_seed(seed)
    with pyro.validation_enabled(False):
        loss = (elbo or Trace_ELBO()).differentiable_loss(vae.model, vae.guide, x, *(() if y is None else (y,)),
                                                          **kwargs)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in vae.named_parameters() if p.grad is not None}


def fast(step, vae, x, y=None, seed=0, **kwargs):
    clear_grads(vae)
    pyro.set_rng_seed(seed)
    loss = step(x, y, **kwargs)
    return loss, {n: p.grad.clone() for n, p in vae.named_parameters() if p.grad is not None}


def assert_same(expected, actual, rtol=1e-5):
    (loss, grads), (fast_loss, fast_grads) = expected, actual
    assert fast_loss.shape == () and not fast_loss.requires_grad
    # Pyro sums the per-site values as Python floats: equal to float32 rounding
    assert math.isclose(float(fast_loss), float(loss), rel_tol=rtol), (float(fast_loss), float(loss))
    assert set(fast_grads) == set(grads) and grads
    for name in grads:
        scale = grads[name].abs().max().item() + 1e-12
        assert torch.allclose(fast_grads[name], grads[name], rtol=rtol, atol=rtol * scale), name


def check_equal_to_trace_elbo(vae, data, y_needed=False, mode="replay", calls=3, **kwargs):
    """Calls 1 (eager, then the trace) and 2.. (replays) each equal Trace_ELBO from the same random state."""
    vae.register_params = False
    x, y = batch(data)
    y = y if y_needed else None
    step = make_step(Trace_ELBO(), vae, "cpu", mode=mode)
    for seed in range(calls):
        assert_same(reference(vae, x, y, seed, **kwargs), fast(step, vae, x, y, seed, **kwargs))
    if mode != "eager":
        assert len(step.graphs) == 1   # traced once, replayed since
    return step


@pytest.mark.parametrize("make", [
    lambda: tiny(),
    lambda: tiny(posterior=guides.IAF(num_flows=2, hidden=8)),
    lambda: tiny(prior=priors.VampPrior(num_pseudo_inputs=5)),
    lambda: tiny(prior=priors.LearnedNormal()),
    lambda: tiny(prior=priors.MixtureOfGaussians(3)),
    lambda: tiny(prior=priors.FlowPrior(num_flows=2, hidden=8)),
    lambda: tiny(extended.HierarchicalVAE),
], ids=["vae", "iaf", "vamp", "learned-normal", "mog", "flow-prior", "hierarchical"])
def test_equals_trace_elbo_loss_and_gradients(make, digits_binary):
    check_equal_to_trace_elbo(make(), digits_binary[0])


def test_conditional_vae_with_labels(digits_binary):
    check_equal_to_trace_elbo(tiny(extended.ConditionalVAE), digits_binary[0], y_needed=True)


@pytest.mark.parametrize("likelihood", [likelihoods.ContinuousBernoulli(), likelihoods.Normal(scale="learned")],
                         ids=["continuous-bernoulli", "normal-learned"])
def test_likelihoods_on_grey_digits(likelihood, digits_grey):
    check_equal_to_trace_elbo(tiny(likelihood=likelihood), digits_grey[0])


def test_eager_mode_and_particles(digits_binary):
    # the eager estimator (no trace) is the reference's too, and several particles are averaged as Pyro does
    check_equal_to_trace_elbo(tiny(), digits_binary[0], mode="eager")
    for vectorize in (False, True):
        vae = tiny()
        vae.register_params = False
        x, _ = batch(digits_binary[0])
        step = make_step(Trace_ELBO(num_particles=3, vectorize_particles=vectorize), vae, "cpu")
        # one instance: a vectorised ELBO runs the program once, on its first call, to guess the plate depth
        pyro_elbo = Trace_ELBO(num_particles=3, vectorize_particles=vectorize)
        for seed in range(3):
            assert_same(reference(vae, x, seed=seed, elbo=pyro_elbo), fast(step, vae, x, seed=seed))


class ScaleLatents(Messenger):
    """Weights every latent (non-observed) sample site from outside the model, as a beta-VAE's handler does."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def _pyro_sample(self, msg):
        if not msg["is_observed"]:
            msg["scale"] = self.scale * msg["scale"]


class InnerBeta(pv.VAE):
    """The latent site scaled inside the model (a constant of the program, frozen into the graph)."""

    beta = 0.25

    def model(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x, y=None):
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=self.beta):
            pyro.sample("z", self.posterior(*self.encoder(x)))


def test_scaled_latent_sites(digits_binary):
    check_equal_to_trace_elbo(tiny(InnerBeta), digits_binary[0])
    vae = tiny(extended.HierarchicalVAE)
    vae.register_params = False
    x, _ = batch(digits_binary[0])
    step = make_step(Trace_ELBO(), vae, "cpu")
    # a handler around the call is read on every call: a warm-up changes the weight without a new trace
    for seed, beta in enumerate([0.1, 0.1, 0.5, 2.0, 1.0]):
        with ScaleLatents(beta):
            expected = reference(vae, x, seed=seed)
            actual = fast(step, vae, x, seed=seed)
        assert_same(expected, actual)
    assert len(step.graphs) == 1
    with poutine.scale(scale=3.0):   # Pyro's own handler scales every site, the observed ones too
        assert_same(reference(vae, x, seed=9), fast(step, vae, x, seed=9))
    # a handler that does more than scale (here: masks) gets the eager estimator, which honours it
    mask = torch.arange(x.shape[0]) % 2 == 0
    with poutine.mask(mask=mask):
        assert_same(reference(vae, x, seed=10), fast(step, vae, x, seed=10))
    assert_same(reference(vae, x, seed=11), fast(step, vae, x, seed=11))   # and back to the graph


def test_last_batch_of_another_size(digits_binary):
    vae = tiny()
    vae.register_params = False
    step = make_step(Trace_ELBO(), vae, "cpu")
    train = digits_binary[0]
    sizes = [x.shape[0] for x, _ in train.batches(100)]
    assert sizes[-1] != 100   # 1,497 images: the last batch has 97
    for size, seed in ((100, 0), (100, 1), (97, 2), (97, 3), (100, 4)):
        x, _ = batch(train, size, seed)
        assert_same(reference(vae, x, seed=seed), fast(step, vae, x, seed=seed))
    assert len(step.graphs) == 2


def test_does_not_shift_the_random_stream(digits_binary):
    # tracing runs the program again, outside the run's random stream: a seeded run equals Trace_ELBO's run
    vae = tiny()
    vae.register_params = False
    x, _ = batch(digits_binary[0])
    step = make_step(Trace_ELBO(), vae, "cpu")
    module = Trace_ELBO()(vae.model, vae.guide)
    with pyro.validation_enabled(False):
        pyro.set_rng_seed(5)
        expected = [module(x).item() for _ in range(4)]
    pyro.set_rng_seed(5)
    assert [step(x).item() for _ in range(4)] == pytest.approx(expected, rel=1e-6)


class Covariates(pv.VAE):
    """A model with extra keyword arguments: a tensor (shifts the logits per image) and a plain value."""

    def model(self, x, y=None, covariates=None, gain=1.0):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            logits = self.decoder(z) * gain + covariates.reshape(-1, 1, 1, 1)
            pyro.sample("x", self.likelihood(logits), obs=x)

    def guide(self, x, y=None, covariates=None, gain=1.0):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.posterior(*self.encoder(x)))


def test_keyword_arguments(digits_binary):
    vae = tiny(Covariates)
    vae.register_params = False
    x, _ = batch(digits_binary[0])
    step = make_step(Trace_ELBO(), vae, "cpu")
    for seed, gain in ((0, 1.0), (1, 1.0), (2, 2.0), (3, 2.0)):
        covariates = torch.randn(x.shape[0])
        assert_same(reference(vae, x, seed=seed, covariates=covariates, gain=gain),
                    fast(step, vae, x, seed=seed, covariates=covariates, gain=gain))
    assert len(step.graphs) == 2   # one per value of the non-tensor argument


def test_optimizer_inside_the_step(digits_binary):
    # make_step(..., optimizer=) zeroes, steps and leaves what the usual loop leaves
    pyro.set_rng_seed(0)
    a, b = tiny(), tiny()
    b.load_state_dict(a.state_dict())
    a.register_params = b.register_params = False
    opt_a, opt_b = torch.optim.Adam(a.parameters(), lr=1e-2), torch.optim.Adam(b.parameters(), lr=1e-2)
    inside = make_step(Trace_ELBO(), a, "cpu", optimizer=opt_a)
    outside = make_step(Trace_ELBO(), b, "cpu")
    for seed in range(4):
        x, _ = batch(digits_binary[0], seed=seed)
        pyro.set_rng_seed(seed)
        loss_a = inside(x)
        pyro.set_rng_seed(seed)
        opt_b.zero_grad(set_to_none=True)
        loss_b = outside(x)
        opt_b.step()
        assert loss_a.item() == loss_b.item()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_training_improves_the_elbo(digits_binary):
    train, test = digits_binary
    pyro.set_rng_seed(0)
    vae = pv.VAE(image_shape=SHAPE, latent_dim=4, hidden=(32,))
    vae.register_params = False
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    step = make_step(Trace_ELBO(), vae, "cpu")

    def test_loss():   # nats per image on the fixed test digits, averaged over a few draws
        with torch.no_grad(), pyro.validation_enabled(False):
            return sum(sync_free_loss(Trace_ELBO(), vae.model, vae.guide, test.images).item()
                       for _ in range(5)) / 5 / len(test)

    before = test_loss()
    losses = []
    for _ in range(5):
        epoch = torch.zeros(())
        for x, _ in train.batches(64):
            opt.zero_grad(set_to_none=True)
            epoch += step(x)
            opt.step()
        losses.append(epoch.item() / len(train))
    after = test_loss()
    assert losses[-1] < losses[0] and after < before - 5   # ~45 -> ~29 nats per 8x8 image
    assert len(step.graphs) == 2   # batches of 64, and the last one of 25


class _NoHostReads:
    """Raise on every Python-level read of a tensor's value (``item``, ``bool``, ``float``, ``tolist`` ...): on
    a CPU the closest check there is to CUDA's sync debug mode."""

    NAMES = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch

    def __enter__(self):
        def refuse(name):
            def method(*args, **kwargs):
                raise AssertionError(f"host read: Tensor.{name}")
            return method
        for name in self.NAMES:
            self.monkeypatch.setattr(torch.Tensor, name, refuse(name))

    def __exit__(self, *exc):
        self.monkeypatch.undo()


@pytest.mark.parametrize("mode", ["replay", "eager"])
def test_steady_state_reads_nothing_back(mode, digits_binary, monkeypatch):
    for vae in (tiny(), tiny(extended.HierarchicalVAE, posterior=guides.IAF(1, hidden=8))):
        vae.register_params = False
        step = make_step(Trace_ELBO(), vae, "cpu", mode=mode)
        x, _ = batch(digits_binary[0])
        step(x)   # eager, then the trace: may read what it likes
        # (the optimizer stays outside: a CPU Adam reads its step count, a CPU tensor, which is no device sync)
        with _NoHostReads(monkeypatch), pyro.validation_enabled(False):
            for _ in range(3):
                step(x)
            with ScaleLatents(0.5):
                step(x)
        # the patched methods were really in the way (a read fails inside the block)
        with _NoHostReads(monkeypatch), pytest.raises(AssertionError, match="host read"):
            Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)


def test_refusals(digits_binary):
    vae = tiny()
    with pytest.raises(pv.ConfigError, match="TraceMeanField_ELBO"):
        make_step(TraceMeanField_ELBO(), vae, "cpu")
    with pytest.raises(pv.ConfigError, match="unknown mode"):
        make_step(Trace_ELBO(), vae, "cpu", mode="fastest")
    m2 = extended.M2(image_shape=SHAPE, latent_dim=2, hidden=(16,), classifier_hidden=(16,))
    with pytest.raises(pv.ConfigError, match="Trace_ELBO's estimator"):
        make_step(TraceEnum_ELBO(max_plate_nesting=1), m2, "cpu")
    x, y = batch(digits_binary[0])
    with pytest.raises(pv.ConfigError, match="reparameterised latent sites.*'y_unobserved'"):
        make_step(Trace_ELBO(), m2, "cpu")(x, torch.full_like(y, -1))

    class ReadsHost(pv.VAE):
        def model(self, x, y=None):
            if x.sum() > 0:   # a branch on a value: a host read every step
                super().model(x)

    reads = tiny(ReadsHost)
    step = make_step(Trace_ELBO(), reads, "cpu")
    with pytest.raises(pv.ConfigError, match="cannot be traced"):
        step(x)
        step(x)


def test_jit_elbo_and_param_registration(digits_binary):
    # JitTrace_ELBO is the same estimator; with register_params on, the eager first call registers the real
    # parameters and tracing leaves the param store alone
    pyro.clear_param_store()
    vae = tiny()
    x, _ = batch(digits_binary[0])
    step = make_step(JitTrace_ELBO(), vae, "cpu")
    for seed in range(3):
        assert_same(reference(vae, x, seed=seed), fast(step, vae, x, seed=seed))
    store = dict(pyro.get_param_store().items())
    parameters = {id(p) for p in vae.parameters()}
    assert store and all(id(v) in parameters for v in store.values())


@pytest.mark.slow
def test_compile_mode_equals_trace_elbo(digits_binary):
    # inductor, with the eager random draws kept (fallback_random): ~20 s to compile on two cores
    check_equal_to_trace_elbo(tiny(), digits_binary[0], mode="compile", calls=3)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["replay", "compile", "eager"])
def test_cuda_steps_never_synchronise(mode, mnist5k):
    train, _ = mnist5k
    train = train.subset(range(640)).to("cuda")
    vae = pv.VAE(latent_dim=8, hidden=(64,)).to("cuda")
    vae.register_params = False
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    step = make_step(Trace_ELBO(), vae, "cuda", optimizer=opt if mode == "compile" else None, mode=mode)

    def epoch(scale, batches=None):
        # batched beforehand under the debug mode: the data loop copies the epoch's order to the GPU, a sync
        # that is the data loop's, not the step's
        losses = []
        for x, _ in batches if batches is not None else train.batches(64):
            if mode != "compile":
                opt.zero_grad(set_to_none=True)
            with ScaleLatents(scale):
                losses.append(step(x))
            if mode != "compile":
                opt.step()
        return torch.stack(losses)

    first = epoch(1.0)   # eager first call, tracing, compilation: syncs allowed
    epoch(0.5)           # a new weight: its one copy to the device happens here
    batches = list(train.batches(64))
    with pyro.validation_enabled(False):
        torch.cuda.set_sync_debug_mode("error")
        try:
            last = epoch(0.5, batches)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert last.device.type == "cuda" and torch.isfinite(last).all()
    assert last.mean() < first.mean()
