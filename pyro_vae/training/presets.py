"""Named recipes: a model and the :func:`~pyro_vae.fit` settings that go with it.

``pv.presets.build("best", image_shape)`` and ``pyro-vae train --preset best`` read the same recipe
(:data:`RECIPES`), written in the CLI's own words (the destinations of its flags), so a preset run is an
ordinary run whose config.json says what it trained. "best" is the combination that measured best on
mnist5k's validation split (benchmarks/README.md, the quality table, with its cost per epoch)::

    train, validation, test = pv.data.load("mnist5k", binarize="dynamic", validation=0.1)
    vae, settings = pv.presets.build("best", train.image_shape)
    history = pv.fit(vae, train, test, validation=validation, **settings)
"""

from pyro.infer import RenyiELBO

from ..errors import ConfigError
from ..models.vae import VAE
from ..parts import priors

__all__ = ["RECIPES", "build", "describe", "fit_settings"]

#: name -> the flags it sets (``--prior vamp --num-pseudo-inputs 500 ...`` as ``{"prior": "vamp", ...}``).
#: "default" is what ``pv.VAE()`` with ``pv.fit``'s and the CLI's defaults train.
RECIPES = {
    "default": {},
    "best": {"prior": "vamp", "num_pseudo_inputs": 500, "objective": "iwae", "num_particles": 5, "epochs": 200,
             "augment": 1, "early_stopping": 30},
}


def describe(name):
    """The flags of recipe ``name``, as a ``pyro-vae train`` command line would spell them."""
    recipe = _recipe(name)
    return " ".join(f"--{key.replace('_', '-')} {value}" for key, value in recipe.items())


#: the recipe entries :func:`build` turns into library objects (the CLI reads every entry as its flag)
_MODEL_KEYS = ("prior", "num_pseudo_inputs")
_FIT_KEYS = ("epochs", "augment", "early_stopping", "objective", "num_particles")


def _recipe(name):
    if name not in RECIPES:
        raise ConfigError(f"unknown preset {name!r}; use one of {', '.join(map(repr, RECIPES))}")
    recipe = RECIPES[name]
    untranslated = sorted(set(recipe) - set(_MODEL_KEYS) - set(_FIT_KEYS))
    if untranslated:   # the CLI would honour it and pv.presets.build would not: two different recipes
        raise ConfigError(f"preset {name!r} sets {', '.join(untranslated)}, which pv.presets.build does not "
                          f"translate; add it to pyro_vae/training/presets.py")
    return recipe


def fit_settings(name):
    """The :func:`~pyro_vae.fit` keyword arguments of recipe ``name`` (``epochs``, ``loss``, ``augment``,
    ``early_stopping``, as it sets them), without building its model."""
    recipe = _recipe(name)
    settings = {key: recipe[key] for key in ("epochs", "augment", "early_stopping") if key in recipe}
    if recipe.get("objective") == "iwae":
        settings["loss"] = RenyiELBO(alpha=0, num_particles=recipe["num_particles"], vectorize_particles=True,
                                     max_plate_nesting=1)
    return settings


def build(name, image_shape=(1, 28, 28)):
    """The model and fit settings of recipe ``name`` for images of ``image_shape``.

    :param str name: a key of :data:`RECIPES` (``"default"``, ``"best"``).
    :param tuple image_shape: ``(C, H, W)``.
    :returns: ``(vae, settings)``: an untrained :class:`~pyro_vae.VAE` and a dict of :func:`~pyro_vae.fit`
        keyword arguments (``epochs``, ``loss``, ``augment``, ``early_stopping``, as the recipe sets them).
        A recipe with ``early_stopping`` needs ``fit(..., validation=...)``: load the data with
        ``pv.data.load(..., validation=0.1)``, as the CLI does.
    :raises ConfigError: an unknown name.
    """
    recipe = _recipe(name)
    prior = priors.VampPrior(recipe["num_pseudo_inputs"]) if recipe.get("prior") == "vamp" else None
    return VAE(image_shape=image_shape, prior=prior), fit_settings(name)
