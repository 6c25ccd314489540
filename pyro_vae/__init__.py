"""pyro_vae: variational autoencoders (Kingma & Welling, Auto-Encoding Variational Bayes) in Pyro.

Quick start::

    import pyro_vae as pv
    train, test = pv.data.load("mnist5k", binarize="dynamic")
    vae = pv.VAE(image_shape=(1, 28, 28), latent_dim=50)
    history = pv.fit(vae, train, test=test, epochs=50)
    nll = -pv.evaluate.log_likelihood(vae, test, num_samples=1000)   # nats per image
"""

from . import checkpoint, data, distributed, evaluate, guides, likelihoods, networks, plots, priors
from . import extended  # registers ConditionalVAE, M2, HierarchicalVAE for build_vae / load_run
from .checkpoint import load_run
from .errors import CheckpointError, ConfigError, DataError, PyroVAEError, TrainingError
from .model import VAE, build_vae
from .train import fit, resolve_device

__version__ = "0.1.0"

__all__ = [
    "VAE", "build_vae", "fit", "load_run", "resolve_device",
    "data", "evaluate", "likelihoods", "networks", "priors",
    "PyroVAEError", "DataError", "ConfigError", "CheckpointError", "TrainingError",
]
