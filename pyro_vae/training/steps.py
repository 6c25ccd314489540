"""How ``fit`` computes each step: Pyro's own ELBO or the sync-free replay step, chosen before the first step,
and the fall-back from the replay to Pyro's ELBO when the replay stops computing what the model does.

:class:`StepChoice` holds the :class:`~pyro_vae.train.Trainer`'s methods for it (the trainer is one); the
functions below make the loop's step ``(x, y, inputs) -> loss`` from either estimator.
"""

import contextlib
import logging
import warnings

import torch

from pyro.infer import JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO, JitTraceMeanField_ELBO, Trace_ELBO

from ..checks import forked_rng
from ..errors import CheckpointError, ConfigError
from ..files import save_json
from ..inference import replay as fast
from ..models.contract import enumerates
from ..runs.folder import CONFIG

#: Pyro's ELBOs that trace the model and guide once with ``torch.jit`` and replay the compiled graph
JIT_ELBOS = (JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO, JitTraceMeanField_ELBO)

#: images of the batch on which an automatically chosen replay step is checked against the model before every
#: epoch after the first (a graph and an eager run of them: milliseconds)
REPLAY_CHECK_IMAGES = 8


class StepChoice:
    """The step of a :class:`~pyro_vae.train.Trainer` (which this is a base of): chosen once, from
    ``settings.requested``, and replaced by Pyro's own ELBO where the replay falls back.

    Reads the trainer's ``settings``, ``vae``, ``elbo``, ``kl_weight``, ``device``, ``train``, ``batch_size``,
    ``run``, ``processes``, ``epoch``, ``batches`` and ``_batches_of``; sets ``step``, ``_replay_check`` and
    ``settings.step`` / ``settings.step_reason``.
    """

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
            with quiet_first_call():   # a vectorised ELBO's first call logs the plate depth it guesses
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
            with quiet_first_call():
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
        return replay_step(step, self.kl_weight if settings.weighted else None)

    def _pyro_step(self):
        model, guide = self.vae.model, self.vae.guide
        if self.settings.weighted:
            model, guide = self.kl_weight(model), self.kl_weight(guide)
        return loss_step(self.elbo, model, guide)

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


@contextlib.contextmanager
def quiet_first_call():
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


def needs_param_sites(elbo):
    """Whether ``elbo`` reads the parameters from Pyro's param sites rather than from the module.

    ``fit``'s torch optimizer holds the module's parameters, so ``pyro.module`` is only needed by ELBOs that
    find their parameters in the trace: ``loss_and_grads`` (e.g. ``RenyiELBO``) backpropagates only when the
    trace has param sites, and the JIT ELBOs pass the param store's values to the traced function.
    """
    return not hasattr(elbo, "differentiable_loss") or isinstance(elbo, JIT_ELBOS)


def loss_step(elbo, model, guide):
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


def replay_step(step, weight):
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
