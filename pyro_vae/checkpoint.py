"""Run folders and checkpoints: atomic writes, safe loads, no pickled objects.

A run folder holds

* ``config.json`` — the model's :attr:`~pyro_vae.VAE.config` (and the training/data settings), enough to
  rebuild the model without running any code from the folder;
* ``checkpoint.pt`` — tensors only (weights, optimizer state, RNG states) plus plain numbers and lists
  (epoch, history), loaded with ``torch.load(weights_only=True)`` so a crafted file cannot run code.

Every file is written to a temporary name in the same folder, flushed to disk, then renamed over the old
one, so an interruption leaves either the old complete file or the new complete file.
"""

import json
import os
import pickle
import tempfile
import zipfile

import torch

from .errors import CheckpointError
from .model import build_vae

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.json"
FORMAT_VERSION = 1


def _atomic_write(path, write):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        # mkstemp makes the file private (0600) and the rename keeps that: give it the mode any new file
        # gets (0644 under the usual umask), so others who may read the folder can read the run
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    # make the rename itself durable
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_json(obj, path):
    """Write ``obj`` as indented JSON, atomically."""
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"))


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; is this a pyro-vae run folder?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); restore it or start a new run") from None


def save_checkpoint(state, path):
    """Write a checkpoint dict (tensors, numbers, strings, lists, dicts) atomically."""
    _atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint written by :func:`save_checkpoint`, refusing anything but plain data.

    :raises CheckpointError: missing, truncated or corrupt file, or a file holding pickled objects
        (which could execute code).
    """
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}; train first (pyro-vae train) or check the path")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"refusing to load {path}: it holds pickled objects, not plain tensors "
                              f"({first[:120]}); only load checkpoints written by pyro_vae") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({type(e).__name__}); "
                              f"delete it to start over, or restore a complete copy") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION or "model" not in state:
        raise CheckpointError(f"{path} is not a pyro_vae checkpoint (format {FORMAT_VERSION})")
    return state


def load_state(vae, state_dict, where):
    """``vae.load_state_dict`` with a one-line error naming the mismatch."""
    try:
        vae.load_state_dict(state_dict)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:200]
        raise CheckpointError(f"checkpoint {where} does not match this model ({detail}); "
                              f"rebuild the model from the run's config.json") from None


def load_run(run_dir, device="cpu", encoder=None, decoder=None):
    """Rebuild the trained model of a run folder.

    :param str run_dir: folder written by ``fit(checkpoint_dir=...)`` or ``pyro-vae train``.
    :param device: where to put the model.
    :param encoder: pass the network again if the run used a custom encoder; likewise ``decoder``.
    :returns: ``(vae, config, state)``: the model in eval mode, the run's config dict, the checkpoint dict.
    """
    if not os.path.isdir(run_dir):
        raise CheckpointError(f"run folder {run_dir} does not exist; train first with pyro-vae train --out {run_dir}")
    config = load_json(os.path.join(run_dir, CONFIG))
    if "vae" not in config:
        raise CheckpointError(f"{os.path.join(run_dir, CONFIG)} has no 'vae' entry; it was not written by pyro_vae")
    vae = build_vae(config["vae"], encoder=encoder, decoder=decoder)
    path = os.path.join(run_dir, CHECKPOINT)
    state = load_checkpoint(path)
    load_state(vae, state["model"], path)
    return vae.to(device).eval(), config, state
