"""Run folders and checkpoints: one writer at a time, atomic writes, validated and safe loads.

A run folder holds

* ``config.json`` — the model's :attr:`~pyro_vae.VAE.config` and the training/data settings, enough to
  rebuild the model without running any code from the folder;
* ``checkpoint.pt`` — the state after the last completed epoch: tensors only (weights, optimizer state, RNG
  states) plus plain numbers and lists (epoch, history), loaded with ``torch.load(weights_only=True)`` so
  a crafted file cannot run code (and only when it is torch's zip format: anything else is named for what
  it is), and checked (keys, types, finite weights, optimizer and RNG states torch can take back, epoch =
  history length, config = config.json) before anything is restored from it;
* ``best.pt`` — with early stopping, the weights of the epoch with the best test ELBO (same format); the
  checkpoint keeps them too, and a resumed run writes ``best.pt`` again from it, so a kill between the two
  writes never leaves best weights of an epoch the history does not hold;
* ``metrics.json`` — the history, the final test scores and every later ``pyro-vae evaluate``, merged under
  a lock so that concurrent writers never drop each other's entries;
* pictures, and ``.lock``, which the training process holds (``flock``) while it writes the folder.

Every file is written to a temporary name in the same folder, flushed to disk, then renamed over the old
one, so an interruption leaves either the old complete file or the new complete file.
"""

import math
import numbers
import os
import pickle
import zipfile

import torch

from ..errors import CheckpointError
from ..files import (MAX_JSON_BYTES, MAX_JSON_DEPTH, MAX_JSON_DIGITS, WriteError, atomic_write, is_temporary,  # noqa: F401
                     NOFOLLOW, depth, load_json, regular_file, save_json)

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
FORMAT_VERSION = 1
def save_checkpoint(state, path):
    """Write a checkpoint dict (tensors, numbers, strings, lists, dicts) atomically."""
    atomic_write(path, lambda f: torch.save(state, f))


#: the size of a CPU generator's state (``torch.get_rng_state()``), the same for every torch.Generator
_RNG_BYTES = None


def _is_rng_state(value, cuda=False):
    global _RNG_BYTES
    if not (isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1):
        return False
    if cuda:   # a CUDA generator's state has its own size, which the CUDA runtime checks
        return True
    if _RNG_BYTES is None:
        _RNG_BYTES = torch.get_rng_state().numel()
    return value.numel() == _RNG_BYTES


def _is_rng_states(value):
    return (isinstance(value, dict) and _is_rng_state(value.get("torch")) and _is_rng_state(value.get("shuffle"))
            and ("cuda" not in value or _is_rng_state(value["cuda"], cuda=True)))


def is_number(value, finite=True):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and (not finite or math.isfinite(value))


def _plain(value, depth=0):
    """Whether ``value`` is plain data (numbers, strings, None, tensors, dtypes, and lists/tuples/dicts of them)."""
    if value is None or isinstance(value, (bool, numbers.Number, str, bytes, torch.Tensor, torch.dtype,
                                           torch.device)):
        return True
    if depth < MAX_JSON_DEPTH and isinstance(value, (list, tuple)):
        return all(_plain(v, depth + 1) for v in value)
    if depth < MAX_JSON_DEPTH and isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _plain(v, depth + 1) for k, v in value.items())
    return False


def is_whole(value, low=0):
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_scalar(value):
    """A number, or a tensor holding one (torch keeps a step count or a learning rate either way)."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.dtype.is_complex and value.dtype != torch.bool
    return is_number(value, finite=False)


#: settings of torch's optimizers, as their param_groups hold them: what each must be
_GROUP_NUMBERS = ("lr", "eps", "weight_decay", "momentum", "dampening", "alpha", "lr_decay", "rho",
                  "initial_accumulator_value", "momentum_decay", "lambd", "t0")
_GROUP_FLAGS = ("amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused", "nesterov", "centered",
                "decoupled_weight_decay")


def _group_problem(group):
    params = group.get("params") if isinstance(group, dict) else None
    if not (isinstance(params, list) and all(is_whole(i) for i in params)
            and all(isinstance(k, str) for k in group) and _plain(group)):
        return "its optimizer's parameter groups are malformed"
    for key, value in group.items():
        if (key in _GROUP_NUMBERS and not _is_scalar(value)) \
                or (key in _GROUP_FLAGS and not (value is None or isinstance(value, bool))) \
                or (key == "betas" and not (isinstance(value, (list, tuple)) and len(value) == 2
                                            and all(_is_scalar(b) for b in value))):
            return f"its optimizer setting {key} is {short(value, 40)}"
    return None


def _state_value_problem(key, value, shapes):
    """A value of an optimizer's per-parameter state: a step count, a running average shaped like a weight, or
    (L-BFGS) a list of them."""
    if key == "step":
        return None if _is_scalar(value) else "step"
    if isinstance(value, (list, tuple)):
        return next((key for v in value if v is not None and _state_value_problem(key, v, shapes)), None)
    if isinstance(value, torch.Tensor):
        # running averages (exp_avg, momentum_buffer, ...) are floating tensors shaped like a weight
        if value.dim() and not (value.is_floating_point() and tuple(value.shape) in shapes):
            return key
        return None if value.dim() or _is_scalar(value) else key
    return None if is_number(value, finite=False) else key


def _optimizer_problem(optimizer, model):
    """What is wrong with a ``torch.optim`` state dict, or ``None``: the structure ``load_state_dict`` and the
    next steps rely on (without the optimizer at hand: the settings and state torch's optimizers keep)."""
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
            and isinstance(optimizer.get("param_groups"), list) and optimizer["param_groups"]):
        return "its optimizer state is missing or malformed"
    indices = set()
    for group in optimizer["param_groups"]:
        problem = _group_problem(group)
        if problem:
            return problem
        indices.update(group["params"])
    if len(indices) > len(model):
        return "its optimizer holds more parameters than the model"
    shapes = {tuple(v.shape) for v in model.values()}
    for index, values in optimizer["state"].items():
        if not (is_whole(index) and index in indices and isinstance(values, dict)
                and all(isinstance(k, str) for k in values)):
            return "its optimizer's per-parameter state is malformed"
        bad = next((k for k, v in values.items() if _state_value_problem(k, v, shapes)), None)
        if bad is not None:
            return f"its optimizer's per-parameter state {bad!r:.40} is malformed"
    return None


def _history_problem(history, epoch):
    if not isinstance(history, list) or len(history) != epoch:
        return f"its history has {len(history) if isinstance(history, list) else 'no'} entries for {epoch} epochs"
    for i, record in enumerate(history):
        if not (isinstance(record, dict) and is_whole(record.get("epoch")) and record["epoch"] == i + 1
                and is_number(record.get("train_elbo"))
                and (record.get("test_elbo") is None or is_number(record["test_elbo"]))
                and all(isinstance(k, str) for k in record) and _plain(record)):
            return f"its history entry {i + 1} is not the record of epoch {i + 1}"
    return None


#: what torch's learning-rate schedulers keep (checked where present: a scheduler reads them in every step)
_SCHEDULE_NUMBERS = ("last_epoch", "_step_count", "T_max", "eta_min", "factor", "patience", "cooldown",
                     "cooldown_counter", "best", "num_bad_epochs", "threshold", "eps", "mode_worse", "gamma",
                     "step_size", "T_0", "T_mult", "T_i", "T_cur")
_SCHEDULE_LISTS = ("base_lrs", "_last_lr", "min_lrs")


def _hooks_problem(hooks):
    if not (isinstance(hooks, dict) and all(isinstance(k, str) and isinstance(v, dict) and _plain(v)
                                            for k, v in hooks.items())):
        return "its training-hook states are malformed"
    stopping = hooks.get("early_stopping")
    if stopping:   # what EarlyStopping reads back when resuming
        optional = lambda v: v is None or is_whole(v, 1)  # noqa: E731
        if not (all(k in stopping for k in ("best_elbo", "best_epoch", "bad_epochs", "stopped_at"))
                and (stopping["best_elbo"] is None or is_number(stopping["best_elbo"]))
                and optional(stopping["best_epoch"]) and optional(stopping["stopped_at"])
                and is_whole(stopping["bad_epochs"])):
            return "its early-stopping state is malformed"
    schedule = hooks.get("lr_schedule") or {}
    if not (all(_is_scalar(schedule[k]) for k in _SCHEDULE_NUMBERS if k in schedule)
            and all(isinstance(schedule[k], list) and all(_is_scalar(v) for v in schedule[k])
                    for k in _SCHEDULE_LISTS if k in schedule)):
        return "its learning-rate schedule state is malformed"
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


def _best_weights_problem(hooks, model, epoch):
    """What is wrong with the best epoch's weights early stopping keeps in the checkpoint, or ``None``: they
    must be finite and have the model's names and shapes, and belong to an epoch the history holds."""
    stopping = hooks.get("early_stopping") or {}
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


def load_state(vae, state_dict, where):
    """``vae.load_state_dict`` with a one-line error naming the mismatch (names, shapes, or kinds of number)."""
    own = vae.state_dict()
    for key, value in state_dict.items():
        if key in own and isinstance(value, torch.Tensor) and value.is_floating_point() != own[key].is_floating_point():
            raise CheckpointError(f"checkpoint {where} does not match this model ({key} holds {value.dtype} numbers, "
                                  f"the model {own[key].dtype}); rebuild the model from the run's config.json")
    try:
        vae.load_state_dict(state_dict)
    except (RuntimeError, ValueError, TypeError) as e:
        detail = " ".join(str(e).split())[:200]
        raise CheckpointError(f"checkpoint {where} does not match this model ({detail}); "
                              f"rebuild the model from the run's config.json") from None


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


#: settings a resumed run may change: the number of epochs and processes, the command line, and the two
#: remedies a diverged run needs (a smaller learning rate, gradient clipping)
