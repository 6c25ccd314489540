"""Pyro traces read per datapoint: the terms of the importance weights log p(x, z) - log q(z|x) that every
estimate in :mod:`~pyro_vae.evaluate` is built from, the eval-mode and no-param-store contexts, and the
messenger that weights latent sites (the beta of a beta-VAE)."""

import contextlib

import torch

import pyro
import pyro.poutine as poutine
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample


def vectorize(fn, num_particles):
    """``fn(x, y, inputs)`` run inside a ``particles`` plate of size ``num_particles`` at dim -2."""
    def wrapped(x, y, inputs):
        with pyro.plate("particles", num_particles, dim=-2):
            return fn(x, y, **inputs)
    return wrapped


@contextlib.contextmanager
def eval_mode(vae):
    """Put ``vae`` in ``eval()`` mode for the block and restore its mode afterwards, even when the block
    raises (a failed evaluation must not leave a model that is being trained in eval mode)."""
    was_training = vae.training
    vae.eval()
    try:
        yield vae
    finally:
        vae.train(was_training)


@contextlib.contextmanager
def no_param_store(vae):
    """``vae``'s ``model`` and ``guide`` skip ``pyro.module`` for the block (``vae.register_params`` off, put back
    afterwards, even when the block raises).

    The parameters live in the module: a block that only runs it (an evaluation, a trace) or trains it with a
    torch optimizer holding them must not fill Pyro's global param store. A module without
    ``register_params`` (a wrapped Pyro pair) is left as it is.
    """
    saved = getattr(vae, "register_params", None)
    if saved is not None:
        vae.register_params = False
    try:
        yield vae
    finally:
        if saved is not None:
            vae.register_params = saved


def log_weight_terms(vae, x, y=None, num_particles=1, **kwargs):
    """Per-datapoint terms of the importance weights log p(x, z) - log q(z|x), for z ~ q(z|x).

    Latent sites of the model that the guide lacks and that are marked for enumeration
    (``infer={"enumerate": "parallel"}``, e.g. the cluster of a Gaussian-mixture VAE) are summed out
    exactly: Pyro's ``poutine.enum`` puts each one's values in a dimension of its own left of the particle
    dimension, and the joint log-density is log-sum-exp'ed over them, so ``log p(x, z)`` is
    ``log sum_c p(x, z, c)``. The split of that sum into its two named parts uses the exact posterior
    p(c | x, z) of the summed-out sites: ``log_likelihood`` = E_{p(c|x,z)}[log p(x | z, c)] and
    ``log_prior`` = log p(x, z) - ``log_likelihood``. Sites the guide enumerates are drawn from the guide,
    which keeps every estimate unbiased (an ELBO) or consistent (log p(x)).

    :param vae: anything with ``model(x, y)`` and ``guide(x, y)`` using a ``data`` plate at dim -1.
    :param x: images ``(N, C, H, W)`` on the model's device.
    :param y: optional labels ``(N,)``, passed to the model and guide as they are (unlike :func:`elbo`, which
        applies the module's rule on labels first).
    :param int num_particles: samples K per datapoint.
    :param kwargs: further keyword inputs of model and guide (e.g. ``covariates``).
    :returns: dict of ``(K, N)`` tensors: ``log_likelihood`` (observed sites, log p(x|z)),
        ``log_prior`` (latent sites of the model, log p(z)), ``log_posterior`` (guide sites, log q(z|x)).
    """
    shape = (num_particles, x.shape[-4])
    guide, model = vectorize(vae.guide, num_particles), vectorize(vae.model, num_particles)
    guide_trace = poutine.trace(guide).get_trace(x, y, kwargs)
    # enumeration dims start left of the particle (-2) and data (-1) dims; sites without an "enumerate"
    # mark, and every site the guide drew, pass through unchanged
    model_trace = poutine.trace(poutine.enum(poutine.replay(model, trace=guide_trace),
                                             first_available_dim=-3)).get_trace(x, y, kwargs)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    zero = x.new_zeros(shape)
    observed, latent, enumerated = [], [], False
    for name, site in model_trace.nodes.items():
        if site["type"] == "sample":
            (observed if site["is_observed"] else latent).append(site["log_prob"])
            enumerated = enumerated or _enumerated(name, site, guide_trace)
    log_posterior = sum((site["log_prob"].expand(shape) for site in guide_trace.nodes.values()
                         if site["type"] == "sample" and not site["is_observed"]), zero)
    if not enumerated:
        return {"log_likelihood": sum((t.expand(shape) for t in observed), zero),
                "log_prior": sum((t.expand(shape) for t in latent), zero), "log_posterior": log_posterior}
    full = torch.broadcast_shapes(shape, *(t.shape for t in observed + latent))
    log_obs = sum((t.expand(full) for t in observed), x.new_zeros(full))
    joint = log_obs + sum((t.expand(full) for t in latent), x.new_zeros(full))
    enum_dims = tuple(range(len(full) - 2))
    log_joint = torch.logsumexp(joint, dim=enum_dims)
    posterior = torch.exp(joint - log_joint)       # p(enumerated sites | x, z), exact
    # 0 * -inf where a configuration is impossible: it has no posterior mass, so it contributes nothing
    expected_obs = torch.where(posterior > 0, posterior * log_obs, torch.zeros_like(log_obs)).sum(enum_dims)
    return {"log_likelihood": expected_obs, "log_prior": log_joint - expected_obs, "log_posterior": log_posterior}


def _enumerated(name, site, guide_trace):
    """Whether ``poutine.enum`` enumerated this model site: by its rule, a latent site of a Pyro distribution
    marked ``infer={"enumerate": "parallel"}`` that the guide did not draw (a replayed site is left alone)."""
    return (not site["is_observed"] and site["infer"].get("enumerate") == "parallel"
            and isinstance(site["fn"], TorchDistributionMixin) and name not in guide_trace.nodes)


class LatentWeight(Messenger):
    """Scales the log-density of every latent (not observed) sample site by :attr:`value`.

    Applied from outside to both the model and the guide, it turns the ELBO into the beta-VAE objective
    E_q[log p(x|z)] - beta KL(q || p) for any model: each latent site's log p and log q are weighted alike,
    observed sites not at all, whatever sites a subclass adds.
    """

    def __init__(self, value=1.0):
        super().__init__()
        self.value = value

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"] and self.value != 1.0 \
                and not site_is_subsample(msg):   # a plate's own index site has no density
            msg["scale"] = self.value * msg["scale"]
