"""Priors p(z): modules that return a Pyro distribution when called.

Changing the prior of a :class:`pyro_vae.VAE` is passing another object::

    VAE(latent_dim=20, prior=MixtureOfGaussians(10))

Every prior is built without knowing the latent size; the VAE calls :meth:`Prior.setup` once with it.
``prior()`` then returns a distribution with ``event_shape == (latent_dim,)`` and empty batch shape (the
model's ``data`` plate broadcasts it). Constants are registered buffers, so ``vae.to(device)`` moves
them and ``state_dict()`` saves them.
"""

import math

import torch
from torch import nn

import pyro.distributions as dist
from pyro.distributions.transforms import AffineAutoregressive
from pyro.nn import AutoRegressiveNN

from ..errors import ConfigError
from ..checks import (MAX_COMPONENTS, MAX_LATENT_DIM, MAX_WIDTH, alternating_order, autoregressive_weights,
                   parameter_budget, positive, positive_int, positive_number)


class Prior(nn.Module):
    """Base class: subclasses implement :meth:`build` and :meth:`forward`."""

    latent_dim = None

    def setup(self, latent_dim, vae=None):
        """Create the parameters for ``latent_dim`` (called once by the VAE that owns the prior).

        A prior passed to a second VAE of the same latent size is shared, like any ``nn.Module`` that two
        models hold: it keeps the parameters it has (building them again would silently reset a trained
        prior in the first VAE too).
        """
        if self.latent_dim is not None:
            if self.latent_dim != latent_dim:
                raise ConfigError(f"this {type(self).__name__} was already set up for latent_dim={self.latent_dim}; "
                                  f"create a new prior object for latent_dim={latent_dim}")
            return
        self.latent_dim = positive_int("latent_dim", latent_dim, MAX_LATENT_DIM)
        self.build(self.latent_dim, vae)

    def build(self, latent_dim, vae):
        raise NotImplementedError

    def config(self):
        """Keyword arguments that rebuild this prior (saved in a run's ``config.json``)."""
        return {}

    def sample(self, num_samples):
        """Draw codes from the prior. :returns: tensor ``(num_samples, latent_dim)``."""
        return self().sample((num_samples,))


#: Largest (rows x components) block of log-densities :class:`DiagonalNormalMixture` holds at once, in
#: float64 (2**22 elements = 32 MiB); larger inputs are scored in row chunks.
MAX_BLOCK = 2 ** 22


class DiagonalNormalMixture(dist.MixtureSameFamily):
    r"""A mixture of K diagonal Normals over R^D whose ``log_prob`` costs one matrix product.

    p(z) = sum_k pi_k N(z; mu_k, diag(s_k^2)). It is the same distribution as
    ``MixtureSameFamily(Categorical(logits=logits), Normal(loc, scale).to_event(1))`` and inherits
    everything but :meth:`log_prob` from it (sampling, mean, variance, support, ``expand``, its use as a
    Pyro sample site). That generic ``log_prob`` broadcasts codes ``(..., D)`` against the components
    into a ``(..., K, D)`` temporary, which for importance sampling (32,768 codes x 500 components x 50
    dimensions per pass) is gigabytes of memory-bound work. Here the per-component log-densities
    come from one matrix product instead,

        log N(z; mu_k, s_k) = [z^2, z] . [-1/(2 s_k^2), mu_k/s_k^2]
                              - sum_d (mu_kd^2/(2 s_kd^2) + log s_kd) - D/2 log(2 pi),

    followed by a ``logsumexp`` over k with the log mixture weights; only the ``(..., K)`` block is
    ever formed, and at most :data:`MAX_BLOCK` elements of it at a time.

    The expanded quadratic cancels large terms (mu^2/s^2 is 1e8 for mu = 10, s = 1e-3, while the
    density near a component needs it to within a fraction of a nat), so it is accumulated in float64,
    whatever the parameters' dtype, and the result is cast back to it: float32 results are then within
    about one float32 rounding of the exact density of their inputs. Accumulated in float32, the same
    product is off by a median 3 nats (up to 68) at codes near a component of the test suite's hard
    mixture (means up to 10, scales 1e-3 to 10, D = 50), and a TF32 product would be worse. On 2 CPU
    cores the float64 product and ``logsumexp`` take about 1.7x their float32 time, which leaves a
    VampPrior(500) evaluation under 2x the cost of an N(0, I) one (``benchmarks/eval_cost.py``).

    The parameters describe one mixture (no batch dimensions); ``expand`` (which ``pyro.plate``
    applies) batches it without copying them.

    :param torch.Tensor logits: unnormalized log mixture weights, ``(K,)``.
    :param torch.Tensor loc: component means, ``(K, D)``.
    :param torch.Tensor scale: component standard deviations, ``(K, D)``, positive.
    :param bool validate_args: as for any torch distribution.
    """

    def __init__(self, logits, loc, scale, validate_args=None):
        if logits.dim() != 1 or loc.dim() != 2 or tuple(scale.shape) != tuple(loc.shape) \
                or logits.shape[0] != loc.shape[0]:
            raise ConfigError(f"DiagonalNormalMixture needs logits (K,), loc and scale (K, D); got logits "
                              f"{tuple(logits.shape)}, loc {tuple(loc.shape)}, scale {tuple(scale.shape)}")
        super().__init__(dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1),
                         validate_args=validate_args)
        self._params = (logits, loc, scale)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiagonalNormalMixture, _instance)
        new = super().expand(batch_shape, _instance=new)
        # the unexpanded parameters: scoring against expanded (stride-0) copies would cost a batched
        # product per datapoint
        new._params = self._params
        return new

    def log_prob(self, value):
        """:param torch.Tensor value: codes ``(..., D)``.
        :returns: log p(z), of shape ``value.shape[:-1]`` broadcast with ``batch_shape``.
        """
        if self._validate_args:
            self._validate_sample(value)
        logits, loc, scale = (t.double() for t in self._params)
        num_components, latent_dim = loc.shape
        precision = scale.pow(-2)
        bias = (torch.log_softmax(logits, dim=-1) - scale.log().sum(-1) - 0.5 * latent_dim * math.log(2 * math.pi)
                - 0.5 * (loc.pow(2) * precision).sum(-1))                                      # (K,)
        weights = torch.cat([-0.5 * precision, loc * precision], dim=-1).T                      # (2D, K)
        codes = value.expand(value.shape[:-1] + (latent_dim,)).reshape(-1, latent_dim)            # (M, D)
        rows = max(1, MAX_BLOCK // num_components)

        def score(z):
            z = z.double()
            return torch.logsumexp(torch.addmm(bias, torch.cat([z * z, z], dim=-1), weights), dim=-1)

        # one block when it fits, so a traced (JIT) graph holds no shape-dependent split
        log_p = score(codes) if codes.shape[0] <= rows else torch.cat([score(z) for z in codes.split(rows)])
        log_p = log_p.to(torch.promote_types(value.dtype, self._params[1].dtype)).reshape(value.shape[:-1])
        return log_p.expand(torch.broadcast_shapes(log_p.shape, self.batch_shape))


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
        return dist.Normal(self.loc, positive(self.raw_scale)).to_event(1)


class MixtureOfGaussians(Prior):
    """p(z) = sum_k pi_k N(mu_k, diag(sigma_k^2)), all learned.

    ``prior()`` returns a :class:`DiagonalNormalMixture`.

    :param int num_components: number of mixture components K.
    :param float spread: standard deviation of the initial component means (fixed seed, so a rebuilt
        model starts from the same place).
    """

    def __init__(self, num_components=10, spread=1.0):
        super().__init__()
        self.num_components = positive_int("num_components", num_components, MAX_COMPONENTS)
        self.spread = positive_number("spread", spread)

    def build(self, latent_dim, vae):
        parameter_budget("MixtureOfGaussians", self.num_components * (1 + 2 * latent_dim))
        generator = torch.Generator().manual_seed(0)
        self.logits = nn.Parameter(torch.zeros(self.num_components))
        self.locs = nn.Parameter(self.spread * torch.randn(self.num_components, latent_dim, generator=generator))
        self.raw_scales = nn.Parameter(torch.zeros(self.num_components, latent_dim))

    def forward(self):
        return DiagonalNormalMixture(self.logits, self.locs, positive(self.raw_scales))

    def config(self):
        return {"num_components": self.num_components, "spread": self.spread}


class VampPrior(Prior):
    r"""The variational mixture of posteriors of Tomczak & Welling (2018).

    p(z) = (1/K) sum_k q0(z | u_k): an equally weighted mixture of the encoder's diagonal Normals at K
    learned pseudo-inputs u_k, each of the image shape ``(C, H, W)`` with pixels in (0, 1) (a parameter
    passed through a sigmoid). The components are always the encoder's diagonal Normal q0, also when
    the VAE's posterior adds flows on top of it (a mixture of flows would cost K flow passes per z).

    ``prior()`` runs the encoder once on the K pseudo-inputs (a few percent of an importance-sampling
    pass, profiled) and returns a :class:`DiagonalNormalMixture` of the K Normals it gives.

    The prior shares the VAE's encoder, so it is set up by the VAE (``vae.encoder``, ``vae.image_shape``)
    and works only inside one. Its state is the pseudo-inputs alone: the encoder is saved once, as part
    of the VAE.

    :param int num_pseudo_inputs: number of pseudo-inputs K (the paper uses 500 on MNIST).
    """

    def __init__(self, num_pseudo_inputs=500):
        super().__init__()
        self.num_pseudo_inputs = positive_int("num_pseudo_inputs", num_pseudo_inputs, MAX_COMPONENTS)
        # a plain list hides the encoder from nn.Module: registering it here as well would duplicate its
        # entries in the VAE's state_dict and make the module graph cyclic
        self._shared = []

    def setup(self, latent_dim, vae=None):
        # its density runs the owning VAE's encoder, which is not a parameter of any other VAE
        if self._shared:
            raise ConfigError("this VampPrior already belongs to another VAE, whose encoder it uses; "
                              "create a new VampPrior for this one")
        super().setup(latent_dim, vae)

    def build(self, latent_dim, vae):
        if vae is None or not hasattr(vae, "encoder") or not hasattr(vae, "image_shape"):
            raise ConfigError("VampPrior needs the VAE's encoder; pass it to VAE(prior=VampPrior(...)) "
                              "instead of setting it up alone")
        self._shared[:] = [vae.encoder]
        parameter_budget("VampPrior", self.num_pseudo_inputs * math.prod(vae.image_shape))
        generator = torch.Generator().manual_seed(0)
        # sigmoid(N(0, 1)) puts ~95% of the initial pixels in (0.12, 0.88): distinct pseudo-inputs, few
        # saturated (where the sigmoid is flat, SGD barely moves a pixel)
        self.raw_pseudo_inputs = nn.Parameter(
            torch.randn((self.num_pseudo_inputs,) + tuple(vae.image_shape), generator=generator))

    @property
    def encoder(self):
        """The VAE's encoder (not a submodule of the prior)."""
        return self._shared[0]

    @property
    def pseudo_inputs(self):
        """The pseudo-inputs u_k, ``(K, C, H, W)``, pixels in (0, 1)."""
        return torch.sigmoid(self.raw_pseudo_inputs)

    @torch.no_grad()
    def initialize(self, images):
        """Start the pseudo-inputs at real images instead of random noise (call before training).

        :param images: tensor ``(M, C, H, W)`` with pixels in [0, 1]; the first K are used, cycling if M < K.
        """
        index = torch.arange(self.num_pseudo_inputs) % images.shape[0]
        chosen = images[index].to(self.raw_pseudo_inputs)
        # keep the start away from 0 and 1, where the logit is infinite and the sigmoid's gradient vanishes
        self.raw_pseudo_inputs.copy_(torch.logit(chosen.clamp(0.01, 0.99)))

    def forward(self):
        loc, scale = self.encoder(self.pseudo_inputs)              # (K, latent_dim) each
        return DiagonalNormalMixture(loc.new_zeros(self.num_pseudo_inputs), loc, scale)

    def config(self):
        return {"num_pseudo_inputs": self.num_pseudo_inputs}


class FlowPrior(Prior):
    r"""A normalizing-flow prior: N(0, I) pushed through learned affine autoregressive transforms.

    z = f_L^{-1}( ... f_1^{-1}(u)),  u ~ N(0, I), where each f_l is Pyro's
    :class:`~pyro.distributions.transforms.AffineAutoregressive` (a MADE network, Germain et al. 2015),
    with the autoregressive order reversed between flows (the unbounded ``exp`` scale, clipped by Pyro,
    so the prior can grow narrower as well as wider than N(0, I)). The flows are used in the *inverse*
    direction (masked autoregressive flow, Papamakarios et al. 2017): log p(z) -- needed at every
    training step for codes drawn from q(z|x) -- costs one network pass per flow, while drawing from
    the prior (only for pictures) costs ``latent_dim`` passes.

    :param int num_flows: number of transforms L.
    :param int hidden: width of the two hidden layers of each autoregressive network.
    """

    def __init__(self, num_flows=2, hidden=64):
        super().__init__()
        self.num_flows = positive_int("FlowPrior num_flows", num_flows, MAX_COMPONENTS)
        self.hidden = positive_int("FlowPrior hidden", hidden, MAX_WIDTH)

    def build(self, latent_dim, vae):
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))
        weights, masks = autoregressive_weights(latent_dim, self.hidden)
        for _ in range(self.num_flows):
            parameter_budget("FlowPrior", weights, buffers=masks)
        # nn.ModuleList registers the networks, so they train, move with .to() and are saved
        self.networks = nn.ModuleList(
            AutoRegressiveNN(latent_dim, [self.hidden, self.hidden], permutation=alternating_order(latent_dim, i))
            for i in range(self.num_flows))

    def forward(self):
        # Fresh transform objects per call: a transform caches its last (input, output) pair, and a cache
        # kept on the module would pin the last batch's tensors and make the model impossible to deepcopy.
        flows = [AffineAutoregressive(network) for network in self.networks]
        # flows[0] is applied to z first when scoring, so it sits last on the sampling path
        return dist.TransformedDistribution(dist.Normal(self.loc, self.scale).to_event(1),
                                            [flow.inv for flow in reversed(flows)])

    def config(self):
        return {"num_flows": self.num_flows, "hidden": self.hidden}
