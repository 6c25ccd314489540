"""Priors p(z): modules that return a Pyro distribution when called.

Changing the prior of a :class:`pyro_vae.VAE` is passing another object::

    VAE(latent_dim=20, prior=MixtureOfGaussians(10))

Every prior is built without knowing the latent size; the VAE calls :meth:`Prior.setup` once with it.
``prior()`` then returns a distribution with ``event_shape == (latent_dim,)`` and empty batch shape (the
model's ``data`` plate broadcasts it). Constants are registered buffers, so ``vae.to(device)`` moves
them and ``state_dict()`` saves them.
"""

import torch
import torch.nn.functional as F
from torch import nn

import pyro.distributions as dist

from .errors import ConfigError


class Prior(nn.Module):
    """Base class: subclasses implement :meth:`build` and :meth:`forward`."""

    latent_dim = None

    def setup(self, latent_dim, vae=None):
        """Create the parameters for ``latent_dim`` (called once by the VAE that owns the prior)."""
        if self.latent_dim is not None and self.latent_dim != latent_dim:
            raise ConfigError(f"this {type(self).__name__} was already set up for latent_dim={self.latent_dim}; "
                              f"create a new prior object for latent_dim={latent_dim}")
        self.latent_dim = int(latent_dim)
        self.build(self.latent_dim, vae)

    def build(self, latent_dim, vae):
        raise NotImplementedError

    def config(self):
        """Keyword arguments that rebuild this prior (saved in a run's ``config.json``)."""
        return {}

    def sample(self, num_samples):
        """Draw codes from the prior. :returns: tensor ``(num_samples, latent_dim)``."""
        return self().sample((num_samples,))


class StandardNormal(Prior):
    """p(z) = N(0, I), the prior of the AEVB paper."""

    def build(self, latent_dim, vae):
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self):
        return dist.Normal(self.loc, self.scale).to_event(1)


class LearnedNormal(Prior):
    """p(z) = N(mu, diag(sigma^2)) with mu and sigma learned with the rest of the model."""

    def build(self, latent_dim, vae):
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.raw_scale = nn.Parameter(torch.full((latent_dim,), 0.5413))  # softplus(0.5413) ~= 1

    def forward(self):
        return dist.Normal(self.loc, F.softplus(self.raw_scale) + 1e-4).to_event(1)


class MixtureOfGaussians(Prior):
    """p(z) = sum_k pi_k N(mu_k, diag(sigma_k^2)), all learned.

    :param int num_components: number of mixture components K.
    :param float spread: standard deviation of the initial component means (fixed seed, so a rebuilt
        model starts from the same place).
    """

    def __init__(self, num_components=10, spread=1.0):
        super().__init__()
        if int(num_components) < 1:
            raise ConfigError(f"num_components must be a positive integer, got {num_components}")
        self.num_components = int(num_components)
        self.spread = float(spread)

    def build(self, latent_dim, vae):
        generator = torch.Generator().manual_seed(0)
        self.logits = nn.Parameter(torch.zeros(self.num_components))
        self.locs = nn.Parameter(self.spread * torch.randn(self.num_components, latent_dim, generator=generator))
        self.raw_scales = nn.Parameter(torch.zeros(self.num_components, latent_dim))

    def forward(self):
        components = dist.Normal(self.locs, F.softplus(self.raw_scales) + 1e-4).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)

    def config(self):
        return {"num_components": self.num_components, "spread": self.spread}
