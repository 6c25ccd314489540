"""A training step that never waits for the device: Pyro's ``Trace_ELBO`` estimator traced once and replayed.

On a GPU a small VAE step is launch-bound: the device finishes each kernel before Python has issued the
next, so the step costs host time, and every read of a device value back to the host adds a round trip.
Pyro's ``Trace_ELBO.differentiable_loss`` reads a value per site (``torch_item`` of each ``log_prob_sum``)
and one more for its NaN check (``warn_if_nan``), every step (``pyro/infer/trace_elbo.py``). This module
computes the same estimator without those reads and, by default, without running Pyro's Python per step:

1. :func:`sync_free_loss` is ``Trace_ELBO``'s loss from Pyro's own machinery (``ELBO._get_traces``, i.e.
   ``get_importance_trace``: the guide traced, the model replayed against it, ``compute_log_prob`` and
   ``compute_score_parts`` with every site's scale and mask, plates, particles) summed on the device:
   sum over model sites of log p minus sum over guide sites of log q. Reparameterised latent sites only.
2. :func:`make_step` runs (1) once per input signature under ``make_fx`` (PyTorch's dispatcher-level
   tracer, on fake tensors, so tracing computes nothing and draws no random numbers), together with its
   backward pass, into one graph of ATen operations, and replays that graph on every later call:
   forward and backward without Python from Pyro or autograd. ``mode="compile"`` also hands the graph to
   ``torch.compile`` (inductor; CUDA graphs on a GPU).

The replayed graph draws its random numbers with the same operations, in the same order, as the eager
estimator, so a seeded step equals ``Trace_ELBO`` to rounding (``tests/inference/test_replay.py``). Measured against
a hand-written PyTorch VAE by ``benchmarks/overhead.py``.

What a trace freezes, and what is checked on every call instead: the graph is traced per *signature*:
shapes, dtypes and devices of the tensor arguments, the values of the other keyword arguments, and the
module's ``training`` flag (a new signature, e.g. the smaller last batch of an epoch, is traced once more
and kept). The weight (scale) of every site is an input of the graph, not a constant: Pyro handlers that
scale sites from outside the step (``with poutine.scale(scale=beta): step(x)``) are read on every call, so
a KL warm-up changes the loss without a new trace. Anything else a handler around the call would do
(masks, conditioning, recording a trace) makes that call run the eager estimator (1), which honours it as
Pyro does. Python inside the model that depends on anything but the signature (a branch on an attribute
changed between steps) is frozen at the first trace, as with ``JitTrace_ELBO``; ``step.check`` compares a
graph with the model as it is now, and :func:`replay_problem` looks for sites that change between batches
(``fit`` runs both when it picks this step by itself).

The estimator's arithmetic on a pair of traces is :mod:`~pyro_vae.inference.surrogate`; what a graph depends
on and freezes (the inputs' signature, the sites' patterns) :mod:`~pyro_vae.inference.patterns`. This is the one
module of the package that relies on Pyro's and torch's internals (listed below); everything
else reaches them through the public functions here (:func:`uncompiled_copy`).
"""

# Pyro/torch private names this module relies on, tested against pyro-ppl >=1.9,<1.10 (and torch 2.x); none is
# in their documented API, so each may change in any release (tests/inference/test_replay.py and tests/test_layers.py):
#   pyro.poutine.runtime._PYRO_STACK        the active handlers: hidden while tracing, read for their scales
#   ELBO._get_traces                        Trace_ELBO's own (model trace, guide trace) per particle
#   Messenger._process_message              a handler's work on a message: applied to stand-in messages ...
#   Messenger._postprocess_message          ... unless it also works after the site (then the call runs eagerly)
#   Messenger._pyro_post_sample             (the same, for handlers that only post-process sample sites)
#   Messenger._pyro_param                   (_ParamsPassedThrough: pyro.param answered without the store)
#   pyro.ops.jit.CompiledFunction           the torch.jit graph a JIT ELBO keeps after its first call
#   torch._dynamo.mark_static_address       parameters read in place by a CUDA graph (mode="compile")

import copy
import numbers
import warnings

import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

import pyro
from pyro.ops.jit import CompiledFunction
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import _PYRO_STACK

from ..checks import forked_rng
from ..errors import ConfigError
from .patterns import BuffersKept, SitePatterns, rebuild, split_inputs
from .surrogate import SUPPORTED_ELBOS, check_elbo, particle_elbo
from .traces import no_param_store

__all__ = ["MAX_GRAPHS", "MODES", "SUPPORTED_ELBOS", "check_elbo", "make_step", "replay_problem", "sync_free_loss",
           "uncompiled_copy"]

#: ways :func:`make_step` can run the estimator
MODES = ("replay", "compile", "eager")

#: signatures traced per step at most; calls of further ones run eagerly (still sync-free)
MAX_GRAPHS = 8


def sync_free_loss(elbo, model, guide, *args, **kwargs):
    """``Trace_ELBO``'s differentiable loss (minus the ELBO estimate) computed without a host read.

    The same estimator as ``elbo.differentiable_loss(model, guide, *args, **kwargs)``: Pyro traces the
    guide, replays the model against it and computes the log-densities with their scales and masks
    (``elbo._get_traces``, which ``Trace_ELBO`` iterates too: num_particles, vectorised or not); this sums
    them on the device instead of reading each one back (``torch_item``) and checking the loss for NaN.
    Reparameterised latent sites only: there the loss and the surrogate ``Trace_ELBO`` differentiates are
    the same expression. Run it with Pyro's validation off (``pyro.validation_enabled(False)``), as
    :func:`make_step` does: validating distribution arguments reads values on the host.

    :param elbo: a ``Trace_ELBO`` (or ``JitTrace_ELBO``: same estimator; its JIT is not used).
    :param model: Pyro model, called as ``model(*args, **kwargs)``.
    :param guide: Pyro guide with the same signature.
    :returns: 0-dim tensor on the device of the log-densities, differentiable.
    :raises ConfigError: another ELBO, or a guide site without ``rsample`` (discrete latents).
    """
    check_elbo(elbo)
    return _loss(elbo, model, guide, args, kwargs)


def _loss(elbo, model, guide, args, kwargs, weights=None, sites=None):
    """:func:`sync_free_loss` with the ``weights`` and ``sites`` of
    :func:`~pyro_vae.inference.surrogate.particle_elbo`."""
    loss = 0.0
    for model_trace, guide_trace in elbo._get_traces(model, guide, args, kwargs):
        loss = loss - particle_elbo(model_trace, guide_trace, weights, sites) / elbo.num_particles
    return loss


# --- tracing ---------------------------------------------------------------------------------------------


class _HiddenPyroStack:
    """Run a block with Pyro's handler stack empty (and put it back afterwards).

    The graph is traced without the handlers around the call, so that their scales are not frozen into it:
    :meth:`_Step._outer_scales` applies them on every call instead.
    """

    def __enter__(self):
        self.saved = list(_PYRO_STACK)
        _PYRO_STACK.clear()

    def __exit__(self, *exc):
        _PYRO_STACK[:] = self.saved


class _ParamsPassedThrough(Messenger):
    """While tracing, ``pyro.param`` / ``pyro.module`` return the value they were given and leave Pyro's global
    param store alone: the module's parameters are fake tensors then, which must not end up in the store."""

    def _pyro_param(self, msg):
        init = msg["args"][1] if len(msg["args"]) > 1 else msg["kwargs"].get("init_tensor")
        if not isinstance(init, torch.Tensor):
            raise ConfigError(f"the model reads parameter {msg['name']!r} from Pyro's param store; the sync-free "
                              f"step trains the module's own parameters only (nn.Parameter); train without compile")
        msg["value"] = init
        msg["done"] = True


class _Objective(nn.Module):
    """The ELBO of ``vae`` as a module whose state is ``vae``'s, so ``torch.func.functional_call`` can swap in
    the tensors being traced. ``forward(tensors, weights)`` rebuilds the model's arguments from the tensors."""

    def __init__(self, elbo, vae, layout):
        super().__init__()
        self.vae = vae
        self.elbo = elbo
        self.layout = layout
        self.sites = []

    def forward(self, tensors, weights):
        args, kwargs = rebuild(self.layout, tensors)
        self.sites.clear()
        return _loss(self.elbo, self.vae.model, self.vae.guide, args, kwargs, weights, self.sites)


def _unflatten(flat, counts):
    """``(params, others, tensors, weights)`` from the graph's flat inputs."""
    a, b, c = counts
    return list(flat[:a]), list(flat[a:a + b]), list(flat[a + b:a + b + c]), flat[a + b + c]


class _Graph:
    """One traced step: the graph, the tensors it reads, and the sites it weights.

    ``fn(*params, *others, *tensors, weights) -> (loss, *grads)``: ``params`` the trained parameters, ``others``
    the buffers and frozen parameters (both held here, as an optimizer holds its parameters), ``tensors`` the
    step's tensor inputs, ``weights`` ``(num_sites,)`` the scale of every site; one gradient per entry of
    ``receives`` (indices into ``params``: the parameters the loss depends on). ``sites`` holds
    ``(type, name, is_observed, infer, cond_indep_stack, own_scale)`` per weighted site, ``inner`` the
    weights with no handler around the call, on the device.
    """

    def __init__(self, fn, params, others, receives, sites, inner):
        self.fn, self.params, self.others, self.receives = fn, params, others, receives
        self.sites, self.inner = sites, inner
        self.state = (*params, *others)
        self.alias_free = True

    def __call__(self, tensors, weights):
        with torch.no_grad():
            return self.fn(*self.state, *tensors, weights)


class _Step:
    """The callable :func:`make_step` returns; see there."""

    def __init__(self, elbo, vae, device, optimizer, mode, on_trace_error=None):
        self.elbo = elbo
        self.on_trace_error = on_trace_error
        self.vae = vae
        self.device = torch.device(device)
        self.optimizer = optimizer
        self.mode = mode
        self.graphs = {}
        self._warned = False
        # the CUDA graphs of mode="compile" own their outputs' memory: the next replay overwrites them
        self.copy_outputs = mode == "compile" and self.device.type == "cuda"
        self._last_scales = None
        self._optimizer_step = None if optimizer is None else optimizer.step
        if optimizer is not None and mode == "compile":
            # the update compiled into fused kernels instead of a Python loop of small ops per parameter
            self._optimizer_step = torch.compile(optimizer.step, dynamic=False)

    # --- one call -----------------------------------------------------------------------------------

    def __call__(self, x, y=None, **kwargs):
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss_and_grads(x, y, kwargs)
        if self.optimizer is not None:
            self._optimizer_step()
        return loss

    def prepare(self, x, y=None, **kwargs):
        """Trace the graph of this input signature now, so that its first call replays it instead of running
        eagerly; nothing is computed or drawn (fake tensors). Raises :class:`ConfigError` as the first call
        would; a signature already traced is left as it is."""
        tensors, layout, signature = split_inputs(x, y, kwargs)
        key = (signature, getattr(self.vae, "training", None))
        if self.mode != "eager" and key not in self.graphs and len(self.graphs) < MAX_GRAPHS:
            self.graphs[key] = self._trace(tensors, layout)

    def check(self, x, y=None, **kwargs):
        """Whether the graph of this signature still computes what the model and guide compute now: ``None``, or
        one line saying how they differ.

        A graph keeps the Python of the model as it ran at the trace; a model changed since (an attribute set
        by a callback, a site added, a branch taken another way) computes something else, which a replay
        would not show. This runs the graph and the eager estimator once each, from the same random state,
        outside the caller's random stream and without the handlers around the call, and compares their
        sites and losses (to rounding): about two steps of this batch, so check on a few images. The
        signature must have been traced (:meth:`prepare`); ``None`` where it was not (nothing to compare).
        """
        tensors, layout, signature = split_inputs(x, y, kwargs)
        graph = self.graphs.get((signature, getattr(self.vae, "training", None)))
        if graph is None:
            return None
        args, kwargs = rebuild(layout, tensors)
        sites = []
        with forked_rng(self.device), BuffersKept(self.vae):
            cuda = self.device.type == "cuda"
            state = torch.cuda.get_rng_state(self.device) if cuda else torch.get_rng_state()
            replayed, *_ = graph(tensors, graph.inner)
            replayed = replayed.clone()
            if cuda:
                torch.cuda.set_rng_state(state, self.device)
            else:
                torch.set_rng_state(state)
            with torch.no_grad(), _HiddenPyroStack(), _ParamsPassedThrough(), pyro.validation_enabled(False):
                eager = _loss(self.elbo, self.vae.model, self.vae.guide, args, kwargs, sites=sites)
        now, then = [name for _, name, _ in sites], [name for _, name, *_ in graph.sites]
        if now != then:
            return (f"the model's sites changed since its graph was traced (now {', '.join(now)}; traced "
                    f"{', '.join(then)})")
        eager = torch.as_tensor(eager, dtype=replayed.dtype, device=replayed.device)
        if not bool(torch.isclose(replayed, eager, rtol=1e-4, atol=1e-3, equal_nan=True)):
            return (f"the model computes another loss than its graph traced ({float(eager):.6g} now, "
                    f"{float(replayed):.6g} replayed, from the same draws): its Python changed since the trace")
        return None

    def _loss_and_grads(self, x, y, kwargs):
        tensors, layout, signature = split_inputs(x, y, kwargs)
        if self.mode == "eager":
            return self._eager(tensors, layout)
        key = (signature, getattr(self.vae, "training", None))
        graph = self.graphs.get(key)
        if graph is None:
            # the first call of a signature is an ordinary eager step (it counts), then the trace
            loss = self._eager(tensors, layout)
            if len(self.graphs) < MAX_GRAPHS:
                try:
                    self.graphs[key] = self._trace(tensors, layout)
                except ConfigError as error:
                    if self.on_trace_error is None:
                        raise
                    # this call's loss and gradients are the eager estimator's, complete: the caller takes
                    # over from the next call on
                    self.on_trace_error(error)
            elif not self._warned:
                warnings.warn(f"the sync-free step has traced {MAX_GRAPHS} input signatures (shapes, dtypes, keyword "
                              f"values); further ones run eagerly, untraced", RuntimeWarning)
                self._warned = True
            return loss
        weights = self._outer_scales(graph)
        if weights is None:
            return self._eager(tensors, layout)
        if self.copy_outputs:
            torch.compiler.cudagraph_mark_step_begin()
        loss, *grads = graph(tensors, weights)
        copy = self.copy_outputs or not graph.alias_free
        # as backward() does: into .grad, adding to what is there (fit zeroes it before every step)
        for i, grad in zip(graph.receives, grads):
            param = graph.params[i]
            if param.grad is None:
                param.grad = grad.clone() if copy else grad
            else:
                param.grad.add_(grad)
        return loss.clone() if self.copy_outputs else loss

    def _eager(self, tensors, layout):
        args, kwargs = rebuild(layout, tensors)
        with pyro.validation_enabled(False):
            loss = sync_free_loss(self.elbo, self.vae.model, self.vae.guide, *args, **kwargs)
        if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
            raise ConfigError("the model and guide have no differentiable sample sites: nothing to train")
        loss.backward()
        return loss.detach()

    def _outer_scales(self, graph):
        """The ``weights`` input for this call: every site's scale with the handlers now around the call.

        No handler (the usual case): the weights recorded at trace time, already on the device. Otherwise each
        handler is applied to a stand-in message per site, innermost first as Pyro's ``apply_stack`` does; if
        one does anything but change the scale (masks, conditions, records a trace, stops the message),
        ``None``: the caller runs the eager estimator, which gives that handler the real messages.
        """
        stack = _PYRO_STACK
        if not stack:
            return graph.inner
        for frame in stack:
            if getattr(frame, "_pyro_post_sample", None) is not None or \
                    type(frame)._postprocess_message is not Messenger._postprocess_message:
                return None
        scales = []
        for kind, name, observed, infer, frames, own in graph.sites:
            msg = {"type": kind, "name": name, "fn": None, "is_observed": observed, "args": (), "kwargs": {},
                   "value": None, "infer": dict(infer), "scale": 1.0 if own is None else own,
                   "mask": None, "cond_indep_stack": frames, "done": False, "stop": False, "continuation": None}
            try:
                for frame in reversed(stack):
                    frame._process_message(msg)
                    if msg["stop"]:
                        return None
            except Exception:   # a handler that needs the real message (its distribution, its value)
                return None
            if (msg["fn"] is not None or msg["value"] is not None or msg["mask"] is not None or msg["done"]
                    or msg["is_observed"] != observed or msg["infer"] != infer
                    or msg["cond_indep_stack"] != frames or msg["continuation"] is not None):
                return None
            scale = msg["scale"]
            if isinstance(scale, torch.Tensor):
                if scale.dim() or scale.device != self.device:
                    return None   # a per-datapoint scale would need another graph
            elif not isinstance(scale, numbers.Number):
                return None
            scales.append(scale)
        if all(isinstance(s, numbers.Number) for s in scales):
            values = tuple(float(s) for s in scales)
            if self._last_scales is None or self._last_scales[0] != values:
                # new values (once per epoch under a warm-up): one copy to the device, then reused
                self._last_scales = (values, _to_device(values, self.device))
            return self._last_scales[1]
        return torch.stack([s.to(graph.inner.dtype) if isinstance(s, torch.Tensor)
                            else torch.full((), s, dtype=graph.inner.dtype, device=self.device) for s in scales])

    # --- tracing ------------------------------------------------------------------------------------

    def _trace(self, tensors, layout):
        """Trace forward and backward of :func:`sync_free_loss` for these inputs into a :class:`_Graph`."""
        # parameters first, then buffers: the graph's inputs are positional
        named = [*self.vae.named_parameters(), *self.vae.named_buffers()]
        param_names = ["vae." + n for n, t in named if t.requires_grad]
        other_names = ["vae." + n for n, t in named if not t.requires_grad]
        params = [t for _, t in named if t.requires_grad]
        others = [t for _, t in named if not t.requires_grad]
        objective = _Objective(self.elbo, self.vae, layout)
        found = [(role, name) for role, name, _ in self._find_sites(objective, tensors)]
        count = len(found)
        counts = (len(params), len(others), len(tensors))
        receives = []

        def loss_and_grads(*flat):
            # flat positional inputs and outputs: the replayed graph then spends no time on pytrees
            params, others, data, weights = _unflatten(flat, counts)
            params = [p.requires_grad_() for p in params]
            state = {**dict(zip(param_names, params)), **dict(zip(other_names, others))}
            with torch.enable_grad():
                loss = torch.func.functional_call(objective, state, (data, weights))
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            receives[:] = [i for i, g in enumerate(grads) if g is not None]
            return (loss.detach(), *(grads[i] for i in receives))

        try:
            # nothing to put in the param store (no_param_store): the graph holds no Pyro; the trace, like the
            # checks, runs outside the run's random stream, as fit's first call does
            with no_param_store(self.vae), _HiddenPyroStack(), _ParamsPassedThrough(), \
                    pyro.validation_enabled(False), forked_rng(self.device):
                fn = make_fx(loss_and_grads, tracing_mode="fake")(
                    *params, *others, *tensors, torch.ones(count, device=self.device))
        except ConfigError:
            raise
        except Exception as error:
            # data-dependent Python (a branch on a tensor's value, .item()) cannot run on fake tensors: it is
            # also exactly what would read a value back from the device
            reason = " ".join(str(error).split())[:160]
            raise ConfigError(f"the model or guide cannot be traced into a sync-free graph ({type(error).__name__}: "
                              f"{reason}); train without compile") from None
        if [(role, name) for role, name, _ in objective.sites] != found:
            raise ConfigError("the model's sites differ between two runs of the same inputs; the sync-free step "
                              "needs a model whose structure does not change from step to step")
        fn.graph.eliminate_dead_code()   # drops the scaled log-densities Pyro computed, which the weights replace
        fn.recompile()
        sites = [(site["type"], name, site["is_observed"], dict(site["infer"]), site["cond_indep_stack"],
                  site["scale"] if isinstance(site["scale"], numbers.Number) else None)
                 for _, name, site in objective.sites]
        objective.sites.clear()   # they hold fake tensors
        inner = _to_device(tuple(1.0 if own is None else float(own) for *_, own in sites), self.device)
        graph = _Graph(self._compile(fn, params, others), params, others, list(receives), sites, inner)
        graph.alias_free = self._outputs_alias_free(graph, tensors)
        return graph

    def _find_sites(self, objective, tensors):
        """The sites the graph weights, from one run of the estimator without gradients, outside the run's
        random stream and without the handlers around the call (the graph is traced without them)."""
        args, kwargs = rebuild(objective.layout, tensors)
        sites = []
        with torch.no_grad(), _HiddenPyroStack(), _ParamsPassedThrough(), pyro.validation_enabled(False), \
                forked_rng(self.device), BuffersKept(self.vae):
            _loss(self.elbo, self.vae.model, self.vae.guide, args, kwargs, sites=sites)
        return sites

    def _compile(self, fn, params, others):
        if self.mode != "compile":
            return fn
        options = {"fallback_random": True}   # the eager random draws: seeded runs equal Trace_ELBO's
        if self.device.type == "cuda":
            options["triton.cudagraphs"] = True   # mode="reduce-overhead": one launch per step
            for tensor in params + others:
                # parameters keep their addresses: the CUDA graph reads them in place instead of copying
                torch._dynamo.mark_static_address(tensor)
        return torch.compile(fn, fullgraph=True, dynamic=False, options=options)

    def _outputs_alias_free(self, graph, tensors):
        """Whether the graph's gradients never share memory (checked once, on a throw-away run): a gradient that
        is a view of another's storage would be changed by an in-place update of the other (clip_grad_norm_)."""
        if self.copy_outputs:
            return True   # copied anyway
        with forked_rng(self.device), BuffersKept(self.vae):
            _, *grads = graph(tensors, graph.inner)
        storages = [g.untyped_storage().data_ptr() for g in grads]
        return len(set(storages)) == len(storages)


def _to_device(values, device):
    tensor = torch.tensor(values, dtype=torch.get_default_dtype())
    if device.type == "cuda":
        # from pinned memory without waiting: a plain copy from pageable memory synchronises
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def make_step(elbo, vae, device, optimizer=None, mode="replay", on_trace_error=None):
    """A training step computing ``elbo``'s estimator for ``vae`` with no host synchronisation per step.

    ``step(x, y=None, **kwargs)`` returns the loss (minus the ELBO estimate, summed over the batch) as a
    detached 0-dim tensor on the device and leaves its gradients in ``vae``'s parameters (added to
    ``.grad``, as ``backward()`` does), like ``elbo(vae.model, vae.guide)(x, y).backward()`` does with
    ``Trace_ELBO``, but without reading a value back from the device. The model and guide are called as
    ``model(x, y, **kwargs)`` (``model(x, **kwargs)`` when ``y`` is ``None``).

    :param elbo: ``pyro.infer.Trace_ELBO`` (any ``num_particles``, vectorised or not) or ``JitTrace_ELBO``
        (the same estimator; its own JIT is not used).
    :param vae: a :class:`~pyro_vae.VAE` or any ``nn.Module`` with ``model`` and ``guide``; its parameters
        (``requires_grad``) are trained, its buffers and frozen parameters are read.
    :param device: the device of ``vae`` and of the batches.
    :param optimizer: optional ``torch.optim.Optimizer`` over ``vae``'s parameters; when given, ``step`` also
        calls ``optimizer.zero_grad(set_to_none=True)`` first and ``optimizer.step()`` last, the latter
        compiled by ``torch.compile`` in ``mode="compile"`` (a float learning rate is then a constant of the
        compiled update: a schedule that changes it recompiles, so give such optimizers ``lr`` as a tensor).
    :param str mode: ``"replay"`` (default): trace forward and backward once per input signature into a graph
        of ATen operations (about 0.1-0.2 s) and replay it op by op; ``"compile"``: the same graph compiled by
        ``torch.compile`` (inductor, with Pyro's eager random draws kept; with CUDA graphs on a GPU), about
        20-30 s of compilation per signature on a 2-core CPU; ``"eager"``: Pyro's tracing every step,
        sync-free (slowest, nothing frozen).
    :returns: ``step(x, y=None, **kwargs) -> loss``: ``x`` images ``(N, C, H, W)``, ``y`` labels ``(N,)`` or
        ``None``, keyword arguments tensors or hashable values; ``loss`` 0-dim, detached, on ``device``.
    :raises ConfigError: another ELBO, an unknown mode, or (on the first call) a non-reparameterised latent
        site (discrete latents, e.g. :class:`~pyro_vae.extended.M2`), or a model that reads tensor values
        on the host.

    The first call of every input signature is an eager, sync-free step (it returns its loss and
    gradients) and then traces the graph outside the run's random stream; later calls replay it, drawing
    the same random numbers, in the same order, as ``Trace_ELBO`` would. Pyro handlers around a call that
    only scale sites (``poutine.scale``, a beta / KL warm-up handler around ``step(x)``) are applied on every call
    as graph inputs; other handlers make that call eager (see the module's docstring). Like an optimizer,
    the step holds the parameter and buffer tensors of ``vae`` it first saw (``load_state_dict`` and
    ``.to()`` update them in place); make a new step for a module whose tensors were replaced.
    ``step.prepare(x, y=None, **kwargs)`` traces a signature ahead of its first call (which then replays).

    :param on_trace_error: called as ``on_trace_error(error)`` (a :class:`ConfigError`) instead of raising
        when the trace after a signature's first, eager call fails; that call still returns its loss and
        leaves its gradients, so a caller can carry on with another estimator from the next call.
    """
    check_elbo(elbo)
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r} for the sync-free step; use one of {', '.join(MODES)}")
    if not (callable(getattr(vae, "model", None)) and callable(getattr(vae, "guide", None))):
        raise ConfigError(f"make_step needs a module with model and guide methods, got {type(vae).__name__}")
    return _Step(elbo, vae, device, optimizer, mode, on_trace_error)


# --- whether the replay is exact for a model --------------------------------------------------------------


def replay_problem(elbo, vae, batches):
    """Why the replayed graph would not compute ``elbo``'s estimator for ``vae`` on every batch, or ``None``.

    Runs the estimator once per batch (no gradients, outside the caller's random stream, Pyro's param store
    untouched) and compares what a trace would freeze: the same sites, in the same order, with the same
    distributions, shapes, scales and masks for batches of one signature, and the same sites for batches of
    different sizes. A model whose sites depend on the data's values (labels present in some batches only,
    a branch on a pixel) shows it on batches chosen to differ, e.g. in their labels. Also refused: sites
    marked for enumeration, guide sites without ``rsample``, parameters read from Pyro's param store.

    :param elbo: a ``Trace_ELBO``.
    :param vae: module with ``model`` and ``guide``.
    :param batches: iterable of ``(x, y, inputs)``, ``inputs`` the keyword arguments of model and guide.
    :returns: ``None`` or one line saying what the replay would get wrong.
    """
    check_elbo(elbo)
    patterns = SitePatterns()
    for x, y, inputs in batches:
        tensors, layout, signature = split_inputs(x, y, inputs)
        args, kwargs = rebuild(layout, tensors)
        sites = []
        try:
            with torch.no_grad(), _ParamsPassedThrough(), pyro.validation_enabled(False), BuffersKept(vae), \
                    forked_rng(x.device):
                _loss(elbo, vae.model, vae.guide, args, kwargs, sites=sites)
        except ConfigError as error:
            return str(error)
        except Exception as error:   # left for Pyro's own ELBO to report, where it fails the same way
            reason = " ".join(str(error).split())[:120]
            return f"the model or guide failed in a trial run ({type(error).__name__}: {reason})"
        problem = patterns.add(signature, sites)
        if problem is not None:
            return problem
    return None


# --- the JIT ELBOs ------------------------------------------------------------------------------------------


def uncompiled_copy(elbo):
    """A copy of a JIT ELBO (``JitTrace_ELBO`` ...) that has compiled nothing yet; the caller's is left as it was.

    A Pyro JIT ELBO builds its compiled function (a ``pyro.ops.jit.CompiledFunction``) on its first call, as a
    closure over the ``model`` and ``guide`` of *that* call, and keeps it: called later with another model (a
    second ``fit`` with the same instance and a new VAE) it traces the first model's program again, so the new
    VAE got no gradients and did not train, silently. A copy without it compiles the model it is called with.
    """
    fresh = copy.copy(elbo)
    for name, value in list(vars(fresh).items()):
        if isinstance(value, CompiledFunction):
            delattr(fresh, name)
    return fresh
