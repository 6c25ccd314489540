"""The only module that knows every model of the package: the class a saved config names, and
:func:`build_vae`, which turns a config back into an (untrained) model."""

from ..errors import ConfigError
from .hierarchical import HierarchicalVAE
from .labelled import M2, ConditionalVAE
from .mixture import GMVAE
from .vae import VAE
from .wrapped import Wrapped


def model_classes():
    """The model classes a config may name by itself: this package's own, by class name."""
    return {cls.__name__: cls for cls in (VAE, ConditionalVAE, M2, GMVAE,
                                           HierarchicalVAE)}



def build_vae(config, model_class=None, **parts):
    """Rebuild a model (untrained) from its :attr:`VAE.config`.

    :param dict config: as stored in a run's ``config.json`` (its ``"vae"`` entry).
    :param model_class: the class to rebuild, required when the config names a class of your own (a
        subclass of :class:`VAE`); by default one of this package's models, looked up by name.
    :param parts: modules that replace the recorded parts, required where the config records a part of
        your own as ``None``: ``encoder``, ``decoder``, ``prior``, ``likelihood``, ``posterior``, and
        model-specific ones such as M2's ``classifier``.
    :raises ConfigError: a malformed config, an unknown class, or a part it cannot rebuild.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"a model config must be a dict, got {type(config).__name__}")
    name = config.get("model", "VAE")
    if not isinstance(name, str):
        raise ConfigError(f"config names the model {name!r:.60}; expected a class name")
    if config.get("wrapped") is not None:   # a Pyro model/guide pair of the user's (pv.wrap)
        if model_class is not None and name != model_class.__name__:
            raise ConfigError(f"the config describes a wrapped {name!r:.60}, not a {model_class.__name__}; pass the "
                              f"class the run was trained with")
        return Wrapped.from_config(config, model_class)
    if model_class is not None:
        if not (isinstance(model_class, type) and hasattr(model_class, "from_config")):
            raise ConfigError(f"model_class must be a model class with from_config (e.g. a VAE subclass), got "
                              f"{model_class!r:.60}")
        if name != model_class.__name__:
            raise ConfigError(f"the config describes a {name!r:.60}, not a {model_class.__name__}; pass the class "
                              f"the run was trained with")
        return model_class.from_config(config, **parts)
    known = model_classes()
    if name not in known:
        raise ConfigError(f"config names the model {name!r:.60}, which is not one of this package's "
                          f"({', '.join(sorted(known))}); pass your class: model_class={name:.60}")
    return known[name].from_config(config, **parts)
