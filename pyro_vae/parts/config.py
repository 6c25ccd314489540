"""What a part is and how a saved config turns back into one: the base class each role must be an instance of,
the part classes a config may name, and :func:`rebuild_part`."""

import re

from torch import nn

from ..errors import ConfigError
from . import likelihoods as likelihoods_module
from . import networks as networks_module
from . import posteriors as guides_module
from . import priors as priors_module


#: the base class each part must be an instance of, and an example of one
PART_BASES = {"encoder": (nn.Module, "pv.networks.MLPEncoder(image_shape, latent_dim)"),
              "decoder": (nn.Module, "pv.networks.MLPDecoder(image_shape, latent_dim)"),
              "prior": (priors_module.Prior, "pv.priors.VampPrior(500)"),
              "likelihood": (likelihoods_module.Likelihood, "pv.likelihoods.ContinuousBernoulli()"),
              "posterior": (guides_module.Posterior, "pv.posteriors.IAF(2)")}


def check_part(role, part):
    """Refuse (:class:`ConfigError`) a part that is not an instance of its base class (``None`` is the default).

    A string (``prior="vamp"``: names are the CLI's), a class instead of an instance
    (``prior=pv.priors.VampPrior``) and any other object each get a one-line message with an example.
    """
    if part is None:
        return
    base, example = PART_BASES[role]
    if isinstance(part, str):
        raise ConfigError(f"{role} must be an object, e.g. {role}={example}, not the name {part!r:.40} "
                          f"(names are for the pyro-vae command line)")
    if isinstance(part, type):
        hint = f"{role}={part.__name__}(...)" if issubclass(part, base) else f"{role}={example}"
        raise ConfigError(f"{role} must be an instance, got the class {part.__name__}; pass {hint}")
    if not isinstance(part, base):
        kind = "torch.nn.Module" if base is nn.Module else f"pv.{base.__module__.split('.')[-1]}.{base.__name__}"
        raise ConfigError(f"{role} must be a {kind}, got {type(part).__name__}; e.g. {role}={example}")


def describe(part):
    """``{"class": name, "kwargs": {...}}`` for a part that can describe itself (``config()``), else ``None``."""
    if not hasattr(part, "config") or not callable(part.config):
        return None
    return {"class": type(part).__name__, "kwargs": part.config()}


ROLES = ("encoder", "decoder", "prior", "likelihood", "posterior")
#: The part classes a config may name, by role: only this package's own, so a crafted config.json cannot
#: construct anything else (a user's own part is passed to :func:`build_vae` / ``load_run`` instead).
PART_CLASSES = {
    "encoder": (networks_module.MLPEncoder, networks_module.ConvEncoder),
    "decoder": (networks_module.MLPDecoder, networks_module.ConvDecoder),
    "prior": (priors_module.StandardNormal, priors_module.LearnedNormal, priors_module.MixtureOfGaussians,
              priors_module.VampPrior, priors_module.FlowPrior),
    "likelihood": (likelihoods_module.Bernoulli, likelihoods_module.ContinuousBernoulli, likelihoods_module.Normal,
                   likelihoods_module.Laplace, likelihoods_module.DiscretizedLogistic, likelihoods_module.Beta),
    "posterior": (guides_module.DiagonalNormal, guides_module.IAF),
}


class BuildsItsOwn(Exception):
    """A constructor got a part twice: from its caller and from its own code (``part`` names it)."""

    def __init__(self, part):
        super().__init__(part)
        self.part = part


def construct(what, cls, *args, user_class=False, **kwargs):
    try:
        return cls(*args, **kwargs)
    except ConfigError:
        raise
    except TypeError as e:
        twice = re.search(r"got multiple values for keyword argument '(\w+)'", str(e))
        if what == "model" and twice and twice.group(1) in ROLES:
            raise BuildsItsOwn(twice.group(1)) from None
        refused(what, cls, e, user_class)
    except (ValueError, RuntimeError, OverflowError) as e:
        refused(what, cls, e, user_class)


def refused(what, cls, error, user_class):
    reason = " ".join(str(error).split())[:160]
    if user_class:   # the config came from the class's own `config`; the class is what disagrees with it
        raise ConfigError(f"{cls.__name__}(...) refused the arguments its config records ({reason}); give its "
                          f"constructor a parameter for each entry its config adds, or override from_config") from None
    raise ConfigError(f"config for the {what} {cls.__name__} is invalid ({reason}); restore the run's config.json") \
        from None


def rebuild_part(role, spec, *args, classes=None, **kwargs):
    """Construct the part a config entry ``{"class": name, "kwargs": {...}}`` names.

    :param str role: ``"encoder"``, ``"decoder"``, ``"prior"``, ``"likelihood"`` or ``"posterior"``.
    :param classes: the classes the entry may name (default :data:`PART_CLASSES` of the role).
    :param args: positional arguments before the recorded keywords (e.g. ``image_shape, latent_dim``).
    :raises ConfigError: a malformed entry, a class not among ``classes``, or arguments it refuses.
    """
    if spec is None:
        raise ConfigError(f"this run used a custom {role}; pass {role}=... to rebuild it")
    if not (isinstance(spec, dict) and isinstance(spec.get("class"), str) and isinstance(spec.get("kwargs", {}), dict)):
        raise ConfigError(f"config entry for the {role} must be {{'class': name, 'kwargs': {{...}}}}, got {spec!r:.80}")
    known = {cls.__name__: cls for cls in (classes if classes is not None else PART_CLASSES[role])}
    if spec["class"] not in known:
        raise ConfigError(f"config names an unknown {role} class {spec['class']!r:.60}; known: "
                          f"{', '.join(sorted(known))} (pass a {role} of your own as {role}=...)")
    kwargs = {**spec.get("kwargs", {}), **kwargs}
    if not all(isinstance(k, str) for k in kwargs):
        raise ConfigError(f"config entry for the {role} has keyword names that are not strings")
    return construct(role, known[spec["class"]], *args, **kwargs)
