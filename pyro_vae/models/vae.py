"""The variational autoencoder of Kingma & Welling (2014) as a Pyro model/guide pair, and how a saved config
turns back into a model (:func:`build_vae`)."""

from torch import nn

import pyro
import pyro.poutine as poutine

from ..parts import likelihoods as likelihoods_module
from ..parts import networks as networks_module
from ..parts import posteriors as guides_module
from ..parts import priors as priors_module
from ..parts.config import ROLES, BuildsItsOwn, check_part, construct, describe, rebuild_part
from ..errors import ConfigError
from ..checks import MAX_LATENT_DIM, image_shape as image_shape_of, positive_int


class VAE(nn.Module):
    r"""Variational autoencoder: generative model p(x|z) p(z) and recognition model q(z|x).

    Generative process (``model``), for each image n in the ``data`` plate::

        z_n ~ prior()                                  event shape (latent_dim,)
        x_n ~ likelihood(decoder(z_n))                 event shape (C, H, W)

    Recognition model (``guide``)::

        z_n ~ posterior(encoder(x_n))                  default diagonal Normal, event shape (latent_dim,)

    ``fit(..., beta=b)`` weights every latent site of model and guide by b from outside (a beta-VAE), so the
    model itself holds no weight and a subclass with sites of its own is weighted the same way.

    :param tuple image_shape: ``(C, H, W)`` of one image.
    :param int latent_dim: size of z.
    :param encoder: module mapping ``(..., C, H, W)`` to ``(loc, scale)`` of shape ``(..., latent_dim)``;
        default :class:`~pyro_vae.networks.MLPEncoder`.
    :param decoder: module mapping ``(..., latent_dim)`` to the likelihood's parameters
        ``(..., P*C, H, W)``; default :class:`~pyro_vae.networks.MLPDecoder`.
    :param prior: a :class:`~pyro_vae.priors.Prior`; default :class:`~pyro_vae.priors.StandardNormal`.
    :param likelihood: a :class:`~pyro_vae.likelihoods.Likelihood`; default
        :class:`~pyro_vae.likelihoods.Bernoulli`.
    :param posterior: family of q(z|x) built from the encoder's output, e.g.
        :class:`~pyro_vae.posteriors.DiagonalNormal` (default).
    :param tuple hidden: hidden widths of the default MLP encoder (the decoder mirrors them). The
        defaults (one SiLU layer of 400, 50 latents) beat deeper softplus MLPs on mnist5k at equal epochs
        (benchmarks/README.md).

    To extend the graphical model, subclass and add sites to :meth:`model` and :meth:`guide`; ``fit``,
    ``evaluate`` and the pictures work with any model/guide pair that takes ``(x, y=None)`` (and the
    dataset's ``covariates=`` keyword when it has covariates). :meth:`sample` draws from the model itself
    (ancestral sampling), so a subclass's samples need no override.
    """

    #: the latent site whose values :meth:`generate` decodes (what :meth:`sample_codes` returns)
    code_site = "z"

    #: the observed image site of :meth:`model` (what :meth:`sample` returns the mean of); a model that names
    #: its image site otherwise declares it here, and :func:`~pyro_vae.check_model` holds it to that
    obs_site = "x"

    #: the latent sites whose values, concatenated in this order along the last dim, make the top code that
    #: :meth:`top_codes` returns and :meth:`decode_top` decodes (what interpolation and traversal move, and
    #: how their coordinates are named); ``None``: :attr:`code_site` alone
    top_sites = None

    #: What the model does with labels y, decided here once for evaluation, pictures and the CLI:
    #: ``"ignored"`` (``model``/``guide`` accept y and do not use it, or observe it as data of their own),
    #: ``"conditioned"`` (p(x | y): every image needs its label, scores are of log p(x|y)), or
    #: ``"generated"`` (y is a variable of the generative model that the guide infers when it is missing,
    #: so scores sum it out and bound log p(x); :class:`~pyro_vae.extended.M2`).
    label_role = "ignored"

    #: the number of label classes K of a model that uses labels (labels are 0..K-1); ``None`` otherwise
    num_classes = None

    #: whether the model infers labels from images (:meth:`classify`, ``accuracy``, a class per picture row)
    classifies = False

    def __init__(self, image_shape=(1, 28, 28), latent_dim=50, encoder=None, decoder=None, prior=None,
                 likelihood=None, posterior=None, hidden=(400,)):
        super().__init__()
        self.image_shape = image_shape_of(image_shape)
        self.latent_dim = positive_int("latent_dim", latent_dim, MAX_LATENT_DIM)
        for role, part in (("encoder", encoder), ("decoder", decoder), ("prior", prior), ("likelihood", likelihood),
                           ("posterior", posterior)):
            check_part(role, part)
        self.likelihood = likelihood if likelihood is not None else likelihoods_module.Bernoulli()
        self.encoder = encoder if encoder is not None else networks_module.MLPEncoder(
            self.image_shape, self.latent_dim, hidden)
        self.decoder = decoder if decoder is not None else networks_module.MLPDecoder(
            self.image_shape, self.latent_dim, tuple(reversed(hidden)), self.likelihood.params_per_pixel)
        self.prior = prior if prior is not None else priors_module.StandardNormal()
        self.prior.setup(self.latent_dim, self)
        self.posterior = posterior if posterior is not None else guides_module.DiagonalNormal()
        self.posterior.setup(self.latent_dim)
        #: whether ``model``/``guide`` put the parameters in Pyro's param store (``pyro.module``), which
        #: ``SVI`` with a ``pyro.optim`` optimizer needs; ``fit`` switches it off while its torch
        #: optimizer, which holds the parameters already, trains (it saves ~0.7 ms per step on a CPU)
        self.register_params = True

    # --- the probabilistic program -------------------------------------------------------------

    def model(self, x, y=None, covariates=None):
        """p(x, z) = p(z) p(x|z). :param x: images ``(N, C, H, W)``; ``y`` and ``covariates`` (a dataset's
        per-image covariates ``(N, D)``, which subclasses may condition on) are accepted and ignored."""
        self.register()
        with pyro.plate("data", x.shape[-4]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x, y=None, covariates=None):
        """q(z|x). :param x: images ``(N, C, H, W)``; ``y`` and ``covariates`` are accepted and ignored."""
        self.register()
        with pyro.plate("data", x.shape[-4]):
            pyro.sample("z", self.posterior(*self.encoder(x)))

    def register(self):
        """``pyro.module("vae", self)`` unless :attr:`register_params` is off (inside ``fit``)."""
        if self.register_params:
            pyro.module("vae", self)

    def check_data(self, data):
        """Raise :class:`~pyro_vae.DataError` when ``data`` (an ``ImageDataset``) cannot be fed to this model;
        a plain VAE takes any images (a model that needs labels overrides this)."""

    # --- deterministic helpers for pictures and analysis ---------------------------------------

    @property
    def device(self):
        return next(self.parameters()).device

    def encode(self, x, y=None):
        """Posterior parameters. :param x: ``(..., C, H, W)``; ``y`` is accepted and ignored.
        :returns: ``(loc, scale)``, ``(..., latent_dim)``."""
        return self.encoder(x)

    def generate(self, z, y=None):
        """Mean image of p(x|z). :param z: ``(..., latent_dim)``; ``y`` is accepted and ignored.
        :returns: ``(..., C, H, W)``."""
        return self.likelihood.mean(self.decoder(z))

    @property
    def top_dim(self):
        """Size of the top latent variable, the one interpolation and traversal pictures move along."""
        return self.latent_dim

    def top_codes(self, x, y=None):
        """Posterior mean of the top latent variable. :param x: ``(..., C, H, W)``.
        :param y: labels for models that condition on them (see :attr:`label_role`).
        :returns: ``(..., top_dim)``."""
        return self.encode(x, y)[0]

    def decode_top(self, z, y=None):
        """Mean image for a top code. :param z: ``(..., top_dim)``. :returns: ``(..., C, H, W)``."""
        return self.generate(z, y)

    def reconstruct(self, x, y=None):
        """Decode the posterior mean (for a flow posterior such as IAF, the mean of its base Normal, which
        the flows then move). :param x: ``(..., C, H, W)``; ``y`` as for :meth:`encode`.
        :returns: ``(..., C, H, W)``."""
        return self.generate(self.encode(x, y)[0], y)

    def trace_prior(self, num_samples, y=None, **kwargs):
        """Run :meth:`model` once for ``num_samples`` images with every latent site drawn from its prior given
        its parents (ancestral sampling), and return the trace.

        The image site is observed at a placeholder batch of zeros, which fixes the ``data`` plate's size
        and changes no draw (the latents are drawn before it), so ``trace.nodes[obs_site]["fn"]`` is
        p(x | latents) for the drawn latents. A subclass with sites of its own is sampled correctly with no
        override, provided its model uses ``x`` only as the observation and for the batch size (true of
        every model here).

        :param int num_samples: size of the ``data`` plate.
        :param y: labels for models that take them (see :attr:`label_role`), or ``None``.
        :returns: a :class:`pyro.poutine.Trace`; ``trace.nodes[name]["value"]`` holds each site's draws.
        """
        x = next(self.parameters()).new_zeros((positive_int("num_samples", num_samples),) + self.image_shape)
        return poutine.trace(self.model).get_trace(x, y, **kwargs)

    def sample_codes(self, num_samples):
        """Codes drawn ancestrally at :attr:`code_site`, the input of :meth:`generate`.
        :returns: ``(num_samples, latent_dim)``."""
        trace = self.trace_prior(num_samples)
        if self.code_site not in trace.nodes:
            raise ConfigError(f"{type(self).__name__}'s model has no site {self.code_site!r} to draw codes from; "
                              f"set its code_site attribute to the latent site that generate() decodes")
        return trace.nodes[self.code_site]["value"]

    def sample(self, num_samples, y=None, **kwargs):
        """Mean images of p(x | latents) for latents drawn from the model's prior (:meth:`trace_prior`).
        :param y: labels for models that take them; ``kwargs`` other inputs of the model (``covariates``).
        :returns: ``(num_samples, C, H, W)``."""
        trace = self.trace_prior(num_samples, y, **kwargs)
        if self.obs_site not in trace.nodes:
            raise ConfigError(f"{type(self).__name__}'s model has no site {self.obs_site!r}; set its obs_site "
                              f"attribute to the name of its observed image site")
        return trace.nodes[self.obs_site]["fn"].mean

    # --- saving --------------------------------------------------------------------------------

    @property
    def config(self):
        """JSON-serialisable description that :func:`build_vae` turns back into an identical VAE.

        User-supplied networks without a ``config()`` method are recorded as ``None``: pass them again
        when loading.
        """
        return {
            "model": type(self).__name__,
            "image_shape": list(self.image_shape),
            "latent_dim": self.latent_dim,
            "encoder": describe(self.encoder),
            "decoder": describe(self.decoder),
            "prior": describe(self.prior),
            "likelihood": describe(self.likelihood),
            "posterior": describe(self.posterior),
        }

    @classmethod
    def from_config(cls, config, **parts):
        """Rebuild an untrained model of this class from :attr:`config` (what :func:`build_vae` calls).

        The recorded parts are rebuilt from this package's part classes; a module passed in ``parts`` is
        used instead (required for a part recorded as ``None``). Entries of the config besides the parts
        and shapes (a subclass's own constructor arguments, e.g. ``num_classes``) go to the constructor.
        """
        shape, latent_dim = config.get("image_shape"), config.get("latent_dim")
        if not (isinstance(shape, list) and len(shape) == 3
                and all(isinstance(s, int) and not isinstance(s, bool) for s in shape)):
            raise ConfigError(f"config image_shape must be a list of three positive integers, got {shape!r:.80}")
        if not (isinstance(latent_dim, int) and not isinstance(latent_dim, bool)):
            raise ConfigError(f"config latent_dim must be a positive integer, got {latent_dim!r:.80}")
        shape, latent_dim = image_shape_of(shape), positive_int("config latent_dim", latent_dim, MAX_LATENT_DIM)
        parts = dict(parts)
        passed = {role for role, part in parts.items() if part is not None}   # by the caller, not rebuilt here
        if parts.get("likelihood") is None:
            parts["likelihood"] = rebuild_part("likelihood", config.get("likelihood"))
        for role in ("encoder", "decoder"):
            if parts.get(role) is None:
                parts[role] = cls._rebuild_network(role, config, shape, latent_dim,
                                                   parts["likelihood"].params_per_pixel)
        for role, default in (("prior", {"class": "StandardNormal"}), ("posterior", {"class": "DiagonalNormal"})):
            if parts.get(role) is None:
                parts[role] = rebuild_part(role, config.get(role, default))
        extra = {k: v for k, v in config.items() if k not in ("model", "image_shape", "latent_dim") + ROLES}
        if not all(isinstance(k, str) for k in extra):
            raise ConfigError("config has entries whose names are not strings; restore the run's config.json")
        own = not cls.__module__.startswith("pyro_vae.")   # a class of the user's own
        while True:
            try:
                return construct("model", cls, image_shape=shape, latent_dim=latent_dim, **parts, **extra,
                                  user_class=own)
            except BuildsItsOwn as e:
                # the class builds this part itself (e.g. a decoder sized for extra inputs) and passes it on to
                # VAE: the rebuilt one is not needed, and the checkpoint's weights fill the class's own
                if e.part in passed or e.part not in parts:
                    raise ConfigError(f"{cls.__name__}'s constructor builds its own {e.part}, so it cannot also "
                                      f"take {e.part}=...; leave it out") from None
                del parts[e.part]

    @classmethod
    def _rebuild_network(cls, role, config, image_shape, latent_dim, params_per_pixel):
        """The recorded encoder (``image_shape, latent_dim``) or decoder (also ``params_per_pixel``)."""
        if role == "encoder":
            return rebuild_part(role, config.get(role), image_shape, latent_dim)
        return rebuild_part(role, config.get(role), image_shape, latent_dim, params_per_pixel=params_per_pixel)


def uses_labels(vae):
    """Whether ``vae`` takes labels in ``encode``/``generate``/``reconstruct`` (its :attr:`VAE.label_role` is not
    ``"ignored"``)."""
    return vae.label_role != "ignored"
