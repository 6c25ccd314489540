"""``fit``: the one training loop, for every model/guide pair and every Pyro ELBO.

The loop is plain PyTorch around a Pyro objective: ``loss(vae.model, vae.guide)`` is the ELBO as an
``nn.Module`` whose forward pass returns a differentiable loss, and a ``torch.optim`` optimizer updates
the VAE's parameters. This is the same auto-encoding variational Bayes step that ``SVI.step`` performs,
but ``fit`` itself reads no loss back per step: losses stay on the device and are read once per epoch.
(Pyro's ``Trace_ELBO.differentiable_loss`` still calls ``.item()`` on each site's log-density and checks
the loss for NaN, so on a GPU a step still waits for the device inside Pyro.)
"""

import copy
import json
import math
import os
import time

import torch
from tqdm.auto import tqdm

import pyro
from pyro.infer import JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO, JitTraceMeanField_ELBO, Trace_ELBO
from pyro.ops.jit import CompiledFunction

from . import distributed as parallel
from . import evaluate
from .checkpoint import (CHECKPOINT, CONFIG, METRICS, load_checkpoint, load_json, load_state, save_checkpoint,
                         save_json)
from .errors import CheckpointError, ConfigError, TrainingError


#: Pyro's ELBOs that trace the model and guide once with ``torch.jit`` and replay the compiled graph
JIT_ELBOS = (JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO, JitTraceMeanField_ELBO)


def resolve_device(device="auto"):
    """``"auto"`` -> CUDA when present, else CPU. Anything else is passed to ``torch.device``.

    :raises ConfigError: CUDA requested on a machine without a GPU, or an unknown device string.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was requested but no GPU is available; use --device cpu (or auto)")
    return device


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _rng_state(device, shuffle):
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state, device, shuffle):
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def fit(vae, train, test=None, epochs=10, batch_size=128, lr=1e-3, loss=None, optimizer=None, seed=0,
        device="auto", checkpoint_dir=None, resume=False, overwrite=False, callback=None, progress=True,
        clip_norm=None, beta=1.0, warmup=0, distributed=False, run_info=None):
    """Train ``vae`` by stochastic variational inference and return its per-epoch history.

    :param vae: a :class:`~pyro_vae.VAE` (or any module with ``model(x, y)``, ``guide(x, y)``,
        ``likelihood``, ``image_shape`` and ``config``).
    :param train: :class:`~pyro_vae.data.ImageDataset` to train on (moved to the device once).
    :param test: optional dataset; its ELBO is computed after every epoch.
    :param int epochs: total number of epochs (a resumed run continues up to this number).
    :param int batch_size: images per step.
    :param float lr: learning rate.
    :param loss: a Pyro ELBO instance (default ``Trace_ELBO()``); e.g. ``TraceMeanField_ELBO()`` for an
        analytic KL, ``RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True)`` for IWAE, or
        ``JitTrace_ELBO()``: the default's estimator traced once by ``torch.jit`` (on one batch, before
        the first step of each ``fit`` call, outside the run's random stream so that resumed runs stay
        exact) and replayed, without Pyro's Python work per step; right for models whose structure does
        not change from step to step (all of this package's), measured in benchmarks/README.md.
    :param optimizer: callable ``params, lr -> torch.optim.Optimizer`` (default ``torch.optim.Adam``).
    :param int seed: seeds Pyro/PyTorch and the shuffling; equal seeds give equal runs.
    :param device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ... decided here, once.
    :param str checkpoint_dir: if given, ``config.json`` and ``checkpoint.pt`` are written there after
        every epoch (atomically), so an interrupted run loses at most the epoch in progress.
    :param bool resume: continue from the checkpoint in ``checkpoint_dir``.
    :param bool overwrite: start afresh even if ``checkpoint_dir`` already holds a checkpoint.
    :param callback: called as ``callback(vae, record)`` after every epoch; returning ``True`` stops.
    :param bool progress: show a tqdm progress bar.
    :param float clip_norm: clip the gradient norm to this value (off by default).
    :param float beta: weight of the latent sites (``vae.kl_scale``), positive: ``beta > 1`` gives a
        beta-VAE.
    :param int warmup: KL warm-up: the weight grows linearly, ``beta * min(1, epoch / warmup)``.
        (Neither works with the JIT ELBOs, which freeze the weight in their compiled graph.)
    :param bool distributed: data-parallel training over the processes started by ``torchrun``
        (see :mod:`pyro_vae.distributed`); ``batch_size`` is per process, only rank 0 writes files.
    :param dict run_info: extra JSON-serialisable entries for ``config.json`` (e.g. data settings).
        A resumed run must be given the same model, settings (all but ``epochs``) and ``run_info``
        (all but its ``cli`` entry, the command line) as the run it continues: anything else raises
        :class:`~pyro_vae.errors.CheckpointError` instead of silently mixing two runs in one folder.
    :returns: list of dicts, one per epoch: ``epoch``, ``train_elbo`` and ``test_elbo`` (nats per
        datapoint; ``test_elbo`` is ``None`` without a test set) and ``seconds``. With ``beta != 1`` the
        ``train_elbo`` entry is the weighted training objective, ``test_elbo`` the true ELBO.

    Pyro's global param store is cleared at the start: the parameters live in ``vae`` itself, and
    the torch optimizer updates them there. So while ``fit`` trains, ``vae.register_params`` is off
    (``model``/``guide`` skip ``pyro.module``) unless the ELBO needs param sites (``loss_and_grads``
    ELBOs such as ``RenyiELBO``, and the JIT ELBOs).
    """
    _positive_int("epochs", epochs)
    _positive_int("batch_size", batch_size)
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"lr must be a positive number, got {lr!r}")
    # Pyro's poutine.scale, which weights the latent sites, takes positive weights only
    if not (isinstance(beta, (int, float)) and beta > 0 and math.isfinite(beta)):
        raise ConfigError(f"beta must be a positive number, got {beta!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        # numpy, which pyro.set_rng_seed seeds too, takes these only
        raise ConfigError(f"seed must be a whole number from 0 to {2 ** 32 - 1}, got {seed!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup must be a non-negative number of epochs, got {warmup!r}")
    if resume and checkpoint_dir is None:
        raise ConfigError("resume=True needs checkpoint_dir (the run folder to resume from)")
    if resume and overwrite:
        raise ConfigError("resume (--resume) continues the run in the folder and overwrite (--overwrite) "
                          "replaces it; pass only one")
    if (beta != 1.0 or warmup) and not hasattr(vae, "kl_scale"):
        raise ConfigError(f"beta and warmup weight the latent sites through the model's kl_scale, which "
                          f"{type(vae).__name__} does not have; add a kl_scale attribute (see VAE) or drop them")
    if distributed:
        rank, world, device = parallel.init(device)
    else:
        rank, world, device = 0, 1, resolve_device(device)
    main = rank == 0
    evaluate.check_data(vae, train, "training")
    evaluate.check_data(vae, test, "test")

    # fit trains the module's own parameters; an earlier model registered under the same Pyro name would
    # otherwise linger in the global param store (and confuse JitTrace_ELBO, which reads it)
    pyro.clear_param_store()
    # own noise (z samples, binarization) on every process (numpy, which Pyro seeds too, takes < 2**32) ...
    pyro.set_rng_seed((seed + rank) % 2 ** 32)
    shuffle = torch.Generator().manual_seed(seed)   # ... but one shared permutation, split by rank
    shard = (rank, world) if distributed else None
    vae.to(device)
    if distributed:
        parallel.broadcast_module(vae)       # identical starting weights everywhere
    train = train.to(device)
    test = test.to(device) if test is not None and main else None
    opt = (optimizer or torch.optim.Adam)(vae.parameters(), lr=lr)
    loss = loss if loss is not None else Trace_ELBO()
    if isinstance(loss, JIT_ELBOS) and (beta != 1.0 or warmup):
        raise ConfigError(f"{type(loss).__name__} compiles the KL weight into its graph once, so beta and warmup "
                          f"would be ignored; use {type(loss).__name__[3:]} for beta or warmup")
    if isinstance(loss, JIT_ELBOS):
        loss = _without_compiled_graphs(loss)
    step_loss = _loss_step(loss, vae)

    history, start_epoch = [], 0
    ckpt_path = os.path.join(checkpoint_dir, CHECKPOINT) if checkpoint_dir else None
    settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "world_size": world,
                "loss": type(loss).__name__, "clip_norm": clip_norm, "beta": beta, "warmup": warmup}
    if ckpt_path:
        if main:
            _prepare_run_folder(checkpoint_dir, ckpt_path, vae, resume, overwrite, settings, run_info)
        if distributed:
            parallel.barrier()
        if resume:
            # on the CPU: the RNG states must stay there; load_state_dict puts weights and optimizer state
            # on the parameters' device
            state = load_checkpoint(ckpt_path, map_location="cpu")
            load_state(vae, state["model"], ckpt_path)
            opt.load_state_dict(state["optimizer"])
            ranks = state.get("rng_ranks")
            if ranks is not None and len(ranks) == world:
                _set_rng_state(ranks[rank], device, shuffle)
            else:
                _set_rng_state(state["rng"], device, shuffle)
                if rank:  # saved by a run of another size: the other ranks draw their own noise again
                    torch.manual_seed((seed + rank + 1000 * int(state["epoch"])) % 2 ** 32)
            history, start_epoch = list(state["history"]), int(state["epoch"])
            if epochs < start_epoch:
                # config.json would then claim fewer epochs than the checkpoint holds
                raise CheckpointError(f"the run in {checkpoint_dir} has already trained {start_epoch} epochs; "
                                      f"resume with epochs (--epochs) of at least {start_epoch}")
        if main:
            save_json({"vae": vae.config, "fit": settings, **(run_info or {})},
                      os.path.join(checkpoint_dir, CONFIG))

    steps_per_epoch = train.num_batches(batch_size, shard=shard)
    images_per_epoch = math.ceil(len(train) / world) * world   # with the padding of shard
    bar = tqdm(total=epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch, unit="step",
               desc="fit", disable=not (progress and main), dynamic_ncols=True)
    vae.train()   # before a JIT ELBO traces: the graph keeps the mode it was traced in
    registers = getattr(vae, "register_params", None)
    try:
        if registers is not None and not _needs_param_sites(loss):
            vae.register_params = False
        _first_call_outside_the_run(step_loss, vae, train, batch_size, shard, device)
        # argument validation runs once per distribution object; in the hot loop it only costs time
        with pyro.validation_enabled(False):
            for epoch in range(start_epoch + 1, epochs + 1):
                started = time.perf_counter()
                if hasattr(vae, "kl_scale"):
                    vae.kl_scale = beta * min(1.0, epoch / warmup) if warmup else beta
                # per-step losses stay on the device: reading them every step would sync a GPU each time
                losses = []
                for step, (x, y) in enumerate(train.batches(batch_size, generator=shuffle, shard=shard)):
                    opt.zero_grad(set_to_none=True)
                    losses.append(step_loss(x, y))
                    if distributed:
                        parallel.average_gradients(vae.parameters(), world)
                    if clip_norm is not None:
                        torch.nn.utils.clip_grad_norm_(vae.parameters(), clip_norm)
                    opt.step()
                    bar.update()
                    if main and progress and step % 50 == 0:
                        bar.set_postfix_str(f"epoch {epoch} loss/img {losses[step].item() / x.shape[0]:.2f}")
                losses = torch.stack(losses).to(device)   # loss_and_grads ELBOs return host floats
                if distributed:
                    losses = parallel.all_sum(losses)
                total = losses.sum().item()
                kept = f"the checkpoint of epoch {history[-1]['epoch']} is kept; " if ckpt_path and history else ""
                if not math.isfinite(total):
                    bad = int((~torch.isfinite(losses)).nonzero()[0])
                    raise TrainingError(f"the loss became {losses[bad].item()} at epoch {epoch}, step {bad + 1}; "
                                        f"{kept}lower the learning rate (lr) or clip gradients (clip_norm)")
                # the losses were computed before each step: the last step can still have broken the weights,
                # and a checkpoint of them would fail again on resume
                if not bool(torch.stack([p.detach().isfinite().all() for p in vae.parameters()]).all()):
                    raise TrainingError(f"the weights became NaN or infinite in epoch {epoch}; {kept}"
                                        f"lower the learning rate (lr) or clip gradients (clip_norm)")
                record = {"epoch": epoch, "train_elbo": -total / images_per_epoch, "test_elbo": None}
                if test is not None:
                    record["test_elbo"] = evaluate.elbo(vae, test)["elbo"]
                record["seconds"] = time.perf_counter() - started
                if distributed:
                    record = parallel.share(record)
                history.append(record)
                bar.set_postfix_str(f"epoch {epoch} train ELBO {record['train_elbo']:.2f}"
                                    + ("" if record["test_elbo"] is None else f" test ELBO {record['test_elbo']:.2f}"))
                if ckpt_path:
                    rng = _rng_state(device, shuffle)
                    # every rank's own noise, so that a resumed data-parallel run is exact too
                    ranks = parallel.gather(rng) if distributed else None
                    if main:
                        save_checkpoint({"format": 1, "epoch": epoch, "model": vae.state_dict(),
                                         "optimizer": opt.state_dict(), "rng": rng, "rng_ranks": ranks,
                                         "history": history, "config": vae.config}, ckpt_path)
                if callback is not None:
                    # the checkpoint holds the random state from before the callback: a callback that draws
                    # (sampling pictures, say) must not shift the stream, or a resumed run would differ
                    with _forked_rng(device):
                        stop = callback(vae, record)
                    if stop:
                        break
    finally:
        bar.close()
        if registers is not None:
            vae.register_params = registers
    if distributed:
        parallel.barrier()   # rank 0's last checkpoint is on disk before anyone moves on
    return history


def _needs_param_sites(elbo):
    """Whether ``elbo`` reads the parameters from Pyro's param sites rather than from the module.

    ``fit``'s torch optimizer holds the module's parameters, so ``pyro.module`` is only needed by
    ELBOs that find their parameters in the trace: ``loss_and_grads`` (e.g. ``RenyiELBO``) backpropagates
    only when the trace has param sites, and the JIT ELBOs pass the param store's values to the traced
    function.
    """
    return not hasattr(elbo, "differentiable_loss") or isinstance(elbo, JIT_ELBOS)


def _loss_step(elbo, vae):
    """A function ``(x, y) -> loss`` that also leaves the loss's gradients in ``vae``'s parameters."""
    if hasattr(elbo, "differentiable_loss"):
        objective = elbo(vae.model, vae.guide)   # the ELBO as an nn.Module

        def step(x, y):
            loss = objective(*_inputs(x, y))
            loss.backward()
            return loss.detach()
    else:  # e.g. RenyiELBO, which computes its gradients itself and returns a float
        def step(x, y):
            return torch.tensor(elbo.loss_and_grads(vae.model, vae.guide, *_inputs(x, y)))
    return step


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


def _forked_rng(device):
    """A block whose random draws (CPU, and ``device`` if it is a GPU) do not move the run's streams."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def _first_call_outside_the_run(step_loss, vae, train, batch_size, shard, device):
    """Call the ELBO once on one batch before the first step, with the random state put back afterwards.

    Some ELBOs draw random numbers on their first call only: a JIT ELBO runs the model and guide twice
    more to trace them, and a vectorized multi-particle ELBO (e.g. IWAE) or ``TraceEnum_ELBO`` runs them
    once to find how deep their plates nest. A resumed run makes that first call again; made here,
    outside the run's random stream, it leaves a resumed run equal to an uninterrupted one. The
    gradients it leaves are cleared by the first step's ``zero_grad``; the optimizer has not moved. The
    KL weight is set first, as a JIT graph freezes it (fit allows JIT ELBOs only with the weight 1; the
    epoch loop sets the weight for the others).
    """
    if hasattr(vae, "kl_scale"):
        vae.kl_scale = 1.0
    with _forked_rng(device):
        # the batch too: dynamic binarization draws from the global random state
        x, y = next(train.batches(batch_size, generator=torch.Generator().manual_seed(0), shard=shard))
        step_loss(x, y)


def _prepare_run_folder(folder, ckpt_path, vae, resume, overwrite, settings, run_info):
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise CheckpointError(f"{folder} is a file, not a folder; choose another output folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create output folder {folder} ({e.strerror}); choose a writable folder") from None
    if not os.access(folder, os.W_OK):
        raise CheckpointError(f"output folder {folder} is not writable; choose a writable folder")
    if os.path.exists(ckpt_path) and not (resume or overwrite):
        raise CheckpointError(f"{folder} already holds a run; pass resume=True (--resume) to continue it "
                              f"or overwrite=True (--overwrite) to start afresh")
    if resume and not os.path.exists(ckpt_path):
        raise CheckpointError(f"nothing to resume in {folder}: it holds no checkpoint (none is written before the "
                              f"first epoch ends); check the folder, or start the run without resume (--resume)")
    if resume:
        saved = load_json(os.path.join(folder, CONFIG)) if os.path.exists(os.path.join(folder, CONFIG)) else {}
        if saved.get("vae") is not None and saved["vae"] != vae.config:
            raise CheckpointError(f"the run in {folder} was made with a different model "
                                  f"({_first_difference(saved['vae'], vae.config)}); use another folder or --overwrite")
        # compared as JSON, as they were saved (tuples become lists)
        now = json.loads(json.dumps({"fit": settings, **(run_info or {})}))
        for old, new in zip(_must_match_on_resume(saved), _must_match_on_resume(now)):
            if saved and old != new:
                raise CheckpointError(f"the run in {folder} was trained with other settings "
                                      f"({_first_difference(old, new)}); resume with the same ones, "
                                      f"or start a new run in another folder")
    if overwrite:
        # the old run's files go before anything new is written: a new run that fails in its first epoch
        # must not leave the old checkpoint beside its own config.json, where resume would pick it up
        for name in (CHECKPOINT, METRICS):
            if os.path.exists(os.path.join(folder, name)):
                os.remove(os.path.join(folder, name))


def _must_match_on_resume(config):
    """A run folder's config as ``(fit settings, run_info)`` without what a resume may change: the
    epochs, the number of processes and the command line (the model is checked on its own)."""
    fit = {k: v for k, v in config.get("fit", {}).items() if k not in ("epochs", "world_size")}
    return fit, {k: v for k, v in config.items() if k not in ("vae", "fit", "cli")}


def _first_difference(saved, current):
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            return f"{key}: saved {saved.get(key)!r}, now {current.get(key)!r}"
    return "unknown difference"
