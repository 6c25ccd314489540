"""Sample quality without a download: a classifier of our own, its features, a Fréchet distance and
precision/recall, and posterior predictive checks.

Inception-based FID needs weights from the network and measures ImageNet features that say little about
28x28 digits. Here a small classifier (:class:`~pyro_vae.extended.MLPClassifier`, two hidden layers) is trained
on the model's own training set; its penultimate layer gives the features in which model samples and test
images are compared:

* :func:`frechet_distance` -- the Fréchet distance between Gaussians fitted to the two feature sets (the
  formula of FID, Heusel et al. 2017);
* :func:`precision_recall` -- improved precision and recall (Kynkäänniemi et al., NeurIPS 2019): the share of
  samples inside the k-nearest-neighbour balls of the test features, and the share of test features inside
  those of the samples.

The numbers are comparable only between models scored on the same dataset with the same classifier (same
training data, architecture, seed and number of samples) -- never with published Inception FIDs. Two
references are printed beside them: the classifier's test accuracy (features of a poor classifier say little),
and the *floor*: the same scores for as many training images as samples against the test images, which is
what a model that reproduced the data distribution would get.

:func:`posterior_predictive` compares simple statistics of the images (mean intensity, edge count, the
classifier's class frequencies) between samples and test images.
"""

import math
import os

import torch
from torch import nn

from ..errors import CheckpointError, DataError
from ..inference.traces import eval_mode, no_param_store
from ..checks import chunks, forked_rng, positive_int, small_steps
from ..files import atomic_write, save_figure
from ..parts.networks import MLPClassifier

__all__ = ["train_classifier", "classifier_for", "features", "frechet_distance", "precision_recall",
           "model_samples", "sample_quality", "posterior_predictive", "plot_posterior_predictive"]

#: the classifier's settings; part of the cache key, so a change retrains it
CLASSIFIER = {"hidden": [256, 128], "epochs": 10, "min_steps": 1000, "batch_size": 128, "lr": 1e-3, "seed": 0}


def _images(data, limit=None, device="cpu"):
    """The first ``limit`` images of ``data`` as its batches deliver them (binarized as the scores see them),
    and their labels (or ``None``)."""
    count = len(data) if limit is None else min(len(data), limit)
    part = data.subset(torch.arange(count)) if count < len(data) else data
    x, y = next(part.batches(count, shuffle=False))
    return x.to(device), None if y is None else y.to(device)


def _num_classes(*datasets):
    labelled = [d.labels for d in datasets if d is not None and d.labels is not None]
    return 1 + max(int(labels.max()) for labels in labelled)


def _build(config):
    return MLPClassifier(tuple(config["image_shape"]), config["num_classes"], hidden=tuple(config["hidden"]))


def train_classifier(train, test, progress=False, **settings):
    """Train the feature classifier on ``train`` (its labels; images as its batches deliver them, so a
    dynamically binarized set gives fresh binarizations every epoch) and measure its accuracy on ``test``.

    :param settings: overrides of :data:`CLASSIFIER` (``epochs`` of the training set, at least ``min_steps`` steps).
    :returns: ``(classifier, info)``; ``info`` is the JSON-ready config that rebuilds it (``config``) and its
        ``test_accuracy``.
    """
    if train.labels is None or bool((train.labels < 0).all()):
        raise DataError(f"the sample-quality classifier trains on labels, and {train.name!r} has none")
    s = {**CLASSIFIER, **settings}
    config = {"image_shape": list(train.image_shape), "num_classes": _num_classes(train, test),
              "dataset": train.name, "binarize": train.binarize, "num_train": len(train), **s}
    generator = torch.Generator().manual_seed(s["seed"])
    with forked_rng("cpu"), small_steps("cpu"):
        torch.manual_seed(s["seed"])
        classifier = _build(config)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=s["lr"])
        # small training sets get more epochs: at least min_steps steps in all
        epochs = max(positive_int("classifier epochs", s["epochs"]),
                     math.ceil(s["min_steps"] / train.num_batches(s["batch_size"])))
        for _ in range(epochs):
            for x, y in train.to("cpu").batches(s["batch_size"], generator=generator):
                keep = y >= 0
                loss = nn.functional.cross_entropy(classifier(x[keep]), y[keep])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return classifier, {"config": config, "test_accuracy": accuracy(classifier, test)}


@torch.no_grad()
def accuracy(classifier, data, batch_size=1000):
    """Fraction of the labelled images of ``data`` that ``classifier`` (logits) labels right."""
    correct = total = 0
    with eval_mode(classifier):
        for x, y in data.to("cpu").batches(batch_size, shuffle=False):
            keep = y >= 0
            correct += int((classifier(x[keep]).argmax(-1) == y[keep]).sum())
            total += int(keep.sum())
    return correct / max(1, total)


def classifier_for(train, test, cache=None, **settings):
    """The feature classifier of ``train``, read from ``cache`` when it holds one trained with the same
    settings on the same data, else trained (:func:`train_classifier`) and saved there.

    The cache file holds the classifier's ``state_dict``, its config and test accuracy, and is read with
    ``torch.load(weights_only=True)`` (no pickled objects). One file per dataset, e.g. in the run folder.

    :param cache: path of the cache file, or ``None`` to train without caching (about 5 s for mnist5k).
    :returns: ``(classifier, info)`` as for :func:`train_classifier`.
    """
    wanted = {"image_shape": list(train.image_shape), "num_classes": _num_classes(train, test),
              "dataset": train.name, "binarize": train.binarize, "num_train": len(train),
              **CLASSIFIER, **settings}
    if cache is not None and os.path.exists(cache):
        try:
            saved = torch.load(cache, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{cache} is not a readable classifier cache ({type(e).__name__}); delete it and "
                                  f"it is trained again") from None
        if isinstance(saved, dict) and saved.get("config") == wanted:
            classifier = _build(wanted)
            classifier.load_state_dict(saved["state_dict"])
            return classifier.eval(), {"config": wanted, "test_accuracy": saved["test_accuracy"], "cached": True}
    classifier, info = train_classifier(train, test, **settings)
    if cache is not None:
        state = {"state_dict": classifier.state_dict(), "config": info["config"],
                 "test_accuracy": info["test_accuracy"]}
        atomic_write(cache, lambda f: torch.save(state, f))
    return classifier.eval(), {**info, "cached": False}


@torch.no_grad()
def features(classifier, images, batch_size=1000):
    """Penultimate-layer features of ``classifier`` (the activations before its last linear layer).
    :param images: ``(N, C, H, W)``. :returns: ``(N, F)`` float64 on the CPU."""
    body = classifier.net[:-1]
    with eval_mode(classifier):
        out = [body(images[part].cpu().flatten(-3)) for part in chunks(images.shape[0], batch_size)]
    return torch.cat(out).double()


@torch.no_grad()
def classify(classifier, images, batch_size=1000):
    """The classifier's labels of ``images`` ``(N, C, H, W)``: ``(N,)`` int64."""
    with eval_mode(classifier):
        return torch.cat([classifier(images[part].cpu()).argmax(-1) for part in chunks(images.shape[0], batch_size)])


def frechet_distance(a, b):
    r"""Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017)::

        ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})

    The trace of the matrix square root is computed as the sum of the square roots of the eigenvalues of
    S_a^{1/2} S_b S_a^{1/2}, which is symmetric positive semi-definite (the same eigenvalues as S_a S_b), in
    float64. It grows with the sampling noise of the two fits, so compare scores of equal sample sizes.

    :param a: features ``(N, F)``; :param b: features ``(M, F)``.
    :rtype: float
    """
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise DataError(f"frechet_distance needs two feature sets (N, F) and (M, F) with N, M >= 2, got "
                        f"{tuple(a.shape)} and {tuple(b.shape)}")
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = (vectors * values.clamp(min=0).sqrt()) @ vectors.T
    middle = root_a @ cov_b @ root_a
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return float((mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_root)


def _kth_neighbour_radius(points, k, chunk=1000):
    """Distance from each point to its k-th nearest neighbour among the others. :returns: ``(N,)``."""
    radii = []
    for part in chunks(points.shape[0], chunk):
        distances = torch.cdist(points[part], points)
        radii.append(distances.kthvalue(k + 1, dim=1).values)   # the point itself is at distance 0
    return torch.cat(radii)


def _coverage(queries, centres, radii, chunk=1000):
    """Share of ``queries`` within distance ``radii[j]`` of some centre j."""
    inside = 0
    for part in chunks(queries.shape[0], chunk):
        inside += int((torch.cdist(queries[part], centres) <= radii).any(dim=1).sum())
    return inside / queries.shape[0]


def precision_recall(real, fake, k=3):
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    Each set's manifold is the union of balls around its points, each of radius the distance to the point's
    k-th nearest neighbour in its own set. Precision is the share of ``fake`` points inside the manifold of
    ``real`` (are samples realistic?), recall the share of ``real`` points inside the manifold of ``fake``
    (is the data's variety covered?).

    :param real: features ``(N, F)``; :param fake: features ``(M, F)``; :param int k: neighbours (the paper's 3).
    :returns: ``(precision, recall)``, floats in [0, 1].
    """
    real, fake = torch.as_tensor(real, dtype=torch.float64), torch.as_tensor(fake, dtype=torch.float64)
    k = positive_int("k", k)
    if min(real.shape[0], fake.shape[0]) <= k:
        raise DataError(f"precision_recall with k={k} needs more than {k} points in each set, got "
                        f"{real.shape[0]} and {fake.shape[0]}")
    precision = _coverage(fake, real, _kth_neighbour_radius(real, k))
    recall = _coverage(real, fake, _kth_neighbour_radius(fake, k))
    return precision, recall


@torch.no_grad()
def model_samples(vae, num_samples, kind="sample", seed=0, batch_size=1000):
    """Images drawn from the model, on the CPU: ``kind="sample"`` draws x ~ p(x|z) (binary images for a
    Bernoulli likelihood: what the model's distribution, scored by log p(x), generates), ``"mean"`` the mean
    images E[x|z]. A model that conditions on labels gets uniformly drawn classes.

    :returns: ``(num_samples, C, H, W)``.
    """
    if kind not in ("sample", "mean"):
        raise DataError(f"kind must be 'sample' or 'mean', got {kind!r:.40}")
    out = []
    with forked_rng("cpu"), eval_mode(vae):
        torch.manual_seed(seed)
        for part in chunks(positive_int("num_samples", num_samples), batch_size):
            n = part.stop - part.start
            y = None
            if vae.label_role == "conditioned":
                y = torch.randint(vae.num_classes, (n,), device=vae.device)
            with no_param_store(vae):
                fn = vae.trace_prior(n, y).nodes[vae.obs_site]["fn"]
            out.append((fn.sample() if kind == "sample" else fn.mean).cpu())
    return torch.cat(out)


def sample_quality(vae, test, train, classifier, info=None, num_samples=None, k=3, kind="sample", seed=0):
    """Fréchet distance and precision/recall of model samples against ``test``, in ``classifier``'s features,
    with the floor (as many ``train`` images as samples, scored the same way) beside them.

    :param int num_samples: samples drawn (default: as many as test images, at most 10,000).
    :returns: JSON-ready dict: ``fd``, ``precision``, ``recall``, ``floor_fd``, ``floor_precision``,
        ``floor_recall``, ``classifier_accuracy`` (on ``test``), ``num_samples``, ``k``, ``kind``, ``note``.
    """
    n = num_samples or min(len(test), 10000)
    test_images, _ = _images(test)
    real = features(classifier, test_images)
    fake = features(classifier, model_samples(vae, n, kind=kind, seed=seed))
    with forked_rng("cpu"):   # a dynamically binarized training set: the same draw every call
        torch.manual_seed(seed)
        floor_images, _ = _images(train, limit=n)
    floor = features(classifier, floor_images)
    precision, recall = precision_recall(real, fake, k)
    floor_precision, floor_recall = precision_recall(real, floor, k)
    accuracy_ = info["test_accuracy"] if info is not None else accuracy(classifier, test)
    return {"fd": frechet_distance(real, fake), "precision": precision, "recall": recall,
            "floor_fd": frechet_distance(real, floor), "floor_precision": floor_precision,
            "floor_recall": floor_recall, "classifier_accuracy": accuracy_, "num_samples": n,
            "num_test": real.shape[0], "num_floor": floor.shape[0], "k": k, "kind": kind,
            "features": f"penultimate layer ({real.shape[1]}) of an MLP classifier trained on {train.name}",
            "note": "comparable only within one dataset and classifier; not Inception FID"}


# --- posterior predictive checks ------------------------------------------------------------------


def image_statistics(images):
    """Per-image statistics: ``mean_intensity`` (mean pixel value) and ``edges`` (neighbouring pixel pairs,
    horizontal and vertical, on either side of 0.5: the length of the strokes' outlines, which isolated noisy
    pixels inflate and blur deflates). :param images: ``(N, C, H, W)``. :returns: dict of ``(N,)`` tensors."""
    on = images > 0.5
    vertical = (on[..., 1:, :] != on[..., :-1, :]).flatten(1).sum(1)
    edges = vertical + (on[..., :, 1:] != on[..., :, :-1]).flatten(1).sum(1)
    return {"mean_intensity": images.flatten(1).mean(1), "edges": edges.double()}


def posterior_predictive(vae, test, classifier=None, num_samples=None, kind="sample", seed=0):
    """Posterior predictive checks: statistics of model samples against the same statistics of test images.

    A statistic whose sample mean sits several test standard deviations away, or whose spread differs a lot,
    is something the model gets wrong regardless of its log-likelihood (e.g. blurry means have many grey
    pixels and few edges; a collapsed model produces too few of some digits).

    :returns: JSON-ready dict: per statistic ``{"test_mean", "test_sd", "samples_mean", "samples_sd",
        "standardized_difference"}``, and with a classifier ``class_frequencies`` (``test``, ``samples``, and
        their ``total_variation`` distance, in [0, 1]); the arrays behind the picture are in ``values``.
    """
    n = num_samples or min(len(test), 10000)
    test_images, _ = _images(test)
    samples = model_samples(vae, n, kind=kind, seed=seed)
    stats_test, stats_samples = image_statistics(test_images.cpu()), image_statistics(samples)
    out = {"num_samples": n, "num_test": test_images.shape[0], "kind": kind, "statistics": {}}
    for name in stats_test:
        t, s = stats_test[name].double(), stats_samples[name].double()
        out["statistics"][name] = {"test_mean": t.mean().item(), "test_sd": t.std().item(),
                                   "samples_mean": s.mean().item(), "samples_sd": s.std().item(),
                                   "standardized_difference": ((s.mean() - t.mean()) / t.std().clamp(min=1e-12)).item()}
    values = {"test": {k: v.tolist() for k, v in stats_test.items()},
              "samples": {k: v.tolist() for k, v in stats_samples.items()}}
    if classifier is not None:
        num_classes = classifier.net[-1].out_features
        freq_test = torch.bincount(classify(classifier, test_images), minlength=num_classes).double()
        freq_test = freq_test / test_images.shape[0]
        freq_samples = torch.bincount(classify(classifier, samples), minlength=num_classes).double() / n
        out["class_frequencies"] = {"test": freq_test.tolist(), "samples": freq_samples.tolist(),
                                    "total_variation": 0.5 * (freq_test - freq_samples).abs().sum().item()}
    out["values"] = values
    return out


def plot_posterior_predictive(checks, path=None):
    """Histograms of the statistics of :func:`posterior_predictive` (test images vs samples) and, with a
    classifier, the class frequencies side by side. :returns: a matplotlib ``Figure``."""
    from matplotlib.figure import Figure

    names = list(checks["statistics"])
    panels = len(names) + ("class_frequencies" in checks)
    fig = Figure(figsize=(3.2 * panels, 3.0))
    axes = fig.subplots(1, panels)
    for ax, name in zip(axes, names):
        t, s = checks["values"]["test"][name], checks["values"]["samples"][name]
        low, high = min(min(t), min(s)), max(max(t), max(s))
        bins = torch.linspace(low, high if high > low else low + 1, 31).tolist()
        ax.hist(t, bins=bins, alpha=0.55, density=True, label="test")
        ax.hist(s, bins=bins, alpha=0.55, density=True, label="samples")
        d = checks["statistics"][name]["standardized_difference"]
        ax.set_title(f"{name.replace('_', ' ')} (diff {d:+.2f} sd)", fontsize=9)
        ax.legend(fontsize=7)
    if "class_frequencies" in checks:
        ax = axes[-1]
        freq = checks["class_frequencies"]
        xs = torch.arange(len(freq["test"])).double()
        ax.bar((xs - 0.2).tolist(), freq["test"], width=0.4, label="test")
        ax.bar((xs + 0.2).tolist(), freq["samples"], width=0.4, label="samples")
        ax.set_title(f"classes (TV {freq['total_variation']:.3f})", fontsize=9)
        ax.set_xticks(xs.tolist())
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def report_lines(quality, checks=None):
    """The sample-quality scores (and checks) as printable lines."""
    q = quality
    lines = [f"sample quality ({q['num_samples']} {q['kind']}s vs {q['num_test']} test images, {q['features']}; "
             f"{q['note']}): FD {q['fd']:.2f} (floor {q['floor_fd']:.2f}: training vs test images), precision "
             f"{q['precision']:.3f} (floor {q['floor_precision']:.3f}), recall {q['recall']:.3f} (floor "
             f"{q['floor_recall']:.3f}); classifier test accuracy {q['classifier_accuracy']:.4f}"]
    if checks is not None:
        parts = [f"{name} {s['samples_mean']:.3g} vs {s['test_mean']:.3g} ({s['standardized_difference']:+.2f} sd)"
                 for name, s in checks["statistics"].items()]
        if "class_frequencies" in checks:
            parts.append(f"class frequencies TV {checks['class_frequencies']['total_variation']:.3f}")
        lines.append("posterior predictive (samples vs test): " + "; ".join(parts))
    return lines
