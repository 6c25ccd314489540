"""The Gaussian-mixture VAE: a discrete cluster variable that Pyro sums out by enumeration."""


import torch

import pyro
import pyro.distributions as dist

from ..checks import MAX_CLASSES, positive, positive_int
from ..errors import ConfigError
from ..parts import priors as priors_module
from ..parts.networks import MLPClassifier
from .vae import VAE


class GMVAE(VAE):
    r"""Gaussian-mixture VAE, written the Pyro way: a discrete cluster variable summed out by enumeration.

    Generative model (``model``), for each image n in the ``data`` plate::

        c_n ~ Categorical(softmax(logits))                       enumerated: summed out exactly
        z_n ~ Normal(mu_{c_n}, diag(sigma_{c_n}^2))              event shape (latent_dim,)
        x_n ~ likelihood(decoder(z_n))                           event shape (C, H, W)

    Recognition model (``guide``)::

        z_n ~ posterior(encoder(x_n))                            q(z|x), as in the VAE
        c_n ~ Categorical(softmax(classifier(x_n)))              only with cluster_guide=True; enumerated

    With ``cluster_guide=False`` (default) c is a site of the model alone, marked
    ``infer={"enumerate": "parallel"}``: ``TraceEnum_ELBO(max_plate_nesting=1)`` (``fit``'s default for this
    model) and :mod:`~pyro_vae.evaluate` sum it out, so the bound uses the exact p(c | z) and its marginal
    p(z) is the mixture of :class:`~pyro_vae.priors.MixtureOfGaussians`, whose parameters (``prior.logits``,
    ``prior.locs``, ``prior.raw_scales``) it uses: a GMVAE and a VAE with that prior and the same weights
    score the same. With ``cluster_guide=True`` the guide also infers q(c|x) (a looser, mean-field bound,
    and a classifier of clusters).

    :param prior: the mixture, a :class:`~pyro_vae.priors.MixtureOfGaussians` (default 10 components).
    :param bool cluster_guide: add q(c|x) to the guide.
    :param tuple classifier_hidden: hidden widths of q(c|x)'s :class:`MLPClassifier`.

    Other parameters as for :class:`~pyro_vae.VAE`.
    """

    #: the cluster, summed out in the model; pictures and scores decode z
    cluster_site = "c"

    def __init__(self, image_shape=(1, 28, 28), latent_dim=16, prior=None, cluster_guide=False,
                 classifier_hidden=(256,), encoder=None, decoder=None, likelihood=None, posterior=None,
                 hidden=(400,)):
        prior = prior if prior is not None else priors_module.MixtureOfGaussians(10)
        if not isinstance(prior, priors_module.MixtureOfGaussians):
            raise ConfigError(f"GMVAE's prior is its mixture: pass a pv.priors.MixtureOfGaussians(K), got "
                              f"{type(prior).__name__}")
        if not isinstance(cluster_guide, bool):
            raise ConfigError(f"cluster_guide must be True or False, got {cluster_guide!r}")
        super().__init__(image_shape=image_shape, latent_dim=latent_dim, encoder=encoder, decoder=decoder,
                         prior=prior, likelihood=likelihood, posterior=posterior, hidden=hidden)
        self.num_clusters = prior.num_components
        self.cluster_guide = cluster_guide
        self.classifier = MLPClassifier(self.image_shape, self.num_clusters, classifier_hidden) \
            if cluster_guide else None

    def cluster_prior(self):
        """p(c), batch shape ``()``, K outcomes."""
        return dist.Categorical(logits=self.prior.logits)

    def component(self, c):
        """p(z | c). :param c: clusters, int64 of any shape S. :returns: a Normal with batch shape S and
        event shape ``(latent_dim,)``."""
        return dist.Normal(self.prior.locs[c], positive(self.prior.raw_scales[c])).to_event(1)

    def model(self, x, y=None, covariates=None):
        """p(x, z, c) = p(c) p(z|c) p(x|z). :param x: images ``(N, C, H, W)``; ``y`` is ignored."""
        self.register()
        with pyro.plate("data", x.shape[-4]):
            c = pyro.sample(self.cluster_site, self.cluster_prior(), infer={"enumerate": "parallel"})
            z = pyro.sample("z", self.component(c))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x, y=None, covariates=None):
        """q(z|x) (and q(c|x) with ``cluster_guide``). :param x: images ``(N, C, H, W)``."""
        self.register()
        with pyro.plate("data", x.shape[-4]):
            if self.classifier is not None:
                pyro.sample(self.cluster_site, dist.Categorical(logits=self.classifier(x)),
                            infer={"enumerate": "parallel"})
            pyro.sample("z", self.posterior(*self.encoder(x)))

    @torch.no_grad()
    def cluster(self, x):
        """Most probable cluster of each image: argmax_c p(c | z = E[z|x]) (or q(c|x) with ``cluster_guide``).
        :param x: ``(..., C, H, W)``. :returns: int64 ``(...)``."""
        if self.classifier is not None:
            return self.classifier(x).argmax(-1)
        z = self.encode(x)[0]
        every = torch.arange(self.num_clusters, device=z.device)
        joint = self.component(every).log_prob(z.unsqueeze(-2)) + self.cluster_prior().logits
        return joint.argmax(-1)

    @torch.no_grad()
    def sample_by_cluster(self, per_cluster):
        """Mean images of codes drawn from each cluster's component, one row per cluster.
        :returns: ``(K * per_cluster, C, H, W)``, row-major."""
        per_cluster = positive_int("per_cluster", per_cluster, MAX_CLASSES)
        c = torch.arange(self.num_clusters, device=self.device).repeat_interleave(per_cluster)
        return self.generate(self.component(c).sample())

    @property
    def config(self):
        hidden = self.classifier.hidden if self.classifier is not None else None
        return {**super().config, "cluster_guide": self.cluster_guide,
                **({"classifier_hidden": hidden} if hidden is not None else {})}
