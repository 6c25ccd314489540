"""The model contract: a user's own Pyro model is checked up front, scored correctly, or refused.

Each test is one way a model written from the README and docstrings can go wrong; each asserts the one-line
error before the first step, or the correct number, computed independently where there is one.
"""

import math

import pytest
import torch
import torch.distributions as td
from torch import nn

import pyro
import pyro.distributions as dist
from pyro.infer import RenyiELBO, Trace_ELBO, TraceEnum_ELBO

import pyro_vae as pv
from pyro_vae.errors import ConfigError


def small(**kwargs):
    return pv.VAE(image_shape=(1, 8, 8), latent_dim=3, hidden=(32,), **kwargs)


def refuses_before_training(vae, train, match, **kwargs):
    """fit raises ``match`` and no step ran (the weights are those it was given)."""
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    with pytest.raises(ConfigError, match=match) as info:
        pv.fit(vae, train.subset(range(64)), epochs=1, progress=False, **kwargs)
    assert "\n" not in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())
    return str(info.value)


# --- a Gaussian-mixture VAE written the Pyro way -------------------------------------------------

class PyroWayGMVAE(pv.VAE):
    """The cluster enumerated in the model, the inherited q(z|x) as the guide (what a Pyro user writes)."""

    def __init__(self, num_clusters=4, **kwargs):
        super().__init__(**kwargs)
        self.num_clusters = num_clusters
        self.locs = nn.Parameter(2.0 * torch.randn(num_clusters, self.latent_dim))
        self.log_scales = nn.Parameter(torch.zeros(num_clusters, self.latent_dim))

    def model(self, x, y=None, covariates=None):
        pyro.module("vae", self)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=x.new_zeros(self.num_clusters)),
                            infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(self.locs[c], self.log_scales[c].exp()).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    @property
    def config(self):
        return {**super().config, "num_clusters": self.num_clusters}


def brute_force_log_px(vae, x, num_samples):
    """log p(x) by importance sampling with q(z|x), the cluster summed by a Python loop over its values, every
    density from torch.distributions (no Pyro): log mean_k [sum_c p(c) p(z_k|c) p(x|z_k) / q(z_k|x)]."""
    loc, scale = vae.encoder(x)
    q = td.Independent(td.Normal(loc, scale), 1)
    z = q.sample((num_samples,))                                          # (K, N, D)
    log_px_z = td.Independent(td.Bernoulli(logits=vae.decoder(z)), 3).log_prob(x)
    per_cluster = torch.stack([td.Independent(td.Normal(vae.locs[c], vae.log_scales[c].exp()), 1).log_prob(z)
                               for c in range(vae.num_clusters)])          # (C, K, N)
    log_pz = torch.logsumexp(per_cluster, 0) - math.log(vae.num_clusters)
    return torch.logsumexp(log_px_z + log_pz - q.log_prob(z), 0) - math.log(num_samples)


def test_enumerated_cluster_is_summed_out_like_traceenum(digits_binary):
    train, test = digits_binary
    torch.manual_seed(0)
    vae = PyroWayGMVAE(image_shape=(1, 8, 8), latent_dim=3, hidden=(32,))
    history = pv.fit(vae, train.subset(range(300)), test=test.subset(range(200)), epochs=2, progress=False)
    x = test.images[:200]
    vae.eval()
    with torch.no_grad():
        pyro.set_rng_seed(1)
        enum = -TraceEnum_ELBO(max_plate_nesting=1, num_particles=400, vectorize_particles=True).loss(
            vae.model, vae.guide, x) / len(x)
        pyro.set_rng_seed(2)
        ours = pv.evaluate.elbo(vae, x, num_samples=400)["elbo"]
        pyro.set_rng_seed(3)
        fitted = pv.evaluate.elbo(vae, test.subset(range(200)), num_samples=1)["elbo"]
        pyro.set_rng_seed(4)
        brute = brute_force_log_px(vae, x, 2000).mean().item()
        pyro.set_rng_seed(4)
        log_px = pv.evaluate.log_likelihood(vae, x, num_samples=2000)
    # 400 particles: Monte Carlo error ~0.05 nats; drawing c from its prior instead is off by nats
    assert ours == pytest.approx(enum, abs=0.2)
    assert history[-1]["test_elbo"] == pytest.approx(enum, abs=1.0)   # fit's test ELBO: one sample per image
    assert fitted == pytest.approx(enum, abs=1.0)
    assert log_px == pytest.approx(brute, abs=0.1) and log_px > ours


def test_prior_draws_of_the_cluster_would_have_been_wrong(digits_binary):
    """The check that the test above can fail: scoring with c drawn from p(c) (what the evaluators did before
    summing it out) gives a number that is nats away from TraceEnum_ELBO's."""
    train, test = digits_binary
    torch.manual_seed(0)
    vae = PyroWayGMVAE(image_shape=(1, 8, 8), latent_dim=3, hidden=(32,)).eval()
    x = test.images[:100]
    with torch.no_grad():
        enum = -TraceEnum_ELBO(max_plate_nesting=1, num_particles=200, vectorize_particles=True).loss(
            vae.model, vae.guide, x) / len(x)
        drawn = -Trace_ELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=1).loss(
            vae.model, vae.guide, x) / len(x)
    assert abs(drawn - enum) > 1.0


def test_gmvae_matches_the_mixture_prior_vae_and_traceenum(digits_binary):
    train, test = digits_binary
    torch.manual_seed(0)
    gmvae = pv.extended.GMVAE(image_shape=(1, 8, 8), latent_dim=3, hidden=(32,),
                              prior=pv.priors.MixtureOfGaussians(5, spread=2.0))
    assert pv.check_model(gmvae, test).enumerated == ("c",)
    pv.fit(gmvae, train.subset(range(300)), epochs=1, progress=False)   # default loss: TraceEnum_ELBO
    flat = pv.VAE(image_shape=(1, 8, 8), latent_dim=3, hidden=(32,), prior=pv.priors.MixtureOfGaussians(5))
    flat.load_state_dict(gmvae.state_dict())
    x = test.images[:100]
    gmvae.eval(), flat.eval()
    with torch.no_grad():
        pyro.set_rng_seed(5)
        a = pv.evaluate.log_weight_terms(gmvae, x, None, 4)
        pyro.set_rng_seed(5)
        b = pv.evaluate.log_weight_terms(flat, x, None, 4)
        # the same generative model: p(z) = sum_c p(c) p(z|c) is the mixture prior, exactly
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-3), key
        pyro.set_rng_seed(6)
        enum = -TraceEnum_ELBO(max_plate_nesting=1, num_particles=400, vectorize_particles=True).loss(
            gmvae.model, gmvae.guide, x) / len(x)
        pyro.set_rng_seed(7)
        assert pv.evaluate.elbo(gmvae, x, num_samples=400)["elbo"] == pytest.approx(enum, abs=0.2)
        images = gmvae.sample_by_cluster(3)
    assert images.shape == (15, 1, 8, 8) and gmvae.cluster(x).shape == (100,)


def test_gmvae_with_a_cluster_guide_trains_and_reloads(digits_binary, tmp_path):
    train, test = digits_binary
    gmvae = pv.extended.GMVAE(image_shape=(1, 8, 8), latent_dim=2, hidden=(32,), cluster_guide=True,
                              classifier_hidden=(16,), prior=pv.priors.MixtureOfGaussians(3))
    contract = pv.check_model(gmvae, test)
    assert contract.guide_enumerated == ("c",) and contract.enumerated == ()
    pv.fit(gmvae, train.subset(range(200)), test=test.subset(range(50)), epochs=1, progress=False,
           checkpoint_dir=tmp_path, eval_samples=5, loss=TraceEnum_ELBO(max_plate_nesting=1))
    loaded, config, _ = pv.load_run(tmp_path)
    assert type(loaded) is pv.extended.GMVAE and loaded.cluster_guide and config["vae"]["model"] == "GMVAE"
    assert (tmp_path / "samples.png").exists()


def test_an_enumerating_model_is_refused_with_an_elbo_that_samples(digits_binary):
    vae = PyroWayGMVAE(image_shape=(1, 8, 8), latent_dim=3, hidden=(32,))
    message = refuses_before_training(vae, digits_binary[0], "TraceEnum_ELBO", loss=Trace_ELBO())
    assert "'c'" in message


def test_a_model_that_breaks_under_enumeration_is_refused(digits_binary):
    class Reshaping(PyroWayGMVAE):
        def model(self, x, y=None, covariates=None):
            with pyro.plate("data", x.shape[0]):
                c = pyro.sample("c", dist.Categorical(logits=x.new_zeros(self.num_clusters)),
                                infer={"enumerate": "parallel"})
                loc = self.locs[c].reshape(x.shape[0], -1)   # breaks when c gains an enumeration dim
                z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
                pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
    refuses_before_training(Reshaping(image_shape=(1, 8, 8), latent_dim=3, hidden=(32,)), digits_binary[0],
                            "fails when its discrete sites are enumerated")


# --- shapes, plates and sites --------------------------------------------------------------------

class NoPlate(pv.VAE):
    """The batch folded into the event: trains, but every score would be a batch total."""

    def model(self, x, y=None, covariates=None):
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.latent_dim), 1.0).to_event(2))
        pyro.sample("x", self.likelihood(self.decoder(z)).to_event(1), obs=x)

    def guide(self, x, y=None, covariates=None):
        pyro.sample("z", dist.Normal(*self.encoder(x)).to_event(2))


def test_a_model_without_the_data_plate_is_refused(digits_binary):
    refuses_before_training(NoPlate(image_shape=(1, 8, 8), latent_dim=3, hidden=(32,)), digits_binary[0],
                            "outside the data plate")
    with pytest.raises(ConfigError, match="outside the data plate"):
        pv.evaluate.elbo(NoPlate(image_shape=(1, 8, 8), latent_dim=3, hidden=(32,)), digits_binary[1])


def test_per_pixel_log_densities_are_refused_with_the_to_event_fix(digits_binary):
    class PerPixel(pv.VAE):
        def model(self, x, y=None, covariates=None):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", self.prior())
                pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(2), obs=x)
    message = refuses_before_training(PerPixel(image_shape=(1, 8, 8), latent_dim=3, hidden=(32,)),
                                      digits_binary[0], r"batch shape \(7, 7\)")
    assert ".to_event(3)" in message


def test_a_second_plate_is_refused(digits_binary):
    class Pixels(pv.VAE):
        def model(self, x, y=None, covariates=None):
            n = x.shape[0]
            with pyro.plate("data", n):
                z = pyro.sample("z", self.prior())
                with pyro.plate("pixels", 64, dim=-2):   # pixels as a plate instead of the event
                    pyro.sample("x", dist.Bernoulli(logits=self.decoder(z).reshape(n, 64).T), obs=x.reshape(n, 64).T)
    refuses_before_training(Pixels(image_shape=(1, 8, 8), latent_dim=3, hidden=(32,)), digits_binary[0],
                            "also inside the plate 'pixels'")


def test_a_guide_missing_a_site_or_misnaming_one_is_refused(digits_binary):
    class TwoLatents(pv.VAE):
        def model(self, x, y=None, covariates=None):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", self.prior())
                pyro.sample("w", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
                pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    class Misnamed(pv.VAE):
        def guide(self, x, y=None, covariates=None):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("code", self.posterior(*self.encoder(x)))

    train = digits_binary[0]
    assert "guide has no site 'w'" in refuses_before_training(
        TwoLatents(image_shape=(1, 8, 8), latent_dim=3, hidden=(32,)), train, "'w'")
    message = refuses_before_training(Misnamed(image_shape=(1, 8, 8), latent_dim=3, hidden=(32,)), train,
                                      "guide site 'code' is not a site of the model")
    assert "'z'" in message


def test_an_observed_site_under_another_name_is_refused_or_declared(digits_binary, tmp_path):
    class Pixels(pv.VAE):
        def model(self, x, y=None, covariates=None):
            self.register()
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", self.prior())
                pyro.sample("image", self.likelihood(self.decoder(z)), obs=x)

    train, test = digits_binary
    message = refuses_before_training(Pixels(image_shape=(1, 8, 8), latent_dim=3, hidden=(32,)), train,
                                      "no observed site 'x'")
    assert "obs_site" in message and "'image'" in message

    class Declared(Pixels):
        obs_site = "image"

    vae = Declared(image_shape=(1, 8, 8), latent_dim=3, hidden=(32,))
    pv.fit(vae, train.subset(range(100)), test=test.subset(range(30)), epochs=1, progress=False,
           checkpoint_dir=tmp_path, eval_samples=3)
    assert vae.sample(4).shape == (4, 1, 8, 8) and (tmp_path / "samples.png").exists()
    metrics = pv.checkpoint.RunFolder(tmp_path).read_metrics()
    assert metrics["test"]["quantity"] == "log p(image)"


def test_a_non_positive_scale_gets_pyros_validation_message_not_a_learning_rate(digits_binary):
    class Raw(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(64, 6)

        def forward(self, x):
            loc, scale = self.net(x.flatten(-3)).chunk(2, -1)
            return loc, scale - 10.0       # no softplus: negative scales

    message = refuses_before_training(small(encoder=Raw()), digits_binary[0], "validation")
    assert "scale" in message and "--lr" not in message


def test_a_model_written_as_model_x_names_the_adapter(digits_binary):
    class OneArgument(pv.VAE):
        def model(self, x):
            return super().model(x)

        def guide(self, x):
            return super().guide(x)
    message = refuses_before_training(OneArgument(image_shape=(1, 8, 8), latent_dim=3, hidden=(32,)),
                                      digits_binary[0], "pv.wrap")
    assert "model(x, y)" in message or "guide(x, y)" in message


# --- wrong types and wrong network shapes --------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"prior": "vamp"}, "not the name 'vamp'"),
    ({"prior": pv.priors.VampPrior}, r"got the class VampPrior; pass prior=VampPrior\(...\)"),
    ({"likelihood": pv.likelihoods.Normal}, r"likelihood=Normal\(...\)"),
    ({"posterior": 3}, "posterior must be a pv.posteriors.Posterior"),
    ({"encoder": lambda x: x}, "encoder must be a torch.nn.Module"),
])
def test_wrong_part_types_are_refused_in_one_line(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        pv.VAE(image_shape=(1, 8, 8), latent_dim=3, **kwargs)
    with pytest.raises(ConfigError, match=match):
        pv.extended.ConditionalVAE(image_shape=(1, 8, 8), latent_dim=3, **kwargs)


def test_hierarchical_and_mixture_priors_are_type_checked():
    with pytest.raises(ConfigError, match="not the name 'vamp'"):
        pv.extended.HierarchicalVAE(image_shape=(1, 8, 8), prior="vamp")
    with pytest.raises(ConfigError, match="MixtureOfGaussians"):
        pv.extended.GMVAE(image_shape=(1, 8, 8), prior=pv.priors.StandardNormal())


def test_a_tensor_where_a_dataset_is_expected_names_from_tensor(digits_binary):
    with pytest.raises(ConfigError, match=r"pv.data.from_tensor"):
        pv.fit(small(), digits_binary[0].images, epochs=1, progress=False)
    with pytest.raises(ConfigError, match=r"pv.data.from_tensor"):
        pv.fit(small(), digits_binary[0], test=digits_binary[1].images, epochs=1, progress=False)
    with pytest.raises(ConfigError, match="must be a pyro_vae dataset"):
        pv.fit(small(), [1, 2, 3], epochs=1, progress=False)


def test_network_output_shapes_are_checked_once_with_the_expected_shape(digits_binary):
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(3, 64)

        def forward(self, z):
            return self.net(z)                         # (..., 64), not (..., 1, 8, 8)

    class OneTensor(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(64, 3)

        def forward(self, x):
            return self.net(x.flatten(-3))             # no scale

    message = refuses_before_training(small(decoder=Flat()), digits_binary[0], r"\(7, 1, 8, 8\)")
    assert "decoder returned (7, 64)" in message
    message = refuses_before_training(small(encoder=OneTensor()), digits_binary[0], "pair")
    assert "(7, 3)" in message


# --- objectives ----------------------------------------------------------------------------------

def test_renyi_with_beta_or_a_scaled_site_is_refused(digits_binary):
    train = digits_binary[0]
    iwae = RenyiELBO(alpha=0, num_particles=2, vectorize_particles=True)
    refuses_before_training(small(), train, "RenyiELBO", loss=iwae, beta=2.0)
    refuses_before_training(small(), train, "RenyiELBO", loss=iwae, warmup=3)

    class Scaled(pv.VAE):
        def model(self, x, y=None, covariates=None):
            with pyro.poutine.scale(scale=0.5):
                super().model(x, y)
    refuses_before_training(Scaled(image_shape=(1, 8, 8), latent_dim=3, hidden=(32,)), train,
                            "per-image bound only with unscaled sites", loss=iwae)
    # the plain IWAE, unweighted, trains
    pv.fit(small(), train.subset(range(64)), epochs=1, progress=False, loss=iwae)


def test_the_built_in_models_keep_the_contract(digits_binary):
    train = digits_binary[0]
    models = [small(), pv.extended.ConditionalVAE(image_shape=(1, 8, 8), latent_dim=3, hidden=(32,)),
              pv.extended.M2(image_shape=(1, 8, 8), latent_dim=3, hidden=(32,), classifier_hidden=(16,)),
              pv.extended.HierarchicalVAE(image_shape=(1, 8, 8), latent_dims=(3, 2), hidden=(32,)),
              pv.extended.GMVAE(image_shape=(1, 8, 8), latent_dim=3, hidden=(32,))]
    for vae in models:
        contract = pv.check_model(vae, train)
        assert contract.obs_site == "x" and vae.code_site in contract.latent
    half = pv.extended.keep_labels(train, 100)
    assert pv.check_model(models[2], half).guide_enumerated == ("y_unobserved",)


def test_the_cli_trains_and_samples_a_gmvae(tmp_path, capsys):
    from pyro_vae import cli
    run = tmp_path / "gmvae"
    assert cli.main(["train", "--model", "gmvae", "--num-components", "3", "--dataset", "digits", "--epochs", "1",
                     "--latent-dim", "2", "--hidden", "32", "--eval-samples", "5", "--out", str(run)]) == 0
    config = pv.load_run(run)[1]
    assert config["vae"]["model"] == "GMVAE" and config["fit"]["loss"] == "TraceEnum_ELBO"
    assert cli.main(["sample", str(run), "--num", "6"]) == 0 and (run / "samples-epoch1-seed0.png").exists()
    assert cli.main(["train", "--model", "gmvae", "--objective", "iwae", "--dataset", "digits",
                     "--out", str(tmp_path / "no")]) == 2
    assert "TraceEnum_ELBO" in capsys.readouterr().err
