"""pyro_vae: variational autoencoders (Kingma & Welling, Auto-Encoding Variational Bayes) in Pyro.

Quick start::

    import pyro_vae as pv
    train, test = pv.data.load("mnist5k", binarize="dynamic")
    vae = pv.VAE(image_shape=(1, 28, 28), latent_dim=50)
    history = pv.fit(vae, train, test=test, epochs=50)
    nll = -pv.evaluate.log_likelihood(vae, test, num_samples=1000)   # nats per image

The modules (``pv.data``, ``pv.priors``, ...) and names (``pv.VAE``, ``pv.fit``, ...) load on first use, so
``import pyro_vae`` is instant and the ``pyro-vae`` command can answer Ctrl-C even while PyTorch loads.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

#: the public modules, by the short name ``pv.<name>`` gives them -> where they live in the package
_MODULES = {"checks": "checks", "cli": "cli", "data": "data", "errors": "errors", "evaluate": "evaluate",
            "extended": "extended", "files": "files",
            "networks": "parts.networks", "priors": "parts.priors", "likelihoods": "parts.likelihoods",
            "posteriors": "parts.posteriors", "guides": "parts.posteriors",
            "model": "models.vae", "adapter": "models.wrapped", "contract": "models.contract",
            "diagnostics": "evaluate.diagnostics", "quality": "evaluate.quality",
            "estimators": "inference.estimators", "fast": "inference.replay",
            "hooks": "training.hooks", "train": "training.fit",
            "presets": "training.presets", "distributed": "training.processes",
            "checkpoint": "runs", "plots": "viz.figures", "explorer": "viz.explorer",
            "util": "checks"}
#: name -> the module that defines it
_NAMES = {"VAE": "models.vae", "build_vae": "models.registry", "fit": "training.fit", "load_run": "runs.folder",
          "check_model": "models.contract", "wrap": "models.wrapped",
          "resolve_device": "training.processes", "PyroVAEError": "errors", "DataError": "errors",
          "ConfigError": "errors", "CheckpointError": "errors", "TrainingError": "errors"}

__all__ = list(_NAMES) + ["data", "diagnostics", "estimators", "evaluate", "extended", "hooks", "likelihoods",
                          "networks", "plots", "posteriors", "presets", "priors", "quality"]


class _ShortNames(importlib.abc.MetaPathFinder):
    """``import pyro_vae.priors`` (and ``from pyro_vae.priors import ...``) load the module where it lives now
    (:data:`_MODULES`), so code written against the short names keeps working."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, short = fullname.rpartition(".")
        if prefix != __name__ or short not in _MODULES or _MODULES[short] == short:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(f"{__name__}.{_MODULES[short]}"))


class _Alias(importlib.abc.Loader):
    def __init__(self, target):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module):
        pass


sys.meta_path.append(_ShortNames())


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{_MODULES[name]}")
    if name in _NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
        globals()[name] = value   # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_MODULES) | set(_NAMES))
