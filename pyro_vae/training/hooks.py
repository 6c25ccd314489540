"""Hooks: the work around a training run that is not the AEVB step itself.

:func:`~pyro_vae.fit` runs a short loop (epochs, batches, ELBO step, optimizer step) and hands everything
else to a list of small hook objects: the KL weight, the finite-loss guard, the test ELBO, the learning-rate
schedule, early stopping, checkpoints, the run's files, the progress bar, TensorBoard and your own. A hook
overrides the methods it needs; ``fit`` calls each in list order::

    on_fit_start(trainer)              once, after a resumed run's state is restored
    on_epoch_start(trainer)
    on_step_end(trainer)               after every optimizer step (only hooks that override it)
    on_epoch_end(trainer, record)      record: the epoch's entry of the history, which hooks may add to
    on_fit_end(trainer)                always, also after an error (then ``trainer.error`` holds it)

``trainer`` (:class:`~pyro_vae.train.Trainer`) holds the model, optimizer, data, settings, history and epoch;
a hook stops the run after the current epoch by setting ``trainer.stop = True``. A hook whose state a
resumed run needs gives it a ``name``, returns it from ``state_dict()`` (plain data) and reads it back in
``on_fit_start`` from ``trainer.saved_state(self.name)``.

Your hooks run after the built-in ones and, unless they set ``in_run = True``, with the random-number
streams forked: a hook that draws (sampling pictures, say) leaves the run's stream alone, so a resumed
run still equals an uninterrupted one. Example, a hook that records the learning rate::

    class RecordLR(pv.hooks.Hook):
        def on_epoch_end(self, trainer, record):
            record["lr"] = trainer.optimizer.param_groups[0]["lr"]

    pv.fit(vae, train, hooks=[RecordLR()])
"""

import copy
import math
import time
import warnings

import torch
from tqdm.auto import tqdm

from .. import evaluate
from ..runs.checkpoint import BEST
from ..errors import CheckpointError, ConfigError, TrainingError
from ..checks import forked_rng
from ..inference.traces import LatentWeight
from ..models.contract import device_of

# LatentWeight (inference.traces), the KL weight's messenger, is part of this module's interface (pv.hooks) since
# before it moved
__all__ = ["Hook", "Hooks", "KLWeight", "FiniteGuard", "TestELBO", "History", "ProgressBar", "LRSchedule",
           "EarlyStopping", "Checkpoint", "TensorBoard", "Callback", "RunFiles", "LatentWeight", "diverged",
           "evaluation_seconds", "DIVERGENCE_FACTOR", "QUIET_EVALUATION_SECONDS"]

#: a training objective or test ELBO this many times larger in size than the first epoch's has diverged,
#: even while it is still finite (it would overflow soon, and the run is lost either way)
DIVERGENCE_FACTOR = 1e4


class Hook:
    """Base class of the hooks: every method does nothing (see the module docstring for the protocol)."""

    #: key of the hook's state in the checkpoint (``None``: the hook keeps no state across a resume)
    name = None
    #: whether the hook may draw from the run's random stream (built-in hooks); others run forked
    in_run = False

    def on_fit_start(self, trainer):
        pass

    def on_epoch_start(self, trainer):
        pass

    def on_step_end(self, trainer):
        pass

    def on_epoch_end(self, trainer, record):
        pass

    def on_fit_end(self, trainer):
        pass

    def state_dict(self):
        return {}


class Hooks:
    """The hooks of one ``fit`` call, called in order; user hooks under a forked random state."""

    def __init__(self, hooks):
        self.hooks = list(hooks)
        for hook in self.hooks:
            if not isinstance(hook, Hook):
                raise ConfigError(f"hooks must be pyro_vae.hooks.Hook objects, got {type(hook).__name__}; "
                                  f"subclass Hook and override the methods you need")
        # on_step_end runs every step: call only the hooks that do something there
        self._stepping = [h for h in self.hooks if type(h).on_step_end is not Hook.on_step_end]

    def __iter__(self):
        return iter(self.hooks)

    def _call(self, hooks, method, trainer, *args):
        for hook in hooks:
            if hook.in_run:
                getattr(hook, method)(trainer, *args)
            else:
                with forked_rng(trainer.device):
                    getattr(hook, method)(trainer, *args)

    def on_fit_start(self, trainer):
        self._call(self.hooks, "on_fit_start", trainer)

    def on_epoch_start(self, trainer):
        self._call(self.hooks, "on_epoch_start", trainer)

    def on_step_end(self, trainer):
        self._call(self._stepping, "on_step_end", trainer)

    def on_epoch_end(self, trainer, record):
        self._call(self.hooks, "on_epoch_end", trainer, record)

    def on_fit_end(self, trainer):
        """Every hook's ``on_fit_end``, even when one of them fails (the first error is raised afterwards)."""
        first = None
        for hook in self.hooks:
            try:
                self._call([hook], "on_fit_end", trainer)
            except BaseException as e:   # a Ctrl-C here must not skip closing the others
                first = first or e
        if first is not None and trainer.error is None:
            raise first

    def states(self):
        return {hook.name: hook.state_dict() for hook in self.hooks if hook.name}


# --- the KL weight --------------------------------------------------------------------------------


class KLWeight(Hook):
    """beta and KL warm-up: the latent sites' weight is ``beta * min(1, epoch / warmup)`` in each epoch."""

    in_run = True

    def __init__(self, beta=1.0, warmup=0):
        self.beta, self.warmup = beta, warmup

    def on_epoch_start(self, trainer):
        trainer.kl_weight.value = self.beta * min(1.0, trainer.epoch / self.warmup) if self.warmup else self.beta


# --- numerical guards -----------------------------------------------------------------------------


def diverged(value, reference):
    """Whether ``value`` is not finite, or more than :data:`DIVERGENCE_FACTOR` times ``reference`` in size."""
    if not math.isfinite(value):
        return True
    return reference is not None and abs(value) > DIVERGENCE_FACTOR * max(1.0, abs(reference))


class FiniteGuard(Hook):
    """Stops the run (:class:`~pyro_vae.errors.TrainingError`) when the loss or the weights stop being finite,
    or the training objective explodes by orders of magnitude, before anything of the epoch is saved."""

    in_run = True

    def on_epoch_end(self, trainer, record):
        losses, epoch = trainer.epoch_losses, trainer.epoch
        advice = trainer.remedy()
        if not bool(torch.isfinite(losses).all()):
            bad = int((~torch.isfinite(losses)).nonzero()[0])
            raise TrainingError(f"the loss became {losses[bad].item()} at epoch {epoch}, step {bad + 1}; {advice}")
        # the losses were computed before each step: the last step can still have broken the weights,
        # and a checkpoint of them would fail again on resume
        if not bool(torch.stack([p.detach().isfinite().all() for p in trainer.parameters]).all()):
            raise TrainingError(f"the weights became NaN or infinite in epoch {epoch}; {advice}")
        # within the epoch: a step's loss against the epoch's first step (both summed over a batch), so a
        # run that explodes in its first epoch stops too
        worst = int(losses.abs().argmax())
        largest, first = losses[worst].item(), losses[0].item()
        if diverged(largest, first):
            raise TrainingError(f"the loss exploded to {largest:.3g} at epoch {epoch}, step {worst + 1} "
                                f"(step 1: {first:.3g}); {advice}")
        reference = trainer.history[0]["train_elbo"] if trainer.history else None
        if diverged(record["train_elbo"], reference):
            raise TrainingError(f"the training objective exploded to {record['train_elbo']:.3g} nats per image in "
                                f"epoch {epoch} (epoch 1: {reference:.3g}); {advice}")


# --- scores and history ---------------------------------------------------------------------------


class TestELBO(Hook):
    """The ELBO of the validation and test sets after every epoch (nats per image):
    ``record["validation_elbo"]`` and ``record["test_elbo"]`` (each only with its dataset)."""

    in_run = True

    def on_epoch_end(self, trainer, record):
        # neither set on processes other than the main one
        if trainer.validation is not None:
            record["validation_elbo"] = self._score(trainer, trainer.validation, "validation")["elbo"]
        if trainer.test is not None:
            trainer.test_scores = self._score(trainer, trainer.test, "test")
            record["test_elbo"] = trainer.test_scores["elbo"]

    @staticmethod
    def _score(trainer, data, role):
        # the draws of the score leave the training stream alone: which sets are scored changes nothing of
        # the training run (the test set, above all, must not)
        with forked_rng(trainer.device):
            scores = evaluate.elbo(trainer.vae, data)
        key = f"{role}_elbo"
        first = next((h[key] for h in trainer.history if h.get(key) is not None), None)
        if diverged(scores["elbo"], first):
            raise TrainingError(f"the {role} ELBO became {scores['elbo']:.3g} nats per image in epoch "
                                f"{trainer.epoch}" + (f" (first: {first:.3g})" if first is not None else "")
                                + f"; {trainer.remedy()}")
        return scores


class History(Hook):
    """Adds the epoch's record to ``trainer.history`` (with its wall time), the same on every process."""

    in_run = True

    def on_epoch_end(self, trainer, record):
        record["seconds"] = time.perf_counter() - trainer.epoch_started
        shared = trainer.processes.share(record)   # rank 0's record, test ELBO included
        if shared is not record:
            record.clear()
            record.update(shared)
        trainer.history.append(record)


class ProgressBar(Hook):
    """A tqdm bar over the run's steps, with the running loss and each epoch's ELBOs (main process only)."""

    in_run = True

    def on_fit_start(self, trainer):
        steps = trainer.steps_per_epoch
        self.bar = tqdm(total=trainer.settings.epochs * steps, initial=trainer.epochs_done * steps, unit="step",
                        desc="fit", dynamic_ncols=True, disable=not trainer.processes.is_main)

    def on_step_end(self, trainer):
        self.bar.update()
        step = len(trainer.losses) - 1
        if step % 50 == 0 and not self.bar.disable:   # reading a loss waits for the device: not every step
            per_image = trainer.losses[step].item() / trainer.batch_size
            self.bar.set_postfix_str(f"epoch {trainer.epoch} loss/img {per_image:.2f}")

    def on_epoch_end(self, trainer, record):
        test = "".join(f" {role} ELBO {record[f'{role}_elbo']:.2f}" for role in ("validation", "test")
                       if record.get(f"{role}_elbo") is not None)
        self.bar.set_postfix_str(f"epoch {trainer.epoch} train ELBO {record['train_elbo']:.2f}{test}")

    def on_fit_end(self, trainer):
        if hasattr(self, "bar"):
            self.bar.close()


# --- schedules and stopping -------------------------------------------------------------------------


class LRSchedule(Hook):
    """A ``torch.optim.lr_scheduler`` stepped after every epoch; ``ReduceLROnPlateau`` is given the negative
    validation ELBO (the negative training objective without a validation set; never the test ELBO, which is
    only scored), a loss for its default ``mode="min"``.
    ``record["lr"]`` is the learning rate the epoch trained with.

    :param factory: ``optimizer -> scheduler``, e.g.
        ``lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)``.
    """

    name = "lr_schedule"
    in_run = True

    def __init__(self, factory):
        self.factory = factory
        self.scheduler = None

    def on_fit_start(self, trainer):
        self.scheduler = self.factory(trainer.optimizer)
        if not hasattr(self.scheduler, "step") or not hasattr(self.scheduler, "state_dict"):
            raise ConfigError(f"scheduler must build a torch.optim.lr_scheduler from the optimizer, got "
                              f"{type(self.scheduler).__name__}; pass e.g. "
                              f"lambda opt: CosineAnnealingLR(opt, T_max=50)")
        saved = trainer.saved_state(self.name)
        if saved:
            self.scheduler.load_state_dict(saved)

    def on_epoch_end(self, trainer, record):
        record["lr"] = trainer.optimizer.param_groups[0]["lr"]
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            watched = record.get("validation_elbo")
            score = watched if watched is not None else record["train_elbo"]
            self.scheduler.step(-score)
        else:
            self.scheduler.step()

    def state_dict(self):
        return self.scheduler.state_dict() if self.scheduler is not None else {}


class EarlyStopping(Hook):
    """Stops when the validation ELBO has not improved for ``patience`` epochs and leaves the model with the weights
    of its best epoch; they are kept in the run folder as ``best.pt`` too, and ``trainer.best_epoch`` says
    which epoch it was.

    The best weights are also part of this hook's state in ``checkpoint.pt`` (one atomic write with the rest
    of the epoch), and a resumed run writes ``best.pt`` again from them: a process killed between writing
    ``best.pt`` and ``checkpoint.pt`` leaves a ``best.pt`` of an epoch the resumed history will not have.

    :param int patience: epochs without a better validation ELBO before the run stops. The test set plays
        no part: ``fit`` refuses early stopping without a validation set.
    """

    name = "early_stopping"
    in_run = True

    def __init__(self, patience):
        self.patience = patience
        self.best_elbo, self.best_epoch, self.bad_epochs, self.stopped_at = None, None, 0, None
        self._best_weights, self._epoch = None, None

    def on_fit_start(self, trainer):
        saved = trainer.saved_state(self.name)
        if saved:
            self.best_elbo, self.best_epoch = saved["best_elbo"], saved["best_epoch"]
            self.bad_epochs, self.stopped_at = saved["bad_epochs"], saved["stopped_at"]
            self._best_weights = self._resumed_weights(trainer, saved.get("best_model"))
            if self._best_weights is not None and trainer.run is not None:
                self._save_best(trainer, self.best_epoch)
        trainer.best_epoch = self.best_epoch
        if self.stopped_at is not None:   # a resumed run that had already stopped: nothing left to train
            trainer.stop = True

    def _resumed_weights(self, trainer, saved_weights):
        """The best epoch's weights of the checkpoint being resumed (``best_model``: none when the best epoch was
        the checkpoint's own, whose weights the model now holds)."""
        if self.best_epoch is None:
            return None
        if saved_weights is not None:
            return {k: v.detach().cpu().clone() for k, v in saved_weights.items()}
        if self.best_epoch == trainer.epochs_done:
            return {k: v.detach().cpu().clone() for k, v in trainer.vae.state_dict().items()}
        # a checkpoint that keeps no best weights of its own: best.pt is only trusted for the epoch it names
        best = trainer.run.load_checkpoint(best=True) if trainer.run is not None and trainer.run.has(BEST) else None
        if best is None or best["epoch"] != self.best_epoch:
            held = f"there is no {BEST}" if best is None else f"{BEST} holds epoch {best['epoch']}"
            raise CheckpointError(f"the checkpoint's best epoch is {self.best_epoch} but {held}, so the best weights "
                                  f"are lost; start the run again with --overwrite (overwrite=True)")
        return best["model"]

    def _save_best(self, trainer, epoch):
        trainer.run.save_checkpoint({"format": 1, "epoch": epoch, "model": self._best_weights,
                                     "config": trainer.vae.config, "validation_elbo": self.best_elbo}, best=True)

    def on_epoch_end(self, trainer, record):
        elbo = record["validation_elbo"]
        self._epoch = trainer.epoch
        if self.best_elbo is None or elbo > self.best_elbo:
            self.best_elbo, self.best_epoch, self.bad_epochs = elbo, trainer.epoch, 0
            self._best_weights = copy.deepcopy({k: v.detach().cpu() for k, v in trainer.vae.state_dict().items()})
            if trainer.run is not None:
                self._save_best(trainer, trainer.epoch)
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                self.stopped_at = trainer.epoch
                trainer.stop = True
        record["best_epoch"] = trainer.best_epoch = self.best_epoch

    def on_fit_end(self, trainer):
        if trainer.error is not None or self.best_epoch is None or self.best_epoch == trainer.epochs_trained:
            return
        trainer.vae.load_state_dict(self._best_weights)

    def state_dict(self):
        # the best weights travel with the checkpoint unless they are the checkpoint's own (the epoch just saved)
        keep = self._best_weights is not None and self.best_epoch != self._epoch
        return {"best_elbo": self.best_elbo, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "stopped_at": self.stopped_at, "best_model": self._best_weights if keep else None}


# --- files ----------------------------------------------------------------------------------------


class Checkpoint(Hook):
    """Writes ``checkpoint.pt`` after every epoch: weights, optimizer, every process's random states, the
    history and the hooks' states, atomically, so an interrupted run loses at most the epoch in progress."""

    in_run = True

    def on_epoch_end(self, trainer, record):
        rng = trainer.rng_state()
        # every rank's own noise, so that a resumed data-parallel run is exact too
        ranks = trainer.processes.gather(rng) if trainer.processes.world_size > 1 else None
        trainer.run.save_checkpoint({"format": 1, "epoch": trainer.epoch, "model": trainer.vae.state_dict(),
                                     "optimizer": trainer.optimizer.state_dict(), "rng": rng, "rng_ranks": ranks,
                                     "history": trainer.history, "config": trainer.vae.config,
                                     "hooks": trainer.hooks.states()})


class TensorBoard(Hook):
    """Logs the run for TensorBoard (``torch.utils.tensorboard``), one step per epoch: the training objective,
    the test ELBO with its reconstruction and KL parts, the learning rate and the active units, and every
    ``image_every`` epochs (and the last) grids of test reconstructions and of samples. Open it with
    ``tensorboard --logdir LOG_DIR``. A resumed run drops what was logged after its checkpoint.

    :param str log_dir: folder of the event files.
    :param int image_every: epochs between pictures.
    :param int num_images: images per grid.
    """

    def __init__(self, log_dir, image_every=5, num_images=16):
        self.log_dir, self.image_every, self.num_images = str(log_dir), image_every, num_images
        self.writer = None

    def on_fit_start(self, trainer):
        if trainer.processes.is_main:
            from torch.utils.tensorboard import SummaryWriter   # tensorboard loads only when asked for
            self.writer = SummaryWriter(self.log_dir, purge_step=trainer.epochs_done + 1)

    def on_epoch_end(self, trainer, record):
        if self.writer is None:
            return
        epoch, vae, test = trainer.epoch, trainer.vae, trainer.test
        self.writer.add_scalar("train/objective", record["train_elbo"], epoch)
        self.writer.add_scalar("train/lr", record.get("lr", trainer.optimizer.param_groups[0]["lr"]), epoch)
        if record.get("validation_elbo") is not None:
            self.writer.add_scalar("validation/elbo", record["validation_elbo"], epoch)
        if test is not None:
            scores = trainer.test_scores
            for key in ("elbo", "reconstruction", "kl"):
                self.writer.add_scalar(f"test/{key}", scores[key], epoch)
            self.writer.add_scalar("test/active_units", evaluate.active_units(vae, test), epoch)
        covariates = getattr(trainer.train, "covariates", None) is not None   # pictures would need them
        if not covariates and (epoch % self.image_every == 0 or epoch == trainer.settings.epochs or trainer.stop):
            from ..viz.figures import image_grid
            with torch.no_grad(), evaluate.eval_mode(vae):
                shown = (test if test is not None else trainer.train).images[: self.num_images]
                labels = (test if test is not None else trainer.train).labels
                labels = None if labels is None else labels[: self.num_images]
                pairs = torch.cat([shown, vae.reconstruct(shown, labels).to(shown.dtype)])
                self.writer.add_image("reconstructions", image_grid(pairs, nrow=len(shown)), epoch)
                self.writer.add_image("samples", image_grid(vae.sample(self.num_images), nrow=4), epoch)
        self.writer.flush()

    def on_fit_end(self, trainer):
        if self.writer is not None:
            self.writer.close()


class Callback(Hook):
    """``callback(vae, record)`` after every epoch; returning ``True`` stops the run."""

    def __init__(self, callback):
        self.callback = callback

    def on_epoch_end(self, trainer, record):
        if self.callback(trainer.vae, record):
            trainer.stop = True


#: a final evaluation estimated to take longer than this shows its cost and a progress bar even without progress
QUIET_EVALUATION_SECONDS = 30


def evaluation_seconds(vae, test, num_samples):
    """About how long ``evaluate.report`` takes on ``test`` with K = ``num_samples``: its log p(x), the slow
    part, timed on one of the chunks it is computed in (a batch of images times a block of samples, of the
    sizes :func:`~pyro_vae.evaluate.log_likelihood` uses) and scaled by the number of chunks; drawn outside
    the run's random stream, so the scores do not change."""
    images = max(1, evaluate.MAX_PAIRS // min(num_samples, 100))
    samples = max(1, min(num_samples, evaluate.MAX_PAIRS // images))
    part = test.subset(range(min(len(test), images))) if hasattr(test, "subset") else test[:images]
    with forked_rng(device_of(vae)):
        started = time.perf_counter()
        evaluate.log_likelihood(vae, part, num_samples=samples, batch_size=images)
        seconds = time.perf_counter() - started
    return seconds * len(test) / len(part) * math.ceil(num_samples / samples)


class RunFiles(Hook):
    """The run folder's other files, as ``pyro-vae train`` writes them: ``metrics.json`` after every epoch
    (history, best epoch) and, when training ends, the test scores (``evaluate.report`` with ``eval_samples``
    importance samples; M2 also its test accuracy) and the standard pictures (:func:`~pyro_vae.plots.save_all`).

    :param int eval_samples: K of the final log p(x); 0 skips the final scores.
    :param bool pictures: write the pictures.
    :param bool progress: progress bar of the final evaluation.
    """

    def __init__(self, eval_samples=1000, pictures=True, progress=False):
        self.eval_samples, self.pictures, self.progress = eval_samples, pictures, progress

    def on_fit_start(self, trainer):
        # metrics.json is written after the checkpoint: a process killed between the two leaves it an epoch
        # behind, which a resume with no epoch left to train would otherwise never bring up to date
        if trainer.history:
            self.on_epoch_end(trainer, None)

    def on_epoch_end(self, trainer, record):
        best = {} if trainer.best_epoch is None else {"best_epoch": trainer.best_epoch}
        trainer.run.update_metrics(lambda metrics: metrics.update(history=trainer.history, **best))

    def on_fit_end(self, trainer):
        if trainer.error is not None or not trainer.processes.is_main or not trainer.history:
            return
        vae, test = trainer.vae, trainer.test
        if test is not None and self.eval_samples:
            started = time.perf_counter()
            seconds = evaluation_seconds(vae, test, self.eval_samples)
            # without progress bars (tests, scripts) only an evaluation long enough to wonder about says so
            shown = self.progress or seconds > QUIET_EVALUATION_SECONDS
            if shown:
                tqdm.write(f"final evaluation: log p(x) with K={self.eval_samples} importance samples on {len(test)} "
                           f"images, about {seconds:.0f} s")
            result = evaluate.report(vae, test, num_samples=self.eval_samples, progress=shown)
            result["seconds"] = time.perf_counter() - started   # the estimate's trial included
            if shown:
                tqdm.write(f"final evaluation took {result['seconds']:.0f} s")
            # the epoch whose weights were scored: a resumed run keeps the evaluations made before it
            result["epoch"] = trainer.best_epoch or trainer.epochs_trained
            trainer.run.update_metrics(lambda metrics: metrics.update(test=result))
        if self.pictures and getattr(trainer.train, "covariates", None) is not None:
            # the standard pictures encode and decode without covariates, which such a model needs
            warnings.warn("the standard pictures are not drawn for data with covariates: call pv.plots with your "
                          "model's own sampling and decoding", UserWarning, stacklevel=2)
        elif self.pictures:
            from ..viz import figures as plots   # matplotlib only when pictures are drawn
            plots.save_all(vae, trainer.train.images, trainer.train.labels, None if test is None else test.images,
                           trainer.history, trainer.run.path, test_labels=None if test is None else test.labels)
