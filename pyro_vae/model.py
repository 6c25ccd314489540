"""The variational autoencoder of Kingma & Welling (2014) as a Pyro model/guide pair."""

import contextlib

from torch import nn

import pyro
import pyro.poutine as poutine

from . import guides as guides_module
from . import likelihoods as likelihoods_module
from . import networks as networks_module
from . import priors as priors_module
from .errors import ConfigError


class VAE(nn.Module):
    r"""Variational autoencoder: generative model p(x|z) p(z) and recognition model q(z|x).

    Generative process (``model``), for each image n in the ``data`` plate::

        z_n ~ prior()                                  event shape (latent_dim,)
        x_n ~ likelihood(decoder(z_n))                 event shape (C, H, W)

    Recognition model (``guide``)::

        z_n ~ posterior(encoder(x_n))                  default diagonal Normal, event shape (latent_dim,)

    Both ``z`` sites are scaled by :attr:`kl_scale` (1 by default): with ``kl_scale = beta`` the loss is
    the beta-VAE objective -E_q[log p(x|z)] + beta KL(q || p), and ``fit(..., warmup=E)`` ramps it from
    0 to ``beta`` over E epochs (KL warm-up).

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
        :class:`~pyro_vae.guides.DiagonalNormal` (default).
    :param tuple hidden: hidden widths of the default MLP encoder (the decoder mirrors them). The
        defaults (one SiLU layer of 400, 50 latents) beat deeper softplus MLPs on mnist5k at equal epochs
        (benchmarks/README.md).

    To extend the graphical model, subclass and add sites to :meth:`model` and :meth:`guide`; ``fit``
    and ``evaluate`` work with any model/guide pair that takes ``(x, y=None)``.
    """

    def __init__(self, image_shape=(1, 28, 28), latent_dim=50, encoder=None, decoder=None, prior=None,
                 likelihood=None, posterior=None, hidden=(400,)):
        super().__init__()
        if int(latent_dim) < 1:
            raise ConfigError(f"latent_dim must be a positive integer, got {latent_dim}")
        self.image_shape = tuple(int(s) for s in image_shape)
        self.latent_dim = int(latent_dim)
        self.likelihood = likelihood if likelihood is not None else likelihoods_module.Bernoulli()
        self.encoder = encoder if encoder is not None else networks_module.MLPEncoder(
            self.image_shape, self.latent_dim, hidden)
        self.decoder = decoder if decoder is not None else networks_module.MLPDecoder(
            self.image_shape, self.latent_dim, tuple(reversed(hidden)), self.likelihood.params_per_pixel)
        self.prior = prior if prior is not None else priors_module.StandardNormal()
        self.prior.setup(self.latent_dim, self)
        self.posterior = posterior if posterior is not None else guides_module.DiagonalNormal()
        self.posterior.setup(self.latent_dim)
        #: weight of the latent sites (beta of a beta-VAE); a plain float, changed by fit's warm-up
        self.kl_scale = 1.0
        #: whether ``model``/``guide`` put the parameters in Pyro's param store (``pyro.module``), which
        #: ``SVI`` with a ``pyro.optim`` optimizer needs; ``fit`` switches it off while its torch
        #: optimizer, which holds the parameters already, trains (it saves ~0.7 ms per step on a CPU)
        self.register_params = True

    # --- the probabilistic program -------------------------------------------------------------

    def model(self, x, y=None):
        """p(x, z) = p(z) p(x|z). :param x: images ``(N, C, H, W)``; ``y`` is accepted and ignored."""
        self.register()
        with pyro.plate("data", x.shape[-4]):
            with self._latent_scale():
                z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x, y=None):
        """q(z|x). :param x: images ``(N, C, H, W)``; ``y`` is accepted and ignored."""
        self.register()
        with pyro.plate("data", x.shape[-4]), self._latent_scale():
            pyro.sample("z", self.posterior(*self.encoder(x)))

    def register(self):
        """``pyro.module("vae", self)`` unless :attr:`register_params` is off (inside ``fit``)."""
        if self.register_params:
            pyro.module("vae", self)

    def _latent_scale(self):
        # no messenger at all in the common case: it would only cost time per step
        return poutine.scale(scale=self.kl_scale) if self.kl_scale != 1.0 else contextlib.nullcontext()

    # --- deterministic helpers for pictures and analysis ---------------------------------------

    @property
    def device(self):
        return next(self.parameters()).device

    def encode(self, x):
        """Posterior parameters. :param x: ``(..., C, H, W)``. :returns: ``(loc, scale)``, ``(..., latent_dim)``."""
        return self.encoder(x)

    def generate(self, z):
        """Mean image of p(x|z). :param z: ``(..., latent_dim)``. :returns: ``(..., C, H, W)``."""
        return self.likelihood.mean(self.decoder(z))

    def reconstruct(self, x):
        """Decode the posterior mean (for a flow posterior such as IAF, the mean of its base Normal, which
        the flows then move). :param x: ``(..., C, H, W)``. :returns: ``(..., C, H, W)``."""
        return self.generate(self.encode(x)[0])

    def sample_codes(self, num_samples):
        """Codes z from the model's p(z), the input of :meth:`generate`. :returns: ``(num_samples, latent_dim)``."""
        return self.prior().sample((num_samples,))

    def sample(self, num_samples):
        """Mean images of codes drawn from the prior. :returns: ``(num_samples, C, H, W)``."""
        return self.generate(self.sample_codes(num_samples))

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


def describe(part):
    """``{"class": name, "kwargs": {...}}`` for a part from this package, else ``None``."""
    if not hasattr(part, "config") or not callable(part.config):
        return None
    return {"class": type(part).__name__, "kwargs": part.config()}


_PART_MODULES = {"encoder": networks_module, "decoder": networks_module, "prior": priors_module,
                 "likelihood": likelihoods_module, "posterior": guides_module}
ROLES = ("encoder", "decoder", "prior", "likelihood", "posterior")
#: model classes a config can name; extended models add themselves here
MODELS = {"VAE": VAE}


def _construct(what, cls, *args, **kwargs):
    try:
        return cls(*args, **kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise ConfigError(f"config for the {what} {cls.__name__} is invalid ({' '.join(str(e).split())[:160]}); "
                          f"restore the run's config.json") from None


def _rebuild(role, spec, image_shape, latent_dim, params_per_pixel):
    if not (isinstance(spec, dict) and isinstance(spec.get("class"), str)
            and isinstance(spec.get("kwargs", {}), dict)):
        raise ConfigError(f"config entry for the {role} must be {{'class': name, 'kwargs': {{...}}}}, got {spec!r:.80}")
    cls = getattr(_PART_MODULES[role], spec["class"], None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"config names an unknown {role} class {spec['class']!r}")
    kwargs = dict(spec.get("kwargs", {}))
    if role == "encoder":
        return _construct(role, cls, image_shape, latent_dim, **kwargs)
    if role == "decoder":
        return _construct(role, cls, image_shape, latent_dim, params_per_pixel=params_per_pixel, **kwargs)
    return _construct(role, cls, **kwargs)


def build_vae(config, encoder=None, decoder=None):
    """Rebuild a model (untrained) from :attr:`VAE.config`.

    :param dict config: as stored in a run's ``config.json``.
    :param encoder: required when the config records a user-supplied encoder (``None``).
    :param decoder: likewise for the decoder.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"a model config must be a dict, got {type(config).__name__}")
    name = config.get("model", "VAE")
    if not isinstance(name, str) or name not in MODELS:
        raise ConfigError(f"config names an unknown model {name!r:.60}; known: {', '.join(sorted(MODELS))}")
    if hasattr(MODELS[name], "from_config"):   # models whose networks are not shaped (image_shape, latent_dim)
        return MODELS[name].from_config(config, encoder=encoder, decoder=decoder)
    image_shape, latent_dim = config.get("image_shape"), config.get("latent_dim")
    if not (isinstance(image_shape, (list, tuple)) and len(image_shape) == 3
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in image_shape)):
        raise ConfigError(f"config image_shape must be three positive integers, got {image_shape!r:.80}")
    if not (isinstance(latent_dim, int) and not isinstance(latent_dim, bool) and latent_dim > 0):
        raise ConfigError(f"config latent_dim must be a positive integer, got {latent_dim!r:.80}")
    image_shape = tuple(image_shape)
    likelihood = _rebuild("likelihood", config["likelihood"], image_shape, latent_dim, None)
    parts = {"encoder": encoder, "decoder": decoder}
    for role in parts:
        if parts[role] is None:
            if config.get(role) is None:
                raise ConfigError(f"this run used a custom {role}; pass {role}=... to rebuild it")
            parts[role] = _rebuild(role, config[role], image_shape, latent_dim, likelihood.params_per_pixel)
    prior = _rebuild("prior", config["prior"], image_shape, latent_dim, None)
    posterior = _rebuild("posterior", config.get("posterior") or {"class": "DiagonalNormal"}, image_shape,
                         latent_dim, None)
    # extended models record their own extra constructor arguments next to the parts
    extra = {k: v for k, v in config.items() if k not in ("model", "image_shape", "latent_dim") + ROLES}
    return _construct("model", MODELS[name], image_shape=image_shape, latent_dim=latent_dim, prior=prior,
                      likelihood=likelihood, posterior=posterior, **parts, **extra)

