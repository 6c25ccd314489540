"""The whole report of a trained model at once: ELBO and its parts, log p(x), bits/dim, active units, and on
request the diagnostics and sample-quality scores of :mod:`~pyro_vae.evaluate.diagnostics`."""

from .diagnostics import diagnose
from .scores import accuracy, active_units, bits_per_dim, elbo, log_likelihood, quantity


def report(vae, data, num_samples=1000, elbo_samples=1, progress=False, diagnostics=False, train=None,
           classifier_cache=None, diagnostics_settings=None):
    """Everything at once: ELBO with its parts, log p(x) with ``num_samples`` samples, bits/dim, active units.

    :param bool progress: a progress bar over the importance-sampled log-likelihood, the slow part.
    :param bool diagnostics: also the entries of :func:`pyro_vae.diagnostics.diagnose`: ``diagnostics`` (KL per
        dimension, I(x; z), amortisation and approximation gaps) and, given the labelled ``train`` set,
        ``sample_quality`` and ``posterior_predictive`` (with the feature classifier cached in
        ``classifier_cache``); ``diagnostics_settings`` overrides :data:`pyro_vae.diagnostics.DEFAULTS`.
    :returns: dict of floats (nats per datapoint) plus the settings they were computed with, the dataset's
        name, ``quantity``, what ``log_likelihood`` estimates in words (see :func:`quantity`), and for a model
        that generates labels (M2) the ``accuracy`` of its classifier on labelled data.
    """
    result = elbo(vae, data, num_samples=elbo_samples)
    result["log_likelihood"] = log_likelihood(vae, data, num_samples=num_samples, progress=progress)
    result["quantity"] = quantity(vae, data)
    result["dataset"] = getattr(data, "name", "tensor")
    if getattr(vae, "label_role", None) == "generated" and getattr(data, "labels", None) is not None:
        result["accuracy"] = accuracy(vae, data)   # the classifier q(y|x) is part of such a model
    result["nll_bits_per_dim"] = bits_per_dim(-result["log_likelihood"], vae.image_shape)
    result["active_units"] = active_units(vae, data)
    result["num_samples"] = num_samples
    result["num_datapoints"] = len(data)
    result["binarize"] = getattr(data, "binarize", "none")
    if diagnostics:
        result.update(diagnose(vae, data, train=train, num_samples=num_samples,
                                                  cache=classifier_cache, **(diagnostics_settings or {})))
    return result
