"""Extensions of the VAE's graphical model: conditional, semi-supervised (M2) and hierarchical.

Every class here is a :class:`~pyro_vae.VAE` subclass built from the same parts (prior, likelihood,
posterior family, MLP/conv networks), trained by the same :func:`~pyro_vae.fit` and scored by the same
:mod:`~pyro_vae.evaluate` (its estimators read whatever sites the model and guide contain)::

    cvae = ConditionalVAE(image_shape=(1, 28, 28), latent_dim=16, num_classes=10)
    pv.fit(cvae, train, epochs=20)                       # every training image needs a label
    sevens = cvae.sample(8, y=7)

    m2 = M2(num_classes=10)
    few = keep_labels(train, 100)                        # all but 100 labels become -1 (unlabelled)
    pv.fit(m2, few, epochs=20, loss=TraceEnum_ELBO(max_plate_nesting=1))
    accuracy(m2, test)

    hvae = HierarchicalVAE(latent_dims=(32, 16))         # z2 -> z1 -> x

Site names follow the package's convention: ``x``, ``y``, ``z`` (``z1``, ``z2`` in the hierarchy), one
``data`` plate at dim -1 over the images of a batch. Labels are int64 class indices ``(N,)``; ``-1``
marks an image without a label (only :class:`M2` accepts those).

Each class rebuilds itself from its config (``from_config``), so ``build_vae(model.config)`` and
:func:`pyro_vae.load_run` rebuild it.
"""

import contextlib
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine

from . import evaluate as evaluate_module
from . import likelihoods as likelihoods_module
from . import networks as networks_module
from . import priors as priors_module
from .errors import ConfigError, DataError
from .model import VAE, check_part, rebuild_part
from .util import (MAX_CLASSES, MAX_LATENT_DIM, MAX_WIDTH, image_shape as image_shape_of, parameter_budget, positive,
                   positive_int)

__all__ = ["LabelledMLPEncoder", "MLPClassifier", "GaussianMLP", "ConditionalVAE", "M2", "GMVAE", "HierarchicalVAE",
           "keep_labels", "without_labels", "accuracy"]


def _widths(name, hidden):
    widths = [positive_int(f"{name} width", h, MAX_WIDTH) for h in hidden]
    if not widths:
        raise ConfigError(f"{name} needs at least one hidden layer, got {list(hidden)!r}")
    return widths


def _concat(a, b):
    """``[a, b]`` along the last dim, after broadcasting the leading (sample, enumeration, batch) dims."""
    batch = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(batch + a.shape[-1:]), b.expand(batch + b.shape[-1:])], dim=-1)


# --- networks ------------------------------------------------------------------------------------


class LabelledMLPEncoder(nn.Module):
    """Network of q(z|x, y): an MLP on the pixels of ``x`` concatenated with the one-hot label ``y``.

    :param tuple image_shape: ``(C, H, W)`` of one image.
    :param int latent_dim: size of z.
    :param int num_classes: size of the one-hot label.
    :param tuple hidden: widths of the hidden layers (at least one).
    """

    def __init__(self, image_shape, latent_dim, num_classes, hidden=(512, 256)):
        super().__init__()
        self.image_shape = image_shape_of(image_shape)
        self.hidden = _widths("LabelledMLPEncoder", hidden)
        latent_dim = positive_int("latent_dim", latent_dim, MAX_LATENT_DIM)
        # The first layer on [x, y] is W [x; y] = W_x x + W_y y. Keeping the two halves apart means that
        # when y is enumerated over K classes (M2), the image half is computed once instead of K times.
        num_classes = positive_int("num_classes", num_classes, MAX_CLASSES)
        parameter_budget("LabelledMLPEncoder", (math.prod(self.image_shape) + 1 + num_classes) * self.hidden[0])
        self.x_in = nn.Linear(math.prod(self.image_shape), self.hidden[0])
        self.y_in = nn.Linear(num_classes, self.hidden[0], bias=False)
        self.rest = nn.Sequential(nn.Softplus(), networks_module._mlp([*self.hidden, 2 * latent_dim], nn.Softplus,
                                                                      "LabelledMLPEncoder"))

    def config(self):
        return {"hidden": self.hidden}

    def forward(self, x, y):
        """:param x: images ``(..., C, H, W)``. :param y: one-hot labels ``(..., num_classes)``, leading dims
        broadcastable with those of ``x``. :returns: ``(loc, scale)``, each ``(broadcast..., latent_dim)``."""
        loc, raw_scale = self.rest(self.x_in(x.flatten(-3)) + self.y_in(y)).chunk(2, dim=-1)
        return loc, positive(raw_scale)


class MLPClassifier(nn.Module):
    """Network of q(y|x): an MLP from pixels to class logits.

    :param tuple image_shape: ``(C, H, W)`` of one image.
    :param int num_classes: number of classes K.
    :param tuple hidden: widths of the hidden layers.
    """

    def __init__(self, image_shape, num_classes, hidden=(512,)):
        super().__init__()
        self.hidden = _widths("MLPClassifier", hidden)
        self.net = networks_module._mlp([math.prod(image_shape_of(image_shape)), *self.hidden,
                                         positive_int("num_classes", num_classes, MAX_CLASSES)], nn.Softplus,
                                         "MLPClassifier")

    def forward(self, x):
        """:param x: images ``(..., C, H, W)``. :returns: logits ``(..., num_classes)``."""
        return self.net(x.flatten(-3))


class GaussianMLP(nn.Module):
    """An MLP mapping a code ``(..., in_dim)`` to the ``(loc, scale)`` of a diagonal Normal over ``out_dim``.

    Used for the conditionals p(z1|z2) and q(z2|z1) of :class:`HierarchicalVAE`.
    """

    def __init__(self, in_dim, out_dim, hidden=(256,)):
        super().__init__()
        self.net = networks_module._mlp([positive_int("in_dim", in_dim, MAX_LATENT_DIM), *_widths("GaussianMLP", hidden),
                                         2 * positive_int("out_dim", out_dim, MAX_LATENT_DIM)], nn.Softplus,
                                         "GaussianMLP")

    def forward(self, h):
        """:param h: ``(..., in_dim)``. :returns: ``(loc, scale)``, each ``(..., out_dim)``, scale > 0."""
        loc, raw_scale = self.net(h).chunk(2, dim=-1)
        return loc, positive(raw_scale)


# --- models with labels --------------------------------------------------------------------------


def _refuse_vamp(prior, who):
    vamp = getattr(priors_module, "VampPrior", None)
    if vamp is not None and isinstance(prior, vamp):
        raise ConfigError(f"VampPrior mixes the encoder's posteriors at pseudo-images, but a {who}'s encoder "
                          f"also needs the label; use another prior (standard, learned-normal, mog, flow)")


class ConditionalVAE(VAE):
    r"""Conditional VAE (Sohn et al. 2015): images generated given an observed label.

    Generative model (``model``), for each image n in the ``data`` plate, given its label y_n::

        z_n ~ prior()                                            event shape (latent_dim,)
        x_n ~ likelihood(decoder([z_n, onehot(y_n)]))            event shape (C, H, W)

    Recognition model (``guide``)::

        z_n ~ posterior(encoder(x_n, onehot(y_n)))               event shape (latent_dim,)

    With the label given, z only has to encode what the label does not say (the style of a digit), so
    :meth:`sample` with a chosen ``y`` draws that digit. There is no site for y: it is conditioned on,
    not modelled, so :mod:`~pyro_vae.evaluate` reports log p(x|y), and every batch needs labels.

    :param tuple image_shape: ``(C, H, W)`` of one image.
    :param int latent_dim: size of z.
    :param int num_classes: number of classes K; labels are ``0 .. K-1``.
    :param encoder: module ``(x (..., C, H, W), onehot (..., K)) -> (loc, scale)``; default
        :class:`LabelledMLPEncoder`.
    :param decoder: module ``(..., latent_dim + K) -> (..., P*C, H, W)``, i.e. any decoder of
        :mod:`~pyro_vae.networks` built for ``latent_dim + num_classes``; default MLP.
    :param prior: p(z); any prior but :class:`~pyro_vae.priors.VampPrior` (which needs an encoder of
        images alone).
    :param likelihood: p(x|z, y); default Bernoulli.
    :param posterior: family of q(z|x, y); default diagonal Normal.
    :param tuple hidden: hidden widths of the default encoder (the decoder mirrors them).
    """

    label_role = "conditioned"

    def __init__(self, image_shape=(1, 28, 28), latent_dim=32, num_classes=10, encoder=None, decoder=None,
                 prior=None, likelihood=None, posterior=None, hidden=(512, 256)):
        latent_dim = positive_int("latent_dim", latent_dim, MAX_LATENT_DIM)
        num_classes = positive_int("num_classes", num_classes, MAX_CLASSES)
        _refuse_vamp(prior, type(self).__name__)
        likelihood = likelihood if likelihood is not None else likelihoods_module.Bernoulli()
        if encoder is None:
            encoder = LabelledMLPEncoder(image_shape, latent_dim, num_classes, hidden)
        if decoder is None:
            decoder = networks_module.MLPDecoder(image_shape, latent_dim + num_classes, tuple(reversed(hidden)),
                                                 likelihood.params_per_pixel)
        super().__init__(image_shape=image_shape, latent_dim=latent_dim, encoder=encoder, decoder=decoder,
                         prior=prior, likelihood=likelihood, posterior=posterior, hidden=hidden)
        self.num_classes = num_classes

    # --- the probabilistic program -------------------------------------------------------------

    def model(self, x, y=None, covariates=None):
        """p(x, z | y) = p(z) p(x|z, y). :param x: images ``(N, C, H, W)``. :param y: labels ``(N,)``."""
        y = self._require_labels(y)
        self.register()
        with pyro.plate("data", x.shape[-4]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(_concat(z, self._onehot(y)))), obs=x)

    def guide(self, x, y=None, covariates=None):
        """q(z|x, y). :param x: images ``(N, C, H, W)``. :param y: labels ``(N,)``."""
        y = self._require_labels(y)
        self.register()
        with pyro.plate("data", x.shape[-4]):
            pyro.sample("z", self.posterior(*self.encoder(x, self._onehot(y))))

    def _require_labels(self, y):
        if y is None:
            raise DataError(f"{type(self).__name__} needs a label for every image, but the batch has none; "
                            f"train on a dataset with labels (or use VAE / M2)")
        return y

    def _onehot(self, y):
        return F.one_hot(y, self.num_classes).float()

    def check_data(self, data):
        """Raise :class:`DataError` unless every image of ``data`` has a label in ``0 .. K-1``."""
        labels = getattr(data, "labels", None)
        if labels is None:
            raise DataError(f"{type(self).__name__} needs labels but {getattr(data, 'name', 'the dataset')!r} "
                            f"has none; use a labelled dataset (or VAE / M2)")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= self.num_classes:
            raise DataError(f"{type(self).__name__} needs labels in 0..{self.num_classes - 1} but "
                            f"{data.name!r} has labels in {low}..{high}; set num_classes or fill in missing labels")

    # --- deterministic helpers for pictures and analysis ---------------------------------------

    def _labels_for(self, y, batch_shape, device):
        """``y`` as an int64 tensor broadcastable to ``batch_shape``: an int is one class for all."""
        if isinstance(y, int):
            if not 0 <= y < self.num_classes:
                raise ConfigError(f"class {y} is out of range 0..{self.num_classes - 1}")
            return torch.full(batch_shape, y, dtype=torch.int64, device=device)
        return torch.as_tensor(y, device=device)

    @torch.no_grad()
    def classify(self, x, num_samples=10):
        """Most probable class of each image under the model, by Bayes' rule with a uniform p(y):
        argmax_y log p(x|y), each term an importance-sampled estimate with ``num_samples`` samples.

        :param x: images ``(N, C, H, W)``. :returns: int64 labels ``(N,)``.
        """
        scores = []
        for c in range(self.num_classes):
            y = torch.full(x.shape[:1], c, dtype=torch.int64, device=x.device)
            terms = evaluate_module.log_weight_terms(self, x, y, num_samples)
            log_w = terms["log_likelihood"] + terms["log_prior"] - terms["log_posterior"]
            scores.append(torch.logsumexp(log_w, dim=0))
        return torch.stack(scores, dim=-1).argmax(-1)

    def _fill_labels(self, x, y):
        """``y`` with the unknown labels (``None``: all of them; entries -1, as :func:`keep_labels` marks
        them) replaced by :meth:`classify` of their images. :param x: ``(..., C, H, W)``."""
        if isinstance(y, int):
            return y   # checked by _labels_for: -1 is no class to draw
        if y is not None:
            y = torch.as_tensor(y, device=x.device)
            unknown = y < 0
            if not unknown.any():
                return y
            if y.shape == x.shape[:-3]:   # classify only the images that need it (costly for the CVAE)
                y = y.clone()
                y[unknown] = self.classify(x[unknown])
                return y
        guessed = self.classify(x.reshape((-1,) + x.shape[-3:])).reshape(x.shape[:-3])
        return guessed if y is None else torch.where(unknown, guessed, y)

    def encode(self, x, y=None):
        """Parameters of q(z|x, y). :param x: ``(..., C, H, W)``. :param y: labels broadcastable to the
        batch dims (-1 for an unknown label), an int, or ``None``; unknown labels come from :meth:`classify`.
        :returns: ``(loc, scale)``, ``(..., latent_dim)``."""
        y = self._fill_labels(x, y)
        return self.encoder(x, self._onehot(self._labels_for(y, x.shape[:-3], x.device)))

    def generate(self, z, y=None):
        """Mean image of p(x|z, y). :param z: ``(..., latent_dim)``. :param y: labels broadcastable to the
        batch dims, an int, or ``None``: then the mean of p(x|z) = sum_y p(y) p(x|z, y) under a uniform p(y).
        :returns: ``(..., C, H, W)``."""
        if y is None:
            every = torch.eye(self.num_classes, dtype=z.dtype, device=z.device)     # (K, K)
            return self.likelihood.mean(self.decoder(_concat(z.unsqueeze(-2), every))).mean(-4)
        y = self._labels_for(y, z.shape[:-1], z.device)
        return self.likelihood.mean(self.decoder(_concat(z, self._onehot(y))))

    def reconstruct(self, x, y=None):
        """Decode the posterior mean under label ``y`` (``None`` or -1: the classified label).
        :param x: ``(..., C, H, W)``. :returns: ``(..., C, H, W)``."""
        y = self._fill_labels(x, y)
        return self.generate(self.encode(x, y)[0], y)

    def sample(self, num_samples, y=None):
        """Mean images of codes z ~ p(z) for labels ``y``: an int (one digit), a tensor ``(num_samples,)``,
        or ``None`` (labels drawn uniformly). :returns: ``(num_samples, C, H, W)``."""
        device = self.device
        if y is None:
            y = torch.randint(self.num_classes, (num_samples,), device=device)
        return super().sample(num_samples, self._labels_for(y, (num_samples,), device))

    def sample_by_class(self, per_class):
        """A grid with one row per class: column j uses the same code z_j ~ p(z) in every row, so a
        column shows one style written as each digit. :returns: ``(K * per_class, C, H, W)``, row-major."""
        z = self.prior().sample((per_class,)).repeat(self.num_classes, 1)
        y = torch.arange(self.num_classes, device=z.device).repeat_interleave(per_class)
        return self.generate(z, y)

    # --- saving --------------------------------------------------------------------------------

    @property
    def config(self):
        return {**super().config, "num_classes": self.num_classes}

    @classmethod
    def _rebuild_network(cls, role, config, image_shape, latent_dim, params_per_pixel):
        # the networks take the label too: the encoder is a LabelledMLPEncoder, the decoder reads [z, onehot(y)]
        num_classes = positive_int("config num_classes", config.get("num_classes"), MAX_CLASSES)
        if role == "encoder":
            return rebuild_part(role, config.get(role), image_shape, latent_dim, num_classes,
                                classes=(LabelledMLPEncoder,))
        return super()._rebuild_network(role, config, image_shape, latent_dim + num_classes, params_per_pixel)


class M2(ConditionalVAE):
    r"""Semi-supervised VAE "M2" of Kingma, Rezende, Mohamed & Welling (2014): the label is a latent
    variable, observed for the labelled images and summed out for the others.

    Generative model (``model``), for each image n in the ``data`` plate::

        y_n ~ Categorical(uniform over K classes)                site "y" where labelled, "y_unobserved" where not
        z_n ~ prior()                                            event shape (latent_dim,)
        x_n ~ likelihood(decoder([z_n, onehot(y_n)]))            event shape (C, H, W)

    Recognition model (``guide``)::

        y_n ~ Categorical(softmax(classifier(x_n)))              only where unlabelled; enumerated
        z_n ~ posterior(encoder(x_n, onehot(y_n)))

    **Mixed batches.** A batch carries labels ``(N,)`` with ``-1`` for unlabelled images (see
    :func:`keep_labels`). All images stay in the one ``data`` plate; the label is split into two sites,
    as Pyro's ``obs_mask`` does: ``y`` (observed, masked to the labelled images) and ``y_unobserved``
    (latent, masked to the others), and the decoder sees ``where(labelled, y, y_unobserved)``. A batch
    without labels has only ``y_unobserved``; a fully labelled one only ``y``. Train with
    ``TraceEnum_ELBO(max_plate_nesting=1)``, which sums ``y_unobserved`` over its K values exactly
    (``infer={"enumerate": "parallel"}``, enumeration dim -2); other Pyro ELBOs sample it instead.

    **Classification loss.** Only unlabelled images would train q(y|x), so, as in the paper, the
    labelled ones add ``alpha * log q(y_n|x_n)`` to the objective: an observed site ``y_aux`` of the
    model under ``poutine.scale(alpha)``. It is not part of the generative model, so it is added only in
    training mode (``fit`` trains in ``train()`` mode; :mod:`~pyro_vae.evaluate` switches to ``eval()``):
    train ELBOs reported by ``fit`` include it, test ELBOs and log-likelihoods do not.

    **Scores are of log p(x).** y is a variable of this generative model (:attr:`label_role` ``"generated"``), so
    :mod:`~pyro_vae.evaluate` (and ``fit``'s test ELBO) sums it out even when the test set has labels:
    the ELBO and log-likelihood bound log p(x), comparable with a plain VAE's, not log p(x, y). The test
    labels are for :func:`accuracy`. To score log p(x, y) on purpose, call
    :func:`~pyro_vae.evaluate.log_weight_terms` with the labels.

    :param int num_classes: K; labels are ``0 .. K-1``, or -1 for "unknown".
    :param float alpha: weight of the classification term per labelled image (the paper uses
        ``0.1 * N`` for N training images; the default suits a few thousand images).
    :param classifier: module ``(..., C, H, W) -> logits (..., K)``; default :class:`MLPClassifier`.
    :param tuple classifier_hidden: its hidden widths.

    Other parameters as for :class:`ConditionalVAE`.
    """

    #: the label is drawn by the generative model, not conditioned on: scores sum it out (see :mod:`~pyro_vae.evaluate`)
    label_role = "generated"

    def __init__(self, image_shape=(1, 28, 28), latent_dim=32, num_classes=10, alpha=50.0, classifier=None,
                 classifier_hidden=(512,), encoder=None, decoder=None, prior=None, likelihood=None,
                 posterior=None, hidden=(512, 256)):
        if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha >= 0
                and math.isfinite(alpha)):
            raise ConfigError(f"alpha must be a non-negative number, got {alpha!r}")
        super().__init__(image_shape=image_shape, latent_dim=latent_dim, num_classes=num_classes, encoder=encoder,
                         decoder=decoder, prior=prior, likelihood=likelihood, posterior=posterior, hidden=hidden)
        self.alpha = float(alpha)
        if classifier is not None and not isinstance(classifier, nn.Module):
            raise ConfigError(f"classifier must be a torch.nn.Module mapping images (..., C, H, W) to logits "
                              f"(..., K), got {type(classifier).__name__}; e.g. pv.extended.MLPClassifier(image_shape, K)")
        self.classifier = classifier if classifier is not None else MLPClassifier(
            self.image_shape, self.num_classes, classifier_hidden)
        self.register_buffer("y_logits", torch.zeros(self.num_classes))   # uniform p(y)

    def _split(self, y):
        """``(labelled mask (N,), labels clamped to >= 0, which)``, which in "all", "some", "none"."""
        if y is None:
            return None, None, "none"
        labelled = y >= 0
        count = int(labelled.sum())   # one host sync: which sites exist depends on it
        if count == y.shape[0]:
            return labelled, y, "all"
        if count == 0:
            return None, None, "none"
        return labelled, y.clamp(min=0), "some"

    @staticmethod
    def _mask(mask):
        return poutine.mask(mask=mask) if mask is not None else contextlib.nullcontext()

    def model(self, x, y=None, covariates=None):
        """p(x, y, z) = p(y) p(z) p(x|y, z), y observed where ``y >= 0``.

        :param x: images ``(N, C, H, W)``. :param y: labels ``(N,)`` with -1 for unlabelled, or ``None``.
        """
        self.register()
        labelled, labels, which = self._split(y)
        some = which == "some"
        p_y = dist.Categorical(logits=self.y_logits)
        with pyro.plate("data", x.shape[-4]):
            if which != "none":
                with self._mask(labelled if some else None):
                    pyro.sample("y", p_y, obs=labels)
            if which != "all":
                with self._mask(~labelled if some else None):
                    missing = pyro.sample("y_unobserved", p_y)
            y_all = labels if which == "all" else missing if which == "none" else torch.where(labelled, labels,
                                                                                              missing)
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(_concat(z, self._onehot(y_all)))), obs=x)
            if self.training and self.alpha > 0 and which != "none":
                with poutine.scale(scale=self.alpha), self._mask(labelled if some else None):
                    pyro.sample("y_aux", dist.Categorical(logits=self.classifier(x)), obs=labels)

    def guide(self, x, y=None, covariates=None):
        """q(y|x) (where unlabelled) q(z|x, y). Arguments as for :meth:`model`."""
        self.register()
        labelled, labels, which = self._split(y)
        with pyro.plate("data", x.shape[-4]):
            if which != "all":
                logits = self.classifier(x)
                if which == "some":
                    # The site is masked out for labelled images; giving them constant uniform weights
                    # makes enumeration average their K z-samples and keeps the classifier's gradient free
                    # of them (the labelled images train it through y_aux).
                    logits = torch.where(labelled.unsqueeze(-1), torch.zeros_like(logits), logits)
                with self._mask(~labelled if which == "some" else None):
                    missing = pyro.sample("y_unobserved", dist.Categorical(logits=logits),
                                          infer={"enumerate": "parallel"})
            y_all = labels if which == "all" else missing if which == "none" else torch.where(labelled, labels,
                                                                                              missing)
            pyro.sample("z", self.posterior(*self.encoder(x, self._onehot(y_all))))

    def _require_labels(self, y):
        return y

    def check_data(self, data):
        """Raise :class:`DataError` if a label is outside ``-1 .. K-1`` (-1: unlabelled; no labels is fine)."""
        labels = getattr(data, "labels", None)
        if labels is None:
            return
        low, high = int(labels.min()), int(labels.max())
        if low < -1 or high >= self.num_classes:
            raise DataError(f"M2 needs labels in 0..{self.num_classes - 1}, or -1 for unlabelled images, but "
                            f"{data.name!r} has labels in {low}..{high}")

    @torch.no_grad()
    def classify(self, x, num_samples=None):
        """argmax_y q(y|x), the classifier. :param x: images ``(..., C, H, W)``. :returns: labels ``(...)``."""
        return self.classifier(x).argmax(-1)

    def sample(self, num_samples, y=None):
        """As :meth:`ConditionalVAE.sample`, but with ``y=None`` the model draws the labels from its own p(y).
        :returns: ``(num_samples, C, H, W)``."""
        if y is None:
            return VAE.sample(self, num_samples)
        return super().sample(num_samples, y)

    @property
    def config(self):
        hidden = getattr(self.classifier, "hidden", None) if isinstance(self.classifier, MLPClassifier) else None
        return {**super().config, "alpha": self.alpha, "classifier_hidden": hidden}

    @classmethod
    def from_config(cls, config, **parts):
        if config.get("classifier_hidden") is None and parts.get("classifier") is None:
            raise ConfigError("this run used a custom classifier; pass classifier=... to rebuild it")
        return super().from_config(config, **parts)


# --- mixture model -------------------------------------------------------------------------------


class GMVAE(VAE):
    r"""Gaussian-mixture VAE, written the Pyro way: a discrete cluster variable summed out by enumeration.

    Generative model (``model``), for each image n in the ``data`` plate::

        c_n ~ Categorical(softmax(logits))                       enumerated: summed out exactly
        z_n ~ Normal(mu_{c_n}, diag(sigma_{c_n}^2))              event shape (latent_dim,)
        x_n ~ likelihood(decoder(z_n))                           event shape (C, H, W)

    Recognition model (``guide``)::

        z_n ~ posterior(encoder(x_n))                            q(z|x), as in the VAE
        c_n ~ Categorical(softmax(classifier(x_n)))              only with cluster_guide=True; enumerated

    With ``cluster_guide=False`` (default) c is a site of the model alone, marked
    ``infer={"enumerate": "parallel"}``: ``TraceEnum_ELBO(max_plate_nesting=1)`` (``fit``'s default for this
    model) and :mod:`~pyro_vae.evaluate` sum it out, so the bound uses the exact p(c | z) and its marginal
    p(z) is the mixture of :class:`~pyro_vae.priors.MixtureOfGaussians`, whose parameters (``prior.logits``,
    ``prior.locs``, ``prior.raw_scales``) it uses: a GMVAE and a VAE with that prior and the same weights
    score the same. With ``cluster_guide=True`` the guide also infers q(c|x) (a looser, mean-field bound,
    and a classifier of clusters).

    :param prior: the mixture, a :class:`~pyro_vae.priors.MixtureOfGaussians` (default 10 components).
    :param bool cluster_guide: add q(c|x) to the guide.
    :param tuple classifier_hidden: hidden widths of q(c|x)'s :class:`MLPClassifier`.

    Other parameters as for :class:`~pyro_vae.VAE`.
    """

    #: the cluster, summed out in the model; pictures and scores decode z
    cluster_site = "c"

    def __init__(self, image_shape=(1, 28, 28), latent_dim=16, prior=None, cluster_guide=False,
                 classifier_hidden=(256,), encoder=None, decoder=None, likelihood=None, posterior=None,
                 hidden=(400,)):
        prior = prior if prior is not None else priors_module.MixtureOfGaussians(10)
        if not isinstance(prior, priors_module.MixtureOfGaussians):
            raise ConfigError(f"GMVAE's prior is its mixture: pass a pv.priors.MixtureOfGaussians(K), got "
                              f"{type(prior).__name__}")
        if not isinstance(cluster_guide, bool):
            raise ConfigError(f"cluster_guide must be True or False, got {cluster_guide!r}")
        super().__init__(image_shape=image_shape, latent_dim=latent_dim, encoder=encoder, decoder=decoder,
                         prior=prior, likelihood=likelihood, posterior=posterior, hidden=hidden)
        self.num_clusters = prior.num_components
        self.cluster_guide = cluster_guide
        self.classifier = MLPClassifier(self.image_shape, self.num_clusters, classifier_hidden) \
            if cluster_guide else None

    def cluster_prior(self):
        """p(c), batch shape ``()``, K outcomes."""
        return dist.Categorical(logits=self.prior.logits)

    def component(self, c):
        """p(z | c). :param c: clusters, int64 of any shape S. :returns: a Normal with batch shape S and
        event shape ``(latent_dim,)``."""
        return dist.Normal(self.prior.locs[c], positive(self.prior.raw_scales[c])).to_event(1)

    def model(self, x, y=None, covariates=None):
        """p(x, z, c) = p(c) p(z|c) p(x|z). :param x: images ``(N, C, H, W)``; ``y`` is ignored."""
        self.register()
        with pyro.plate("data", x.shape[-4]):
            c = pyro.sample(self.cluster_site, self.cluster_prior(), infer={"enumerate": "parallel"})
            z = pyro.sample("z", self.component(c))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x, y=None, covariates=None):
        """q(z|x) (and q(c|x) with ``cluster_guide``). :param x: images ``(N, C, H, W)``."""
        self.register()
        with pyro.plate("data", x.shape[-4]):
            if self.classifier is not None:
                pyro.sample(self.cluster_site, dist.Categorical(logits=self.classifier(x)),
                            infer={"enumerate": "parallel"})
            pyro.sample("z", self.posterior(*self.encoder(x)))

    @torch.no_grad()
    def cluster(self, x):
        """Most probable cluster of each image: argmax_c p(c | z = E[z|x]) (or q(c|x) with ``cluster_guide``).
        :param x: ``(..., C, H, W)``. :returns: int64 ``(...)``."""
        if self.classifier is not None:
            return self.classifier(x).argmax(-1)
        z = self.encode(x)[0]
        every = torch.arange(self.num_clusters, device=z.device)
        joint = self.component(every).log_prob(z.unsqueeze(-2)) + self.cluster_prior().logits
        return joint.argmax(-1)

    @torch.no_grad()
    def sample_by_cluster(self, per_cluster):
        """Mean images of codes drawn from each cluster's component, one row per cluster.
        :returns: ``(K * per_cluster, C, H, W)``, row-major."""
        per_cluster = positive_int("per_cluster", per_cluster, MAX_CLASSES)
        c = torch.arange(self.num_clusters, device=self.device).repeat_interleave(per_cluster)
        return self.generate(self.component(c).sample())

    @property
    def config(self):
        hidden = self.classifier.hidden if self.classifier is not None else None
        return {**super().config, "cluster_guide": self.cluster_guide,
                **({"classifier_hidden": hidden} if hidden is not None else {})}


# --- hierarchical model --------------------------------------------------------------------------


class _TopEncoderView:
    """What a :class:`~pyro_vae.priors.VampPrior` on z2 sees as "the VAE": images -> q(z2 | E[z1|x])."""

    def __init__(self, hvae):
        self.image_shape = hvae.image_shape
        self.encoder = hvae.encode_top


class HierarchicalVAE(VAE):
    r"""A VAE with two stochastic layers (Burda et al. 2016; Sonderby et al. 2016 for the ladder variant).

    Generative model (``model``), for each image n in the ``data`` plate::

        z2_n ~ prior()                                           event shape (latent_dims[1],)
        z1_n ~ Normal(p_z1(z2_n))                                event shape (latent_dims[0],)
        x_n  ~ likelihood(decoder(z1_n))                         event shape (C, H, W)

    Recognition model (``guide``), bottom-up::

        z1_n ~ posterior(encoder(x_n))                           event shape (latent_dims[0],)
        z2_n ~ Normal(q_z2(z1_n))                                event shape (latent_dims[1],)

    ``p_z1`` and ``q_z2`` are :class:`GaussianMLP` s. Pictures use z1 (:attr:`latent_dim`,
    :meth:`encode`, :meth:`generate`); :meth:`sample` draws z2, then z1, then decodes. The guide is not
    mean-field (z2 depends on z1), so ``TraceMeanField_ELBO``'s analytic KL does not apply. A
    :class:`~pyro_vae.priors.VampPrior` on z2 mixes q(z2 | E[z1|u_k]) at its pseudo-inputs u_k.

    :param tuple latent_dims: ``(dim z1, dim z2)``.
    :param int latent_dim: optional, must equal ``latent_dims[0]`` (``build_vae`` passes it).
    :param tuple latent_hidden: hidden widths of ``p_z1`` and ``q_z2``.
    :param prior: p(z2).

    Other parameters as for :class:`~pyro_vae.VAE` (encoder and decoder work on z1).
    """

    #: pictures decode z1 (``generate``), so the latent manifold's codes are z1's
    code_site = "z1"
    #: interpolation and traversal move z2 (``top_codes``, ``decode_top``)
    top_sites = ("z2",)

    def __init__(self, image_shape=(1, 28, 28), latent_dims=(32, 16), latent_dim=None, encoder=None, decoder=None,
                 prior=None, likelihood=None, posterior=None, hidden=(512, 256), latent_hidden=(256,)):
        check_part("prior", prior)
        dims = tuple(positive_int("latent_dims entry", d, MAX_LATENT_DIM) for d in latent_dims)
        if len(dims) != 2:
            raise ConfigError(f"latent_dims must be two sizes (z1, z2), got {tuple(latent_dims)!r}")
        if latent_dim is not None and latent_dim != dims[0]:
            raise ConfigError(f"latent_dim={latent_dim} disagrees with latent_dims={dims}: it is the size of z1")
        # the VAE builds networks, likelihood and posterior around z1; its default prior (on z1) is replaced
        super().__init__(image_shape=image_shape, latent_dim=dims[0], encoder=encoder, decoder=decoder,
                         likelihood=likelihood, posterior=posterior, hidden=hidden)
        self.latent_dims = dims
        self.latent_hidden = _widths("latent_hidden", latent_hidden)
        self.p_z1 = GaussianMLP(dims[1], dims[0], self.latent_hidden)
        self.q_z2 = GaussianMLP(dims[0], dims[1], self.latent_hidden)
        self.prior = prior if prior is not None else priors_module.StandardNormal()
        self.prior.setup(dims[1], _TopEncoderView(self))

    def model(self, x, y=None, covariates=None):
        """p(x, z1, z2) = p(z2) p(z1|z2) p(x|z1). :param x: images ``(N, C, H, W)``; ``y`` is ignored."""
        self.register()
        with pyro.plate("data", x.shape[-4]):
            z2 = pyro.sample("z2", self.prior())
            z1 = pyro.sample("z1", dist.Normal(*self.p_z1(z2)).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(z1)), obs=x)

    def guide(self, x, y=None, covariates=None):
        """q(z1|x) q(z2|z1). :param x: images ``(N, C, H, W)``; ``y`` is ignored."""
        self.register()
        with pyro.plate("data", x.shape[-4]):
            z1 = pyro.sample("z1", self.posterior(*self.encoder(x)))
            pyro.sample("z2", dist.Normal(*self.q_z2(z1)).to_event(1))

    def encode_top(self, x):
        """Parameters of q(z2 | z1 = E[z1|x]) (the mean of q(z1|x)'s base Normal).
        :param x: ``(..., C, H, W)``. :returns: ``(loc, scale)``, each ``(..., latent_dims[1])``."""
        return self.q_z2(self.encoder(x)[0])

    @property
    def top_dim(self):
        """Size of z2, the top latent variable."""
        return self.latent_dims[1]

    def top_codes(self, x, y=None):
        """Mean of q(z2 | z1 = E[z1|x]). :param x: ``(..., C, H, W)``. :returns: ``(..., latent_dims[1])``."""
        return self.encode_top(x)[0]

    def decode_top(self, z, y=None):
        """Mean image through the mean of p(z1|z2). :param z: z2, ``(..., latent_dims[1])``.
        :returns: ``(..., C, H, W)``."""
        return self.generate(self.p_z1(z)[0])

    @property
    def config(self):
        return {**super().config, "latent_dims": list(self.latent_dims), "latent_hidden": self.latent_hidden}


# --- labels --------------------------------------------------------------------------------------


def keep_labels(dataset, num_labelled, seed=0):
    """A copy of ``dataset`` in which only ``num_labelled`` images keep their label; the rest get -1.

    The kept labels are class-balanced: ``num_labelled // K`` per class, the remainder spread over
    randomly chosen classes. Images and binarization are shared with ``dataset`` (not copied).

    :param dataset: an :class:`~pyro_vae.data.ImageDataset` with labels ``(N,)``.
    :param int num_labelled: how many labels to keep (0 .. N).
    :param int seed: which images keep theirs.
    :raises DataError: no labels, or a class with fewer images than its share.
    """
    if dataset.labels is None:
        raise DataError(f"{dataset.name!r} has no labels to keep")
    if isinstance(num_labelled, bool) or int(num_labelled) != num_labelled or not 0 <= num_labelled <= len(dataset):
        raise DataError(f"num_labelled must be a whole number in 0..{len(dataset)}, got {num_labelled!r}")
    labels = dataset.labels.cpu()
    classes = torch.unique(labels[labels >= 0])
    generator = torch.Generator().manual_seed(int(seed))
    share = torch.full((len(classes),), int(num_labelled) // len(classes))
    share[torch.randperm(len(classes), generator=generator)[: int(num_labelled) % len(classes)]] += 1
    kept = []
    for c, count in zip(classes.tolist(), share.tolist()):
        members = (labels == c).nonzero().flatten()
        if count > len(members):
            raise DataError(f"class {c} of {dataset.name!r} has {len(members)} labelled images, fewer than its "
                            f"share {count} of {num_labelled}; keep fewer labels")
        kept.append(members[torch.randperm(len(members), generator=generator)[:count]])
    kept = torch.cat(kept)
    partial = torch.full_like(labels, -1)
    partial[kept] = labels[kept]
    out = copy.copy(dataset)
    out.labels = partial.to(dataset.labels.device)
    return out


def without_labels(dataset):
    """A copy of ``dataset`` with ``labels = None`` (images shared). Scoring :class:`M2` does not need it:
    :mod:`~pyro_vae.evaluate` already sums out M2's labels, so its scores are of log p(x) either way."""
    out = copy.copy(dataset)
    out.labels = None
    return out


#: the test accuracy of a classifying model, part of :mod:`~pyro_vae.evaluate`
accuracy = evaluate_module.accuracy
