"""``Trace_ELBO``'s estimator summed on the device from one particle's pair of traces: the arithmetic of the
sync-free step (:mod:`~pyro_vae.inference.replay`), with each site's weight as an input, and which ELBOs it is.

Pyro's public API only; the traces themselves come from Pyro's own machinery, in
:mod:`~pyro_vae.inference.replay`.
"""

import numbers

from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import JitTrace_ELBO, Trace_ELBO

from ..errors import ConfigError

#: ELBOs whose estimator the sync-free step computes (``JitTrace_ELBO`` is the same estimator as ``Trace_ELBO``)
SUPPORTED_ELBOS = (Trace_ELBO, JitTrace_ELBO)


def check_elbo(elbo):
    """Raise :class:`~pyro_vae.errors.ConfigError` unless ``elbo`` is an ELBO whose estimator is ``Trace_ELBO``'s."""
    # exact types: TraceMeanField_ELBO subclasses Trace_ELBO but computes another estimator (analytic KL)
    if type(elbo) not in SUPPORTED_ELBOS:
        raise ConfigError(f"the sync-free step computes Trace_ELBO's estimator, not {type(elbo).__name__}'s; "
                          f"use Trace_ELBO (any num_particles), or train {type(elbo).__name__} without compile")


def _refuse_score_function(name, site):
    raise ConfigError(f"the sync-free step needs reparameterised latent sites, but the guide's site {name!r} "
                      f"({type(site['fn']).__name__}) is not; train without compile "
                      f"(discrete latents: TraceEnum_ELBO)")


def particle_elbo(model_trace, guide_trace, weights=None, sites=None):
    """The ELBO of one particle as a tensor: sum of log p over model sites minus sum of log q over guide sites.

    Without ``weights`` every site keeps the scale and mask Pyro applied (``log_prob_sum``, and the
    entropy part of the guide's ``score_parts``), exactly ``Trace_ELBO``'s surrogate. With ``weights`` (a
    ``(num_sites,)`` tensor, model sites first, then guide sites, in trace order) each site's unscaled
    log-density is scaled by its entry instead: by the entry alone where the site's own scale is a number
    (the graph then takes the whole scale as an input), by the site's tensor scale times the entry
    otherwise; the mask is applied as Pyro applies it. ``sites``, a list, receives ``(role, name, site)``.

    :param model_trace: the model's trace replayed against the guide's, with ``compute_log_prob`` done.
    :param guide_trace: the guide's trace, with ``compute_score_parts`` done.
    :returns: a 0-dim tensor (``0.0`` for traces without sample sites), differentiable.
    :raises ConfigError: a guide site with a score-function term (no ``rsample``).
    """
    elbo = 0.0
    index = 0
    for role, trace, sign in (("model", model_trace, 1.0), ("guide", guide_trace, -1.0)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            if role == "guide":
                _, score_function, entropy = site["score_parts"]
                # a score-function term needs Pyro's log_r bookkeeping and a host read per step; refuse it
                if not is_identically_zero(score_function):
                    _refuse_score_function(name, site)
                term = entropy
            else:
                term = site["log_prob"]
            if weights is not None:
                scale = site["scale"]
                weight = weights[index] if isinstance(scale, numbers.Number) else scale * weights[index]
                term = scale_and_mask(site["unscaled_log_prob"], weight, site["mask"])
            elbo = elbo + sign * term.sum()
            if sites is not None:
                sites.append((role, name, site))
            index += 1
    return elbo
