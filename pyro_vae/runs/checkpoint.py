"""Checkpoints: written atomically, loaded safely, checked before anything is restored from them.

``checkpoint.pt`` holds the state after the last completed epoch: tensors only (weights, optimizer state, RNG
states) plus plain numbers and lists (epoch, history). It is loaded with ``torch.load(weights_only=True)``, so a
crafted file cannot run code (and only when it is torch's zip format: anything else is named for what it is).
Two checks follow, and nothing is restored unless both pass:

* :func:`load_checkpoint` checks the package's own structure: its keys, the types of its own entries (history,
  RNG states, the training hooks' states), finite weights, epoch = history length, config = config.json, and
  that the optimizer state has the form every ``torch.optim`` state dict has (``state``, ``param_groups``);
* :func:`check_restorable`, which a resumed run calls, loads the optimizer's and the learning-rate schedule's
  states with their own ``load_state_dict`` into throw-away copies and takes one step with them: what those
  states hold is for torch to judge, not a list of torch's field names kept here.

``best.pt`` holds, with early stopping, the weights of the epoch with the best validation ELBO (weights, epoch and
config only).
"""

import copy
import math
import numbers
import os
import pickle
import warnings
import zipfile

import torch

from .. import files
from ..checks import forked_rng
from ..errors import CheckpointError
from ..files import MAX_JSON_DEPTH, depth, regular_file

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
FORMAT_VERSION = 1
#: the keys of the training hooks' states that the checks read (``EarlyStopping.name``, ``LRSchedule.name``)
EARLY_STOPPING = "early_stopping"
SCHEDULE = "lr_schedule"


def save_checkpoint(state, path):
    """Write a checkpoint dict (tensors, numbers, strings, lists, dicts) atomically."""
    files.atomic_write(path, lambda f: torch.save(state, f))


# --- small checks, shared with the run folder -------------------------------------------------------


def is_number(value, finite=True):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and (not finite or math.isfinite(value))


def is_whole(value, low=0):
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def short(value, size=60):
    """``repr(value)`` on one line (a tensor's spans several) and at most ``size`` characters."""
    return " ".join(repr(value).split())[:size]


def _typed(value):
    """``value`` with booleans told apart from numbers (``True == 1`` in Python, not in a config)."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (list, tuple)):
        return [_typed(v) for v in value]
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    return value


def same(saved, current):
    """Whether two configs (JSON values) are equal, a boolean never equal to a number."""
    return _typed(saved) == _typed(current)


def first_difference(saved, current):
    """``"key: saved X, now Y"`` for the first key (in sorted order) whose value differs between two dicts."""
    for key in sorted(set(saved) | set(current), key=str):
        if not same(saved.get(key), current.get(key)):
            return f"{key}: saved {short(saved.get(key))}, now {short(current.get(key))}"
    return "unknown difference"


def _detail(error):
    """An exception as a short line for a message (torch's span several lines)."""
    return f"{type(error).__name__}: {' '.join(str(error).split())[:120]}"


# --- the package's own structure ----------------------------------------------------------------------


def _is_rng_state(value, cuda=False):
    """Whether ``value`` is a generator state torch can take back: a throw-away CPU generator is given it (a
    CUDA generator's state has its own size, which the CUDA runtime checks when it is restored)."""
    if not (isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1):
        return False
    if cuda:
        return True
    try:
        torch.Generator().set_state(value)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def _is_rng_states(value):
    return (isinstance(value, dict) and _is_rng_state(value.get("torch")) and _is_rng_state(value.get("shuffle"))
            and ("cuda" not in value or _is_rng_state(value["cuda"], cuda=True)))


def _is_record(value):
    """A dict with string keys, nested no deeper than a JSON file of the run may be."""
    return isinstance(value, dict) and all(isinstance(k, str) for k in value) and depth(value) <= MAX_JSON_DEPTH


def _history_problem(history, epoch):
    if not isinstance(history, list) or len(history) != epoch:
        return f"its history has {len(history) if isinstance(history, list) else 'no'} entries for {epoch} epochs"
    for i, record in enumerate(history):
        if not (_is_record(record) and is_whole(record.get("epoch")) and record["epoch"] == i + 1
                and is_number(record.get("train_elbo"))
                and all(record.get(key) is None or is_number(record[key])
                        for key in ("test_elbo", "validation_elbo"))):
            return f"its history entry {i + 1} is not the record of epoch {i + 1}"
    return None


def _optimizer_problem(optimizer, model):
    """What is wrong with the form of a ``torch.optim`` state dict, or ``None``: ``param_groups``, a list of
    dicts each listing its parameters' indices under ``params``, and ``state``, per-parameter dicts keyed by
    those indices. What the groups and states hold is checked by :func:`check_restorable`."""
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    if not (isinstance(groups, list) and groups and isinstance(optimizer.get("state"), dict)):
        return "its optimizer state is missing or malformed"
    if not all(isinstance(g, dict) and isinstance(g.get("params"), list) and all(is_whole(i) for i in g["params"])
               for g in groups):
        return "its optimizer's parameter groups are malformed"
    indices = {i for group in groups for i in group["params"]}
    if len(indices) > len(model):
        return "its optimizer holds more parameters than the model"
    if not all(is_whole(index) and index in indices and isinstance(values, dict)
               and all(isinstance(k, str) for k in values) for index, values in optimizer["state"].items()):
        return "its optimizer's per-parameter state is malformed"
    return None


def _hooks_problem(hooks):
    if not (isinstance(hooks, dict) and all(isinstance(k, str) and _is_record(v) for k, v in hooks.items())):
        return "its training-hook states are malformed"
    stopping = hooks.get(EARLY_STOPPING)
    if stopping:   # what EarlyStopping reads back when resuming
        optional = lambda v: v is None or is_whole(v, 1)
        if not (all(k in stopping for k in ("best_elbo", "best_epoch", "bad_epochs", "stopped_at"))
                and (stopping["best_elbo"] is None or is_number(stopping["best_elbo"]))
                and optional(stopping["best_epoch"]) and optional(stopping["stopped_at"])
                and is_whole(stopping["bad_epochs"])):
            return "its early-stopping state is malformed"
    return None


def _best_weights_problem(hooks, model, epoch):
    """What is wrong with the best epoch's weights early stopping keeps in the checkpoint, or ``None``: they
    must be finite and have the model's names and shapes, and belong to an epoch the history holds."""
    stopping = hooks.get(EARLY_STOPPING) or {}
    best_epoch, weights = stopping.get("best_epoch"), stopping.get("best_model")
    if best_epoch is not None and best_epoch > epoch:
        return f"its best epoch {best_epoch} is after its last epoch {epoch}"
    if weights is None:
        return None
    if not (isinstance(weights, dict) and set(weights) == set(model)
            and all(isinstance(v, torch.Tensor) and v.shape == model[k].shape and v.dtype == model[k].dtype
                    for k, v in weights.items())):
        return "its best epoch's weights do not match its model weights"
    if best_epoch is None or best_epoch == epoch:
        return "it keeps best weights without a best epoch before its last one"
    if not all(bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point()):
        return "its best epoch's weights are NaN or infinite"
    return None


def _problem(state, best=False):
    """What is wrong with a loaded checkpoint dict, or ``None``: keys, types, and consistency."""
    if not isinstance(state, dict) or not is_whole(state.get("format")) or state["format"] != FORMAT_VERSION:
        return f"not a pyro_vae checkpoint (format {FORMAT_VERSION})"
    epoch = state.get("epoch")
    if not is_whole(epoch, 1):
        return f"its epoch is {short(epoch, 40)}, not a whole number >= 1"
    model = state.get("model")
    if not (isinstance(model, dict) and model and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                        for k, v in model.items())):
        return "its model weights are missing or not a dict of tensors"
    if not all(bool(torch.isfinite(v).all()) for v in model.values() if v.is_floating_point() or v.is_complex()):
        # training stops before saving broken weights: these were damaged afterwards
        return "its weights are NaN or infinite"
    if not isinstance(state.get("config"), dict) or depth(state["config"]) > MAX_JSON_DEPTH:
        return "its model config is missing or malformed"
    if best:
        return None
    problem = _history_problem(state.get("history"), epoch) or _optimizer_problem(state.get("optimizer"), model)
    if problem:
        return problem
    if not _is_rng_states(state.get("rng")):
        return "its random-number states are missing or malformed"
    ranks = state.get("rng_ranks")
    if ranks is not None and not (isinstance(ranks, list) and all(_is_rng_states(r) for r in ranks)):
        return "its per-process random-number states are malformed"
    return _hooks_problem(state.get("hooks", {})) or _best_weights_problem(state.get("hooks", {}), model, epoch)


# --- loading ------------------------------------------------------------------------------------------

#: what the first bytes of some common files say they are (a PyTorch checkpoint is a zip archive)
_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"\x1f\x8b", "a gzip file"),
          (b"%PDF", "a PDF document"), (b"\x93NUMPY", "a NumPy array"), (b"{", "JSON or text"),
          (b"[", "JSON or text"))


def _not_a_checkpoint(path):
    """Why the file at ``path`` cannot be a checkpoint that ``torch.save`` wrote, from its first bytes (``None``:
    it is a zip archive, as torch.save writes, or a damaged one)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        return f"{path} is empty (truncated or corrupt); delete it to start over, or restore a complete copy"
    if head.startswith(b"PK") or zipfile.is_zipfile(path):
        return None   # a zip archive, or the start of one: torch.load tells whether it is complete
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:
        return (f"refusing to load {path}: it is a plain pickle (or PyTorch's old format), which holds pickled "
                f"objects, not plain tensors; only load checkpoints written by pyro_vae")
    kind = next((what for magic, what in _MAGIC if head.startswith(magic)), None)
    return (f"{path} is not a PyTorch checkpoint file" + (f" (it looks like {kind})" if kind else "")
            + "; restore the run's checkpoint.pt, or delete it to start over")


def load_checkpoint(path, map_location="cpu", config=None, best=False):
    """Load and check a checkpoint written by :func:`save_checkpoint`, refusing anything but plain data.

    :param config: the model config the checkpoint must hold (``config.json``'s ``"vae"`` entry), if known.
    :param bool best: the file is a ``best.pt`` (weights and epoch only, no optimizer or RNG state).
    :raises CheckpointError: missing, truncated or corrupt file, or one that is not a PyTorch checkpoint at all;
        a file holding pickled objects (which could execute code); missing keys, wrong types, NaN weights, an
        epoch that disagrees with the history, or a config that differs from ``config``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}; train first (pyro-vae train) or check the path")
    try:
        regular_file(path)
        # torch.load reads anything that is not a zip archive as a legacy pickle: tell other files apart first
        problem = _not_a_checkpoint(path)
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; restore the run folder") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path} ({e.strerror or e}); check its permissions") from None
    if problem:
        raise CheckpointError(problem)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = " ".join(str(e).split())
        if "global" not in text.lower():   # an unknown opcode or malformed stream: damage, not an object
            raise CheckpointError(f"{path} is truncated or corrupt, or not a checkpoint (its pickled data cannot be "
                                  f"read); delete it to start over, or restore a complete copy") from None
        detail = text[text.find("Unsupported global"):] if "Unsupported global" in text else text
        raise CheckpointError(f"refusing to load {path}: it holds pickled objects, not plain tensors "
                              f"({detail[:120]}); only load checkpoints written by pyro_vae") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError, KeyError, TypeError, IndexError,
            AttributeError, OverflowError, MemoryError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt, or not a checkpoint ({type(e).__name__}); "
                              f"delete it to start over, or restore a complete copy") from None
    problem = _problem(state, best=best)
    if problem:
        raise CheckpointError(f"{path} is damaged: {problem}; restore a complete copy or start a new run")
    if config is not None and not same(state["config"], config):
        raise CheckpointError(f"checkpoint {path} does not match this model: config.json says "
                              f"{first_difference(state['config'], config)}; restore the run's config.json")
    return state


# --- restoring ----------------------------------------------------------------------------------------


def _weights_mismatch(own, saved):
    """How the weights ``saved`` (name -> tensor) differ from a model's ``own`` state dict in what
    ``load_state_dict`` needs (names, shapes, floating or not), or ``None``."""
    missing, unexpected = [k for k in own if k not in saved], [k for k in saved if k not in own]
    if missing or unexpected:
        return (f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}") \
            + (", ..." if len(missing or unexpected) > 3 else "")
    for key, value in saved.items():
        if not isinstance(value, torch.Tensor) or value.shape != own[key].shape:
            return f"{key} has shape {tuple(getattr(value, 'shape', ()))}, the model {tuple(own[key].shape)}"
        if value.is_floating_point() != own[key].is_floating_point():
            return f"{key} holds {value.dtype} numbers, the model {own[key].dtype}"
    return None


def _mismatch_error(where, detail):
    return CheckpointError(f"checkpoint {where} does not match this model ({detail}); rebuild the model from the "
                           f"run's config.json")


def load_state(vae, state_dict, where):
    """``vae.load_state_dict`` with a one-line error naming the mismatch (names, shapes, or kinds of number),
    found before any weight is copied."""
    detail = _weights_mismatch(vae.state_dict(), state_dict)
    if detail:
        raise _mismatch_error(where, detail)
    try:
        vae.load_state_dict(state_dict)
    except (RuntimeError, ValueError, TypeError) as e:
        raise _mismatch_error(where, " ".join(str(e).split())[:200]) from None


def _trial_step(optimizer):
    """One step of ``optimizer`` (a throw-away copy) with zero gradients: what the first step of a resumed run
    reads of its state (step counts, running averages shaped like their weights, the groups' settings)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    optimizer.step(lambda: torch.zeros(()))


#: what a ``load_state_dict`` or a step given a damaged or foreign state raises
_LOAD_ERRORS = (ValueError, KeyError, RuntimeError, TypeError, IndexError, AttributeError, ZeroDivisionError,
                OverflowError)


def check_restorable(state, vae, optimizer, scheduler=None, where="the checkpoint"):
    """Refuse, before anything is restored, a checkpoint whose states would not load or not run.

    ``state`` is a checkpoint checked by :func:`load_checkpoint`. Its weights must fit ``vae`` (names, shapes,
    kinds of number), and its optimizer state and learning-rate schedule state must load, with their own
    ``load_state_dict``, into throw-away copies -- a deep copy of ``optimizer`` (over copies of its parameters)
    and ``scheduler(copy)`` -- which then take one step each, as the first epoch will. Neither ``vae`` nor
    ``optimizer`` changes, nor the random streams; after this, restoring the same states into them succeeds.

    :param optimizer: the run's ``torch.optim`` optimizer, not yet restored.
    :param scheduler: the run's ``optimizer -> lr_scheduler`` factory, or ``None`` when the run has no schedule.
    :param where: the checkpoint's path, for the messages.
    :raises CheckpointError: one line naming what does not load.
    """
    detail = _weights_mismatch(vae.state_dict(), state["model"])
    if detail:
        raise _mismatch_error(where, detail)
    schedule = (state.get("hooks") or {}).get(SCHEDULE)
    if schedule and scheduler is None:
        raise CheckpointError(f"{where} is damaged: it holds a learning-rate schedule state, but the run has no "
                              f"schedule; restore a complete copy or start a new run")

    def refused(what, error):
        return CheckpointError(f"the {what} state in {where} does not load into this {what} ({_detail(error)}); "
                               f"resume with the {what} the run was trained with, or restore a complete copy")

    trial = copy.deepcopy(optimizer)
    device = next(iter(vae.parameters()), torch.zeros(())).device
    with forked_rng(device), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # e.g. a schedule stepped before its optimizer: of no matter in a copy
        try:
            # copies: load_state_dict keeps the tensors it is given (on their device), which the step changes
            trial.load_state_dict(copy.deepcopy(state["optimizer"]))
        except _LOAD_ERRORS as e:
            raise refused("optimizer", e) from None
        # the factory's own errors are the run's (LRSchedule names them), not the checkpoint's
        trial_scheduler = scheduler(trial) if schedule else None
        stepped = hasattr(trial_scheduler, "load_state_dict") and hasattr(trial_scheduler, "step")
        try:
            if stepped:
                trial_scheduler.load_state_dict(copy.deepcopy(schedule))
        except _LOAD_ERRORS as e:
            raise refused("learning-rate schedule", e) from None
        try:
            _trial_step(trial)
        except _LOAD_ERRORS as e:
            raise refused("optimizer", e) from None
        try:
            if stepped and isinstance(trial_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                trial_scheduler.step(0.0)
            elif stepped:
                trial_scheduler.step()
        except _LOAD_ERRORS as e:
            raise refused("learning-rate schedule", e) from None
