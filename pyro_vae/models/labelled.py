"""Models with labels: the conditional VAE (labels observed) and M2 (labels observed or summed out)."""

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine

from ..checks import MAX_CLASSES, MAX_LATENT_DIM, positive_int
from ..errors import ConfigError, DataError
from ..inference.traces import log_weight_terms
from ..parts import likelihoods as likelihoods_module
from ..parts import networks as networks_module
from ..parts import priors as priors_module
from ..parts.config import rebuild_part
from ..parts.networks import LabelledMLPEncoder, MLPClassifier, concat
from .vae import VAE


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
    classifies = True

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
            pyro.sample("x", self.likelihood(self.decoder(concat(z, self._onehot(y)))), obs=x)

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
            terms = log_weight_terms(self, x, y, num_samples)
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
            return self.likelihood.mean(self.decoder(concat(z.unsqueeze(-2), every))).mean(-4)
        y = self._labels_for(y, z.shape[:-1], z.device)
        return self.likelihood.mean(self.decoder(concat(z, self._onehot(y))))

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
                              f"(..., K), got {type(classifier).__name__}; e.g. "
                              f"pv.extended.MLPClassifier(image_shape, K)")
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
            pyro.sample("x", self.likelihood(self.decoder(concat(z, self._onehot(y_all)))), obs=x)
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
