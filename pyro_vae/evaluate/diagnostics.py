"""Diagnostics that explain a trained VAE: which latent dimensions it uses, how much its codes say about the
images, and where the gap between log p(x) and the ELBO comes from.

* :func:`kl_per_dim` -- the KL term of the ELBO split over latent dimensions (posterior collapse shows as
  dimensions with KL near 0; :func:`~pyro_vae.evaluate.active_units` counts the others).
* :func:`mutual_information` -- I(x; z) under the aggregate posterior q(z) = (1/N) sum_n q(z|x_n).
* :func:`posterior_gaps` -- log p(x) - ELBO split into the *amortisation gap* (how much better a posterior of
  the same family fitted to each image alone does than the encoder's) and the *approximation gap* (what the
  best posterior of the family still misses), as in Cremer, Li & Duvenaud, "Inference Suboptimality in
  Variational Autoencoders" (ICML 2018).
* :func:`diagnose` -- all of them (and, with training data, the sample-quality scores of
  :mod:`pyro_vae.quality`) as one JSON-ready dict; :func:`plot` draws them.

Every number is computed from Pyro traces of the model and guide (densities from the distributions'
``log_prob``), per datapoint, in nats. The images are used as the dataset's batches deliver them, so the
binarization of ``data`` is part of what the numbers mean, as for :mod:`pyro_vae.evaluate`.
"""

import math
import os

import torch

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
from pyro.infer import Trace_ELBO
from pyro.poutine.util import site_is_subsample

from . import scores as evaluate
from ..errors import ConfigError, DataError
from ..inference.traces import eval_mode, no_param_store
from ..checks import chunks, positive_int, small_steps
from ..files import save_figure
from . import quality
from .quality import plot_posterior_predictive, report_lines

__all__ = ["kl_per_dim", "mutual_information", "refine_posterior", "posterior_gaps", "diagnose", "plot"]


# --- inputs --------------------------------------------------------------------------------------


def first_images(vae, data, limit=None):
    """The first ``limit`` images of ``data`` (all by default) as the model is scored on them, with the labels
    the model's scores use (see :mod:`pyro_vae.evaluate`): ``(x, y)``, ``x`` ``(N, C, H, W)`` on the model's
    device, ``y`` ``(N,)`` or ``None``. A dynamically binarized set is binarized once here, so every
    diagnostic of one call sees the same images.

    :raises ConfigError: for a model that generates its labels (M2), whose guide sums them out by enumeration.
    """
    role = getattr(vae, "label_role", "ignored")
    if role == "generated":
        raise ConfigError(f"the diagnostics refine and score a continuous posterior q(z|x); {type(vae).__name__} "
                          f"also infers a discrete label, which they do not handle")
    device = next(vae.parameters()).device
    count = len(data) if limit is None else min(len(data), positive_int("limit", limit))
    if count == 0:
        raise DataError("the diagnostics need at least one image; the data set is empty")
    if not hasattr(data, "batches"):   # a bare tensor of images
        return data[:count].to(device), None
    part = data.subset(torch.arange(count)) if count < len(data) else data
    x, y = next(part.batches(count, shuffle=False))
    if role != "conditioned":
        y = None
    elif y is None or bool((y < 0).any()):
        raise DataError(f"{type(vae).__name__} conditions on labels, and some of the first {count} images have none")
    return x.to(device), None if y is None else y.to(device)


def _traces(vae, x, y, num_particles):
    """Guide trace and the model trace replayed on it, with ``num_particles`` draws at dim -2."""
    with pyro.plate("particles", num_particles, dim=-2):
        guide_trace = poutine.trace(vae.guide).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x, y)
    return guide_trace, model_trace


def _latent_sites(trace):
    return [name for name, site in trace.nodes.items() if site["type"] == "sample" and not site["is_observed"]
            and not site_is_subsample(site)]


# --- KL per dimension ----------------------------------------------------------------------------


def _factors(fn):
    """The per-dimension factors of a distribution over one code ``(..., D)``: its base distribution of batch
    shape ``(..., D)`` when it is an ``Independent`` over the last dimension, else ``None``."""
    if isinstance(fn, torch.distributions.Independent) and fn.reinterpreted_batch_ndims == 1 \
            and not isinstance(fn.base_dist, torch.distributions.Independent):
        return fn.base_dist
    return None


def _mixture_marginal_log_prob(fn, z, block=2 ** 22):
    """Per-dimension marginal log-densities log p(z_d) of a mixture of diagonal Normals (each marginal is a
    1-D mixture with the same weights). :param z: ``(..., D)``. :returns: ``(..., D)``, or ``None`` when ``fn``
    is not such a mixture."""
    if not isinstance(fn, dist.MixtureSameFamily):
        return None
    components = _factors(fn.component_distribution)
    if not isinstance(components, dist.Normal):
        return None
    log_weights = torch.log_softmax(fn.mixture_distribution.logits, -1)       # (..., K)
    loc, scale = components.loc, components.scale                              # (..., K, D)
    flat = z.reshape(-1, z.shape[-1])
    out = []
    rows = max(1, block // max(1, loc.shape[-2] * loc.shape[-1]))
    for part in chunks(flat.shape[0], rows):
        # the mixture's parameters describe one mixture shared by every code (the priors here)
        comp = dist.Normal(loc.reshape(-1, *loc.shape[-2:])[0], scale.reshape(-1, *scale.shape[-2:])[0])
        lp = comp.log_prob(flat[part].unsqueeze(-2))                            # (rows, K, D)
        out.append(torch.logsumexp(lp + log_weights.reshape(-1, log_weights.shape[-1])[0][:, None], dim=-2))
    return torch.cat(out).reshape(z.shape)


def _per_dim_log_prob(fn, z):
    base = _factors(fn)
    if base is not None and tuple(base.batch_shape[-1:]) == tuple(z.shape[-1:]):
        return base.log_prob(z)
    return _mixture_marginal_log_prob(fn, z)


def _kl_elementwise(q, p, z):
    """KL(q(z_d|x) || p(z_d)) per dimension, ``(..., D)``: analytic when both factors are Normal, else the
    single-sample Monte Carlo term log q(z_d|x) - log p(z_d) at ``z``; ``None`` when either does not split
    over dimensions (a flow)."""
    qb, pb = _factors(q), _factors(p)
    if isinstance(qb, dist.Normal) and isinstance(pb, dist.Normal):
        return torch.distributions.kl_divergence(qb, pb)
    lq, lp = _per_dim_log_prob(q, z), _per_dim_log_prob(p, z)
    if lq is None or lp is None:
        return None
    return lq - lp


@torch.no_grad()
def kl_per_dim(vae, data, num_samples=10, limit=None, batch_size=250):
    r"""The KL term of the ELBO per latent dimension, averaged over images:
    E_x E_q [ KL(q(z_d | x, parents) || p(z_d | parents)) ] for every latent site and dimension d.

    Analytic for Normal factors (the default q and prior, and both layers of
    :class:`~pyro_vae.extended.HierarchicalVAE`, whose parents z2 are drawn from the guide); a Monte Carlo
    average over ``num_samples`` draws otherwise. For a factorised prior the values sum to the ELBO's KL
    term. For a mixture prior (:class:`~pyro_vae.priors.VampPrior`, mixture of Gaussians) the prior's
    dimensions are dependent, so p(z_d) is its marginal (a 1-D mixture) and the values do not sum to the KL
    term (their sum omits the prior's total correlation); they still show which dimensions carry
    information. A flow (IAF posterior, flow prior) does not split over dimensions: that site is ``None``.

    :param data: an :class:`~pyro_vae.data.ImageDataset` (or images tensor ``(N, C, H, W)``).
    :param int num_samples: draws from q per image (only for what is not analytic).
    :param int limit: use the first ``limit`` images only.
    :returns: dict latent site -> tensor ``(D,)`` in nats, in dimension order (``None`` for a flow site).
    """
    x_all, y_all = first_images(vae, data, limit)
    num_samples = positive_int("num_samples", num_samples)
    sums, unsplit = {}, set()
    with eval_mode(vae), no_param_store(vae):
        for part in chunks(x_all.shape[0], batch_size):
            y = None if y_all is None else y_all[part]
            guide_trace, model_trace = _traces(vae, x_all[part], y, num_samples)
            for name in _latent_sites(guide_trace):
                kl = _kl_elementwise(guide_trace.nodes[name]["fn"], model_trace.nodes[name]["fn"],
                                     guide_trace.nodes[name]["value"])
                if kl is None:
                    unsplit.add(name)
                    continue
                total = kl.expand(guide_trace.nodes[name]["value"].shape).reshape(-1, kl.shape[-1]).sum(0)
                sums[name] = sums.get(name, 0) + total / num_samples
    count = x_all.shape[0]
    out = {name: (sums[name] / count).cpu() for name in sums}
    out.update({name: None for name in unsplit})
    return out


# --- mutual information --------------------------------------------------------------------------


@torch.no_grad()
def mutual_information(vae, data, limit=1000, num_samples=1, chunk=100, site=None):
    r"""I(x; z) under the aggregate posterior, by the standard minibatch estimator (Hoffman & Johnson 2016,
    "ELBO surgery"; the form of He et al. 2019, "Lagging inference networks")::

        I ~= 1/N sum_i [ log q(z_i|x_i) - log (1/N sum_j q(z_i|x_j)) ],   z_i ~ q(z|x_i),

    over the first ``limit`` images x_1..x_N taken as the batch. It is exact in expectation for the mutual
    information of q(x, z) = q(z|x) Uniform(x_1..x_N), the empirical data distribution; for the population
    I(x; z) it is the InfoNCE lower bound (Poole et al. 2019): never above log N, biased low when I(x; z)
    approaches log N (log 1000 = 6.9 nats), and the bias shrinks as N grows. A posterior that ignores x
    gives 0; the KL term of the ELBO is I(x; z) plus KL(q(z) || p(z)) (ELBO surgery), so the rest of the KL
    is the mismatch between the aggregate posterior and the prior.

    :param int num_samples: draws z_i per image, averaged.
    :param int chunk: codes z_i scored against all N posteriors at a time (memory ``chunk * N * D``). For a flow
        posterior (IAF) each of the N^2 scores inverts the flow, ``latent_dim`` network passes per flow: minutes
        for N = 1000 on a CPU.
    :param str site: latent site (default the model's ``code_site``, z; z1 for the hierarchical VAE), whose
        guide distribution must depend on x only.
    :returns: float, nats.
    """
    x, y = first_images(vae, data, limit)
    site = site or getattr(vae, "code_site", "z")
    count = x.shape[0]
    total = 0.0
    # a flow's inversion can overflow for a code far from another image's posterior: its density there is
    # taken as 0 (the argument check would refuse the overflowed values first)
    with eval_mode(vae), no_param_store(vae), pyro.validation_enabled(False):
        for _ in range(positive_int("num_samples", num_samples)):
            trace = poutine.trace(vae.guide).get_trace(x, y)
            if site not in trace.nodes:
                raise ConfigError(f"the guide has no latent site {site!r}; pass site= one of {_latent_sites(trace)}")
            q, z = trace.nodes[site]["fn"], trace.nodes[site]["value"]        # batch (N,), z (N, D)
            own = q.log_prob(z)
            for part in chunks(count, chunk):
                # every z_i of the chunk against all N posteriors: (c, N, D) -> (c, N) of log q(z_i | x_j), expanded
                # in full because a conditional flow broadcasts its context only over leading dimensions
                codes = z[part].unsqueeze(-2).expand(part.stop - part.start, count, z.shape[-1])
                cross = q.log_prob(codes)
                cross = torch.where(torch.isfinite(cross), cross, torch.full_like(cross, -math.inf))
                rows = torch.arange(part.stop - part.start, device=cross.device)
                cross[rows, rows + part.start] = own[part]   # each code's own posterior, scored without inversion
                aggregate = torch.logsumexp(cross, dim=-1) - math.log(count)
                total += (own[part] - aggregate).sum().item()
    return total / (count * num_samples)


# --- amortisation and approximation gaps ---------------------------------------------------------


class _LocalPosterior:
    """While active, the encoder's output for the images ``x`` is replaced by free per-image parameters
    ``(loc, exp(log_scale))``: the guide becomes a local guide of the same family (the same posterior module)
    initialised wherever the parameters were set. Other inputs of the encoder (a VampPrior's pseudo-inputs)
    are left alone: only a call on this very tensor is replaced."""

    def __init__(self, encoder, x, loc, log_scale):
        self.encoder, self.x, self.loc, self.log_scale, self.handle = encoder, x, loc, log_scale, None

    def _hook(self, module, inputs, output):
        if inputs and inputs[0] is self.x:
            return self.loc, self.log_scale.exp()
        return output

    def __enter__(self):
        self.handle = self.encoder.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _encoder_output(vae, x, y):
    """What the guide's encoder returns for ``x``: ``(loc, scale)``, each ``(N, latent_dim)``."""
    seen = []

    def record(module, inputs, output):
        if inputs and inputs[0] is x:
            seen.append(output)

    handle = vae.encoder.register_forward_hook(record)
    try:
        with torch.no_grad():
            vae.guide(x, y)
    finally:
        handle.remove()
    if not seen or not (isinstance(seen[0], tuple) and len(seen[0]) == 2):
        raise ConfigError(f"{type(vae).__name__}'s guide does not call its encoder on the images as "
                          f"encoder(x) -> (loc, scale); the posterior cannot be refined per image")
    return seen[0][0].detach(), seen[0][1].detach()


@torch.no_grad()
def _elbo_per_image(vae, x, y, num_samples, chunk=50):
    """ELBO per image ``(N,)``, the mean of ``num_samples`` draws of log p(x, z) - log q(z|x)."""
    total = torch.zeros(x.shape[0], device=x.device)
    done = 0
    while done < num_samples:
        k = min(chunk, num_samples - done)
        terms = evaluate.log_weight_terms(vae, x, y, k)
        total += (terms["log_likelihood"] + terms["log_prior"] - terms["log_posterior"]).sum(0)
        done += k
    return total / num_samples


def refine_posterior(vae, x, y=None, steps=300, lr=0.02, num_particles=8, elbo_samples=100):
    """Fit a posterior of the model's own family to each image alone, starting from the encoder's output.

    The encoder's output ``(loc, scale)`` for each image becomes a free parameter (``scale`` through its
    log), optimised by ``steps`` of SVI (``Trace_ELBO`` with ``num_particles`` vectorized draws, torch Adam
    from ``lr`` with a cosine decay to 0) with the model's weights fixed. For the default diagonal Normal q
    this is the free-form Gaussian family;
    for an IAF posterior the flows' weights are shared and fixed, and the per-image inputs of the flows move
    (a sub-family of per-image IAFs); for the hierarchical VAE q(z1|x) is refined and q(z2|z1) keeps its
    network.

    :param x: images ``(N, C, H, W)`` on the model's device; ``y`` labels for a conditional model.
    :returns: dict of ``(N,)`` tensors: ``elbo_encoder`` and ``elbo_refined`` (each a mean of
        ``elbo_samples`` fresh draws), and the refined ``loc``, ``scale`` ``(N, latent_dim)``.
    """
    steps, num_particles = positive_int("steps", steps), positive_int("num_particles", num_particles)
    weights = [p for p in vae.parameters() if p.requires_grad]
    with eval_mode(vae), no_param_store(vae):
        loc0, scale0 = _encoder_output(vae, x, y)
        before = _elbo_per_image(vae, x, y, elbo_samples)
        loc = loc0.clone().requires_grad_(True)
        log_scale = scale0.log().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([loc, log_scale], lr=lr)
        # the step size decays to 0 so that the last steps average out the gradient noise instead of
        # leaving the parameters jittering around the optimum
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        objective = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
        for p in weights:   # the model is fixed: no gradients into its weights
            p.requires_grad_(False)
        try:
            with _LocalPosterior(vae.encoder, x, loc, log_scale), small_steps(x.device):
                with pyro.validation_enabled(False):
                    for _ in range(steps):
                        optimizer.zero_grad(set_to_none=True)
                        objective.differentiable_loss(vae.model, vae.guide, x, y).backward()
                        optimizer.step()
                        schedule.step()
                after = _elbo_per_image(vae, x, y, elbo_samples)
        finally:
            for p in weights:
                p.requires_grad_(True)
    return {"elbo_encoder": before, "elbo_refined": after, "loc": loc.detach(), "scale": log_scale.detach().exp()}


def posterior_gaps(vae, data, limit=100, num_samples=1000, steps=300, lr=0.02, num_particles=8, elbo_samples=100,
                   batch_size=100):
    r"""log p(x) - ELBO(encoder), split in two (Cremer et al. 2018):

    * ``amortization_gap`` = ELBO(refined) - ELBO(encoder): what the encoder loses by predicting q for every
      image at once instead of fitting it to each (:func:`refine_posterior`). Large: a bigger or longer-trained
      encoder, or refining at test time, helps; the prior and decoder are not to blame.
    * ``approximation_gap`` = log p(x) - ELBO(refined): the KL from the best posterior of the family to the
      true posterior. Large: a richer family (an IAF guide) or a tighter objective (IWAE) helps.

    log p(x) is importance-sampled with ``num_samples`` draws from the encoder's q (as in
    :func:`~pyro_vae.evaluate.log_likelihood`): a lower bound, so the approximation gap is slightly
    under-stated, and can come out slightly negative from Monte Carlo noise when it is near zero.
    Refinement is the costly part (``limit * steps * num_particles`` decoder passes, forward and backward),
    so it runs on the first ``limit`` images only.

    :returns: dict of floats (nats per image, means over the images): ``log_likelihood``, ``elbo_encoder``,
        ``elbo_refined``, ``amortization_gap``, ``approximation_gap``, plus the settings.
    """
    x_all, y_all = first_images(vae, data, limit)
    sums = {"log_likelihood": 0.0, "elbo_encoder": 0.0, "elbo_refined": 0.0}
    for part in chunks(x_all.shape[0], batch_size):
        x, y = x_all[part], None if y_all is None else y_all[part]
        refined = refine_posterior(vae, x, y, steps=steps, lr=lr, num_particles=num_particles,
                                   elbo_samples=elbo_samples)
        scored = x if y is None else _labelled(x, y)
        log_px = evaluate.log_likelihood(vae, scored, num_samples=num_samples, reduce=False)
        sums["log_likelihood"] += log_px.sum().item()
        sums["elbo_encoder"] += refined["elbo_encoder"].sum().item()
        sums["elbo_refined"] += refined["elbo_refined"].sum().item()
    count = x_all.shape[0]
    out = {k: v / count for k, v in sums.items()}
    out["amortization_gap"] = out["elbo_refined"] - out["elbo_encoder"]
    out["approximation_gap"] = out["log_likelihood"] - out["elbo_refined"]
    out.update({"num_images": count, "num_samples": num_samples, "refine_steps": steps, "refine_lr": lr,
                "refine_particles": num_particles, "elbo_samples": elbo_samples})
    return out


def _labelled(x, y):
    from ..data import from_tensor   # only for conditional models
    return from_tensor(x.cpu(), labels=y.cpu()).to(x.device)


# --- everything at once ----------------------------------------------------------------------------


#: the settings of :func:`diagnose` (what ``pyro-vae evaluate --diagnostics`` uses); about a minute for the
#: default model on mnist5k on two CPU cores (benchmarks/README.md)
DEFAULTS = {"mi_images": 1000, "gap_images": 100, "refine_steps": 300, "refine_particles": 8, "elbo_samples": 100}


def diagnose(vae, data, train=None, num_samples=1000, cache=None, classifier_settings=None, **settings):
    """The diagnostics of a model on test ``data``, as JSON-ready dicts.

    :param train: the training set; with labels, the sample-quality scores and posterior predictive checks of
        :mod:`pyro_vae.quality` are computed with a classifier trained on it (``None`` skips them).
    :param int num_samples: K of the importance-sampled log p(x) inside the gaps.
    :param cache: file in which the classifier is cached (see :func:`pyro_vae.quality.classifier_for`).
    :param dict classifier_settings: overrides of :data:`pyro_vae.quality.CLASSIFIER`.
    :param settings: overrides of :data:`DEFAULTS`.
    :returns: ``{"diagnostics": {...}, "sample_quality": {...} or None, "posterior_predictive": {...} or None}``;
        ``diagnostics`` holds ``kl_per_dim`` (site -> values sorted from largest, or ``None`` for a flow),
        ``kl_per_dim_order`` (the dimensions in that order), ``active_units``, ``mutual_information``,
        ``amortization_gap``, ``approximation_gap`` and the numbers and settings behind them.
    """
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown diagnostics setting(s) {', '.join(sorted(unknown))}; known: {', '.join(DEFAULTS)}")
    s = {**DEFAULTS, **settings}
    kl = kl_per_dim(vae, data)
    order = {name: None if v is None else torch.argsort(v, descending=True).tolist() for name, v in kl.items()}
    result = {
        "kl_per_dim": {name: None if v is None else v[order[name]].tolist() for name, v in kl.items()},
        "kl_per_dim_order": order,
        "active_units": evaluate.active_units(vae, data),
        "mutual_information": mutual_information(vae, data, limit=s["mi_images"]),
        "mutual_information_images": min(len(data), s["mi_images"]),
    }
    gaps = posterior_gaps(vae, data, limit=s["gap_images"], num_samples=num_samples, steps=s["refine_steps"],
                          num_particles=s["refine_particles"], elbo_samples=s["elbo_samples"])
    result.update(gaps)
    result["binarize"] = getattr(data, "binarize", "none")
    out = {"diagnostics": result, "sample_quality": None, "posterior_predictive": None}
    if train is not None and getattr(train, "labels", None) is not None:
        classifier, info = quality.classifier_for(train, data, cache=cache, **(classifier_settings or {}))
        out["sample_quality"] = quality.sample_quality(vae, data, train, classifier, info)
        out["posterior_predictive"] = quality.posterior_predictive(vae, data, classifier)
    return out


def plot(diagnostics, path=None):
    """Two panels: the KL per latent dimension, sorted (a bar per dimension, one colour per latent site), and the
    ELBO of the encoder, the ELBO of the refined posterior and log p(x) with the two gaps between them.

    :param dict diagnostics: the ``"diagnostics"`` entry of :func:`diagnose`.
    :returns: a matplotlib ``Figure`` (written to ``path`` as PNG when given).
    """
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 3.6))
    ax_kl, ax_gap = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
    sites = [(name, values) for name, values in diagnostics["kl_per_dim"].items() if values is not None]
    offset = 0
    for name, values in sites:
        xs = range(offset, offset + len(values))
        ax_kl.bar(xs, values, width=0.85, label=f"{name} ({len(values)} dims)")
        offset += len(values) + 2
    if sites:
        ax_kl.legend(fontsize=8)
    ax_kl.set_xlabel("latent dimension, sorted by KL")
    ax_kl.set_ylabel("KL(q(z_d|x) || p(z_d)), nats")
    ax_kl.set_title(f"KL per dimension: {diagnostics['active_units']} active units, "
                    f"I(x;z) = {diagnostics['mutual_information']:.2f} nats", fontsize=9)
    levels = [("ELBO\n(encoder)", diagnostics["elbo_encoder"]), ("ELBO\n(refined)", diagnostics["elbo_refined"]),
              ("log p(x)", diagnostics["log_likelihood"])]
    values = [v for _, v in levels]
    ax_gap.plot(range(3), values, "o-", color="k")
    for i, (label, value) in enumerate(levels):
        ax_gap.annotate(f"{value:.2f}", (i, value), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax_gap.set_xticks(range(3))
    ax_gap.set_xticklabels([label for label, _ in levels], fontsize=8)
    low, high = min(values), max(values)
    pad = max(0.5, 0.25 * (high - low))
    ax_gap.set_ylim(low - pad, high + pad)
    ax_gap.set_ylabel("nats per image")
    ax_gap.set_title(f"amortisation gap {diagnostics['amortization_gap']:.2f}, "
                     f"approximation gap {diagnostics['approximation_gap']:.2f}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def summary_lines(result):
    """The diagnostics (and sample-quality scores) of :func:`diagnose` or ``report(..., diagnostics=True)`` as
    printable lines."""
    d = result["diagnostics"]
    kl = "; ".join(f"{name}: " + ("a flow, not split" if values is None else
                                  " ".join(f"{v:.2f}" for v in values[:8]) + (" ..." if len(values) > 8 else ""))
                   for name, values in d["kl_per_dim"].items())
    lines = [f"KL per dimension, largest first ({kl}); active units {d['active_units']}; I(x;z) "
             f"{d['mutual_information']:.2f} nats over {d['mutual_information_images']} images (at most "
             f"log {d['mutual_information_images']} = {math.log(d['mutual_information_images']):.2f})",
             f"on {d['num_images']} images: log p(x) {d['log_likelihood']:.2f} (K={d['num_samples']}) = ELBO(encoder) "
             f"{d['elbo_encoder']:.2f} + amortisation gap {d['amortization_gap']:.2f} + approximation gap "
             f"{d['approximation_gap']:.2f} (ELBO(refined) {d['elbo_refined']:.2f} after {d['refine_steps']} SVI "
             f"steps per image)"]
    if result.get("sample_quality") is not None:
        lines += report_lines(result["sample_quality"], result.get("posterior_predictive"))
    return lines


def write_pictures(result, folder):
    """Write ``diagnostics.png`` (:func:`plot`) and, with posterior predictive checks, ``posterior-predictive.png``
    into ``folder``; the per-image values behind the second are then dropped from ``result`` (they are not for
    metrics.json). :returns: the paths written."""
    paths = [os.path.join(folder, "diagnostics.png")]
    plot(result["diagnostics"], paths[0])
    checks = result.get("posterior_predictive")
    if checks is not None:
        paths.append(os.path.join(folder, "posterior-predictive.png"))
        plot_posterior_predictive(checks, paths[1])
        checks.pop("values", None)
    return paths
