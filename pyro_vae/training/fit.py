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
import copy
import dataclasses
import logging
import math
import numbers
import time
import warnings

import torch

import pyro
from pyro.infer import (JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO, JitTraceMeanField_ELBO, RenyiELBO,
                        Trace_ELBO)
from pyro.ops.jit import CompiledFunction

from . import processes as parallel
from ..evaluate import scores as evaluate
from ..inference import replay as fast
from ..inference.traces import LatentWeight
from . import hooks as hooks_module
from ..files import save_json
from ..runs.checkpoint import load_state
from ..runs.folder import CONFIG, RunFolder
from ..models.contract import check_model, default_loss, enumerates
from .processes import resolve_device  # noqa: F401 (part of this module's interface since the start)
from ..errors import CheckpointError, ConfigError
from ..models.registry import build_vae
from ..checks import forked_rng, positive_int, positive_number

#: Pyro's ELBOs that trace the model and guide once with ``torch.jit`` and replay the compiled graph
JIT_ELBOS = (JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO, JitTraceMeanField_ELBO)

#: images of the batch on which an automatically chosen replay step is checked against the model before every
#: epoch after the first (a graph and an eager run of them: milliseconds)
REPLAY_CHECK_IMAGES = 8


class RebuildWarning(UserWarning):
    """A run's config.json cannot rebuild its model without help (a class or part of your own)."""


def fit(vae, train, test=None, epochs=10, batch_size=128, lr=1e-3, loss=None, optimizer=None, seed=0,
        device="auto", checkpoint_dir=None, resume=False, overwrite=False, callback=None, progress=True,
        clip_norm=None, beta=1.0, warmup=0, distributed=False, run_info=None, hooks=(), scheduler=None,
        early_stopping=None, compile=None, eval_samples=1000, pictures=True):
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
    :param test: optional dataset; its ELBO is computed after every epoch.
    :param int epochs: total number of epochs (a resumed run continues up to this number).
    :param int batch_size: images per step.
    :param float lr: learning rate.
    :param loss: a Pyro ELBO instance (default ``Trace_ELBO()``, or ``TraceEnum_ELBO(max_plate_nesting=1)``
        for a model with enumerated sites, e.g. :class:`~pyro_vae.extended.GMVAE`); e.g. ``TraceMeanField_ELBO()`` for an
        analytic KL, ``RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True)`` for IWAE, or
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
        (``ReduceLROnPlateau`` is fed the negative test ELBO); its state is in the checkpoint.
    :param int early_stopping: stop when the test ELBO has not improved for this many epochs, and end with
        the best epoch's weights (also saved as ``best.pt``); needs ``test``.
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
        written to metrics.json (0 skips it); its cost grows linearly with K. Its estimated duration is
        printed first and a progress bar shown while it runs (with ``progress``, or without it when the
        estimate exceeds :data:`pyro_vae.hooks.QUIET_EVALUATION_SECONDS`); metrics.json records its ``seconds``.
    :param bool pictures: with ``checkpoint_dir``: write the standard pictures at the end.
    :returns: list of dicts, one per epoch: ``epoch``, ``train_elbo`` and ``test_elbo`` (nats per
        datapoint; ``test_elbo`` is ``None`` without a test set) and ``seconds`` (plus what hooks add, e.g.
        ``lr`` with a schedule). With ``beta != 1`` the ``train_elbo`` entry is the weighted training
        objective, ``test_elbo`` the true ELBO.

    Pyro's global param store is cleared at the start: the parameters live in ``vae`` itself, and the torch
    optimizer updates them there. So while ``fit`` trains, ``vae.register_params`` is off (``model``/``guide``
    skip ``pyro.module``) unless the ELBO needs param sites (``loss_and_grads`` ELBOs such as
    ``RenyiELBO``, and the JIT ELBOs).
    """
    check_dataset("train", train)
    if test is not None:
        check_dataset("test", test)
    evaluate.check_data(vae, train, "training")
    evaluate.check_data(vae, test, "test")
    contract = check_model(vae, train, loss=loss)
    loss = loss if loss is not None else default_loss(contract)
    settings = FitSettings.check(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, clip_norm=clip_norm,
                                 beta=beta, warmup=warmup, loss=loss, scheduler=scheduler, test=test,
                                 early_stopping=early_stopping, eval_samples=eval_samples, resume=resume,
                                 overwrite=overwrite, checkpoint_dir=checkpoint_dir, compile=compile)
    trainer = Trainer(vae, train, test, settings, parallel.processes(distributed, device), loss, optimizer, contract)
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
    def check(cls, epochs, batch_size, lr, seed, clip_norm, beta, warmup, loss, scheduler, test, early_stopping,
              eval_samples, resume, overwrite, checkpoint_dir, compile=None):
        """Every argument checked here, each with a one-line :class:`ConfigError` naming it."""
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2 ** 32:
            # numpy, which pyro.set_rng_seed seeds too, takes these only
            raise ConfigError(f"seed must be a whole number from 0 to {2 ** 32 - 1}, got {seed!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, numbers.Integral) or warmup < 0:
            raise ConfigError(f"warmup must be a non-negative number of epochs, got {warmup!r}")
        if resume and checkpoint_dir is None:
            raise ConfigError("resume=True needs checkpoint_dir (the run folder to resume from)")
        if resume and overwrite:
            raise ConfigError("resume (--resume) continues the run in the folder and overwrite (--overwrite) "
                              "replaces it; pass only one")
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
            if test is None:
                raise ConfigError("early stopping (--early-stopping) watches the test ELBO, but there is no test "
                                  "set; pass test=... or drop early_stopping")
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
        for key in ("scheduler", "early_stopping", "compile", "step", "step_reason"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


class Trainer:
    """The state of one ``fit`` call, which the loop drives and the hooks read and change.

    Attributes hooks use: ``vae``, ``optimizer``, ``parameters``, ``train``, ``test`` (``None`` on processes
    other than rank 0), ``settings``, ``processes``, ``device``, ``run`` (the :class:`~pyro_vae.checkpoint.RunFolder`
    or ``None``), ``history``, ``epoch``, ``epochs_done`` (before this call), ``losses`` (this epoch's per-step
    loss tensors so far), ``epoch_losses`` (all of them, after the epoch), ``kl_weight``, ``stop``, ``error``,
    ``best_epoch``, ``hooks``.
    """

    def __init__(self, vae, train, test, settings, processes, loss, optimizer, contract=None):
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
        self.parameters = list(vae.parameters())
        self.optimizer = (optimizer or torch.optim.Adam)(self.parameters, lr=settings.lr)
        loss = loss if loss is not None else Trace_ELBO()
        self.elbo = _without_compiled_graphs(loss) if isinstance(loss, JIT_ELBOS) else loss
        self.kl_weight = LatentWeight(1.0)
        self.batch_size = settings.batch_size
        self._replay_check = None
        self.step = self._choose_step(contract)
        self.registers = getattr(vae, "register_params", None)
        if self.registers is not None and not _needs_param_sites(self.elbo):
            vae.register_params = False
        self.steps_per_epoch = self.train.num_batches(settings.batch_size, shard=processes.shard)
        self.images_per_epoch = math.ceil(len(train) / processes.world_size) * processes.world_size
        self.run, self.hooks, self._saved = None, None, {}
        self.history, self.epochs_done, self.epoch = [], 0, 0
        self.losses, self.epoch_losses, self.epoch_started = [], None, None
        self.stop, self.error, self.best_epoch, self.test_scores = False, None, None, None

    # --- the step -----------------------------------------------------------------------------------

    def _choose_step(self, contract):
        """The step function of this run; sets ``settings.step`` (``"replay"`` or ``"pyro"``) and ``step_reason``.

        Automatically (``compile=None``): the replay step wherever it computes this ELBO's estimator exactly,
        which :func:`choose_step` decides on :meth:`probe_batches`; their signatures are traced here, before
        anything is written, so that a model the tracer cannot follow falls back now, and the same way on
        resume. Later, it falls back in place, with a warning and config.json updated, where a trace fails on a
        batch shape no probe had (:meth:`_trace_failed`) or, before every epoch after the first, the graph no
        longer computes what the model does (:meth:`_check_replay`).
        """
        settings = self.settings
        if settings.requested == "pyro":
            settings.step, settings.step_reason = "pyro", "compile=False asks for Pyro's own ELBO"
            return self._pyro_step()
        auto = settings.requested == "auto"
        probe = self.probe_batches()
        if auto:
            # a few images of the first batch, to check before every later epoch that the graph is still the model's
            x, y, inputs = probe[0]
            count = min(REPLAY_CHECK_IMAGES, x.shape[0])
            check = (x[:count], None if y is None else y[:count], {k: v[:count] for k, v in inputs.items()})
            probe = probe + [check]
            with _quiet_first_call():   # a vectorised ELBO's first call logs the plate depth it guesses
                settings.step, settings.step_reason = choose_step(self.elbo, self.vae, probe, contract)
            if settings.step == "pyro":
                return self._pyro_step()
        else:
            settings.step = "replay"
            settings.step_reason = f"compile={settings.requested!r} asks for the sync-free step"
        step = fast.make_step(self.elbo, self.vae, self.device, mode=settings.compile or "replay",
                              on_trace_error=self._trace_failed if auto else None)
        training = self.vae.training
        self.vae.train()   # the mode the loop trains in, part of a graph's signature
        try:
            with _quiet_first_call():
                for x, y, inputs in probe:
                    step.prepare(x, y, **inputs)
        except ConfigError as error:
            if not auto:
                raise
            settings.step, settings.step_reason = "pyro", f"the sync-free step cannot trace this model: {error}"
            return self._pyro_step()
        finally:
            self.vae.train(training)
        if auto:
            self._replay_check = (step, check)
        return _fast_step(step, self.kl_weight if settings.weighted else None)

    def _pyro_step(self):
        model, guide = self.vae.model, self.vae.guide
        if self.settings.weighted:
            model, guide = self.kl_weight(model), self.kl_weight(guide)
        return _loss_step(self.elbo, model, guide)

    def probe_batches(self):
        """Training batches chosen to differ, made outside the run's random stream: the loop's first two and its
        last (so every batch shape the loop will see), and with labels, the batches of the lowest and of the
        highest labels (unlabelled images, -1, come first: e.g. none and all labelled)."""
        with forked_rng(self.device):
            loop = list(self.batches(torch.Generator().manual_seed(0)))
            chosen = loop[:2] + loop[-1:] if len(loop) > 2 else loop
            labels = self.train.labels
            if labels is not None:
                order = torch.argsort(labels.cpu(), stable=True)
                for index in (order[:self.batch_size], order.flip(0)[:self.batch_size]):
                    part = self.train.subset(index)
                    chosen.append(next(self._batches_of(part, len(part), shuffle=False)))
        return chosen

    def _trace_failed(self, error):
        """Go on with Pyro's own ELBO from the next step on (this one's loss and gradients are complete)."""
        self._fall_back(f"the sync-free step could not trace a batch: {error}")

    def _check_replay(self):
        """Fall back to Pyro's own ELBO if the model no longer computes what its graph does (see
        :meth:`pyro_vae.fast.make_step`'s ``check``): a callback or hook changed it since the trace."""
        step, (x, y, inputs) = self._replay_check
        problem = step.check(x, y, **inputs)
        if problem is not None:
            self._fall_back(f"{problem}, before epoch {self.epoch}")

    def _fall_back(self, reason):
        settings = self.settings
        settings.step, settings.step_reason = "pyro", reason
        self.step = self._pyro_step()
        self._replay_check = None
        warnings.warn(f"{settings.step_reason}; training goes on with Pyro's own {type(self.elbo).__name__} "
                      f"(recorded in config.json; resume with compile=False, --step pyro)", RuntimeWarning)
        if self.run is not None and self.processes.is_main:
            config = self.run.config()
            config["fit"].update(step=settings.step, step_reason=settings.step_reason)
            save_json(config, self.run.file(CONFIG))

    # --- the run folder ---------------------------------------------------------------------------

    def open_run(self, folder, resume, overwrite, run_info):
        """Take the run folder (rank 0), and restore the checkpoint's state on every process when resuming."""
        if folder is None:
            return
        self.run = RunFolder(folder, main=self.processes.is_main)
        config = {"vae": self.vae.config, "fit": self.settings.recorded(), **(run_info or {})}
        if resume:
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

    def _match_recorded_step(self, fit):
        """Make ``fit`` (the settings to resume with) state the step as the run being resumed records it.

        A run recorded before ``fit`` chose its step has no ``step`` entry: it trained on Pyro's own ELBO
        unless its ``compile`` entry (compared as before) says otherwise, and goes on that way, with its
        config.json as it was. Otherwise the step must be the recorded one (compared as any setting); its
        reason is kept as recorded, as the same choice may be worded differently (``compile=False`` or an
        ELBO the replay does not compute).
        """
        try:
            saved = self.run.config().get("fit")
        except CheckpointError:
            return   # RunFolder.open says what is wrong with the folder
        if not isinstance(saved, dict):
            return
        if "step" not in saved:
            fit.pop("step", None)
            fit.pop("step_reason", None)
            if self.settings.requested == "auto" and self.settings.step != "pyro":
                self.settings.step = "pyro"
                self.settings.step_reason = "the run resumed was recorded before fit chose its step: Pyro's own ELBO"
                self.step, self._replay_check = self._pyro_step(), None
        elif saved.get("step") == fit.get("step") and "step_reason" in saved:
            fit["step_reason"] = self.settings.step_reason = saved["step_reason"]

    def _restore(self, state):
        # on the CPU: the RNG states must stay there; load_state_dict puts weights and optimizer state on the
        # parameters' device
        load_state(self.vae, state["model"], self.run.file("checkpoint.pt"))
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError, TypeError, IndexError) as e:
            raise CheckpointError(f"the optimizer state in {self.run.path} does not fit this model or optimizer "
                                  f"({' '.join(str(e).split())[:120]}); resume with the same optimizer") from None
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
        with forked_rng(self.device), _quiet_first_call():
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
            if self.registers is not None:
                self.vae.register_params = self.registers
            if self.run is not None:
                self.run.release()
            if self.error is None:
                self.processes.barrier()   # rank 0's last files are on disk before anyone moves on


def _warn_unless_rebuildable(vae):
    """Warn when ``pv.load_run`` could not rebuild ``vae`` from config.json by itself."""
    try:
        with forked_rng("cpu"):   # the throwaway model's initial weights must not use the run's random stream
            rebuilt = build_vae(vae.config)
        same = {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in vae.state_dict().items()}
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


@contextlib.contextmanager
def _quiet_first_call():
    """Silence what Pyro says on an ELBO's first call about its own internals: the plate depth a vectorized ELBO
    guesses (an INFO line) and torch's deprecation of ``torch.jit.trace`` (which the JIT ELBOs use)."""
    logger = logging.getLogger("pyro.infer.elbo")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.jit.*")
            yield
    finally:
        logger.setLevel(level)


def _needs_param_sites(elbo):
    """Whether ``elbo`` reads the parameters from Pyro's param sites rather than from the module.

    ``fit``'s torch optimizer holds the module's parameters, so ``pyro.module`` is only needed by ELBOs that
    find their parameters in the trace: ``loss_and_grads`` (e.g. ``RenyiELBO``) backpropagates only when the
    trace has param sites, and the JIT ELBOs pass the param store's values to the traced function.
    """
    return not hasattr(elbo, "differentiable_loss") or isinstance(elbo, JIT_ELBOS)


def _loss_step(elbo, model, guide):
    """A function ``(x, y, inputs) -> loss`` that also leaves the loss's gradients in the parameters."""
    if hasattr(elbo, "differentiable_loss"):
        objective = elbo(model, guide)   # the ELBO as an nn.Module

        def step(x, y, inputs):
            loss = objective(*_inputs(x, y), **inputs)
            loss.backward()
            return loss.detach()
    else:  # e.g. RenyiELBO, which computes its gradients itself and returns a float
        def step(x, y, inputs):
            return torch.tensor(elbo.loss_and_grads(model, guide, *_inputs(x, y), **inputs))
    return step


def choose_step(elbo, vae, batches, contract=None):
    """``("replay" | "pyro", reason)``: whether the sync-free replay step computes ``elbo``'s estimator for
    ``vae`` exactly, decided before training.

    The replay is ``Trace_ELBO``'s estimator (:mod:`pyro_vae.fast`): it needs that exact class (not a
    subclass such as ``TraceMeanField_ELBO``, whose analytic KL is another estimator, nor a JIT ELBO, which
    asks for torch.jit's own compilation), no enumerated sites, reparameterised guide sites, and sites that do
    not change from batch to batch (:func:`pyro_vae.fast.replay_problem`, run on ``batches``). Whether the
    tracer can follow the model is found by tracing it (``Trainer`` does, on the same batches).

    :param elbo: the ELBO ``fit`` trains with.
    :param vae: the model.
    :param batches: list of ``(x, y, inputs)`` to probe (``Trainer.probe_batches``).
    :param contract: the :class:`~pyro_vae.contract.Contract` of ``vae``, if checked.
    """
    name = type(elbo).__name__
    if type(elbo) is not Trace_ELBO:
        if isinstance(elbo, JIT_ELBOS):
            return "pyro", f"{name} asks for Pyro's torch.jit compilation of the ELBO"
        if enumerates(elbo):
            return "pyro", f"{name} sums enumerated sites out, which the sync-free step does not"
        return "pyro", f"the sync-free step computes Trace_ELBO's estimator, not {name}'s"
    if contract is not None and (contract.enumerated or contract.guide_enumerated):
        sites = contract.enumerated or contract.guide_enumerated
        return "pyro", f"the model enumerates {', '.join(map(repr, sites))}, which the sync-free step does not"
    problem = fast.replay_problem(elbo, vae, batches)
    if problem is not None:
        return "pyro", problem
    return "replay", (f"Trace_ELBO with reparameterised sites that agree on {len(batches)} probed batches: "
                      f"the sync-free replay computes the same estimator")


def _fast_step(step, weight):
    """A :func:`~pyro_vae.fast.make_step` step as a step of this loop; the KL weight is applied around each call,
    where the traced graph reads it as an input (wrapping the model instead would freeze it into the graph)."""
    if weight is None:
        return lambda x, y, inputs: step(x, y, **inputs)

    def weighted(x, y, inputs):
        with weight:
            return step(x, y, **inputs)
    return weighted


def _inputs(x, y):
    # y only when the data have labels: the JIT ELBOs pass their inputs to a compiled graph, which takes
    # tensors but not None (model and guide default y to None)
    return (x,) if y is None else (x, y)


def _without_compiled_graphs(elbo):
    """A copy of a JIT ELBO that has compiled nothing yet (the caller's instance is left as it was).

    A Pyro JIT ELBO builds its compiled function on its first call, as a closure over the ``model`` and
    ``guide`` of *that* call, and keeps it: called later with another model (a second ``fit`` with the
    same instance and a new VAE) it traces the first model's program again, so the new VAE got no
    gradients and did not train, silently. Each ``fit`` therefore starts from a copy without it.
    """
    fresh = copy.copy(elbo)
    for name, value in list(vars(fresh).items()):
        if isinstance(value, CompiledFunction):
            delattr(fresh, name)
    return fresh
