"""Any Pyro model/guide pair as a pyro_vae model: :func:`wrap`.

Pyro's own VAE tutorial writes the model as a class with ``model(x)`` and ``guide(x)`` methods, its own
networks, a latent site ``"latent"`` and an observed site ``"obs"`` holding flattened images. Pasted as it
is, that class goes through ``fit``, ``evaluate``, ``load_run`` and the pictures once wrapped::

    vae = pv.wrap(TutorialVAE(), image_shape=(1, 28, 28))      # sites found from one trace
    pv.fit(vae, train, test=test, epochs=10, checkpoint_dir="runs/tutorial")
    pv.evaluate.report(vae, test)
    again, config, state = pv.load_run("runs/tutorial", model_class=TutorialVAE)

Everything the package asks of a model is derived from the pair's traces: codes are the mean and
standard deviation of the guide's distribution at the code site, images the mean of the model's
distribution at the observed site (reshaped to ``image_shape``), samples come from running the model
(ancestral sampling). The pair is checked once at wrapping (:func:`~pyro_vae.check_model`).
"""

import torch
from torch import nn

import pyro.poutine as poutine

from .contract import call_with, check_model, device_of, sample_sites
from ..errors import ConfigError
from .vae import VAE
from ..checks import image_shape as image_shape_of


class Wrapped(nn.Module):
    """A Pyro model/guide pair of your own, with the interface ``fit``, ``evaluate`` and the pictures use.

    :param module: the ``nn.Module`` that holds the pair's parameters (registered as ``self.module``, so
        ``parameters()``, ``state_dict()`` and ``.to()`` reach them).
    :param tuple image_shape: ``(C, H, W)`` of one image; the pair may observe images flattened.
    :param str code_site: the guide's latent site whose codes the pictures move (default: its only one).
    :param str obs_site: the model's observed image site (default: its only one).
    :param model: the model function (default ``module.model``), called as ``model(x)``, ``model(x, y)`` or
        with ``covariates=`` as its signature allows.
    :param guide: the guide function (default ``module.guide``).
    :param dict init_kwargs: the keyword arguments that rebuild ``module`` (``type(module)(**init_kwargs)``),
        recorded in config.json so that ``pv.load_run(run, model_class=type(module))`` rebuilds it.
    :param likelihood: optional :class:`~pyro_vae.likelihoods.Likelihood` whose ``check_data`` vets datasets
        before training and scoring (e.g. refuses grey pixels for a Bernoulli model).
    """

    #: what the pair does with labels: nothing, unless its model takes ``y``
    label_role = "ignored"
    top_sites = None
    num_classes = None
    classifies = False
    check_data = VAE.check_data

    def __init__(self, module, image_shape, code_site=None, obs_site=None, model=None, guide=None, init_kwargs=None,
                 likelihood=None):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise ConfigError(f"wrap needs the nn.Module that holds the model's parameters, got "
                              f"{type(module).__name__}; pass an instance (TutorialVAE(), not the class)")
        self.module = module
        self._model = model if model is not None else getattr(module, "model", None)
        self._guide = guide if guide is not None else getattr(module, "guide", None)
        for name, fn in (("model", self._model), ("guide", self._guide)):
            if not callable(fn):
                raise ConfigError(f"{type(module).__name__} has no {name}(); pass {name}=... to pv.wrap")
        self.image_shape = image_shape_of(image_shape)
        if init_kwargs is not None and not isinstance(init_kwargs, dict):
            raise ConfigError(f"init_kwargs must be a dict of the module's constructor arguments, got "
                              f"{type(init_kwargs).__name__}")
        self.init_kwargs = dict(init_kwargs or {})
        if likelihood is not None:
            self.likelihood = likelihood
        x = torch.zeros((2,) + self.image_shape, device=device_of(module))
        with torch.no_grad():
            guide_trace = poutine.trace(self.guide).get_trace(x)
            model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(x)
        latent = [n for n, s in sample_sites(guide_trace).items() if not s["is_observed"]]
        observed = [n for n, s in sample_sites(model_trace).items() if s["is_observed"]]
        self.code_site = _one("code_site", code_site, latent, "latent site of the guide")
        self.obs_site = _one("obs_site", obs_site, observed, "observed site of the model")
        check_model(self, x)
        event = guide_trace.nodes[self.code_site]["fn"].event_shape
        if len(event) != 1:
            raise ConfigError(f"the code site {self.code_site!r} has event shape {tuple(event)}; codes must be "
                              f"vectors (.to_event(1))")
        self.latent_dim = int(event[0])

    # --- the probabilistic program -------------------------------------------------------------

    def model(self, x, y=None, **inputs):
        """The wrapped model, called with what its signature takes. :param x: images ``(N, C, H, W)``."""
        return call_with(self._model, x, y, inputs)

    def guide(self, x, y=None, **inputs):
        """The wrapped guide, called with what its signature takes. :param x: images ``(N, C, H, W)``."""
        return call_with(self._guide, x, y, inputs)

    # --- what pictures and analysis use ----------------------------------------------------------

    device = VAE.device
    trace_prior = VAE.trace_prior
    sample_codes = VAE.sample_codes
    top_dim = VAE.top_dim
    top_codes = VAE.top_codes
    decode_top = VAE.decode_top
    reconstruct = VAE.reconstruct

    def encode(self, x, y=None):
        """Mean and standard deviation of the guide's distribution at :attr:`code_site`.
        :param x: ``(..., C, H, W)``. :returns: ``(loc, scale)``, ``(..., latent_dim)``."""
        batch = x.shape[:-3]
        flat = x.reshape((-1,) + tuple(x.shape[-3:]))
        fn = poutine.trace(self.guide).get_trace(flat, y).nodes[self.code_site]["fn"]
        try:
            loc, scale = fn.mean, fn.stddev
        except NotImplementedError:
            raise ConfigError(f"the guide's distribution at {self.code_site!r} ({type(fn).__name__}) has no "
                              f"closed-form mean; pictures need one") from None
        return loc.reshape(batch + (-1,)), scale.reshape(batch + (-1,))

    def generate(self, z, y=None):
        """Mean image of the model's observed site with :attr:`code_site` set to ``z``.
        :param z: ``(..., latent_dim)``. :returns: ``(..., C, H, W)``."""
        batch = z.shape[:-1]
        flat = z.reshape(-1, z.shape[-1])
        x = flat.new_zeros((flat.shape[0],) + self.image_shape)
        conditioned = poutine.condition(self.model, data={self.code_site: flat})
        mean = poutine.trace(conditioned).get_trace(x, y).nodes[self.obs_site]["fn"].mean
        return mean.reshape(batch + self.image_shape)

    def sample(self, num_samples, y=None, **kwargs):
        """Mean images of the observed site for latents drawn by the model itself.

        :returns: ``(num_samples, C, H, W)``."""
        fn = self.trace_prior(num_samples, y, **kwargs).nodes[self.obs_site]["fn"]
        return fn.mean.reshape((num_samples,) + self.image_shape)

    # --- saving --------------------------------------------------------------------------------

    @property
    def config(self):
        """What rebuilds the pair: the module's class name and constructor arguments, the shape and the sites."""
        return {"model": type(self.module).__name__, "wrapped": {
            "image_shape": list(self.image_shape), "code_site": self.code_site, "obs_site": self.obs_site,
            "init_kwargs": self.init_kwargs}}

    @classmethod
    def from_config(cls, config, module_class):
        """Rebuild (untrained) from :attr:`config` with the user's class (``pv.load_run(..., model_class=...)``)."""
        spec = config.get("wrapped")
        if not isinstance(spec, dict) or not isinstance(spec.get("init_kwargs", {}), dict):
            raise ConfigError("config entry 'wrapped' must be a dict with image_shape, code_site, obs_site and "
                              "init_kwargs; restore the run's config.json")
        if module_class is None:
            raise ConfigError(f"this run trained a wrapped {config.get('model')!s:.60}; pass its class: "
                              f"pv.load_run(run, model_class={config.get('model')!s:.60})")
        try:
            module = module_class(**spec.get("init_kwargs", {}))
        except TypeError as e:
            raise ConfigError(f"{module_class.__name__}(**init_kwargs) failed ({' '.join(str(e).split())[:120]}); "
                              f"pass init_kwargs=... to pv.wrap with its constructor arguments") from None
        return cls(module, spec.get("image_shape"), code_site=spec.get("code_site"), obs_site=spec.get("obs_site"),
                   init_kwargs=spec.get("init_kwargs"))


def wrap(module, image_shape, code_site=None, obs_site=None, model=None, guide=None, init_kwargs=None,
         likelihood=None):
    """A Pyro model/guide pair of your own as a pyro_vae model (:class:`Wrapped`; parameters as there).

    :returns: a :class:`Wrapped` that ``fit``, ``evaluate``, ``load_run`` and the pictures accept.
    :raises ConfigError: the pair breaks the contract (:func:`~pyro_vae.check_model`), or its sites are ambiguous.
    """
    return Wrapped(module, image_shape, code_site=code_site, obs_site=obs_site, model=model, guide=guide,
                   init_kwargs=init_kwargs, likelihood=likelihood)


def _one(what, given, found, kind):
    if given is not None:
        if given not in found:
            raise ConfigError(f"{what}={given!r} is not a {kind} ({', '.join(map(repr, found)) or 'none'})")
        return given
    if len(found) != 1:
        names = ", ".join(map(repr, found)) or "none"
        raise ConfigError(f"the pair has {len(found)} candidates for the {kind} ({names}); say which with {what}=...")
    return found[0]


__all__ = ["Wrapped", "wrap"]
