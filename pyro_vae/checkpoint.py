"""Run folders and checkpoints: one writer at a time, atomic writes, validated and safe loads.

A run folder holds

* ``config.json`` — the model's :attr:`~pyro_vae.VAE.config` and the training/data settings, enough to
  rebuild the model without running any code from the folder;
* ``checkpoint.pt`` — the state after the last completed epoch: tensors only (weights, optimizer state, RNG
  states) plus plain numbers and lists (epoch, history), loaded with ``torch.load(weights_only=True)`` so
  a crafted file cannot run code, and checked (keys, types, epoch = history length, config = config.json)
  before anything is restored from it;
* ``best.pt`` — with early stopping, the weights of the epoch with the best test ELBO (same format);
* ``metrics.json`` — the history, the final test scores and every later ``pyro-vae evaluate``, merged under
  a lock so that concurrent writers never drop each other's entries;
* pictures, and ``.lock``, which the training process holds (``flock``) while it writes the folder.

Every file is written to a temporary name in the same folder, flushed to disk, then renamed over the old
one, so an interruption leaves either the old complete file or the new complete file.
"""

import contextlib
import glob
import json
import os
import pickle
import tempfile
import zipfile

import torch

from .errors import CheckpointError
from .model import build_vae

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
FORMAT_VERSION = 1
#: a config.json or metrics.json larger than this is not one pyro_vae wrote
MAX_JSON_BYTES = 64 * 2 ** 20


def _atomic_write(path, write):
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    except OSError as e:
        raise CheckpointError(f"cannot write {path} ({e.strerror or e}); choose a writable folder") from None
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
            raise CheckpointError(f"could not write {path} ({e.strerror or e}); the previous version is kept: "
                                  f"free disk space (or fix the folder) and try again") from None
        if isinstance(e, RuntimeError) and "write" in str(e).lower():   # torch.save wraps its write errors
            raise CheckpointError(f"could not write {path} ({' '.join(str(e).split())[:120]}); the previous "
                                  f"version is kept: free disk space and try again") from None
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
    """Read a JSON file of a run folder.

    :raises CheckpointError: missing, unreadable, too large, not JSON, or nested/numbered beyond what
        Python's parser takes.
    """
    path = os.fspath(path)
    try:
        if os.path.getsize(path) > MAX_JSON_BYTES:
            raise CheckpointError(f"{path} is larger than {MAX_JSON_BYTES // 2 ** 20} MiB, so pyro_vae did not write "
                                  f"it; restore it or start a new run")
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; is this a pyro-vae run folder?") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a file; restore the run folder") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path} ({e.strerror or e}); check its permissions") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        # ValueError covers JSONDecodeError and numbers too long for int(); RecursionError deep nesting
        detail = " ".join(str(e).split())[:100] or type(e).__name__
        raise CheckpointError(f"{path} is not valid JSON ({detail}); restore it or start a new run") from None


def save_checkpoint(state, path):
    """Write a checkpoint dict (tensors, numbers, strings, lists, dicts) atomically."""
    _atomic_write(path, lambda f: torch.save(state, f))


def _is_rng_state(value):
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1


def _problem(state, best=False):
    """What is wrong with a loaded checkpoint dict, or ``None``: keys, types, and consistency."""
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        return f"not a pyro_vae checkpoint (format {FORMAT_VERSION})"
    epoch = state.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        return f"its epoch is {epoch!r:.40}, not a whole number >= 1"
    model = state.get("model")
    if not (isinstance(model, dict) and model and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                        for k, v in model.items())):
        return "its model weights are missing or not a dict of tensors"
    if not isinstance(state.get("config"), dict):
        return "its model config is missing"
    if best:
        return None
    history = state.get("history")
    if not isinstance(history, list) or len(history) != epoch:
        return f"its history has {len(history) if isinstance(history, list) else 'no'} entries for {epoch} epochs"
    for i, record in enumerate(history):
        if not (isinstance(record, dict) and record.get("epoch") == i + 1
                and isinstance(record.get("train_elbo"), (int, float)) and not isinstance(record["train_elbo"], bool)):
            return f"its history entry {i + 1} is not the record of epoch {i + 1}"
    optimizer = state.get("optimizer")
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
            and isinstance(optimizer.get("param_groups"), list)):
        return "its optimizer state is missing or malformed"
    rng = state.get("rng")
    if not (isinstance(rng, dict) and _is_rng_state(rng.get("torch")) and _is_rng_state(rng.get("shuffle"))):
        return "its random-number states are missing or malformed"
    ranks = state.get("rng_ranks")
    if ranks is not None and not (isinstance(ranks, list) and all(
            isinstance(r, dict) and _is_rng_state(r.get("torch")) and _is_rng_state(r.get("shuffle")) for r in ranks)):
        return "its per-process random-number states are malformed"
    if not isinstance(state.get("hooks", {}), dict):
        return "its training-hook states are malformed"
    return None


def load_checkpoint(path, map_location="cpu", config=None, best=False):
    """Load and check a checkpoint written by :func:`save_checkpoint`, refusing anything but plain data.

    :param config: the model config the checkpoint must hold (``config.json``'s ``"vae"`` entry), if known.
    :param bool best: the file is a ``best.pt`` (weights and epoch only, no optimizer or RNG state).
    :raises CheckpointError: missing, truncated or corrupt file; a file holding pickled objects (which could
        execute code); missing keys, wrong types, an epoch that disagrees with the history, or a config that
        differs from ``config``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}; train first (pyro-vae train) or check the path")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"refusing to load {path}: it holds pickled objects, not plain tensors "
                              f"({first[:120]}); only load checkpoints written by pyro_vae") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt, or not a checkpoint ({type(e).__name__}); "
                              f"delete it to start over, or restore a complete copy") from None
    problem = _problem(state, best=best)
    if problem:
        raise CheckpointError(f"{path} is damaged: {problem}; restore a complete copy or start a new run")
    if config is not None and state["config"] != config:
        raise CheckpointError(f"checkpoint {path} does not match this model: config.json says "
                              f"{first_difference(state['config'], config)}; restore the run's config.json")
    return state


def load_state(vae, state_dict, where):
    """``vae.load_state_dict`` with a one-line error naming the mismatch."""
    try:
        vae.load_state_dict(state_dict)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:200]
        raise CheckpointError(f"checkpoint {where} does not match this model ({detail}); "
                              f"rebuild the model from the run's config.json") from None


def first_difference(saved, current):
    """``"key: saved X, now Y"`` for the first key (in sorted order) whose value differs between two dicts."""
    for key in sorted(set(saved) | set(current), key=str):
        if saved.get(key) != current.get(key):
            return f"{key}: saved {saved.get(key)!r:.60}, now {current.get(key)!r:.60}"
    return "unknown difference"


#: settings a resumed run may change: the number of epochs and processes, the command line, and the two
#: remedies a diverged run needs (a smaller learning rate, gradient clipping)
CHANGEABLE = ("epochs", "world_size", "lr", "clip_norm")


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
        fd = os.open(self.file(LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CheckpointError(f"{self.path} is in use by another pyro-vae process (pid {holder}); wait for it "
                                  f"to finish, or choose another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
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
        fd = os.open(self.file(METRICS_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
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
        ``"changes"``; the checkpoint, checked, is then :attr:`resumed_state`. Leftover temporary files of
        killed writers are removed. Writes config.json.

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
        try:
            self.lock()
        except OSError as e:   # e.g. a read-only or special file system (/proc)
            raise CheckpointError(f"cannot use {self.path} as a run folder ({e.strerror or e}); "
                                  f"choose a writable folder") from None
        for stale in glob.glob(os.path.join(glob.escape(self.path), ".tmp-*")):
            os.unlink(stale)   # with the lock held, no writer is alive to finish them
        others = [n for n in os.listdir(self.path) if n not in (LOCK, METRICS_LOCK)]
        if others and not self.is_run():
            shown = ", ".join(sorted(others)[:3]) + (", ..." if len(others) > 3 else "")
            raise CheckpointError(f"{self.path} holds files that are not a pyro-vae run ({shown}); choose an empty "
                                  f"or new output folder")
        if self.has(CHECKPOINT) and not (resume or overwrite):
            raise CheckpointError(f"{self.path} already holds a run; pass resume=True (--resume) to continue it "
                                  f"or overwrite=True (--overwrite) to start afresh")
        if resume:
            if not self.has(CHECKPOINT):
                raise CheckpointError(f"nothing to resume in {self.path}: it holds no checkpoint (none is written "
                                      f"before the first epoch ends); check the folder, or start the run without "
                                      f"resume (--resume)")
            config = self._resumed_config(config)
        if overwrite:
            # the old run's files go before anything new is written: a new run that fails in its first epoch
            # must not leave the old checkpoint beside its own config.json, where resume would pick it up
            for name in (CHECKPOINT, BEST, METRICS):
                if self.has(name):
                    os.remove(self.file(name))
        save_json(config, self.file(CONFIG))
        return config

    def _resumed_config(self, config):
        saved = self.config()
        self.resumed_state = load_checkpoint(self.file(CHECKPOINT), config=saved["vae"])
        done = self.resumed_state["epoch"]
        now = json.loads(json.dumps(config))   # compared as JSON, as they were saved (tuples become lists)
        if saved.get("vae") is not None and saved["vae"] != now.get("vae"):
            raise CheckpointError(f"the run in {self.path} was made with a different model "
                                  f"({first_difference(saved['vae'], now['vae'])}); use another folder or --overwrite")
        old_fit, new_fit = saved.get("fit", {}), now.get("fit", {})
        if not isinstance(old_fit, dict):
            raise CheckpointError(f"{self.file(CONFIG)} has no fit settings; restore it")
        fixed = [({k: v for k, v in old_fit.items() if k not in CHANGEABLE},
                  {k: v for k, v in new_fit.items() if k not in CHANGEABLE}),
                 ({k: v for k, v in saved.items() if k not in ("vae", "fit", "cli", "changes")},
                  {k: v for k, v in now.items() if k not in ("vae", "fit", "cli", "changes")})]
        for old, new in fixed:
            if saved and old != new:
                raise CheckpointError(f"the run in {self.path} was trained with other settings "
                                      f"({first_difference(old, new)}); resume with the same ones, "
                                      f"or start a new run in another folder")
        if new_fit.get("epochs", done) < done:
            # config.json would then claim fewer epochs than the checkpoint holds
            raise CheckpointError(f"the run in {self.path} has already trained {done} epochs; resume with epochs "
                                  f"(--epochs) of at least {done}")
        changes = list(saved.get("changes", []))
        for key in ("lr", "clip_norm"):
            if key in old_fit and old_fit.get(key) != new_fit.get(key):
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
        metrics = load_json(self.file(METRICS)) if self.has(METRICS) else {}
        if not isinstance(metrics, dict):
            raise CheckpointError(f"{self.file(METRICS)} is not a metrics file; delete or restore it")
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



def refuse_run_file(path):
    """Raise :class:`CheckpointError` if writing ``path`` would replace a file of a run folder (its checkpoint,
    config, metrics or lock): the outputs of ``pyro-vae sample``/``explore`` never go over them."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.basename(path) in RUN_FILES and RunFolder(folder, main=False).is_run():
        raise CheckpointError(f"{path} is one of the run's own files; choose another output name")


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
    """
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise CheckpointError(f"run folder {run_dir} does not exist; train first with pyro-vae train --out {run_dir}")
    folder = RunFolder(run_dir, main=False)
    config = folder.config()
    vae = build_vae(config["vae"], model_class=model_class, **parts)
    use_best = best and folder.has(BEST)
    state = folder.load_checkpoint(best=use_best)
    load_state(vae, state["model"], folder.file(BEST if use_best else CHECKPOINT))
    if not all(bool(torch.isfinite(v).all()) for v in state["model"].values() if v.is_floating_point()):
        raise CheckpointError(f"the weights in {run_dir} are NaN or infinite; resume from an earlier copy or "
                              f"train again")
    return vae.to(device).eval(), config, state

