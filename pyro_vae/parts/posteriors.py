"""Posterior families for the recognition model q(z|x).

A posterior module turns the encoder's output ``(loc, scale)``, each ``(..., latent_dim)``, into a
distribution over z with ``event_shape == (latent_dim,)``. The VAE's guide samples ``z`` from it, so
swapping the family is passing another object: ``VAE(posterior=...)``.
"""

import torch
from torch import nn

import pyro.distributions as dist
from pyro.distributions.transforms import AffineAutoregressive, ConditionalAffineAutoregressive
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN

from ..errors import ConfigError
from ..checks import (MAX_COMPONENTS, MAX_LATENT_DIM, MAX_WIDTH, alternating_order, autoregressive_weights,
                   parameter_budget, positive_int)


class Posterior(nn.Module):
    """Base class of the posterior families: subclasses implement :meth:`forward` (and :meth:`build` when they
    have parameters of their own, which depend on the latent size)."""

    latent_dim = None

    def setup(self, latent_dim):
        """Called once by the VAE with the latent size; a posterior set up for another size is refused."""
        latent_dim = positive_int("latent_dim", latent_dim, MAX_LATENT_DIM)
        if self.latent_dim is not None:
            if self.latent_dim != latent_dim:
                raise ConfigError(f"this {type(self).__name__} was already set up for latent_dim={self.latent_dim}; "
                                  f"create a new {type(self).__name__} object for latent_dim={latent_dim}")
            return
        self.latent_dim = latent_dim
        self.build(latent_dim)

    def build(self, latent_dim):
        """Create the parameters for ``latent_dim`` (none by default)."""

    def forward(self, loc, scale):
        """:param loc: ``(..., latent_dim)``. :param scale: ``(..., latent_dim)``, positive.
        :returns: a distribution with batch shape ``loc.shape[:-1]`` and event shape ``(latent_dim,)``."""
        raise NotImplementedError

    def config(self):
        """Keyword arguments that rebuild this posterior (saved in a run's ``config.json``)."""
        return {}


class DiagonalNormal(Posterior):
    """q(z|x) = N(loc(x), diag(scale(x)^2)): the recognition model of the AEVB paper."""

    def forward(self, loc, scale):
        return dist.Normal(loc, scale).to_event(1)


class IAF(Posterior):
    r"""Inverse autoregressive flow posterior (Kingma et al. 2016).

    z_0 ~ N(loc(x), diag(scale(x)^2)),  z_l = f_l(z_{l-1}; h(x))  for l = 1..L,  z = z_L,

    where each f_l is Pyro's affine autoregressive transform in its "stable" form,
    z_l = s * z_{l-1} + (1 - s) * m with ``(m, logit s)`` from a MADE network of z_{l-1} (the IAF
    paper's update), and the autoregressive order is reversed between flows. Sampling takes one network
    pass per flow and is reparameterised, so ``Trace_ELBO`` and IWAE work unchanged; the density of the
    flow's own samples reuses the transforms' cache (no inversion). Scoring any other z of shape
    ``(..., latent_dim)`` inverts the flows, at ``latent_dim`` passes per flow: correct, just slower.

    :param int num_flows: number of transforms L.
    :param int hidden: width of the two hidden layers of each autoregressive network.
    :param bool conditional: feed the context h(x) = (loc(x), log scale(x)), the encoder's output,
        to every autoregressive network as an extra input, so the shape of the flow (not only its
        starting point) depends on the image; ``False`` gives one flow shared by all images.
    """

    def __init__(self, num_flows=2, hidden=64, conditional=True):
        super().__init__()
        self.num_flows = positive_int("IAF num_flows", num_flows, MAX_COMPONENTS)
        self.hidden = positive_int("IAF hidden", hidden, MAX_WIDTH)
        self.conditional = bool(conditional)

    def build(self, latent_dim):
        hidden = [self.hidden, self.hidden]
        weights, masks = autoregressive_weights(latent_dim, self.hidden, 2 * latent_dim if self.conditional else 0)
        for _ in range(self.num_flows):
            parameter_budget("IAF", weights, buffers=masks)
        flows = []
        for i in range(self.num_flows):
            order = alternating_order(latent_dim, i)
            if self.conditional:
                net = ConditionalAutoRegressiveNN(latent_dim, 2 * latent_dim, hidden, permutation=order)
                flows.append(ConditionalAffineAutoregressive(net, stable=True))
            else:
                # only the network is kept: the transform is rebuilt per call, see forward
                flows.append(AutoRegressiveNN(latent_dim, hidden, permutation=order))
        self.flows = nn.ModuleList(flows)

    def forward(self, loc, scale):
        base = dist.Normal(loc, scale).to_event(1)
        if self.conditional:
            context = torch.cat([loc, scale.log()], dim=-1)
            transforms = [flow.condition(context) for flow in self.flows]
        else:
            # new transform objects per call, like the conditioned ones: their sample cache lives and dies
            # with this distribution instead of pinning tensors on the module (which also breaks deepcopy)
            transforms = [AffineAutoregressive(network, stable=True) for network in self.flows]
        return dist.TransformedDistribution(base, transforms)

    def config(self):
        return {"num_flows": self.num_flows, "hidden": self.hidden, "conditional": self.conditional}
