"""Run folders and checkpoints: what a training run leaves on disk, and how it is read back.

``pv.checkpoint`` is this package: besides its own names it gives the file helpers the old checkpoint module
gave (:mod:`pyro_vae.files`, where they live now).
"""

from ..files import MAX_JSON_BYTES, WriteError, load_json, save_json
from .checkpoint import (BEST, CHECKPOINT, check_restorable, load_checkpoint, load_state,
                         save_checkpoint)
from .folder import CONFIG, METRICS, RunFolder, load_run, refuse_run_file

__all__ = ["BEST", "CHECKPOINT", "CONFIG", "MAX_JSON_BYTES", "METRICS", "RunFolder", "WriteError", "check_restorable",
           "load_checkpoint", "load_json", "load_run", "load_state", "refuse_run_file", "save_checkpoint", "save_json"]
