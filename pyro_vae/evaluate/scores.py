"""Evaluation: ELBO, importance-sampled log p(x), active units — all per datapoint, in nats.

Every estimate is computed from Pyro traces of the model and guide, so it works for any model/guide pair
(extended models included) without hand-written densities. Extra samples live in an outer
``particles`` plate at dim -2, so a whole ``(K, N)`` block of log-weights comes from one vectorized pass.

Numbers are per datapoint in nats; :func:`bits_per_dim` converts. The binarization of the data you pass
(none / static / dynamic) is part of what the number means: report it alongside.

**Labels.** What a score bounds depends on the role the labels play in the model, and this module is the
one place that decides it, so :func:`elbo`, :func:`log_likelihood`, :func:`report` and the test ELBO of
:func:`~pyro_vae.fit` (which calls :func:`elbo`) agree:

* a model that *conditions* on labels (:class:`~pyro_vae.extended.ConditionalVAE`) is given the dataset's
  labels and scores log p(x|y);
* a model whose generative process *draws* the label (``label_role = "generated"``, e.g.
  :class:`~pyro_vae.extended.M2`, p(x, y, z)) is scored with its labels summed out: the number bounds
  log p(x) whether or not the test set carries labels, so it compares with a plain VAE's. Passing the
  labels would bound log p(x, y) = log p(x) + log p(y|x) instead, a different and smaller number (by up
  to log K for K classes). The labels still serve :func:`~pyro_vae.extended.accuracy` and
  :func:`active_units`;
* any other model ignores them.

:func:`log_weight_terms` is the low-level exception: it scores exactly the ``y`` it is given.
"""

import math

import torch
from tqdm.auto import tqdm

import pyro.poutine as poutine

from ..errors import DataError
from ..models.contract import check_model, device_of, first_batch
from ..models.vae import uses_labels
from ..checks import positive_int
from ..inference.traces import eval_mode, log_weight_terms

#: (samples x datapoints) pairs per vectorized pass; bounds memory at roughly
#: ``MAX_PAIRS * (pixels + hidden units) * 4`` bytes.
MAX_PAIRS = 2 ** 15


def _batches(data, batch_size, device):
    """``(x, y, kwargs)`` per batch on ``device``: ``kwargs`` holds the dataset's covariates, if it has any."""
    if not hasattr(data, "batches"):   # a bare tensor of images
        for start in range(0, len(data), batch_size):
            yield data[start:start + batch_size].to(device), None, {}
        return
    covariates = getattr(data, "covariates", None) is not None
    for batch in data.batches(batch_size, shuffle=False, **({"with_covariates": True} if covariates else {})):
        x, y = batch[0].to(device), None if batch[1] is None else batch[1].to(device)
        yield x, y, ({"covariates": batch[2].to(device)} if covariates else {})


def _scored_labels(vae, y):
    """The labels a generative score passes to ``vae``: none when the model draws them itself (see the
    module docstring), so that its score is of log p(x)."""
    return None if getattr(vae, "label_role", "ignored") == "generated" else y


@torch.no_grad()
def quantity(vae, data):
    """What the scores of ``vae`` on ``data`` estimate, e.g. ``"log p(x)"``, ``"log p(x|y)"`` (a model that
    conditions on labels) or ``"log p(x, y)"`` (a model of one's own that observes the labels as data).

    Read from the model's own trace on one image: the observed sites are what the score is a density of;
    labels the model conditions on, and covariates, are what it is conditioned on.
    """
    x, y, kwargs = next(_batches(data, 1, device_of(vae)))
    with eval_mode(vae):
        trace = poutine.trace(vae.model).get_trace(x, _scored_labels(vae, y), **kwargs)
    observed = [name for name, site in trace.nodes.items() if site["type"] == "sample" and site["is_observed"]]
    observed.sort(key=lambda name: name != "x")   # the image first, the rest in the model's order
    given = (["y"] if getattr(vae, "label_role", "ignored") == "conditioned" else []) + list(kwargs)
    return f"log p({', '.join(observed)}{'|' + ', '.join(given) if given else ''})"


def check_data(vae, data, role="evaluation"):
    """Raise :class:`DataError` if ``data`` cannot be fed to ``vae``: empty, wrong image shape, outside the
    likelihood's support, or missing what the model needs (e.g. labels). Bare tensors are not checked."""
    if data is None or not (hasattr(data, "images") and hasattr(vae, "likelihood")):
        return
    if len(data) == 0:
        raise DataError(f"the {role} set is empty; check the dataset or the data folder")
    if tuple(data.image_shape) != tuple(vae.image_shape):
        raise DataError(f"{role} images have shape {tuple(data.image_shape)} but the model was built for "
                        f"{tuple(vae.image_shape)}; build the VAE with image_shape={tuple(data.image_shape)}")
    vae.likelihood.check_data(data)
    if hasattr(vae, "check_data"):   # e.g. a conditional model that needs a label for every image
        vae.check_data(data)


def check(vae, data):
    """:func:`~pyro_vae.contract.check_model` on the first images of ``data`` as the scores see them (in eval
    mode, with the labels :func:`elbo` would pass), so a model that breaks the contract is refused with the
    reason instead of scored wrongly. :returns: the :class:`~pyro_vae.contract.Contract`."""
    x, y, kwargs = first_batch(data, device_of(vae))
    with eval_mode(vae):
        return check_model(vae, x, _scored_labels(vae, y), **kwargs)


@torch.no_grad()
def elbo(vae, data, num_samples=1, batch_size=500):
    """Monte Carlo ELBO and its two parts, averaged over datapoints.

    :param data: an :class:`~pyro_vae.data.ImageDataset` (or images tensor ``(N, C, H, W)``).
    :param int num_samples: z samples per datapoint.
    :returns: dict with ``elbo`` = ``reconstruction`` - ``kl`` (nats per datapoint), where
        ``reconstruction`` = E_q[log p(x|z)] and ``kl`` = E_q[log q(z|x) - log p(z)]. For a model with
        labels, see the module docstring for which bound it is (log p(x|y) or log p(x)).
    """
    check_data(vae, data)
    check(vae, data)
    sums = {"reconstruction": 0.0, "kl": 0.0}
    count = 0
    with eval_mode(vae):
        for x, y, kwargs in _batches(data, batch_size, device_of(vae)):
            terms = log_weight_terms(vae, x, _scored_labels(vae, y), num_samples, **kwargs)
            sums["reconstruction"] += terms["log_likelihood"].mean(0).sum().item()
            sums["kl"] += (terms["log_posterior"] - terms["log_prior"]).mean(0).sum().item()
            count += x.shape[0]
    out = {k: v / count for k, v in sums.items()}
    out["elbo"] = out["reconstruction"] - out["kl"]
    return out


@torch.no_grad()
def log_likelihood(vae, data, num_samples=1000, batch_size=None, reduce=True, max_pairs=MAX_PAIRS, progress=False):
    """Importance-sampled estimate of log p(x) (Burda et al. 2016), with q(z|x) as proposal.

    log p(x) ~= logsumexp_k [log p(x, z_k) - log q(z_k|x)] - log K,  z_k ~ q(z|x).

    It is a stochastic lower bound that tightens as K grows and is never below the ELBO in expectation.
    Samples and datapoints are processed in chunks of at most ``max_pairs`` (sample, datapoint) pairs, so
    K=5000 on 10,000 images runs in bounded memory; it runs on the model's device.

    :param data: an :class:`~pyro_vae.data.ImageDataset` (or images tensor ``(N, C, H, W)``).
    :param int num_samples: K.
    :param int batch_size: datapoints per chunk (default: as many as fit with at least 100 samples).
    :param bool reduce: return the mean over datapoints (float) instead of the ``(N,)`` tensor.
    :param bool progress: show a progress bar over the images (long evaluations take minutes).

    For a model with labels, the module docstring says whether this is log p(x|y) or log p(x)
    (:func:`quantity` says it in words).
    """
    check_data(vae, data)
    num_samples = positive_int("num_samples", num_samples)
    check(vae, data)
    batch_size = batch_size or max(1, max_pairs // min(num_samples, 100))
    sample_chunk = max(1, min(num_samples, max_pairs // batch_size))
    results = []
    bar = tqdm(total=len(data), unit="image", desc=f"log p(x), K={num_samples}", disable=not progress,
               dynamic_ncols=True, leave=False)
    with eval_mode(vae), bar:
        for x, y, kwargs in _batches(data, batch_size, device_of(vae)):
            y = _scored_labels(vae, y)
            running = x.new_full((x.shape[0],), -math.inf)
            done = 0
            while done < num_samples:
                k = min(sample_chunk, num_samples - done)
                terms = log_weight_terms(vae, x, y, k, **kwargs)
                log_w = terms["log_likelihood"] + terms["log_prior"] - terms["log_posterior"]
                running = torch.logaddexp(running, torch.logsumexp(log_w, dim=0))
                done += k
            results.append((running - math.log(num_samples)).cpu())
            bar.update(x.shape[0])
    per_datapoint = torch.cat(results)
    return per_datapoint.mean().item() if reduce else per_datapoint


@torch.no_grad()
def active_units(vae, data, threshold=0.01, batch_size=1000):
    """Number of latent dimensions whose posterior mean varies across the data (Burda et al. 2016):
    unit u is active when Cov_x(E_q[z_u | x]) > ``threshold``.

    A model that uses labels (its ``label_role`` is not ``"ignored"``: conditional models, M2) is given each image's
    label from ``data``, so the means are those of q(z|x, y) at the true label; where there is none (a
    bare tensor, a dataset without labels, or -1 for an unlabelled image) the model's ``encode`` fills it
    in (M2 from its classifier q(y|x)).

    :param data: an :class:`~pyro_vae.data.ImageDataset` (or images tensor ``(N, C, H, W)``).
    """
    with_labels = uses_labels(vae)
    means = []
    with eval_mode(vae):
        for x, y, _ in _batches(data, batch_size, device_of(vae)):
            posterior = vae.encode(x, y) if with_labels and y is not None else vae.encode(x)
            means.append(posterior[0].cpu())
    means = torch.cat(means)
    # one image has no spread to measure (the unbiased variance of one value is undefined, and torch warns)
    return int((means.var(dim=0, correction=1 if len(means) > 1 else 0) > threshold).sum())


def bits_per_dim(nats, image_shape):
    """Convert nats per image into bits per pixel (dimension)."""
    return nats / (math.prod(image_shape) * math.log(2))


@torch.no_grad()
def accuracy(model, dataset, batch_size=1000):
    """Fraction of the labelled images of ``dataset`` whose label ``model.classify`` predicts.

    :param model: anything with ``classify(x) -> labels`` (:class:`~pyro_vae.extended.M2`,
        :class:`~pyro_vae.extended.ConditionalVAE`).
    :param dataset: an :class:`~pyro_vae.data.ImageDataset`; images labelled -1 are skipped.
    :rtype: float
    """
    if dataset.labels is None:
        raise DataError(f"accuracy needs labels but {dataset.name!r} has none")
    device = device_of(model)
    correct = total = 0
    with eval_mode(model):
        for x, y in dataset.batches(batch_size, shuffle=False):
            keep = y >= 0
            if keep.any():
                predicted = model.classify(x[keep].to(device)).cpu()
                correct += int((predicted == y[keep].cpu()).sum())
                total += int(keep.sum())
    if total == 0:
        raise DataError(f"{dataset.name!r} has no labelled images to score")
    return correct / total
