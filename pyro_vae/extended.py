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

from .data.labels import keep_labels, without_labels
from .evaluate import accuracy
from .models.hierarchical import HierarchicalVAE
from .models.labelled import M2, ConditionalVAE
from .models.mixture import GMVAE
from .parts.networks import GaussianMLP, LabelledMLPEncoder, MLPClassifier

__all__ = ["LabelledMLPEncoder", "MLPClassifier", "GaussianMLP", "ConditionalVAE", "M2", "GMVAE", "HierarchicalVAE",
           "keep_labels", "without_labels", "accuracy"]
