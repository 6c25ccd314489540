"""Gradient estimators of the importance-weighted bound (IWAE, Burda et al. 2016) for reparameterised guides.

With z_k = g(eps_k; phi) ~ q(z|x), log weights log w_k = log p(x, z_k) - log q(z_k|x) and normalised weights
w~_k = w_k / sum_j w_j, the bound is L_K = log (1/K) sum_k w_k. Its plain reparameterised gradient with
respect to the guide's parameters phi becomes noisier relative to its size as K grows (Rainforth et al.
2018), partly through the score term d log q / d phi, whose expectation is zero. Two estimators drop it:

* ``"stl"``, sticking the landing (Roeder, Wu & Duvenaud 2017): sum_k w~_k d/dphi [log p(x, z_k) -
  log q_{stop(phi)}(z_k|x)], log q with its parameters held fixed so that phi enters only through z_k. At
  the exact posterior every log weight is log p(x), so the guide's gradient is exactly 0.
* ``"dreg"``, doubly reparameterised (Tucker, Lawson, Gu & Maddison 2019): sum_k w~_k^2 d/dphi [log p(x, z_k)
  - log q_{stop(phi)}(z_k|x)]: unbiased for the IWAE gradient, with a signal-to-noise ratio that grows with K.

The model's parameters get the ordinary IWAE gradient sum_k w~_k d/dtheta log p(x, z_k) in all three.
:class:`IWAE` is a Pyro ELBO, usable as ``fit(vae, train, loss=IWAE(num_particles=5, gradient="dreg"))`` or
``pyro-vae train --objective iwae --gradient dreg``.
"""

import math

import torch

import pyro
import pyro.poutine as poutine
from pyro.infer.elbo import ELBO
from pyro.poutine.util import site_is_subsample

from ..errors import ConfigError
from ..checks import positive_int

__all__ = ["IWAE", "GRADIENTS"]

#: the estimators of the guide's gradient :class:`IWAE` offers
GRADIENTS = ("iwae", "stl", "dreg")


def _detached(fn):
    """The same distribution with its parameters detached (its density as a function of the value only)."""
    if isinstance(fn, torch.distributions.Independent):
        return type(fn)(_detached(fn.base_dist), fn.reinterpreted_batch_ndims)
    params = {name: getattr(fn, name) for name in fn.arg_constraints if name in vars(fn)}
    if isinstance(fn, torch.distributions.TransformedDistribution) or not params:
        raise ConfigError(f"the stl and dreg gradients rebuild each guide distribution with its parameters held "
                          f"fixed, which {type(fn).__name__} does not allow; use a Normal guide or gradient='iwae'")
    return type(fn)(**{name: value.detach() for name, value in params.items()})


class IWAE(ELBO):
    """The importance-weighted bound L_K, with the guide's gradient estimated by ``gradient``:
    ``"iwae"`` (plain reparameterised), ``"stl"`` or ``"dreg"`` (see the module docstring).

    The K particles are vectorized in a ``particles`` plate at dim -2 (the ``data`` plate is at -1). The loss
    is -sum_n L_K(x_n), the same value as ``RenyiELBO(alpha=0)``'s; only the gradient differs. ``stl`` and
    ``dreg`` need reparameterised guide sites whose distributions depend on the data but not on other latent
    sites of the guide (the default VAE and its conditional variant; not the hierarchical VAE's q(z2|z1)), and
    distributions that can be rebuilt from their parameters (Normal, not a flow such as IAF); anything else is
    refused with a one-line error.

    :param int num_particles: K.
    :param str gradient: ``"iwae"``, ``"stl"`` or ``"dreg"``.
    """

    def __init__(self, num_particles=5, gradient="dreg"):
        if gradient not in GRADIENTS:
            raise ConfigError(f"unknown IWAE gradient {gradient!r:.40}; choose one of {', '.join(GRADIENTS)}")
        super().__init__(num_particles=positive_int("num_particles", num_particles), max_plate_nesting=2,
                         vectorize_particles=True)
        self.gradient = gradient
        self._checked = False

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("IWAE computes its traces in _log_weights")   # abstract in Pyro's ELBO

    def _log_weights(self, model, guide, args, kwargs):
        """``(bound, surrogate)``, each ``(N,)``: the IWAE bound per datapoint and the function whose gradient is
        the chosen estimator's (``surrogate`` is ``None`` for the plain gradient, whose surrogate is the bound)."""
        K = self.num_particles
        with pyro.plate("particles", K, dim=-2):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        latent = [name for name, site in guide_trace.nodes.items()
                  if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)]
        views, log_q_fixed = {}, 0.0
        if self.gradient != "iwae":
            for name in latent:
                site = guide_trace.nodes[name]
                if not site["fn"].has_rsample:
                    raise ConfigError(f"the {self.gradient} gradient needs a reparameterised guide, but site "
                                      f"{name!r} is {type(site['fn']).__name__}; use gradient='iwae'")
                # the model and log q see a view of z: its gradient is scaled once per particle (dreg) without
                # touching the guide's own use of z
                views[name] = site["value"].view_as(site["value"])
            if not self._checked and torch.is_grad_enabled():
                self._check_mean_field(guide_trace, latent)
            for name in latent:
                site = guide_trace.nodes[name]
                log_q_fixed = log_q_fixed + _scaled(site, _detached(site["fn"]).log_prob(views[name]))
                site["value"] = views[name]
        with pyro.plate("particles", K, dim=-2):
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        log_p = 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] == "sample" and not site_is_subsample(site):
                log_p = log_p + _scaled(site, site["fn"].log_prob(site["value"]))
        log_q = 0.0
        for name in latent:
            site = guide_trace.nodes[name]
            log_q = log_q + _scaled(site, site["fn"].log_prob(site["value"]))
        log_w = log_p - log_q
        if not (torch.is_tensor(log_w) and log_w.dim() == 2 and log_w.shape[0] == K):
            raise ConfigError(f"IWAE needs per-datapoint log weights of shape (K, N) with the data plate at dim -1, "
                              f"got {tuple(getattr(log_w, 'shape', ()))}")
        bound = torch.logsumexp(log_w, dim=0) - math.log(K)
        if self.gradient == "iwae":
            return bound, None
        log_w_fixed = log_p - log_q_fixed
        weights = torch.softmax(log_w_fixed.detach(), dim=0)                      # w~_k, (K, N)
        surrogate = (weights * log_w_fixed).sum(0)
        if self.gradient == "dreg" and torch.is_grad_enabled():
            for view in views.values():
                extra = view.dim() - weights.dim()
                scale = weights.reshape(weights.shape + (1,) * extra)
                view.register_hook(lambda grad, scale=scale: grad * scale)
        return bound, surrogate

    def _check_mean_field(self, guide_trace, latent):
        values = [guide_trace.nodes[name]["value"] for name in latent if guide_trace.nodes[name]["value"].requires_grad]
        for name in latent:
            fn = guide_trace.nodes[name]["fn"]
            while isinstance(fn, torch.distributions.Independent):
                fn = fn.base_dist
            params = [getattr(fn, k) for k in fn.arg_constraints if k in vars(fn) and getattr(fn, k).requires_grad]
            others = [v for other, v in zip(latent, values) if other != name]
            if params and others:
                grads = torch.autograd.grad(sum(p.sum() for p in params), others, allow_unused=True, retain_graph=True)
                if any(g is not None for g in grads):
                    raise ConfigError(f"the {self.gradient} gradient needs guide sites that depend on the data only, "
                                      f"but {name!r} depends on another latent site (a hierarchical guide); use "
                                      f"gradient='iwae'")
        self._checked = True

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """-sum_n L_K(x_n), whose gradient is the chosen estimator's. :returns: a scalar tensor."""
        bound, surrogate = self._log_weights(model, guide, args, kwargs)
        if surrogate is None:
            return -bound.sum()
        return -(bound.detach() + surrogate - surrogate.detach()).sum()

    def loss(self, model, guide, *args, **kwargs):
        """-sum_n L_K(x_n) as a float."""
        with torch.no_grad():
            bound, _ = self._log_weights(model, guide, args, kwargs)
        return -bound.sum().item()

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()


def _scaled(site, log_prob):
    scale = site.get("scale", 1.0)
    return log_prob if isinstance(scale, (int, float)) and scale == 1.0 else log_prob * scale
