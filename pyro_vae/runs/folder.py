"""A run folder: the one object that creates, resumes or overwrites it (one writer at a time, under a lock),
writes its files atomically and merges metrics; and :func:`load_run`, which rebuilds a trained model from one."""

import contextlib
import json
import os
import re

from ..checks import model_budget
from ..errors import CheckpointError, ConfigError
from ..files import NOFOLLOW, WriteError, is_temporary, load_json, save_json
from ..models.registry import build_vae
from .checkpoint import (BEST, CHECKPOINT, first_difference, is_number, is_whole, load_checkpoint, load_state, same,
                         save_checkpoint, short)

try:
    import fcntl
except ImportError:   # not POSIX: runs are not locked (see RunFolder.lock)
    fcntl = None

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
#: the fit settings a resumed run may change: the number of epochs and processes, and the two remedies a
#: diverged run needs (a smaller learning rate, gradient clipping); the command line ("cli") is not compared
#: either
CHANGEABLE = ("epochs", "world_size", "lr", "clip_norm")
#: what config.json may hold for them
_CHANGEABLE_TYPES = {
    "epochs": lambda v: is_whole(v, 1),
    "world_size": lambda v: is_whole(v, 1),
    "lr": lambda v: is_number(v) and v > 0,
    "clip_norm": lambda v: v is None or (is_number(v) and v > 0),
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

    @staticmethod
    def check_request(resume, overwrite):
        """:class:`ConfigError` for a request :meth:`open` refuses whatever the folder holds: ``resume``
        continues the run in it, ``overwrite`` replaces it, so both together ask for two things at once."""
        if resume and overwrite:
            raise ConfigError("resume (--resume) continues the run in the folder and overwrite (--overwrite) "
                              "replaces it; pass only one")

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
        fd = os.open(self.file(LOCK), os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o644)
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
            fd = os.open(self.file(METRICS_LOCK), os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o644)
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
        :raises ConfigError: both ``resume`` and ``overwrite`` (:meth:`check_request`).
        :raises CheckpointError: the folder is a file, not writable, locked by another process, holds files
            that are not a run, holds a run (neither ``resume`` nor ``overwrite``), or does not hold the run
            being resumed.
        """
        self.check_request(resume, overwrite)
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
        if saved.get("vae") is not None and not same(saved["vae"], now.get("vae")):
            raise CheckpointError(f"the run in {self.path} was made with a different model "
                                  f"({first_difference(saved['vae'], now['vae'])}); use another folder or --overwrite")
        old_fit, new_fit = saved.get("fit", {}), now.get("fit", {})
        if not isinstance(old_fit, dict):
            raise CheckpointError(f"{self.file(CONFIG)} has no fit settings; restore it")
        # the settings a resume may change are not compared below: what config.json says of them must be sane
        for key, ok in _CHANGEABLE_TYPES.items():
            if key in old_fit and not ok(old_fit[key]):
                raise CheckpointError(f"{self.file(CONFIG)} is damaged: its fit setting {key} is "
                                      f"{short(old_fit[key], 40)}; restore it")
        changes = saved.get("changes", [])
        if not (isinstance(changes, list) and all(isinstance(c, dict) for c in changes)):
            raise CheckpointError(f"{self.file(CONFIG)} is damaged: its 'changes' entry is not a list of changes; "
                                  f"restore it")
        fixed = [({k: v for k, v in old_fit.items() if k not in CHANGEABLE},
                  {k: v for k, v in new_fit.items() if k not in CHANGEABLE}),
                 ({k: v for k, v in saved.items() if k not in ("vae", "fit", "cli", "changes")},
                  {k: v for k, v in now.items() if k not in ("vae", "fit", "cli", "changes")})]
        for old, new in fixed:
            if saved and not same(old, new):
                raise CheckpointError(f"the run in {self.path} was trained with other settings "
                                      f"({first_difference(old, new)}); resume with the same ones, "
                                      f"or start a new run in another folder")
        if new_fit.get("epochs", done) < done:
            # config.json would then claim fewer epochs than the checkpoint holds
            raise CheckpointError(f"the run in {self.path} has already trained {done} epochs; resume with epochs "
                                  f"(--epochs) of at least {done}")
        changes = list(changes)
        for key in ("lr", "clip_norm"):
            if key in old_fit and not same(old_fit.get(key), new_fit.get(key)):
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

