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

import contextlib
import json
import math
import numbers
import os
import pickle
import re
import stat
import tempfile
import zipfile

import torch

from .errors import CheckpointError
from .model import build_vae
from .util import model_budget

try:
    import fcntl
except ImportError:   # not POSIX: runs are not locked (see RunFolder.lock)
    fcntl = None

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
CONFIG = "config.json"
METRICS = "metrics.json"
LOCK = ".lock"
METRICS_LOCK = ".metrics.lock"
#: the files of a run folder that nothing else may be written over
RUN_FILES = (CONFIG, CHECKPOINT, BEST, METRICS, LOCK, METRICS_LOCK)
#: the pictures a training run draws into its folder (``plots.save_all``, diagnostics), which ``pyro-vae sample``
#: never writes over
RUN_PICTURES = ("reconstructions.png", "samples.png", "latent_scatter.png", "curves.png", "latent_manifold.png",
                "interpolation.png", "traversal.png", "diagnostics.png", "posterior-predictive.png")
#: what else a run's commands write into its folder: removed with the run when a new one replaces it
_RUN_OUTPUTS = (re.compile(r"samples-epoch\d+-seed\d+\.png"), re.compile(r"explorer\.html"))
#: the default TensorBoard folder of ``pyro-vae train --tensorboard``, and the files TensorBoard writes in it
TENSORBOARD = "tensorboard"
_TENSORBOARD_FILE = re.compile(r"events\.out\.tfevents\..+")
FORMAT_VERSION = 1
#: a config.json or metrics.json larger than this is not one pyro_vae wrote
MAX_JSON_BYTES = 64 * 2 ** 20
#: nor one nested deeper than this (pyro_vae's are a few levels deep; deep nesting breaks comparisons and repr)
MAX_JSON_DEPTH = 64
#: nor one holding an integer with more digits than this (a float could not hold it)
MAX_JSON_DIGITS = 300
#: temporary files of writers that did not finish: ``_atomic_write``'s, and those of pictures and pages
_TEMPORARY = (re.compile(r"\.tmp-.*"), re.compile(r"\..+\.[a-z0-9_]{8}\.tmp"))
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def is_temporary(name):
    """Whether the file name ``name`` (no folder) is one of :data:`_TEMPORARY`: a writer's unfinished file."""
    return any(p.fullmatch(name) for p in _TEMPORARY)


class WriteError(CheckpointError):
    """A file of a run folder could not be written (disk full, quota, a folder removed); the previous version of
    the file is intact."""


def _atomic_write(path, write):
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    except OSError as e:
        raise WriteError(f"cannot write {path} ({e.strerror or e}); choose a writable folder") from None
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
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):   # disk full, quota, a folder removed under us: the old file is intact
            raise WriteError(f"could not write {path} ({e.strerror or e}); the previous version is kept: "
                             f"free disk space (or fix the folder) and try again") from None
        if isinstance(e, RuntimeError) and "write" in str(e).lower():   # torch.save wraps its write errors
            raise WriteError(f"could not write {path} ({' '.join(str(e).split())[:120]}); the previous "
                             f"version is kept: free disk space and try again") from None
        raise
    # make the rename itself durable (some file systems cannot sync a folder: the file is in place anyway)
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def save_json(obj, path):
    """Write ``obj`` as indented JSON, atomically."""
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"))


def _regular_file(path):
    """``os.stat`` of ``path``, refusing what is not a regular file (a FIFO would block the reader forever)."""
    info = os.stat(path)
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(path)
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path} is not a regular file; restore the run folder")
    return info


def _parse_int(text):
    if len(text.lstrip("-")) > MAX_JSON_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def _depth(value):
    """How deeply lists and dicts nest in ``value`` (iteratively: a deep value must not exhaust the stack)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                todo.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def load_json(path):
    """Read a JSON file of a run folder.

    :raises CheckpointError: missing, unreadable, not a regular file, larger than :data:`MAX_JSON_BYTES`, not
        JSON, nested deeper than :data:`MAX_JSON_DEPTH` or holding integers longer than :data:`MAX_JSON_DIGITS`.
    """
    path = os.fspath(path)
    try:
        if _regular_file(path).st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path} is larger than {MAX_JSON_BYTES // 2 ** 20} MiB, so pyro_vae did not write "
                                  f"it; restore it or start a new run")
        with open(path, encoding="utf-8") as f:
            value = json.load(f, parse_int=_parse_int)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; is this a pyro-vae run folder?") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a file; restore the run folder") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path} ({e.strerror or e}); check its permissions") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        # ValueError covers JSONDecodeError and over-long numbers; RecursionError deep nesting
        detail = " ".join(str(e).split())[:100] or type(e).__name__
        raise CheckpointError(f"{path} is not valid JSON ({detail}); restore it or start a new run") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{path} nests more than {MAX_JSON_DEPTH} levels deep, so pyro_vae did not write it; "
                              f"restore it or start a new run")
    return value


def save_checkpoint(state, path):
    """Write a checkpoint dict (tensors, numbers, strings, lists, dicts) atomically."""
    _atomic_write(path, lambda f: torch.save(state, f))


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


def _is_number(value, finite=True):
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


def _is_whole(value, low=0):
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_scalar(value):
    """A number, or a tensor holding one (torch keeps a step count or a learning rate either way)."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.dtype.is_complex and value.dtype != torch.bool
    return _is_number(value, finite=False)


#: settings of torch's optimizers, as their param_groups hold them: what each must be
_GROUP_NUMBERS = ("lr", "eps", "weight_decay", "momentum", "dampening", "alpha", "lr_decay", "rho",
                  "initial_accumulator_value", "momentum_decay", "lambd", "t0")
_GROUP_FLAGS = ("amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused", "nesterov", "centered",
                "decoupled_weight_decay")


def _group_problem(group):
    params = group.get("params") if isinstance(group, dict) else None
    if not (isinstance(params, list) and all(_is_whole(i) for i in params)
            and all(isinstance(k, str) for k in group) and _plain(group)):
        return "its optimizer's parameter groups are malformed"
    for key, value in group.items():
        if (key in _GROUP_NUMBERS and not _is_scalar(value)) \
                or (key in _GROUP_FLAGS and not (value is None or isinstance(value, bool))) \
                or (key == "betas" and not (isinstance(value, (list, tuple)) and len(value) == 2
                                            and all(_is_scalar(b) for b in value))):
            return f"its optimizer setting {key} is {_short(value, 40)}"
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
    return None if _is_number(value, finite=False) else key


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
        if not (_is_whole(index) and index in indices and isinstance(values, dict)
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
        if not (isinstance(record, dict) and _is_whole(record.get("epoch")) and record["epoch"] == i + 1
                and _is_number(record.get("train_elbo"))
                and (record.get("test_elbo") is None or _is_number(record["test_elbo"]))
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
        optional = lambda v: v is None or _is_whole(v, 1)  # noqa: E731
        if not (all(k in stopping for k in ("best_elbo", "best_epoch", "bad_epochs", "stopped_at"))
                and (stopping["best_elbo"] is None or _is_number(stopping["best_elbo"]))
                and optional(stopping["best_epoch"]) and optional(stopping["stopped_at"])
                and _is_whole(stopping["bad_epochs"])):
            return "its early-stopping state is malformed"
    schedule = hooks.get("lr_schedule") or {}
    if not (all(_is_scalar(schedule[k]) for k in _SCHEDULE_NUMBERS if k in schedule)
            and all(isinstance(schedule[k], list) and all(_is_scalar(v) for v in schedule[k])
                    for k in _SCHEDULE_LISTS if k in schedule)):
        return "its learning-rate schedule state is malformed"
    return None


def _problem(state, best=False):
    """What is wrong with a loaded checkpoint dict, or ``None``: keys, types, and consistency."""
    if not isinstance(state, dict) or not _is_whole(state.get("format")) or state["format"] != FORMAT_VERSION:
        return f"not a pyro_vae checkpoint (format {FORMAT_VERSION})"
    epoch = state.get("epoch")
    if not _is_whole(epoch, 1):
        return f"its epoch is {_short(epoch, 40)}, not a whole number >= 1"
    model = state.get("model")
    if not (isinstance(model, dict) and model and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                        for k, v in model.items())):
        return "its model weights are missing or not a dict of tensors"
    if not all(bool(torch.isfinite(v).all()) for v in model.values() if v.is_floating_point() or v.is_complex()):
        # training stops before saving broken weights: these were damaged afterwards
        return "its weights are NaN or infinite"
    if not isinstance(state.get("config"), dict) or _depth(state["config"]) > MAX_JSON_DEPTH:
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
        _regular_file(path)
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
    if config is not None and not _same(state["config"], config):
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


def _short(value, size=60):
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


def _same(saved, current):
    """Whether two configs (JSON values) are equal, a boolean never equal to a number."""
    return _typed(saved) == _typed(current)


def first_difference(saved, current):
    """``"key: saved X, now Y"`` for the first key (in sorted order) whose value differs between two dicts."""
    for key in sorted(set(saved) | set(current), key=str):
        if not _same(saved.get(key), current.get(key)):
            return f"{key}: saved {_short(saved.get(key))}, now {_short(current.get(key))}"
    return "unknown difference"


#: settings a resumed run may change: the number of epochs and processes, the command line, and the two
#: remedies a diverged run needs (a smaller learning rate, gradient clipping)
CHANGEABLE = ("epochs", "world_size", "lr", "clip_norm")
#: what config.json may hold for them
_CHANGEABLE_TYPES = {
    "epochs": lambda v: _is_whole(v, 1),
    "world_size": lambda v: _is_whole(v, 1),
    "lr": lambda v: _is_number(v) and v > 0,
    "clip_norm": lambda v: v is None or (_is_number(v) and v > 0),
}


class RunFolder:
    """The folder of one training run: the rules for starting, resuming and replacing a run in it, the lock
    that keeps a second writer out, and atomic reads and writes of its files.

    :param path: the folder.
    :param bool main: whether this process writes (rank 0); the others only read.
    """

    def __init__(self, path, main=True):
        self.path = os.fspath(path)
        self.main = main
        self._lock_fd = None
        #: the checked checkpoint that :meth:`open` found when resuming
        self.resumed_state = None

    def file(self, name):
        return os.path.join(self.path, name)

    def has(self, name):
        return os.path.exists(self.file(name))

    def is_run(self):
        """Whether the folder holds a pyro_vae run (a checkpoint, or a config.json with a model in it)."""
        if self.has(CHECKPOINT):
            return True
        if not self.has(CONFIG):
            return False
        try:
            return isinstance(load_json(self.file(CONFIG)).get("vae"), dict)
        except (CheckpointError, AttributeError):
            return False

    # --- the lock -------------------------------------------------------------------------------

    def lock(self):
        """Take the folder's lock for this process, or raise :class:`CheckpointError` if another process holds it.

        The lock is ``flock`` on ``.lock``: the kernel releases it when its holder exits, however it exits
        (``kill -9`` included), so a killed run never leaves a stale lock; the file records the holder's pid
        for the message. Without ``fcntl`` (not a POSIX system) runs are not locked.
        """
        if fcntl is None or self._lock_fd is not None:
            return
        fd = os.open(self.file(LOCK), os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            # flock locks belong to an open file, so another RunFolder of this process is refused too
            who = "another RunFolder of this process" if holder == str(os.getpid()) else "another pyro-vae process"
            raise CheckpointError(f"{self.path} is in use by {who} (pid {holder}); wait for it to finish, or choose "
                                  f"another folder") from None
        # written over the old pid, then cut to length: a refused process never reads an empty file
        pid = f"{os.getpid()}\n".encode()
        os.pwrite(fd, pid, 0)
        os.ftruncate(fd, len(pid))
        self._lock_fd = fd

    def release(self):
        """Give the lock back (the file stays: removing it would let two later writers lock two files)."""
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextlib.contextmanager
    def _metrics_lock(self):
        # a separate, short lock: `pyro-vae evaluate` adds to metrics.json while a training run holds .lock
        if fcntl is None:
            yield
            return
        try:
            fd = os.open(self.file(METRICS_LOCK), os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
        except OSError as e:
            raise WriteError(f"cannot write the metrics of {self.path} ({e.strerror or e}); check the folder's "
                             f"permissions") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- starting or resuming a training run ------------------------------------------------------

    def open(self, config, resume=False, overwrite=False):
        """Take the folder for a run described by ``config`` (``{"vae": ..., "fit": ..., ...}``); main process only.

        A new run needs an empty folder, a new one, or (with ``overwrite``) one holding a run, whose
        checkpoint, best weights and metrics are deleted first; ``resume`` needs a checkpoint and the same
        model and settings except :data:`CHANGEABLE`, whose changes are recorded in config.json under
        ``"changes"``; the checkpoint, checked, is then :attr:`resumed_state` (metrics.json is checked too).
        A folder of other files is refused before anything is written to it (the lock file included); a new
        run removes the best weights and metrics a vanished run left; leftover temporary files of killed
        writers are removed. Writes config.json. The lock is held on success and given back on failure.

        :returns: the config as written.
        :raises CheckpointError: the folder is a file, not writable, locked by another process, holds files
            that are not a run, holds a run (neither ``resume`` nor ``overwrite``), or does not hold the run
            being resumed.
        """
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise CheckpointError(f"{self.path} is a file, not a folder; choose another output folder")
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"cannot create output folder {self.path} ({e.strerror or e}); "
                                  f"choose a writable folder") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise CheckpointError(f"output folder {self.path} is not writable; choose a writable folder")
        # someone else's folder is refused before anything is written to it (not even the lock file) ...
        self._refuse_foreign()
        held = self._lock_fd is not None
        try:
            self.lock()
        except OSError as e:   # e.g. a read-only or special file system (/proc)
            raise CheckpointError(f"cannot use {self.path} as a run folder ({e.strerror or e}); "
                                  f"choose a writable folder") from None
        try:
            self._refuse_foreign()   # ... and checked again under the lock, as the folder may have changed
            return self._open_locked(config, resume, overwrite)
        except BaseException:
            if not held:
                self.release()
            raise

    def _temporary_files(self):
        try:
            return [n for n in os.listdir(self.path) if is_temporary(n)]
        except OSError:
            return []

    def _refuse_foreign(self):
        """:class:`CheckpointError` if the folder holds files but no run (temporary files and locks aside)."""
        try:
            names = os.listdir(self.path)
        except OSError as e:
            raise CheckpointError(f"cannot read output folder {self.path} ({e.strerror or e}); choose another "
                                  f"folder") from None
        others = [n for n in names if n not in (LOCK, METRICS_LOCK) and not is_temporary(n)]
        if others and not self.is_run():
            shown = ", ".join(sorted(others)[:3]) + (", ..." if len(others) > 3 else "")
            raise CheckpointError(f"{self.path} holds files that are not a pyro-vae run ({shown}); choose an empty "
                                  f"or new output folder")

    def _remove(self, name):
        try:
            os.remove(self.file(name))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise CheckpointError(f"cannot remove {self.file(name)} ({e.strerror or e}); remove it yourself or "
                                  f"choose another folder") from None

    def _old_outputs(self):
        try:
            return [n for n in os.listdir(self.path) if any(p.fullmatch(n) for p in _RUN_OUTPUTS)]
        except OSError:
            return []

    def _remove_tensorboard(self):
        """The old run's TensorBoard log, when the folder holds nothing else (a new run would add to its curves)."""
        folder = self.file(TENSORBOARD)
        if os.path.islink(folder) or not os.path.isdir(folder):
            return
        try:
            names = os.listdir(folder)
            if all(_TENSORBOARD_FILE.fullmatch(n) and os.path.isfile(os.path.join(folder, n)) for n in names):
                for name in names:
                    os.remove(os.path.join(folder, name))
                os.rmdir(folder)
        except OSError as e:
            raise CheckpointError(f"cannot remove the old TensorBoard log {folder} ({e.strerror or e}); remove it "
                                  f"yourself or choose another folder") from None

    def _open_locked(self, config, resume, overwrite):
        for name in self._temporary_files():
            self._remove(name)   # with the lock held, no writer is alive to finish them
        if self.has(CHECKPOINT) and not (resume or overwrite):
            raise CheckpointError(f"{self.path} already holds a run; pass resume=True (--resume) to continue it "
                                  f"or overwrite=True (--overwrite) to start afresh")
        if resume:
            if not self.has(CHECKPOINT):
                raise CheckpointError(f"nothing to resume in {self.path}: it holds no checkpoint (none is written "
                                      f"before the first epoch ends); check the folder, or start the run without "
                                      f"resume (--resume)")
            config = self._resumed_config(config)
            self.read_metrics()   # damage found now, not after an epoch of training
        else:
            # the old run's files go before anything new is written: a new run that fails in its first epoch
            # must not leave the old checkpoint beside its own config.json, where resume would pick it up (and
            # without a checkpoint, best weights and metrics are those of a run that is gone)
            for name in (CHECKPOINT, BEST, METRICS, *RUN_PICTURES, *self._old_outputs()):
                self._remove(name)
            self._remove_tensorboard()
        save_json(config, self.file(CONFIG))
        return config

    def _resumed_config(self, config):
        saved = self.config()
        self.resumed_state = load_checkpoint(self.file(CHECKPOINT), config=saved["vae"])
        done = self.resumed_state["epoch"]
        now = json.loads(json.dumps(config))   # compared as JSON, as they were saved (tuples become lists)
        if saved.get("vae") is not None and not _same(saved["vae"], now.get("vae")):
            raise CheckpointError(f"the run in {self.path} was made with a different model "
                                  f"({first_difference(saved['vae'], now['vae'])}); use another folder or --overwrite")
        old_fit, new_fit = saved.get("fit", {}), now.get("fit", {})
        if not isinstance(old_fit, dict):
            raise CheckpointError(f"{self.file(CONFIG)} has no fit settings; restore it")
        # the settings a resume may change are not compared below: what config.json says of them must be sane
        for key, ok in _CHANGEABLE_TYPES.items():
            if key in old_fit and not ok(old_fit[key]):
                raise CheckpointError(f"{self.file(CONFIG)} is damaged: its fit setting {key} is "
                                      f"{_short(old_fit[key], 40)}; restore it")
        changes = saved.get("changes", [])
        if not (isinstance(changes, list) and all(isinstance(c, dict) for c in changes)):
            raise CheckpointError(f"{self.file(CONFIG)} is damaged: its 'changes' entry is not a list of changes; "
                                  f"restore it")
        fixed = [({k: v for k, v in old_fit.items() if k not in CHANGEABLE},
                  {k: v for k, v in new_fit.items() if k not in CHANGEABLE}),
                 ({k: v for k, v in saved.items() if k not in ("vae", "fit", "cli", "changes")},
                  {k: v for k, v in now.items() if k not in ("vae", "fit", "cli", "changes")})]
        for old, new in fixed:
            if saved and not _same(old, new):
                raise CheckpointError(f"the run in {self.path} was trained with other settings "
                                      f"({first_difference(old, new)}); resume with the same ones, "
                                      f"or start a new run in another folder")
        if new_fit.get("epochs", done) < done:
            # config.json would then claim fewer epochs than the checkpoint holds
            raise CheckpointError(f"the run in {self.path} has already trained {done} epochs; resume with epochs "
                                  f"(--epochs) of at least {done}")
        changes = list(changes)
        for key in ("lr", "clip_norm"):
            if key in old_fit and not _same(old_fit.get(key), new_fit.get(key)):
                if key == "lr" and new_fit.get("scheduler") is not None:
                    raise CheckpointError(f"the run in {self.path} follows a learning-rate schedule, which sets the "
                                          f"rate itself; resume with the same lr ({old_fit['lr']})")
                changes.append({"setting": key, "saved": old_fit.get(key), "now": new_fit.get(key),
                                "from_epoch": done + 1})
        return {**now, "changes": changes} if changes else now

    # --- checkpoints ----------------------------------------------------------------------------

    def config(self):
        """config.json as a dict (:class:`CheckpointError` if missing or not a run's config)."""
        config = load_json(self.file(CONFIG))
        if not isinstance(config, dict) or not isinstance(config.get("vae"), dict):
            raise CheckpointError(f"{self.file(CONFIG)} has no 'vae' entry; it was not written by pyro_vae")
        return config

    def load_checkpoint(self, best=False):
        """The checked ``checkpoint.pt`` (or ``best.pt``), its config compared with config.json's, on the CPU."""
        return load_checkpoint(self.file(BEST if best else CHECKPOINT), config=self.config()["vae"], best=best)

    def save_checkpoint(self, state, best=False):
        if self.main:
            save_checkpoint(state, self.file(BEST if best else CHECKPOINT))

    # --- metrics.json ---------------------------------------------------------------------------

    def read_metrics(self):
        """metrics.json as a dict (``{}`` if there is none yet); :class:`CheckpointError` if it is damaged."""
        metrics = load_json(self.file(METRICS)) if self.has(METRICS) else {}
        if not isinstance(metrics, dict):
            raise CheckpointError(f"{self.file(METRICS)} is not a metrics file; delete or restore it")
        for key, kind in (("history", list), ("evaluations", list), ("test", dict)):
            if key in metrics and not (isinstance(metrics[key], kind) and (
                    kind is dict or all(isinstance(entry, dict) for entry in metrics[key]))):
                raise CheckpointError(f"{self.file(METRICS)} is damaged (its {key!r} entry is not a "
                                      f"{'list of records' if kind is list else 'record'}); delete or restore it")
        return metrics

    def update_metrics(self, update):
        """Read metrics.json, apply ``update(metrics) -> None`` to it and write it back, under a lock shared by
        every writer, so a concurrent writer's entries (``pyro-vae evaluate`` during training) are kept."""
        if not self.main:
            return
        with self._metrics_lock():
            metrics = self.read_metrics()
            update(metrics)
            save_json(metrics, self.file(METRICS))


def refuse_run_file(path, pictures=False):
    """Raise :class:`CheckpointError` if writing ``path`` would replace a file of a run folder (its checkpoint,
    config, metrics or lock; with ``pictures``, also the pictures training drew, :data:`RUN_PICTURES`): the
    outputs of ``pyro-vae sample``/``explore`` never go over them."""
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    if (name in RUN_FILES or (pictures and name in RUN_PICTURES)) and RunFolder(folder, main=False).is_run():
        what = "pictures training drew" if name in RUN_PICTURES else "own files"
        raise CheckpointError(f"{path} is one of the run's {what}; choose another output name")


def load_run(run_dir, device="cpu", model_class=None, best=True, **parts):
    """Rebuild the trained model of a run folder.

    :param str run_dir: folder written by ``fit(checkpoint_dir=...)`` or ``pyro-vae train``.
    :param device: where to put the model.
    :param model_class: your own model class (a :class:`~pyro_vae.VAE` subclass) when the run trained one;
        this package's models are found by the name in config.json.
    :param bool best: load the best epoch's weights (``best.pt``, written by early stopping) when the folder
        has them; ``False``, or a folder without them, loads the last epoch's (``checkpoint.pt``).
    :param parts: modules for parts the config records as your own (``encoder=...``, ``decoder=...``, ...).
    :returns: ``(vae, config, state)``: the model in eval mode, the run's config dict, the checkpoint dict
        (``state["epoch"]`` is the epoch whose weights were loaded).
    :raises CheckpointError: a missing folder, or a config.json or checkpoint that is missing, damaged, not
        pyro_vae's, or that disagree (see :func:`load_checkpoint`).
    :raises ConfigError: a config that names classes that are not this package's, or sizes it refuses.
    """
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise CheckpointError(f"run folder {run_dir} does not exist; train first with pyro-vae train --out {run_dir}")
    folder = RunFolder(run_dir, main=False)
    config = folder.config()
    with model_budget():   # a config.json can name sizes no machine holds: refused before allocating
        vae = build_vae(config["vae"], model_class=model_class, **parts)
    use_best = best and folder.has(BEST)
    state = folder.load_checkpoint(best=use_best)
    # (load_checkpoint has refused NaN or infinite weights)
    load_state(vae, state["model"], folder.file(BEST if use_best else CHECKPOINT))
    return vae.to(device).eval(), config, state

