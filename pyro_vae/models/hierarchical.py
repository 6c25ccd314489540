"""A VAE with two stochastic layers, z2 -> z1 -> x, inferred bottom-up or by the ladder (top-down) guide."""

import pyro
import pyro.distributions as dist

from ..checks import MAX_LATENT_DIM, positive_int
from ..errors import ConfigError
from ..parts import priors as priors_module
from ..parts.config import check_part
from ..parts.networks import GaussianMLP, widths
from .vae import VAE


#: the guides of :class:`HierarchicalVAE`
INFERENCES = ("bottom-up", "ladder")


def precision_merge(loc, scale, prior_loc, prior_scale):
    """The Normal proportional to N(loc, scale) * N(prior_loc, prior_scale), elementwise (the ladder merge).

    :param loc, scale, prior_loc, prior_scale: broadcastable tensors ``(..., D)``, scales > 0.
    :returns: ``(loc, scale)`` of the product: precisions add, the mean is the precision-weighted mean.
    """
    precision, prior_precision = scale.pow(-2), prior_scale.pow(-2)
    merged = precision + prior_precision
    return (loc * precision + prior_loc * prior_precision) / merged, merged.rsqrt()


class _TopEncoderView:
    """What a :class:`~pyro_vae.priors.VampPrior` on z2 sees as "the VAE": images -> q(z2 | E[z1|x])."""

    def __init__(self, hvae):
        self.image_shape = hvae.image_shape
        self.encoder = hvae.encode_top


class HierarchicalVAE(VAE):
    r"""A VAE with two stochastic layers (Burda et al. 2016; Sonderby et al. 2016 for the ladder variant).

    Generative model (``model``), for each image n in the ``data`` plate::

        z2_n ~ prior()                                           event shape (latent_dims[1],)
        z1_n ~ Normal(p_z1(z2_n))                                event shape (latent_dims[0],)
        x_n  ~ likelihood(decoder(z1_n))                         event shape (C, H, W)

    Recognition model (``guide``), ``inference="bottom-up"`` (Burda et al.)::

        z1_n ~ posterior(encoder(x_n))                           event shape (latent_dims[0],)
        z2_n ~ Normal(q_z2(z1_n))                                event shape (latent_dims[1],)

    ``inference="ladder"`` (Sonderby et al. 2016): a bottom-up pass computes the encoder's estimate of z1,
    ``(m, s) = encoder(x_n)``, and q(z2|x) from its mean; the top-down pass then reuses the generative
    conditional p(z1|z2) = Normal(mu_p, sigma_p) and merges the two Gaussians by their precisions::

        z2_n ~ Normal(q_z2(m))                                   event shape (latent_dims[1],)
        z1_n ~ posterior(loc, scale),  1/scale**2 = 1/s**2 + 1/sigma_p**2,
                                       loc = scale**2 * (m/s**2 + mu_p/sigma_p**2)

    so q(z1|x, z2) shares its top-down path with the model (:func:`precision_merge`). Measured on mnist5k
    (benchmarks/README.md, "Quality on small data"), without batch norm it lets z1 collapse (KL 0) and
    scores far below the bottom-up guide: an option to study, not yet to use.

    ``p_z1`` and ``q_z2`` are :class:`GaussianMLP` s. Pictures use z1 (:attr:`latent_dim`,
    :meth:`encode`, :meth:`generate`); :meth:`sample` draws z2, then z1, then decodes. The guide is not
    mean-field (z2 depends on z1), so ``TraceMeanField_ELBO``'s analytic KL does not apply. A
    :class:`~pyro_vae.priors.VampPrior` on z2 mixes q(z2 | E[z1|u_k]) at its pseudo-inputs u_k.

    :param tuple latent_dims: ``(dim z1, dim z2)``.
    :param int latent_dim: optional, must equal ``latent_dims[0]`` (``build_vae`` passes it).
    :param tuple latent_hidden: hidden widths of ``p_z1`` and ``q_z2``.
    :param prior: p(z2).
    :param str inference: ``"bottom-up"`` or ``"ladder"``, the guide above.

    Other parameters as for :class:`~pyro_vae.VAE` (encoder and decoder work on z1). The defaults give z1
    and the networks of the flat VAE's defaults (50 latents, one hidden layer of 400): the earlier 512-256
    networks with 32 z1 latents were what made the two-level model measure worse than the flat one on
    mnist5k (benchmarks/README.md, "Quality on small data").
    """

    #: pictures decode z1 (``generate``), so the latent manifold's codes are z1's
    code_site = "z1"
    #: interpolation and traversal move z2 (``top_codes``, ``decode_top``)
    top_sites = ("z2",)

    def __init__(self, image_shape=(1, 28, 28), latent_dims=(50, 16), latent_dim=None, encoder=None, decoder=None,
                 prior=None, likelihood=None, posterior=None, hidden=(400,), latent_hidden=(128,),
                 inference="bottom-up"):
        check_part("prior", prior)
        if inference not in INFERENCES:
            raise ConfigError(f"unknown inference={inference!r}; use one of {', '.join(map(repr, INFERENCES))}")
        dims = tuple(positive_int("latent_dims entry", d, MAX_LATENT_DIM) for d in latent_dims)
        if len(dims) != 2:
            raise ConfigError(f"latent_dims must be two sizes (z1, z2), got {tuple(latent_dims)!r}")
        if latent_dim is not None and latent_dim != dims[0]:
            raise ConfigError(f"latent_dim={latent_dim} disagrees with latent_dims={dims}: it is the size of z1")
        # the VAE builds networks, likelihood and posterior around z1; its default prior (on z1) is replaced
        super().__init__(image_shape=image_shape, latent_dim=dims[0], encoder=encoder, decoder=decoder,
                         likelihood=likelihood, posterior=posterior, hidden=hidden)
        self.latent_dims = dims
        self.inference = inference
        self.latent_hidden = widths(latent_hidden, "latent_hidden", required=True)
        self.p_z1 = GaussianMLP(dims[1], dims[0], self.latent_hidden)
        self.q_z2 = GaussianMLP(dims[0], dims[1], self.latent_hidden)
        self.prior = prior if prior is not None else priors_module.StandardNormal()
        self.prior.setup(dims[1], _TopEncoderView(self))

    def model(self, x, y=None, covariates=None):
        """p(x, z1, z2) = p(z2) p(z1|z2) p(x|z1). :param x: images ``(N, C, H, W)``; ``y`` is ignored."""
        self.register()
        with pyro.plate("data", x.shape[-4]):
            z2 = pyro.sample("z2", self.prior())
            z1 = pyro.sample("z1", dist.Normal(*self.p_z1(z2)).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(z1)), obs=x)

    def guide(self, x, y=None, covariates=None):
        """Bottom-up q(z1|x) q(z2|z1), or the ladder's q(z2|x) q(z1|x, z2).
        :param x: images ``(N, C, H, W)``; ``y`` is ignored."""
        self.register()
        with pyro.plate("data", x.shape[-4]):
            if self.inference == "ladder":
                loc, scale = self.encoder(x)
                z2 = pyro.sample("z2", dist.Normal(*self.q_z2(loc)).to_event(1))
                pyro.sample("z1", self.posterior(*precision_merge(loc, scale, *self.p_z1(z2))))
            else:
                z1 = pyro.sample("z1", self.posterior(*self.encoder(x)))
                pyro.sample("z2", dist.Normal(*self.q_z2(z1)).to_event(1))

    def encode(self, x, y=None):
        """Parameters of q(z1|x): the encoder's for the bottom-up guide; for the ladder, the merge with
        p(z1|z2) at z2 = the mean of q(z2|x). :param x: ``(..., C, H, W)``; ``y`` is ignored.
        :returns: ``(loc, scale)``, each ``(..., latent_dims[0])``."""
        loc, scale = self.encoder(x)
        if self.inference != "ladder":
            return loc, scale
        return precision_merge(loc, scale, *self.p_z1(self.q_z2(loc)[0]))

    def encode_top(self, x):
        """Parameters of q(z2 | z1 = E[z1|x]) (the mean of q(z1|x)'s base Normal).
        :param x: ``(..., C, H, W)``. :returns: ``(loc, scale)``, each ``(..., latent_dims[1])``."""
        return self.q_z2(self.encoder(x)[0])

    @property
    def top_dim(self):
        """Size of z2, the top latent variable."""
        return self.latent_dims[1]

    def top_codes(self, x, y=None):
        """Mean of q(z2 | z1 = E[z1|x]). :param x: ``(..., C, H, W)``. :returns: ``(..., latent_dims[1])``."""
        return self.encode_top(x)[0]

    def decode_top(self, z, y=None):
        """Mean image through the mean of p(z1|z2). :param z: z2, ``(..., latent_dims[1])``.
        :returns: ``(..., C, H, W)``."""
        return self.generate(self.p_z1(z)[0])

    @property
    def config(self):
        return {**super().config, "latent_dims": list(self.latent_dims), "latent_hidden": self.latent_hidden,
                "inference": self.inference}
