"""``fit``: the one training loop, for every model/guide pair and every Pyro ELBO.

The loop is plain PyTorch around a Pyro objective: ``loss(model, guide)`` is the ELBO as an ``nn.Module``
whose forward pass returns a differentiable loss, and a ``torch.optim`` optimizer updates the VAE's
parameters. This is the auto-encoding variational Bayes step that ``SVI.step`` performs, but ``fit`` reads
no loss back per step: losses stay on the device and are read once per epoch. (Pyro's
``Trace_ELBO.differentiable_loss`` still calls ``.item()`` on each site's log-density and checks the loss
for NaN, so on a GPU a step still waits for the device inside Pyro.)

Everything around the step — the KL weight, guards, test ELBO, schedules, early stopping, checkpoints,
files, progress, logging — is a hook (:mod:`pyro_vae.hooks`); the run folder is a
:class:`~pyro_vae.checkpoint.RunFolder` and the processes a :mod:`~pyro_vae.distributed` object.
"""

import contextlib
import dataclasses
import math
import numbers
import time
import warnings

import torch

import pyro
from pyro.infer import RenyiELBO, Trace_ELBO

from . import processes as parallel
from .. import evaluate
from ..inference import replay as fast
from ..inference.traces import LatentWeight, no_param_store
from . import hooks as hooks_module
from ..runs.checkpoint import CHECKPOINT, check_restorable, load_state
from ..runs.folder import RunFolder
from ..models.contract import check_model, default_loss
from .processes import resolve_device
from .steps import JIT_ELBOS, REPLAY_CHECK_IMAGES, StepChoice, choose_step, needs_param_sites, quiet_first_call
from ..errors import CheckpointError, ConfigError
from ..models.registry import build_vae
from ..checks import forked_rng, positive_int, positive_number
from ..data.augment import check_shift

# choose_step, JIT_ELBOS, REPLAY_CHECK_IMAGES (training.steps) and resolve_device (training.processes) are
# part of this module's interface (pv.train) since before they moved
__all__ = ["fit", "EVAL_SAMPLES", "check_dataset", "standard_hooks", "FitSettings", "Trainer", "RebuildWarning",
           "choose_step", "JIT_ELBOS", "REPLAY_CHECK_IMAGES", "resolve_device"]


EVAL_SAMPLES = 250
"""Default importance samples K of fit's final log p(x) (and of ``pyro-vae train --eval-samples``)."""


class RebuildWarning(UserWarning):
    """A run's config.json cannot rebuild its model without help (a class or part of your own)."""


def fit(vae, train, test=None, epochs=10, batch_size=128, lr=1e-3, loss=None, optimizer=None, seed=0,
        device="auto", checkpoint_dir=None, resume=False, overwrite=False, callback=None, progress=True,
        clip_norm=None, beta=1.0, warmup=0, distributed=False, run_info=None, hooks=(), scheduler=None,
        early_stopping=None, compile=None, eval_samples=None, pictures=True, validation=None, augment=0):
    """Train ``vae`` by stochastic variational inference and return its per-epoch history.

    :param vae: a :class:`~pyro_vae.VAE`, a subclass, or a Pyro pair wrapped by :func:`~pyro_vae.wrap`:
        checked once before the first step (:func:`~pyro_vae.check_model`). What ``fit`` uses of it: an
        ``nn.Module`` (``parameters``, ``to``, ``train``/``eval``, ``state_dict``) with ``model(x, y, **inputs)``
        and ``guide(x, y, **inputs)``, ``image_shape``, ``obs_site`` and ``code_site`` (default ``"x"``,
        ``"z"``), optionally ``likelihood.check_data`` (vets the data) and ``label_role``; with
        ``checkpoint_dir`` also ``config`` (what config.json records), and for the pictures ``latent_dim``,
        ``encode``, ``generate``, ``reconstruct``, ``sample``, ``sample_codes``, ``top_dim``, ``top_codes``,
        ``decode_top`` and ``device``.
    :param train: :class:`~pyro_vae.data.ImageDataset` to train on (moved to the device once); its
        covariates, if any, reach model and guide as the keyword ``covariates``.
    :param test: optional dataset; its ELBO is computed after every epoch and its scores written at the end.
        Nothing is chosen by it: early stopping and plateau schedules watch ``validation``.
    :param int epochs: total number of epochs (a resumed run continues up to this number).
    :param int batch_size: images per step.
    :param float lr: learning rate.
    :param loss: a Pyro ELBO instance (default ``Trace_ELBO()``, or ``TraceEnum_ELBO(max_plate_nesting=1)``
        for a model with enumerated sites, e.g. :class:`~pyro_vae.extended.GMVAE`); e.g.
        ``TraceMeanField_ELBO()`` for an analytic KL, ``RenyiELBO(alpha=0, num_particles=5,
        vectorize_particles=True)`` for IWAE, or
        ``JitTrace_ELBO()``: the default's estimator traced once by ``torch.jit`` (on one batch, before
        the first step of each ``fit`` call, outside the run's random stream so that resumed runs stay
        exact) and replayed, without Pyro's Python work per step; right for models whose structure does
        not change from step to step (all of this package's), measured in benchmarks/README.md.
    :param optimizer: callable ``params, lr -> torch.optim.Optimizer`` (default ``torch.optim.Adam``).
    :param int seed: seeds Pyro/PyTorch and the shuffling; equal seeds give equal runs.
    :param device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ... decided here, once.
    :param str checkpoint_dir: the run folder: ``config.json``, ``checkpoint.pt`` and ``metrics.json``
        after every epoch (atomically, so an interrupted run loses at most the epoch in progress), the
        final test scores and pictures at the end — what ``pyro-vae train`` writes. One process at a time.
    :param bool resume: continue from the checkpoint in ``checkpoint_dir``.
    :param bool overwrite: start afresh even if ``checkpoint_dir`` already holds a checkpoint.
    :param callback: called as ``callback(vae, record)`` after every epoch; returning ``True`` stops.
    :param bool progress: show progress bars (training, and the final evaluation).
    :param float clip_norm: clip the gradient norm to this value (off by default).
    :param float beta: weight of every latent site of model and guide, positive: ``beta > 1`` gives a
        beta-VAE, whatever sites the model has (see :class:`~pyro_vae.inference.traces.LatentWeight`).
    :param int warmup: KL warm-up: the weight grows linearly, ``beta * min(1, epoch / warmup)``.
        (Neither works with the JIT ELBOs, which freeze the weight in their compiled graph.)
    :param bool distributed: data-parallel training over the processes started by ``torchrun``
        (see :mod:`pyro_vae.distributed`); ``batch_size`` is per process, only rank 0 writes files.
    :param dict run_info: extra JSON-serialisable entries for ``config.json`` (e.g. data settings).
        A resumed run must be given the same model, settings and ``run_info`` (but its ``cli`` entry, the
        command line) as the run it continues; only ``epochs``, ``lr`` and ``clip_norm`` may change (the
        changes are recorded in config.json). Anything else raises
        :class:`~pyro_vae.errors.CheckpointError` instead of silently mixing two runs in one folder.
    :param hooks: your own :class:`~pyro_vae.hooks.Hook` objects, run after the built-in ones.
    :param scheduler: ``optimizer -> torch.optim.lr_scheduler`` object, stepped after every epoch
        (``ReduceLROnPlateau`` is fed the negative validation ELBO, or without ``validation`` the negative
        training objective: never the test ELBO); its state is in the checkpoint.
    :param int early_stopping: stop when the validation ELBO has not improved for this many epochs, and end
        with the best epoch's weights (also saved as ``best.pt``); needs ``validation``.
    :param compile: how each step computes the ELBO. ``None`` (default, also ``"auto"``): the fastest exact
        way, chosen once, before the first step (:func:`choose_step`): the sync-free replay step where it
        computes the same estimator (``Trace_ELBO`` itself, any number of particles, beta and warm-up
        included; reparameterised guide sites; no enumerated sites; sites that do not change from batch to
        batch, probed on batches that differ), otherwise Pyro's own ELBO; the choice and its reason are in
        config.json (``fit.step``, ``fit.step_reason``) and in :attr:`Trainer.settings`. ``False`` (or
        ``"pyro"``): always Pyro's own ELBO. ``True`` or ``"replay"``: always the replay step, which traces
        ``Trace_ELBO``'s estimator, forward and backward, into one graph per batch shape and replays it
        without Python from Pyro and without a single host-device synchronisation per step (``loss`` must
        be ``Trace_ELBO``; a model it cannot trace raises); ``"compile"`` also compiles that graph with
        ``torch.compile`` (CUDA graphs on a GPU; a long compilation first). The replay step has the same
        estimator and the same random draws as ``Trace_ELBO`` (:func:`pyro_vae.fast.make_step`; measured
        in benchmarks/README.md). A resumed run makes the same choice again and must use the same step.
    :param int eval_samples: with ``checkpoint_dir`` and ``test``: importance samples K of the final log p(x)
        written to metrics.json (0 skips it; default :data:`EVAL_SAMPLES` = 250, the CLI's too: under 20% of
        the default 60-epoch run on two CPU cores, about 0.5 nats looser than K=1000 on mnist5k); its cost
        grows linearly with K. Its estimated duration is
        printed first and a progress bar shown while it runs (with ``progress``, or without it when the
        estimate exceeds :data:`pyro_vae.hooks.QUIET_EVALUATION_SECONDS`); metrics.json records its ``seconds``.
    :param bool pictures: with ``checkpoint_dir``: write the standard pictures at the end.
    :param validation: optional dataset held out from training (``pv.data.load(..., validation=N)``): its
        ELBO is computed after every epoch (``validation_elbo``) and is what early stopping and plateau
        schedules watch, so the test set is only scored. config.json records its size.
    :param int augment: translate every training image by a random offset of up to this many pixels per axis,
        drawn afresh each time it is drawn (``train.augmented(augment)``, :mod:`pyro_vae.data.augment`);
        0 (default) trains on the images as they are. Scoring is never augmented. config.json records it.
    :returns: list of dicts, one per epoch: ``epoch``, ``train_elbo`` and ``test_elbo`` (nats per
        datapoint; ``test_elbo`` is ``None`` without a test set), ``validation_elbo`` with ``validation``,
        and ``seconds`` (plus what hooks add, e.g. ``lr`` with a schedule). With ``beta != 1`` the
        ``train_elbo`` entry is the weighted training objective, ``test_elbo`` the true ELBO.

    Pyro's global param store is cleared at the start: the parameters live in ``vae`` itself, and the torch
    optimizer updates them there. So while ``fit`` trains, ``vae.register_params`` is off (``model``/``guide``
    skip ``pyro.module``) unless the ELBO needs param sites (``loss_and_grads`` ELBOs such as
    ``RenyiELBO``, and the JIT ELBOs).
    """
    check_dataset("train", train)
    for role, data in (("test", test), ("validation", validation)):
        if data is not None:
            check_dataset(role, data)
    evaluate.check_data(vae, train, "training")
    evaluate.check_data(vae, test, "test")
    evaluate.check_data(vae, validation, "validation")
    contract = check_model(vae, train, loss=loss)
    loss = loss if loss is not None else default_loss(contract)
    eval_samples = EVAL_SAMPLES if eval_samples is None else eval_samples
    train = augmented(train, augment)
    settings = FitSettings.check(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, clip_norm=clip_norm,
                                 beta=beta, warmup=warmup, loss=loss, scheduler=scheduler, validation=validation,
                                 early_stopping=early_stopping, eval_samples=eval_samples, resume=resume,
                                 overwrite=overwrite, checkpoint_dir=checkpoint_dir, compile=compile)
    settings.augment = getattr(train, "shift", 0) or None
    trainer = Trainer(vae, train, test, settings, parallel.processes(distributed, device), loss, optimizer, contract,
                      validation=validation)
    trainer.hooks = hooks_module.Hooks(standard_hooks(settings, checkpoint_dir, progress, callback, eval_samples,
                                                      pictures) + list(hooks))
    try:
        trainer.open_run(checkpoint_dir, resume, overwrite, run_info)
        trainer.hooks.on_fit_start(trainer)
        # argument validation runs once per distribution object; in the hot loop it only costs time
        with pyro.validation_enabled(False):
            trainer.prime()
            for trainer.epoch in range(trainer.epochs_done + 1, settings.epochs + 1):
                if trainer.stop:
                    break
                trainer.hooks.on_epoch_start(trainer)
                trainer.begin_epoch()
                for x, y, inputs in trainer.batches():
                    trainer.optimizer.zero_grad(set_to_none=True)
                    trainer.losses.append(trainer.step(x, y, inputs))
                    trainer.processes.average_gradients(trainer.parameters)
                    if settings.clip_norm is not None:
                        torch.nn.utils.clip_grad_norm_(trainer.parameters, settings.clip_norm)
                    trainer.optimizer.step()
                    trainer.hooks.on_step_end(trainer)
                trainer.hooks.on_epoch_end(trainer, trainer.end_epoch())
    except BaseException as error:
        trainer.error = error
        raise
    finally:
        trainer.close()
    return trainer.history


def augmented(train, augment):
    """``train`` with random shifts of up to ``augment`` pixels (:meth:`ImageDataset.augmented`), or as it is
    (``augment=0``: a dataset made with ``.augmented(n)`` keeps its own shift)."""
    if augment == 0 and not isinstance(augment, bool):
        return train
    if not callable(getattr(train, "augmented", None)):
        raise ConfigError(f"augment={augment!r} needs a pyro_vae ImageDataset (pv.data.load or pv.data.from_tensor), "
                          f"got {type(train).__name__}; drop augment")
    return train.augmented(check_shift(augment, "augment"))


def check_dataset(role, data):
    """Refuse (:class:`ConfigError`) what is not a dataset, with the function that makes one."""
    if isinstance(data, torch.Tensor):
        raise ConfigError(f"{role} is a tensor of shape {tuple(data.shape)}; fit needs a dataset: "
                          f"pv.data.from_tensor(images, labels=None, binarize=...)")
    if not all(callable(getattr(data, name, None)) for name in ("batches", "num_batches", "to")):
        raise ConfigError(f"{role} must be a pyro_vae dataset (pv.data.load(...) or pv.data.from_tensor(images)), "
                          f"got {type(data).__name__}")


def standard_hooks(settings, checkpoint_dir, progress, callback, eval_samples, pictures):
    """The built-in hooks of a ``fit`` call, in the order they run."""
    h = hooks_module
    chosen = [h.KLWeight(settings.beta, settings.warmup) if settings.weighted else None,
              h.FiniteGuard(), h.TestELBO(), h.History(),
              h.ProgressBar() if progress else None,
              h.LRSchedule(settings.scheduler_factory) if settings.scheduler_factory else None,
              h.EarlyStopping(settings.early_stopping) if settings.early_stopping else None,
              h.Checkpoint() if checkpoint_dir is not None else None,
              h.RunFiles(eval_samples, pictures, progress) if checkpoint_dir is not None else None,
              h.Callback(callback) if callback is not None else None]
    return [hook for hook in chosen if hook is not None]


@dataclasses.dataclass
class FitSettings:
    """The checked settings of one ``fit`` call; :meth:`recorded` is what config.json keeps of them."""

    epochs: int
    batch_size: int
    lr: float
    seed: int
    clip_norm: float
    beta: float
    warmup: int
    loss: str
    scheduler: str = None
    early_stopping: int = None
    validation: int = None
    augment: int = None
    compile: str = None
    step: str = None
    step_reason: str = None
    requested: str = "auto"
    scheduler_factory: object = None
    world_size: int = 1

    @property
    def weighted(self):
        """Whether the latent sites carry a weight other than 1 in some epoch."""
        return self.beta != 1.0 or self.warmup > 0

    @classmethod
    def check(cls, epochs, batch_size, lr, seed, clip_norm, beta, warmup, loss, scheduler, validation, early_stopping,
              eval_samples, resume, overwrite, checkpoint_dir, compile=None):
        """Every argument checked here, each with a one-line :class:`ConfigError` naming it."""
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2 ** 32:
            # numpy, which pyro.set_rng_seed seeds too, takes these only
            raise ConfigError(f"seed must be a whole number from 0 to {2 ** 32 - 1}, got {seed!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, numbers.Integral) or warmup < 0:
            raise ConfigError(f"warmup must be a non-negative number of epochs, got {warmup!r}")
        if resume and checkpoint_dir is None:
            raise ConfigError("resume=True needs checkpoint_dir (the run folder to resume from)")
        RunFolder.check_request(resume, overwrite)   # early: the folder is opened on rank 0 only
        loss = loss if loss is not None else Trace_ELBO()
        # Pyro's poutine.scale, which weights the latent sites, takes positive weights only
        settings = cls(epochs=positive_int("epochs", epochs), batch_size=positive_int("batch_size", batch_size),
                       lr=positive_number("lr", lr), seed=int(seed), warmup=int(warmup),
                       clip_norm=None if clip_norm is None else positive_number("clip_norm", clip_norm),
                       beta=positive_number("beta", beta), loss=type(loss).__name__)
        if isinstance(loss, RenyiELBO) and settings.weighted:
            # poutine.scale moves inside RenyiELBO's log-mean-exp: the result is no beta-weighted IWAE bound
            raise ConfigError("RenyiELBO (IWAE) with beta or warmup would weight the sites inside its "
                              "log-mean-exp, which bounds nothing; use Trace_ELBO or TraceMeanField_ELBO for beta "
                              "or warmup")
        if isinstance(loss, JIT_ELBOS) and settings.weighted:
            raise ConfigError(f"{type(loss).__name__} compiles the KL weight into its graph once, so beta and warmup "
                              f"would be ignored; use {type(loss).__name__[3:]} for beta or warmup")
        if scheduler is not None:
            if not callable(scheduler):
                raise ConfigError("scheduler must be a function optimizer -> lr_scheduler, e.g. "
                                  "lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50)")
            settings.scheduler_factory = scheduler
            settings.scheduler = getattr(scheduler, "name", None) or getattr(scheduler, "__name__", "custom")
        if early_stopping is not None:
            settings.early_stopping = positive_int("early_stopping", early_stopping)
            if validation is None:
                raise ConfigError("early stopping (--early-stopping) watches the validation ELBO, but there is no "
                                  "validation set; pass validation=... (pv.data.load(..., validation=N) carves "
                                  "one from the training set; --validation N) or drop early_stopping")
        if validation is not None:
            settings.validation = len(validation)
        if isinstance(eval_samples, bool) or not isinstance(eval_samples, numbers.Integral) or eval_samples < 0:
            raise ConfigError(f"eval_samples must be a non-negative whole number, got {eval_samples!r}")
        if compile not in (False, None, True, "auto", "pyro") + fast.MODES:
            raise ConfigError(f"compile must be None (auto), True, False or one of auto, pyro, "
                              f"{', '.join(fast.MODES)}, got {compile!r}")
        if compile in (False, "pyro"):
            settings.requested = "pyro"
        elif compile not in (None, "auto"):
            settings.compile = settings.requested = "replay" if compile is True else compile
            fast.check_elbo(loss)
        return settings

    def recorded(self):
        """The settings config.json records (the options left at their defaults are left out, so that runs
        written before they existed still resume)."""
        out = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "seed": self.seed,
               "world_size": self.world_size, "loss": self.loss, "clip_norm": self.clip_norm, "beta": self.beta,
               "warmup": self.warmup}
        for key in ("scheduler", "early_stopping", "validation", "augment", "compile", "step", "step_reason"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


class Trainer(StepChoice):
    """The state of one ``fit`` call, which the loop drives and the hooks read and change; its step is chosen
    by :class:`~pyro_vae.training.steps.StepChoice`.

    Attributes hooks use: ``vae``, ``optimizer``, ``parameters``, ``train``, ``test`` and ``validation``
    (``None`` on processes other than rank 0), ``settings``, ``processes``, ``device``,
    ``run`` (the :class:`~pyro_vae.checkpoint.RunFolder`
    or ``None``), ``history``, ``epoch``, ``epochs_done`` (before this call), ``losses`` (this epoch's per-step
    loss tensors so far), ``epoch_losses`` (all of them, after the epoch), ``kl_weight``, ``stop``, ``error``,
    ``best_epoch``, ``hooks``.
    """

    def __init__(self, vae, train, test, settings, processes, loss, optimizer, contract=None, validation=None):
        self.vae, self.settings, self.processes = vae, settings, processes
        self.device = processes.device
        settings.world_size = processes.world_size
        # fit trains the module's own parameters; an earlier model registered under the same Pyro name would
        # otherwise linger in the global param store (and confuse JitTrace_ELBO, which reads it)
        pyro.clear_param_store()
        # own noise (z samples, binarization) on every process (numpy, which Pyro seeds too, takes < 2**32) ...
        pyro.set_rng_seed((settings.seed + processes.rank) % 2 ** 32)
        self.shuffle = torch.Generator().manual_seed(settings.seed)   # ... but one shared permutation, split by rank
        vae.to(self.device)
        processes.broadcast_module(vae)       # identical starting weights everywhere
        self.train = train.to(self.device)
        self.test = test.to(self.device) if test is not None and processes.is_main else None
        self.validation = validation.to(self.device) if validation is not None and processes.is_main else None
        self.parameters = list(vae.parameters())
        self.optimizer = (optimizer or torch.optim.Adam)(self.parameters, lr=settings.lr)
        loss = loss if loss is not None else Trace_ELBO()
        # a JIT ELBO's graph of an earlier fit call would train that call's model again
        self.elbo = fast.uncompiled_copy(loss) if isinstance(loss, JIT_ELBOS) else loss
        self.kl_weight = LatentWeight(1.0)
        self.batch_size = settings.batch_size
        self._replay_check = None
        self.step = self._choose_step(contract)
        # model and guide skip pyro.module while fit trains (the optimizer holds the module's parameters), up
        # to close(), unless the ELBO reads its parameters from param sites
        self._param_store = contextlib.ExitStack()
        if not needs_param_sites(self.elbo):
            self._param_store.enter_context(no_param_store(vae))
        self.steps_per_epoch = self.train.num_batches(settings.batch_size, shard=processes.shard)
        self.images_per_epoch = math.ceil(len(train) / processes.world_size) * processes.world_size
        self.run, self.hooks, self._saved = None, None, {}
        self.history, self.epochs_done, self.epoch = [], 0, 0
        self.losses, self.epoch_losses, self.epoch_started = [], None, None
        self.stop, self.error, self.best_epoch, self.test_scores = False, None, None, None

    # --- the run folder ---------------------------------------------------------------------------

    def open_run(self, folder, resume, overwrite, run_info):
        """Take the run folder (rank 0), and restore the checkpoint's state on every process when resuming."""
        if folder is None:
            return
        self.run = RunFolder(folder, main=self.processes.is_main)
        config = {"vae": self.vae.config, "fit": self.settings.recorded(), **(run_info or {})}
        if resume:
            self._refuse_changed_cosine_epochs()
            self._match_recorded_step(config["fit"])
        problem = None
        if self.processes.is_main:
            try:
                self.run.open(config, resume=resume, overwrite=overwrite)
            except CheckpointError as e:
                problem = e
        problem = self.processes.share(problem)   # every process stops, not only rank 0
        if problem is not None:
            raise problem
        if self.processes.is_main and not resume:
            _warn_unless_rebuildable(self.vae)
        if resume:
            state = self.run.resumed_state if self.processes.is_main else self.run.load_checkpoint()
            self._restore(state)

    def _refuse_changed_cosine_epochs(self):
        """A cosine schedule over the run's epochs (``T_max`` the epochs the run started with, kept in the
        checkpoint) resumed with another number of epochs would climb back up from 0 after them, or stop short
        of 0. Refused (:class:`ConfigError`) before anything is written, as ``pyro-vae train`` refuses
        ``--lr-schedule cosine --resume`` with another ``--epochs``. A cosine schedule over another number of
        epochs than the run's (``T_max=50`` for a run resumed up to 50 epochs) is the caller's choice."""
        if self.settings.scheduler_factory is None:
            return
        try:
            saved = self.run.config().get("fit")
        except CheckpointError:
            return   # RunFolder.open says what is wrong with the folder
        epochs = saved.get("epochs") if isinstance(saved, dict) else None
        if not isinstance(epochs, int) or epochs == self.settings.epochs or not _cosine_over(self.settings, epochs):
            return
        raise ConfigError(f"the run in {self.run.path} follows a cosine learning-rate schedule, which decays over "
                          f"the run's epochs ({epochs}); resume with epochs={epochs} (--epochs {epochs}), or start "
                          f"a new run for a longer schedule")

    def _restore(self, state):
        # on the CPU: the RNG states must stay there; load_state_dict puts weights and optimizer state on the
        # parameters' device
        where = self.run.file(CHECKPOINT)
        # every state is tried on throw-away copies first, so a refused checkpoint restores nothing
        check_restorable(state, self.vae, self.optimizer, self.settings.scheduler_factory, where=where)
        load_state(self.vae, state["model"], where)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.settings.scheduler is None:   # a changed lr applies from now on (a schedule sets its own)
            for group in self.optimizer.param_groups:
                group["lr"] = self.settings.lr
        ranks = state.get("rng_ranks")
        if ranks is not None and len(ranks) == self.processes.world_size:
            self._set_rng_state(ranks[self.processes.rank])
        else:
            self._set_rng_state(state["rng"])
            if self.processes.rank:  # saved by a run of another size: the other ranks draw their own noise again
                torch.manual_seed((self.settings.seed + self.processes.rank + 1000 * state["epoch"]) % 2 ** 32)
        self.history, self.epochs_done = list(state["history"]), state["epoch"]
        self._saved = state.get("hooks", {})

    def saved_state(self, name):
        """The state a hook named ``name`` saved in the checkpoint this run resumes from (``{}`` if none)."""
        return self._saved.get(name) or {}

    def rng_state(self):
        state = {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _set_rng_state(self, state):
        torch.set_rng_state(state["torch"])
        self.shuffle.set_state(state["shuffle"])
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    # --- epochs -----------------------------------------------------------------------------------

    def prime(self):
        """Call the ELBO once on one batch before the first step, with the random state put back afterwards.

        Some ELBOs draw random numbers on their first call only: a JIT ELBO runs the model and guide twice
        more to trace them, and a vectorized multi-particle ELBO (e.g. IWAE) or ``TraceEnum_ELBO`` runs them
        once to find how deep their plates nest. A resumed run makes that first call again; made here,
        outside the run's random stream, it leaves a resumed run equal to an uninterrupted one. The
        gradients it leaves are cleared by the first step's ``zero_grad``; the optimizer has not moved.
        The KL weight is 1 here, as a JIT graph freezes it (fit allows JIT ELBOs only with the weight 1).
        """
        self.vae.train()   # before a JIT ELBO traces: the graph keeps the mode it was traced in
        self.kl_weight.value = 1.0
        with forked_rng(self.device), quiet_first_call():
            # the batch too: dynamic binarization draws from the global random state
            x, y, inputs = next(self.batches(torch.Generator().manual_seed(0)))
            self.step(x, y, inputs)

    def batches(self, generator=None):
        """This process's batches of the epoch: ``(x, y, inputs)``, inputs the covariates keyword if any."""
        generator = generator if generator is not None else self.shuffle
        return self._batches_of(self.train, self.batch_size, generator=generator, shard=self.processes.shard)

    @staticmethod
    def _batches_of(data, batch_size, **options):
        if getattr(data, "covariates", None) is None:
            for x, y in data.batches(batch_size, **options):
                yield x, y, {}
        else:
            for x, y, c in data.batches(batch_size, with_covariates=True, **options):
                yield x, y, {"covariates": c}

    def begin_epoch(self):
        if self._replay_check is not None and self.epoch > self.epochs_done + 1:
            self._check_replay()
        self.epoch_started = time.perf_counter()
        self.losses = []

    def end_epoch(self):
        """The epoch's record: its training objective, summed over every process's steps (one host read)."""
        losses = torch.stack(self.losses).to(self.device)   # loss_and_grads ELBOs return host floats
        self.epoch_losses = self.processes.all_sum(losses)
        return {"epoch": self.epoch, "train_elbo": -self.epoch_losses.sum().item() / self.images_per_epoch,
                "test_elbo": None}

    @property
    def epochs_trained(self):
        return self.history[-1]["epoch"] if self.history else 0

    def remedy(self):
        """What to do after the loss or weights broke: resume from the last checkpoint with a smaller step."""
        if self.run is not None and self.history:
            return (f"the checkpoint of epoch {self.history[-1]['epoch']} is kept; lower the learning rate (lr, --lr) "
                    f"or clip gradients (clip_norm, --clip-norm) and resume")
        return "lower the learning rate (lr, --lr) or clip gradients (clip_norm, --clip-norm)"

    def close(self):
        try:
            if self.hooks is not None:
                self.hooks.on_fit_end(trainer=self)
        finally:
            self._param_store.close()
            if self.run is not None:
                self.run.release()
            if self.error is None:
                self.processes.barrier()   # rank 0's last files are on disk before anyone moves on


def _cosine_over(settings, epochs):
    """Whether the run's schedule is a cosine decay over ``epochs`` epochs: named ``"cosine"`` (``pyro-vae
    train``'s own, built over the run's epochs), or a factory that builds a ``CosineAnnealingLR`` with
    ``T_max=epochs`` (tried on a throw-away optimizer: the run's is untouched)."""
    if settings.scheduler == "cosine":
        return True
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=settings.lr)
    try:
        scheduler = settings.scheduler_factory(probe)
    except Exception:   # a factory that needs the run's own optimizer: LRSchedule builds and checks it later
        return False
    return isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) and scheduler.T_max == epochs


def _warn_unless_rebuildable(vae):
    """Warn when ``pv.load_run`` could not rebuild ``vae`` from config.json by itself."""
    try:
        with forked_rng("cpu"):   # the throwaway model's initial weights must not use the run's random stream
            rebuilt = build_vae(vae.config)
        shapes = [{k: v.shape for k, v in module.state_dict().items()} for module in (rebuilt, vae)]
        same = shapes[0] == shapes[1]
        reason = None if same else "the rebuilt model's weights differ in names or shapes (does its config record " \
                                   "every constructor argument?)"
    except ConfigError as e:
        reason = str(e)
    except Exception as e:   # a user's class may fail in any way: this is advice, not a check
        reason = f"{type(e).__name__}: {e}"
    if reason:
        name = vae.config.get("model", type(vae).__name__)   # a wrapped pair is named by its own class
        warnings.warn(f"config.json alone cannot rebuild this {name} ({reason}); load the run with "
                      f"pv.load_run(folder, model_class={name}, ...) passing the class and any parts of your own",
                      RebuildWarning, stacklevel=3)
