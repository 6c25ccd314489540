"""Objectives and extended graphical models (conditional, M2, hierarchical) on real digits."""

import math

import pytest
import torch

import pyro
import pyro.poutine as poutine
from pyro.infer import RenyiELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

import pyro_vae as pv
from pyro_vae.inference.traces import LatentWeight
from pyro_vae import extended, guides, likelihoods, plots, priors
from pyro_vae.evaluate import log_weight_terms

PRIORS = {
    "standard": lambda: priors.StandardNormal(),
    "learned-normal": lambda: priors.LearnedNormal(),
    "mog": lambda: priors.MixtureOfGaussians(3),
    "vamp": lambda: priors.VampPrior(num_pseudo_inputs=10),
    "flow": lambda: priors.FlowPrior(num_flows=2, hidden=16),
}
LIKELIHOODS = {
    "bernoulli": lambda: likelihoods.Bernoulli(),
    "continuous-bernoulli": lambda: likelihoods.ContinuousBernoulli(),
    "normal": lambda: likelihoods.Normal(scale=0.2),
    "normal-shared": lambda: likelihoods.Normal(scale="learned"),
    "normal-learned": lambda: likelihoods.Normal(scale="per-pixel"),
    "laplace": lambda: likelihoods.Laplace(scale="per-pixel"),
    "logistic": lambda: likelihoods.DiscretizedLogistic(),
}
OBJECTIVES = {
    "elbo": lambda: Trace_ELBO(),
    "elbo-k3": lambda: Trace_ELBO(num_particles=3, vectorize_particles=True),
    "meanfield": lambda: TraceMeanField_ELBO(),
    "iwae-k3": lambda: RenyiELBO(alpha=0, num_particles=3, vectorize_particles=True),
}


@pytest.fixture(scope="module")
def mnist_8bit(mnist5k):
    """32 real 8-bit MNIST digits (grey levels k/255), for the discretized logistic."""
    # a dynamically binarized dataset keeps its grey levels and binarizes each batch as it is drawn
    return pv.data.from_tensor(mnist5k[0].images[:32], mnist5k[0].labels[:32], binarize="none", name="mnist5k-8bit")


def _data(likelihood, digits_binary, digits_grey, mnist_8bit):
    if likelihood == "logistic":
        return mnist_8bit
    return (digits_binary if likelihood == "bernoulli" else digits_grey)[0].subset(range(32))


def _site_shapes(trace):
    trace.compute_log_prob()
    return {name: (tuple(site["fn"].batch_shape), tuple(site["fn"].event_shape))
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and name not in ("data", "particles")}


def _traces(vae, x, y=None, particles=None):
    def vectorized(fn):
        if particles is None:
            return fn

        def wrapped(*args):
            with pyro.plate("particles", particles, dim=-2):
                return fn(*args)
        return wrapped
    guide = poutine.trace(vectorized(vae.guide)).get_trace(x, y)
    model = poutine.trace(poutine.replay(vectorized(vae.model), trace=guide)).get_trace(x, y)
    return model, guide


# --- priors x likelihoods x objectives -----------------------------------------------------------

# The full product: every prior x likelihood x objective trains one step on real data (about 0.1 s each)
_NAMES = [(p, lik, o) for p in PRIORS for lik in LIKELIHOODS for o in OBJECTIVES]


@pytest.mark.parametrize("prior,likelihood,objective", _NAMES)
def test_priors_likelihoods_objectives_train(prior, likelihood, objective, digits_binary, digits_grey, mnist_8bit):
    data = _data(likelihood, digits_binary, digits_grey, mnist_8bit)
    vae = pv.VAE(image_shape=data.image_shape, latent_dim=3, hidden=(16,), prior=PRIORS[prior](),
                 likelihood=LIKELIHOODS[likelihood]())
    history = pv.fit(vae, data, epochs=1, batch_size=32, loss=OBJECTIVES[objective](), progress=False)
    assert math.isfinite(history[0]["train_elbo"])
    # extra samples live in an outer dim: z is (K, N, latent), x's log-density one number per (K, N)
    x, _ = next(data.batches(5, shuffle=False))
    model, guide = _traces(vae, x, particles=2)
    assert _site_shapes(model) == {"z": ((2, 5), (3,)), "x": ((2, 5), data.image_shape)}
    assert model.nodes["x"]["log_prob"].shape == (2, 5)
    with torch.no_grad():
        assert vae.sample(4).shape == (4,) + data.image_shape


@pytest.mark.parametrize("prior,objective", zip(["standard", "mog", "flow", "vamp"], OBJECTIVES))
def test_iaf_posterior_with_every_objective(prior, objective, digits_binary):
    data = digits_binary[0].subset(range(32))
    vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=3, hidden=(16,), prior=PRIORS[prior](),
                 posterior=guides.IAF(num_flows=2, hidden=16))
    history = pv.fit(vae, data, epochs=1, batch_size=32, loss=OBJECTIVES[objective](), progress=False)
    assert math.isfinite(history[0]["train_elbo"])


def test_beta_and_warmup_weight_only_the_latent_sites(digits_binary):
    # (the objective itself is checked against an independent computation in test_weighting.py)
    vae = pv.extended.HierarchicalVAE(image_shape=(1, 8, 8), latent_dims=(3, 2), hidden=(16,), latent_hidden=(8,))
    x, _ = next(digits_binary[0].batches(5, shuffle=False))
    weight = LatentWeight(0.5)
    guide = poutine.trace(weight(vae.guide)).get_trace(x)
    model = poutine.trace(poutine.replay(weight(vae.model), trace=guide)).get_trace(x)
    assert model.nodes["z1"]["scale"] == model.nodes["z2"]["scale"] == 0.5 == guide.nodes["z2"]["scale"]
    assert model.nodes["x"]["scale"] == 1.0
    # evaluation scores the model itself, never a weighted one
    terms = log_weight_terms(vae, x)
    model, _ = _traces(vae, x)
    assert model.nodes["z1"]["scale"] == 1.0 and terms["log_prior"].shape == (1, 5)


def test_meanfield_uses_the_analytic_kl_for_normal_prior_and_posterior(digits_binary):
    # with q and p both diagonal Normals, TraceMeanField's ELBO has no Monte Carlo noise in the KL part
    vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=3, hidden=(16,))
    x, _ = next(digits_binary[1].batches(20, shuffle=False))
    vae.decoder.net[-1].weight.data.zero_()   # x no longer depends on z: all noise comes from the KL
    with torch.no_grad():
        meanfield = [TraceMeanField_ELBO().loss(vae.model, vae.guide, x) for _ in range(3)]
        monte_carlo = [Trace_ELBO().loss(vae.model, vae.guide, x) for _ in range(3)]
    assert max(meanfield) - min(meanfield) < 1e-3 < max(monte_carlo) - min(monte_carlo)


def test_nonsense_parts_raise_clear_errors(digits_grey):
    with pytest.raises(pv.DataError, match="8-bit"):   # digits are multiples of 1/16, not of 1/255
        pv.fit(pv.VAE(image_shape=(1, 8, 8), latent_dim=2, hidden=(8,), likelihood=likelihoods.DiscretizedLogistic()),
               digits_grey[0], epochs=1, progress=False)
    with pytest.raises(pv.ConfigError, match="VampPrior"):
        extended.ConditionalVAE(image_shape=(1, 8, 8), latent_dim=2, prior=priors.VampPrior(5))
    with pytest.raises(pv.ConfigError, match="latent_dims"):
        extended.HierarchicalVAE(image_shape=(1, 8, 8), latent_dims=(4,))
    with pytest.raises(pv.ConfigError, match="latent_dim=3 disagrees"):
        extended.HierarchicalVAE(image_shape=(1, 8, 8), latent_dims=(4, 2), latent_dim=3)
    with pytest.raises(pv.ConfigError, match="alpha"):
        extended.M2(image_shape=(1, 8, 8), alpha=-1.0)


# --- extended models -----------------------------------------------------------------------------


def _small(kind, prior=None, posterior=None):
    common = dict(image_shape=(1, 8, 8), hidden=(64,), prior=prior, posterior=posterior)
    if kind == "cvae":
        return extended.ConditionalVAE(latent_dim=4, num_classes=10, **common)
    if kind == "m2":
        return extended.M2(latent_dim=4, num_classes=10, classifier_hidden=(64,), **common)
    return extended.HierarchicalVAE(latent_dims=(4, 2), latent_hidden=(32,), **common)


def _loss(kind):
    return TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False) if kind == "m2" else Trace_ELBO()


def test_site_shapes_of_extended_models(digits_binary):
    x, y = next(digits_binary[0].batches(6, shuffle=False))
    model, guide = _traces(_small("cvae"), x, y)
    assert _site_shapes(model) == {"z": ((6,), (4,)), "x": ((6,), (1, 8, 8))}
    assert _site_shapes(guide) == {"z": ((6,), (4,))}

    model, guide = _traces(_small("hvae"), x, particles=3)
    assert _site_shapes(model) == {"z2": ((3, 6), (2,)), "z1": ((3, 6), (4,)), "x": ((3, 6), (1, 8, 8))}
    assert _site_shapes(guide) == {"z1": ((3, 6), (4,)), "z2": ((3, 6), (2,))}
    assert [n for n in guide.stochastic_nodes if n.startswith("z")] == ["z1", "z2"]   # bottom-up

    m2 = _small("m2")
    partial = torch.where(torch.arange(6) < 2, y, -1)
    model, guide = _traces(m2, x, partial)
    assert _site_shapes(model) == {"y": ((6,), ()), "y_unobserved": ((6,), ()), "z": ((6,), (4,)),
                                   "x": ((6,), (1, 8, 8)), "y_aux": ((6,), ())}
    assert _site_shapes(guide) == {"y_unobserved": ((6,), ()), "z": ((6,), (4,))}
    assert model.nodes["y"]["is_observed"] and not model.nodes["y_unobserved"]["is_observed"]
    assert model.nodes["y"]["mask"].tolist() == [True] * 2 + [False] * 4
    assert guide.nodes["y_unobserved"]["mask"].tolist() == [False] * 2 + [True] * 4
    # under enumeration the label takes all 10 values at dim -2, so z and x carry a (10, 6) batch
    enumerated = poutine.trace(poutine.enum(m2.guide, first_available_dim=-2)).get_trace(x, partial)
    assert enumerated.nodes["y_unobserved"]["value"].shape == (10, 1)
    assert enumerated.nodes["z"]["value"].shape == (10, 6, 4)
    # no labels: only y_unobserved; all labels: only y; the auxiliary term is for training only
    assert "y" not in _traces(m2, x)[0].nodes
    m2.eval()
    model, guide = _traces(m2, x, y)
    assert "y_unobserved" not in model.nodes and "y_aux" not in model.nodes and "y_unobserved" not in guide.nodes


def test_m2_mixed_batch_equals_its_labelled_plus_unlabelled_parts(digits_binary):
    m2 = _small("m2").eval()
    x, y = next(digits_binary[0].batches(8, shuffle=False))
    partial = torch.where(torch.arange(8) < 3, y, -1)
    elbo = TraceEnum_ELBO(max_plate_nesting=1, num_particles=400, vectorize_particles=True,
                          strict_enumeration_warning=False)
    with torch.no_grad():
        mixed = elbo.loss(m2.model, m2.guide, x, partial)
        labelled = elbo.loss(m2.model, m2.guide, x[:3], y[:3])
        unlabelled = elbo.loss(m2.model, m2.guide, x[3:], None)
        with pytest.warns(UserWarning, match="enumerate"):   # Trace_ELBO samples y instead, as intended here
            sampled = Trace_ELBO(num_particles=400, vectorize_particles=True).loss(m2.model, m2.guide, x[3:], None)
    assert all(math.isfinite(v) for v in (mixed, labelled, unlabelled))
    assert mixed == pytest.approx(labelled + unlabelled, rel=2e-3)
    assert unlabelled == pytest.approx(sampled, rel=5e-3)   # enumerating y = averaging over sampled y


@pytest.fixture(scope="module", params=["cvae", "m2", "hvae"])
def trained(request, digits_binary, tmp_path_factory):
    """Each extended model trained for 4 epochs on 800 real digits (M2: 100 of them labelled)."""
    kind = request.param
    train, test = digits_binary[0].subset(range(800)), digits_binary[1].subset(range(100))
    if kind == "m2":
        train = extended.keep_labels(train, 100)
    pyro.set_rng_seed(0)
    vae = _small(kind)
    run = tmp_path_factory.mktemp(kind)
    history = pv.fit(vae, train, test=test, epochs=4, batch_size=50, lr=3e-3, loss=_loss(kind), progress=False,
                     checkpoint_dir=run)
    return kind, vae.eval(), history, run, train, test


def test_extended_model_fits_evaluates_saves_and_plots(trained, tmp_path):
    kind, vae, history, run, train, test = trained
    assert all(math.isfinite(h["train_elbo"]) and math.isfinite(h["test_elbo"]) for h in history)
    assert history[-1]["test_elbo"] > history[0]["test_elbo"]
    elbo = pv.evaluate.elbo(vae, test, num_samples=10)["elbo"]
    assert pv.evaluate.log_likelihood(vae, test, num_samples=50) >= elbo - 0.5

    loaded, config, _ = pv.load_run(str(run))
    assert type(loaded) is type(vae) and config["vae"] == vae.config
    x, y = next(test.batches(10, shuffle=False))
    z = torch.randn(10, vae.latent_dim)
    with torch.no_grad():
        if kind == "hvae":
            assert torch.equal(loaded.encode(x)[0], vae.encode(x)[0])
            assert torch.equal(loaded.generate(z), vae.generate(z))
        else:
            assert torch.equal(loaded.encode(x, y)[0], vae.encode(x, y)[0])
            assert torch.equal(loaded.generate(z, y), vae.generate(z, y))
            assert torch.equal(loaded.reconstruct(x, y), vae.reconstruct(x, y))
    figures = plots.save_all(loaded, train.images, None, test.images, history, tmp_path, test_labels=test.labels)
    assert all(path.stat().st_size > 0 for path in figures.values())


def test_m2_classifier_beats_chance_with_few_labels(trained):
    kind, vae, _, _, _, test = trained
    if kind != "m2":
        pytest.skip("M2 only")
    assert extended.accuracy(vae, test) > 0.4   # 100 labels, 4 short epochs; chance is 0.1


def test_conditional_models_use_the_label(trained):
    kind, vae, _, _, _, test = trained
    if kind == "hvae":
        pytest.skip("labelled models only")
    with torch.no_grad():
        assert vae.sample(5, y=3).shape == (5, 1, 8, 8)
        assert vae.sample_by_class(4).shape == (40, 1, 8, 8)
        assert vae.generate(torch.zeros(2, 4)).shape == (2, 1, 8, 8)   # y summed out
        z = torch.zeros(10, 4)
        per_class = vae.generate(z, torch.arange(10)).flatten(1)   # one code, ten labels
        assert torch.pdist(per_class).min() > 1e-2
    if kind == "cvae":
        # Bayes' rule on log p(x|y): real test digits are explained best by their own label
        assert extended.accuracy(vae, test) > 0.3   # chance is 0.1


def test_active_units_encode_with_the_true_labels(trained):
    kind, vae, _, _, _, test = trained
    if kind == "hvae":
        pytest.skip("labelled models only")
    # M2: 30 of the 100 test labels kept, the others -1, which M2 fills in from its classifier q(y|x)
    data = test if kind == "cvae" else extended.keep_labels(test, 30)
    x, y = data.images, data.labels
    with torch.no_grad():
        labels = torch.where(y >= 0, y, vae.classifier(x).argmax(-1)) if kind == "m2" else y
        var = vae.encoder(x, torch.nn.functional.one_hot(labels, 10).float())[0].var(0)
        guessed = vae.encoder(x, torch.nn.functional.one_hot(vae.classify(x), 10).float())[0].var(0)
    # one threshold between every two neighbouring variances, true labels' or guessed ones'
    levels = torch.cat([var, guessed]).sort().values
    thresholds = ((levels[1:] + levels[:-1]) / 2).tolist()
    counts = [pv.evaluate.active_units(vae, data, threshold=t) for t in thresholds]
    assert counts == [int((var > t).sum()) for t in thresholds]
    if kind == "cvae":   # the thresholds do tell the true labels from the labels its classify guesses
        assert counts != [int((guessed > t).sum()) for t in thresholds]


def test_m2_is_scored_on_log_px_whether_or_not_the_test_set_has_labels(trained):
    kind, m2, _, _, _, test = trained
    if kind != "m2":
        pytest.skip("M2 only")
    unlabelled = extended.without_labels(test)
    scores = {"elbo": lambda data: pv.evaluate.elbo(m2, data, num_samples=3)["elbo"],
              "log_likelihood": lambda data: pv.evaluate.log_likelihood(m2, data, num_samples=20)}
    for name, score in scores.items():
        pyro.set_rng_seed(1)
        with_labels = score(test)
        pyro.set_rng_seed(1)
        assert score(unlabelled) == with_labels, name
    # ... and that number is Pyro's bound on log p(x), y summed out exactly by enumeration, not its bound
    # on log p(x, y) = log p(x) + log p(y|x), which is lower by about 2 nats for this model
    enum = TraceEnum_ELBO(max_plate_nesting=1, num_particles=200, vectorize_particles=True,
                          strict_enumeration_warning=False)
    with torch.no_grad():
        log_px = -enum.loss(m2.model, m2.guide, test.images, None) / len(test)
        log_pxy = -enum.loss(m2.model, m2.guide, test.images, test.labels) / len(test)
    assert log_pxy < log_px - 0.5
    assert pv.evaluate.elbo(m2, test, num_samples=200)["elbo"] == pytest.approx(log_px, abs=0.1)
    # the labels still serve the classifier's accuracy
    with torch.no_grad():
        expected = (m2.classifier(test.images).argmax(-1) == test.labels).float().mean().item()
    assert extended.accuracy(m2, test) == pytest.approx(expected)


def test_fit_reports_m2s_test_elbo_on_log_px_even_for_a_labelled_test_set(digits_binary):
    train = extended.keep_labels(digits_binary[0].subset(range(200)), 50)
    test = digits_binary[1].subset(range(50))
    test_elbos = []
    for scored in (test, extended.without_labels(test)):
        pyro.set_rng_seed(0)
        m2 = _small("m2")
        history = pv.fit(m2, train, test=scored, epochs=1, batch_size=50, loss=_loss("m2"), progress=False)
        test_elbos.append(history[0]["test_elbo"])
    assert test_elbos[0] == test_elbos[1]


def test_a_failed_accuracy_leaves_the_model_in_its_own_mode(digits_binary):
    m2 = _small("m2")
    test = digits_binary[1]
    cropped = pv.data.from_tensor(test.images[:20, :, :4], test.labels[:20], name="cropped")
    for training in (True, False):
        m2.train(training)
        with pytest.raises(RuntimeError):
            extended.accuracy(m2, cropped)   # the classifier was built for 8x8 images
        assert m2.training is training


def test_encode_and_reconstruct_classify_only_the_unknown_labels(digits_binary):
    m2 = _small("m2").eval()
    x, y = next(digits_binary[1].batches(12, shuffle=False))
    partial = torch.where(torch.arange(12) % 3 == 0, y, -1)
    with torch.no_grad():
        filled = torch.where(partial >= 0, partial, m2.classify(x))
        assert torch.equal(m2.encode(x, partial)[0], m2.encode(x, filled)[0])
        assert torch.equal(m2.reconstruct(x, partial), m2.reconstruct(x, filled))
        assert torch.equal(m2.encode(x)[0], m2.encode(x, m2.classify(x))[0])
    with pytest.raises(pv.ConfigError, match="out of range"):
        m2.encode(x, -1)


@pytest.mark.parametrize("likelihood", ["normal", "normal-learned", "laplace"])
def test_location_scale_pictures_are_the_distributions_mean(likelihood, digits_grey):
    pyro.set_rng_seed(0)
    vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=2, hidden=(16,), likelihood=LIKELIHOODS[likelihood]())
    pv.fit(vae, digits_grey[0].subset(range(200)), epochs=1, batch_size=50, progress=False)
    z = 3 * torch.randn(64, 2)
    with torch.no_grad():
        images = vae.generate(z)
        mean = vae.likelihood(vae.decoder(z)).mean   # the Pyro distribution's own mean
    assert ((mean < 0) | (mean > 1)).any()   # far codes decode beyond [0, 1], where a clamp would differ
    assert torch.equal(images, mean)
    grid = plots.image_grid(images)          # pictures are clamped where they are drawn
    assert grid.min() >= 0 and grid.max() <= 1


@pytest.mark.parametrize("kind,prior,posterior,objective", [
    ("hvae", "vamp", "normal", "iwae-k3"), ("hvae", "flow", "iaf", "elbo-k3"),
    ("cvae", "mog", "iaf", "iwae-k3"), ("cvae", "flow", "normal", "meanfield"), ("m2", "learned-normal", "iaf", None)])
def test_extended_models_take_other_parts(kind, prior, posterior, objective, digits_binary):
    vae = _small(kind, prior=PRIORS[prior](), posterior=guides.IAF(2, 16) if posterior == "iaf" else None)
    loss = OBJECTIVES[objective]() if objective else TraceEnum_ELBO(max_plate_nesting=1, num_particles=2,
                                                                     vectorize_particles=True)
    train = extended.keep_labels(digits_binary[0].subset(range(64)), 20)
    history = pv.fit(vae, train if kind == "m2" else digits_binary[0].subset(range(64)), epochs=1, batch_size=32,
                     loss=loss, progress=False)
    assert math.isfinite(history[0]["train_elbo"])
    with torch.no_grad():
        assert vae.sample(3).shape == (3, 1, 8, 8)
