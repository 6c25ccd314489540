"""The model contract: what ``fit``, ``evaluate`` and the pictures rely on, checked once, up front.

A model is anything with Pyro ``model(x, y=None, **inputs)`` and ``guide(x, y=None, **inputs)`` functions
(a :class:`~pyro_vae.VAE` subclass, or a pair wrapped by :func:`pyro_vae.wrap`). Everything downstream
assumes the package's conventions, so :func:`check_model` runs the pair once on a small batch with Pyro's
validation on and names, one line each, what breaks them:

* every sample site sits in one ``pyro.plate("data", N)`` at dim -1, and in no other plate (the
  estimators put their sample dimensions at dim -2);
* a site's log-density is one number per image: batch shape ``(N,)``, one datapoint's dimensions in the
  event (``.to_event(1)`` for a code, ``.to_event(3)`` for an image);
* every latent site of the model is in the guide, or is marked for enumeration
  (``infer={"enumerate": "parallel"}``: then it is summed out exactly, which needs ``TraceEnum_ELBO``);
  every sample site of the guide is in the model;
* the observed site :attr:`~pyro_vae.VAE.obs_site` (default ``"x"``) exists (the pictures also read
  :attr:`~pyro_vae.VAE.code_site`, default ``"z"``, and say so where it is missing);
* parameters in their support (a positive scale, pixels the likelihood can score): Pyro's own validation
  message is passed on.

:func:`check_model` returns a :class:`Contract` that says which sites are latent, enumerated and observed,
so callers ask it instead of probing the model.
"""

import dataclasses
import inspect
import numbers

import torch

import pyro
import pyro.poutine as poutine
from pyro.infer import RenyiELBO
from pyro.poutine.util import site_is_subsample

from ..errors import ConfigError, DataError

#: images of the batch the contract is checked on: few, as every check is about shapes and names, and a prime,
#: so that a batch dimension is not mistaken for another one of the same size (an enumeration, a latent)
CHECK_IMAGES = 7


@dataclasses.dataclass
class Contract:
    """What :func:`check_model` found out about a model/guide pair.

    :ivar tuple latent: the model's latent sample sites, in order.
    :ivar tuple enumerated: the model's latent sites absent from the guide and marked for parallel
        enumeration (summed out exactly by :mod:`~pyro_vae.evaluate` and ``TraceEnum_ELBO``).
    :ivar tuple guide_enumerated: guide sites marked for enumeration (sampled by the evaluators, summed out
        by ``TraceEnum_ELBO`` in training).
    :ivar tuple observed: the model's observed sites.
    :ivar str obs_site: the image site.
    :ivar tuple scaled: sites whose log-density carries a scale other than 1 (``poutine.scale``).
    """

    latent: tuple
    enumerated: tuple
    guide_enumerated: tuple
    observed: tuple
    obs_site: str
    scaled: tuple = ()

    @property
    def needs_enumeration(self):
        """Whether training must sum latent sites out (``TraceEnum_ELBO``)."""
        return bool(self.enumerated)


def _short(error):
    """One line of an exception's message (Pyro's validation messages span several)."""
    text = " ".join(str(error).split("\n")[0].split())
    return (text[:240] + "...") if len(text) > 240 else text


def call_with(fn, x, y, inputs):
    """Call ``fn(x, y, **inputs)``, leaving out what its signature does not accept (``y``, ``covariates``):
    a model written as ``model(x)`` (Pyro's VAE tutorial) works unchanged."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(x, y, **inputs)
    kinds = [p.kind for p in params.values()]
    if inspect.Parameter.VAR_KEYWORD in kinds:
        kept = dict(inputs)
    else:
        kept = {k: v for k, v in inputs.items() if k in params}
    positional = [p for p in params.values()
                  if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if inspect.Parameter.VAR_POSITIONAL in kinds or len(positional) >= 2:
        return fn(x, y, **kept)
    if y is not None and "y" in params:
        return fn(x, y=y, **kept)
    return fn(x, **kept)


def _check_signature(fn, role, x, y, inputs):
    """Refuse a ``model``/``guide`` that cannot be called as ``fit`` and ``evaluate`` call it,
    ``fn(x, y, **inputs)``, naming the adapter that can (a model written as ``model(x)``, as in Pyro's tutorial)."""
    try:
        inspect.signature(fn).bind(x, y, **inputs)
    except TypeError as e:
        call = ", ".join(["x", "y"] + [f"{k}=..." for k in inputs])
        raise ConfigError(f"{role}() cannot be called as {role}({call}) ({_short(e)}); write it as "
                          f"{role}(self, x, y=None, **inputs), or wrap your model and guide with "
                          f"pv.wrap(module, image_shape=...)") from None
    except ValueError:   # no signature to read (a builtin): the call itself will tell
        pass


def first_batch(data, device, size=CHECK_IMAGES):
    """``(x, y, inputs)``: the first ``size`` images of ``data`` (an ImageDataset or an images tensor) on
    ``device``, with their labels and covariates (``inputs``, the keywords of model and guide)."""
    if isinstance(data, torch.Tensor):
        return data[:size].to(device), None, {}
    covariates = getattr(data, "covariates", None) is not None
    batch = next(iter(data.batches(size, shuffle=False, **({"with_covariates": True} if covariates else {}))))
    x, y = batch[0][:size].to(device), None if batch[1] is None else batch[1][:size].to(device)
    return x, y, ({"covariates": batch[2][:size].to(device)} if covariates else {})


def sample_sites(trace):
    """The sample sites of a trace by name, without plates' subsample sites and auxiliary sites."""
    return {name: site for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["infer"].get("is_auxiliary")
            and not site_is_subsample(site)}


def _where(name, role):
    return f"{role} site {name!r}"


def _check_plate(name, site, role, batch):
    frames = [f for f in site["cond_indep_stack"] if f.vectorized]
    data = [f for f in frames if f.name == "data"]
    if not data:
        raise ConfigError(f"{_where(name, role)} is outside the data plate; put every sample site inside "
                          f"`with pyro.plate(\"data\", x.shape[0]):` so that its log-density is one number per image")
    frame = data[0]
    if frame.dim != -1:
        raise ConfigError(f"the data plate of {_where(name, role)} is at dim {frame.dim}; it must be at dim -1 "
                          f"(pyro.plate(\"data\", N) with no dim argument, and no plate nested inside it)")
    if frame.size != batch:
        raise ConfigError(f"the data plate of {_where(name, role)} has size {frame.size} for a batch of {batch} "
                          f"images; use pyro.plate(\"data\", x.shape[0]) (fit batches the data itself)")
    others = [f.name for f in frames if f.name != "data"]
    if others:
        raise ConfigError(f"{_where(name, role)} is also inside the plate {others[0]!r}; pyro_vae's estimators "
                          f"put their sample dimensions at dim -2, so declare one image's dimensions as the "
                          f"event (.to_event(...)) instead of a second plate")


def _check_shape(name, site, role, batch):
    shape = tuple(site["fn"].batch_shape)
    if shape != (batch,):
        event = len(site["fn"].event_shape)
        extra = len(shape) - 1
        hint = (f"move its {extra} per-image dimension(s) into the event with .to_event({event + extra})"
                if len(shape) > 1 and shape[0] == batch else
                "give it batch shape (N,): one datapoint's dimensions belong to the event (.to_event(...))")
        raise ConfigError(f"{_where(name, role)} has batch shape {shape} for a batch of {batch} images, so its "
                          f"log-density is not one number per image; {hint}")


def _enumerated(site):
    return site["infer"].get("enumerate") is not None


def _run(what, fn):
    try:
        return fn()
    except (ConfigError, DataError) as e:   # Pyro's trace appends its shape table to a ValueError: keep line one
        raise type(e)(str(e).split("\n")[0]) from None
    except (ValueError, RuntimeError, TypeError, IndexError, KeyError, AttributeError, AssertionError,
            NotImplementedError) as e:
        message = _short(e)
        if "constraint" in message or "support" in message:
            raise ConfigError(f"{what} failed Pyro's validation: {message} (a scale must be positive, e.g. "
                              f"softplus(raw) + 1e-4, and observed values must lie in the likelihood's "
                              f"support)") from None
        raise ConfigError(f"{what} failed on a batch of images: {type(e).__name__}: {message}") from None


def check_networks(vae, x):
    """The shapes a :class:`~pyro_vae.VAE`'s own ``model``/``guide`` need from its networks: the encoder returns
    ``(loc, scale)``, each ``(N, latent_dim)``; the decoder returns the likelihood's parameters
    ``(N, P*C, H, W)``. Checked only where the class keeps the base ``model``/``guide`` (a subclass that
    overrides them feeds its networks other inputs)."""
    from .vae import VAE   # the contract is below the models; only this check knows the base class
    if not isinstance(vae, VAE):
        return
    n, latent = x.shape[0], vae.latent_dim
    if type(vae).guide is VAE.guide:
        out = _run("the encoder", lambda: vae.encoder(x))
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
            got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"the encoder returned {got}; it must return a pair (loc, scale), each of shape "
                              f"(..., latent_dim) = ({n}, {latent}) here")
        for part, t in zip(("loc", "scale"), out):
            if tuple(t.shape) != (n, latent):
                raise ConfigError(f"the encoder's {part} has shape {tuple(t.shape)}; expected (..., latent_dim) = "
                                  f"({n}, {latent}) for {n} images of shape {tuple(x.shape[1:])}")
    if type(vae).model is VAE.model:
        c, h, w = vae.image_shape
        expected = (n, vae.likelihood.params_per_pixel * c, h, w)
        z = x.new_zeros((n, latent))
        out = _run("the decoder", lambda: vae.decoder(z))
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        if got != expected:
            per_pixel = vae.likelihood.params_per_pixel
            fix = f"build the decoder with params_per_pixel={per_pixel}" if per_pixel > 1 else "do not flatten images"
            raise ConfigError(f"the decoder returned {got} for {n} codes; the {type(vae.likelihood).__name__} "
                              f"likelihood needs (..., P*C, H, W) = {expected} (P = {per_pixel} parameters per "
                              f"pixel); {fix}")


def check_model(vae, data, y=None, loss=None, **inputs):
    """Check that ``vae`` keeps the contract the rest of the package relies on (see the module docstring).

    Runs the guide, then the model replayed on the guide's draws, once on a few images with Pyro's
    validation on, leaving the caller's random streams as they were and the model in its current mode.

    :param vae: a model with ``model`` and ``guide`` (:class:`~pyro_vae.VAE`, a subclass, :func:`~pyro_vae.wrap`).
    :param data: an :class:`~pyro_vae.data.ImageDataset` (its first images, labels and covariates are used)
        or an images tensor ``(N, C, H, W)``.
    :param y: labels ``(N,)`` when ``data`` is a tensor (a dataset brings its own).
    :param loss: the ELBO that will train it (``None``: not checked against the model): a model whose
        latent sites are summed out by enumeration needs ``TraceEnum_ELBO``; ``RenyiELBO`` needs unscaled sites.
    :param inputs: further keywords of model and guide (``covariates``) when ``data`` is a tensor.
    :returns: a :class:`Contract`.
    :raises ConfigError: the first broken rule, in one line that names the site and the fix.
    """
    for part in ("model", "guide"):
        if not callable(getattr(vae, part, None)):
            raise ConfigError(f"{type(vae).__name__} has no {part}() method; pass a pv.VAE (or subclass), or wrap "
                              f"your Pyro model and guide with pv.wrap(module, image_shape=...)")
    from ..checks import forked_rng
    device = device_of(vae)
    if isinstance(data, torch.Tensor):
        x = data[:CHECK_IMAGES].to(device)
        y = None if y is None else torch.as_tensor(y)[:CHECK_IMAGES].to(device)
        inputs = {k: v[:CHECK_IMAGES].to(device) for k, v in inputs.items()}
    else:
        x, y, inputs = first_batch(data, device)
    n = x.shape[0]
    with forked_rng(device), torch.no_grad(), pyro.validation_enabled(True):
        check_networks(vae, x)
        for role in ("guide", "model"):
            _check_signature(getattr(vae, role), role, x, y, inputs)
        guide_trace = _run("the guide", lambda: poutine.trace(vae.guide).get_trace(x, y, **inputs))
        model_trace = _run("the model", lambda: poutine.trace(poutine.replay(
            vae.model, trace=guide_trace)).get_trace(x, y, **inputs))
        for role, trace in (("guide", guide_trace), ("model", model_trace)):
            _run(f"the {role}", trace.compute_log_prob)
        guide_sites, model_sites = sample_sites(guide_trace), sample_sites(model_trace)
        for role, sites in (("guide", guide_sites), ("model", model_sites)):
            for name, site in sites.items():
                _check_plate(name, site, role, n)
                _check_shape(name, site, role, n)
        observed = tuple(name for name, site in model_sites.items() if site["is_observed"])
        latent = tuple(name for name, site in model_sites.items() if not site["is_observed"])
        for name in guide_sites:
            if name not in model_sites:
                raise ConfigError(f"guide site {name!r} is not a site of the model (misnamed?); the model's latent "
                                  f"sites are {', '.join(map(repr, latent)) or 'none'}")
            if model_sites[name]["is_observed"]:
                raise ConfigError(f"guide site {name!r} is observed in the model; a guide samples latent sites only")
        enumerated = []
        for name in latent:
            if name not in guide_sites:
                if not _enumerated(model_sites[name]):
                    raise ConfigError(f"model site {name!r} is latent but the guide has no site {name!r}; add it to "
                                      f"the guide, or mark a discrete site for enumeration with "
                                      f"infer={{\"enumerate\": \"parallel\"}} (and train with TraceEnum_ELBO)")
                if model_sites[name]["infer"].get("enumerate") != "parallel":
                    raise ConfigError(f"model site {name!r} asks for {model_sites[name]['infer']['enumerate']!r} "
                                      f"enumeration; pyro_vae sums latents out in parallel: use "
                                      f"infer={{\"enumerate\": \"parallel\"}}")
                enumerated.append(name)
        obs_site = getattr(vae, "obs_site", "x")
        if obs_site not in observed:
            raise ConfigError(f"the model has no observed site {obs_site!r} (its observed sites: "
                              f"{', '.join(map(repr, observed)) or 'none'}); name the image site {obs_site!r} or set "
                              f"obs_site = \"<name>\" on {type(vae).__name__}")
        scaled = tuple(name for name, site in {**model_sites, **guide_sites}.items()
                       if not (isinstance(site["scale"], numbers.Number) and site["scale"] == 1))
        if enumerated:
            _check_enumerates(vae, x, y, inputs, guide_trace)
    contract = Contract(latent=latent, enumerated=tuple(enumerated), observed=observed, obs_site=obs_site,
                        guide_enumerated=tuple(name for name, site in guide_sites.items() if _enumerated(site)),
                        scaled=tuple(dict.fromkeys(scaled)))
    if loss is not None:
        check_loss(contract, loss)
    return contract


def _check_enumerates(vae, x, y, inputs, guide_trace):
    """Run the model with its enumerated sites enumerated (their values in new dims on the left), so a model
    whose tensors do not broadcast over them fails here, with the reason, not inside an evaluation."""
    def enumerated():
        model = poutine.enum(poutine.replay(vae.model, trace=guide_trace), first_available_dim=-3)
        poutine.trace(model).get_trace(x, y, **inputs).compute_log_prob()
    try:
        enumerated()
    except (ValueError, RuntimeError, TypeError, IndexError) as e:
        raise ConfigError(f"the model fails when its discrete sites are enumerated ({type(e).__name__}: {_short(e)}); "
                          f"their values arrive in extra dimensions on the left, so index and broadcast instead of "
                          f"reshaping or expanding to the batch shape") from None


def enumerates(loss):
    """Whether a Pyro ELBO sums enumerated sites out (``TraceEnum_ELBO`` and its JIT form)."""
    return "Enum" in type(loss).__name__


def check_loss(contract, loss):
    """Refuse an ELBO that would train a model other than it is written.

    :raises ConfigError: an enumerated model site with an ELBO that does not enumerate (it would draw the site
        from its prior and miss its proposal term), or ``RenyiELBO`` with a scaled site (``poutine.scale``,
        e.g. beta or warm-up, moves inside its log-mean-exp, so the bound is not the IWAE bound).
    """
    if contract.enumerated and not enumerates(loss):
        raise ConfigError(f"the model sums out {', '.join(map(repr, contract.enumerated))} by enumeration, which "
                          f"{type(loss).__name__} does not do; train with TraceEnum_ELBO(max_plate_nesting=1) "
                          f"(fit's default for such a model)")
    if isinstance(loss, RenyiELBO) and contract.scaled:
        raise ConfigError(f"RenyiELBO (IWAE) is the per-image bound only with unscaled sites, but "
                          f"{contract.scaled[0]!r} is scaled; drop poutine.scale (or use Trace_ELBO)")


def default_loss(contract):
    """``TraceEnum_ELBO(max_plate_nesting=1)`` for a model with enumerated sites, else ``Trace_ELBO()``."""
    from pyro.infer import Trace_ELBO, TraceEnum_ELBO
    return TraceEnum_ELBO(max_plate_nesting=1) if contract.needs_enumeration else Trace_ELBO()


def device_of(vae):
    """The device of the model's first parameter or buffer (the CPU for a model that has none)."""
    if isinstance(vae, torch.nn.Module):
        for tensor in list(vae.parameters()) + list(vae.buffers()):
            return tensor.device
    return torch.device("cpu")


__all__ = ["Contract", "check_model", "check_loss", "check_networks", "default_loss", "enumerates", "first_batch",
           "call_with", "device_of", "sample_sites"]
