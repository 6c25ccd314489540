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

__version__ = "0.1.0"

_MODULES = ("adapter", "checkpoint", "cli", "contract", "data", "diagnostics", "distributed", "errors", "estimators", "evaluate", "explorer", "extended", "guides",
            "hooks", "likelihoods", "model", "networks", "plots", "priors", "quality", "train", "util")
#: name -> the module that defines it
_NAMES = {"VAE": "model", "build_vae": "model", "fit": "train", "load_run": "checkpoint",
          "check_model": "contract", "wrap": "adapter",
          "resolve_device": "distributed", "PyroVAEError": "errors", "DataError": "errors", "ConfigError": "errors",
          "CheckpointError": "errors", "TrainingError": "errors"}

__all__ = list(_NAMES) + ["data", "diagnostics", "estimators", "evaluate", "extended", "hooks", "likelihoods",
                          "networks", "plots", "priors", "quality"]


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
        globals()[name] = value   # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_MODULES) | set(_NAMES))
