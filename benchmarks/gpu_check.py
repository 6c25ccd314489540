"""One GPU check: epoch times against hand-written PyTorch, a no-sync check, K=5000 log p(x).

The driver of ``benchmarks/gpu_check.sh``, which also prints the environment, runs the CUDA tests of the
suite and prints the final table. Stages, in this order (the riskiest last, so that a failure or a hang
there costs nothing else), each in its own ``try`` with its own time budget, the JSON rewritten after
every one of them so that a run stopped at its time limit still returns what it measured:

``speed``
    Fashion-MNIST (60,000 training images, dynamic binarization), batch 128, the Pyro tutorial's 784-400-50
    networks: hand-written PyTorch, ``fit`` with ``Trace_ELBO`` (the default), with ``JitTrace_ELBO``, and
    ``fit(compile=True)`` (the sync-free replay of :mod:`pyro_vae.fast`). ``benchmarks/speed.py``'s
    protocol and functions: one warm-up round, then interleaved rounds in each of which every method
    trains one epoch; a ``fit`` call trains two epochs and the second is timed (the first traces);
    *paired* ratio: median over the rounds of epoch / hand-written epoch in the same round.
``nosync``
    ``fit(compile=True)`` for two epochs on a few thousand images, with some steps of the second epoch run
    under ``torch.cuda.set_sync_debug_mode("error")``: pass when no step waits for the GPU.
``loglik``
    the default ``pv.VAE`` trained for a few epochs, then importance-sampled log p(x) with K=5000 on the
    10,000 statically binarized test images, timed (as ``benchmarks/loglik.py`` does).
``launch``
    the launch-bound networks of ``benchmarks/overhead.py`` (784-16-2, batch 32) on the first 6,400
    training images, with its functions: host time per step.
``compile``
    ``fit(compile="compile")`` (``torch.compile``; CUDA graphs on a GPU) against hand-written PyTorch. Every
    ``fit`` call compiles again (from inductor's cache after the first), and the smaller last batch of an
    epoch is compiled in the second epoch, so each call trains three epochs and the third is timed. If the
    first compilation outlasts the stage's budget, the stage is skipped with a note.

    python benchmarks/gpu_check.py --device cuda                 # ~7 minutes on one GPU (--budget 420)
    python benchmarks/gpu_check.py --device cpu --smoke          # seconds: every stage, tiny sizes
    python benchmarks/gpu_check.py --report JSON                 # the table of a finished run

Writes ``gpu-check-<device>.json`` to ``--json``, else to ``$OUT`` if that is set, else to
``benchmarks/results/``. Only the standard library is imported at the top, so ``--report`` works where
torch or Pyro do not import.
"""

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import sys
import time
import traceback
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: where Fashion-MNIST is looked for when --data is not given (after $FASHION_MNIST_DIR)
DATA_DIRS = ("/usr/share/datasets/fashion-mnist", os.path.join(ROOT, ".data", "fashion-mnist"))

#: (stage, share of the time left): each stage gets time_left * share / (sum of the shares still to come)
STAGES = (("speed", 0.30), ("nosync", 0.05), ("loglik", 0.22), ("launch", 0.15), ("compile", 0.28))
#: a stage's hard limit is its budget times this (plus a few seconds); rounds are planned within the budget
HARD_FACTOR = 1.15

HAND = "hand-written PyTorch"


class StageTimeout(BaseException):
    """A stage ran past its hard limit. A BaseException, so that no ``except Exception`` inside Pyro, torch
    or pyro_vae (tracing falls back on one) can swallow it."""


class Terminated(BaseException):
    """SIGTERM (the shell's ``timeout``): stop, but write the JSON and the table first."""


@contextlib.contextmanager
def hard_limit(seconds, what):
    """Raise :class:`StageTimeout` in the main thread after ``seconds`` (SIGALRM)."""
    def ring(signum, frame):
        raise StageTimeout(f"{what} ran past its limit of {seconds:.0f} s")
    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(float(seconds), 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def say(*parts):
    print("[gpu-check]", *parts, flush=True)


def first_line(error):
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


def traceback_tail(lines=12):
    return traceback.format_exc().strip().splitlines()[-lines:]


# --- data -----------------------------------------------------------------------------------------------


def has_idx(folder):
    """Whether ``folder`` holds all four IDX files, found as ``pv.data.load`` finds them
    (:func:`pyro_vae.data.find_idx_files`: gzipped or not, also in a ``raw/`` subfolder)."""
    from pyro_vae.data import find_idx_files   # (imported here: --report runs without torch)
    return bool(folder) and os.path.isdir(folder) and all(find_idx_files(folder))


def find_data(requested, smoke):
    """``(path or "digits", how it was found)``: --data, $FASHION_MNIST_DIR, DATA_DIRS; digits in smoke mode."""
    if requested:
        if requested == "digits" or has_idx(requested):
            return requested, "--data"
        from pyro_vae.data import IDX_FILES
        raise FileNotFoundError(f"--data {requested}: not a folder holding the four Fashion-MNIST IDX files "
                                f"({', '.join(IDX_FILES)}, .gz or not)")
    candidates = [("$FASHION_MNIST_DIR", os.environ.get("FASHION_MNIST_DIR"))] + [(d, d) for d in DATA_DIRS]
    for how, folder in candidates:
        if has_idx(folder):
            return folder, how
    if smoke:
        return "digits", "no Fashion-MNIST found; --smoke uses scikit-learn's digits"
    raise FileNotFoundError("no Fashion-MNIST found in $FASHION_MNIST_DIR, " + ", ".join(DATA_DIRS)
                            + "; pass --data DIR (the four IDX .gz files), or --smoke")


# --- timing: interleaved rounds (benchmarks/speed.py's protocol) -----------------------------------------


def interleaved(methods, data, batch_size, budget, max_rounds, log_prefix):
    """Time ``methods`` (name -> (setup, epoch)) in one warm-up round, then rounds that fit in ``budget``.

    ``setup(image_shape, device) -> state``; ``epoch(state, data, batch_size, generator) -> seconds`` (one
    timed epoch). A round runs only if the last round's cost (the warm-up's for the first) still fits in
    what is left of ``budget``; at most ``max_rounds``. Stopped by :class:`StageTimeout` after at least one
    round, the rounds done are kept; without any, the warm-up's epochs are reported instead (noted).
    Returns ``(times, warmup, states, notes)``.
    """
    import pyro
    import torch

    started = time.perf_counter()
    device = data.images.device
    pyro.set_rng_seed(0)
    states = {name: setup(data.image_shape, device) for name, (setup, _) in methods.items()}
    generator = torch.Generator().manual_seed(0)
    warmup, cost = {}, {}
    try:
        for name, (_, epoch) in methods.items():   # tracing, compilation, allocator, caches
            pyro.clear_param_store()   # every model registers as "vae": keep them apart
            t = time.perf_counter()
            warmup[name] = epoch(states[name], data, batch_size, generator)
            cost[name] = time.perf_counter() - t
            say(f"{log_prefix} warm-up {name}: epoch {warmup[name]:.3f} s, call {cost[name]:.1f} s")
    except StageTimeout as stop:
        if HAND not in warmup or len(warmup) < 2:
            raise
        # what finished its warm-up is still a measurement (first-call costs included): report it
        missing = [name for name in methods if name not in warmup]
        return ({name: [seconds] for name, seconds in warmup.items()}, warmup, states,
                [f"stopped during the warm-up of {missing[0]} ({stop}): {', '.join(missing)} not measured; the "
                 f"others from their warm-up epochs (first-call costs included)"])
    times = {name: [] for name in methods}
    notes = []
    round_cost = sum(cost.values())
    try:
        while len(times[HAND]) < max_rounds:
            left = budget - (time.perf_counter() - started)
            if round_cost > left:
                notes.append(f"{len(times[HAND])} of {max_rounds} rounds: the next one (~{round_cost:.0f} s) would "
                             f"not fit in the stage's {budget:.0f} s")
                break
            t = time.perf_counter()
            done = {}
            for name, (_, epoch) in methods.items():
                pyro.clear_param_store()
                done[name] = epoch(states[name], data, batch_size, generator)
            for name, seconds in done.items():   # whole rounds only: the paired ratios need both epochs
                times[name].append(seconds)
            round_cost = time.perf_counter() - t
            say(f"{log_prefix} round {len(times[HAND])}: " + ", ".join(f"{n} {s:.3f}" for n, s in done.items())
                + f" ({round_cost:.1f} s)")
    except StageTimeout as stop:
        if not times[HAND]:
            raise
        notes.append(f"stopped after {len(times[HAND])} rounds ({stop})")
    if not times[HAND]:
        times = {name: [seconds] for name, seconds in warmup.items()}
        notes.append("no time for a timed round: the warm-up round's epochs are reported (they include first-call "
                     "costs)")
    return times, warmup, states, notes


def timing_rows(stage, times, warmup, states, num_images, steps, extra):
    """One row per method: median epoch, ratio of medians, paired ratio, images/s, µs/step, first epochs."""
    base = times[HAND]
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        paired = statistics.median(t / h for t, h in zip(values, base))
        state = states[name]
        # the first epoch of each fit call: the warm-up call's apart (cold traces and compilation), the
        # median of the later calls' (a JIT optimising again, a compilation from inductor's cache)
        first = (state.get("first") or None) if isinstance(state, dict) else None
        rows.append({"stage": stage, "method": name, "epoch_seconds": median, "all_seconds": list(values),
                     "ratio_to_hand_written": median / statistics.median(base), "paired_ratio": paired,
                     "rounds": len(values), "images_per_second": num_images / median,
                     "us_per_step": median / steps * 1e6, "warmup_epoch_seconds": warmup[name],
                     "first_epoch_of_fit_seconds": statistics.median(first[1:] or first) if first else None,
                     "first_epoch_of_first_fit_seconds": first[0] if first else None, **extra})
    return rows


def compiled_fit(make_vae, compile, epochs=2, batch_size=None, lr=1e-3):
    """``(setup, epoch)`` of ``pv.fit(..., compile=compile)``: each call trains ``epochs`` epochs and the last
    one is timed (``speed.make_fit``'s protocol). The first epoch of
    every call is kept in ``state["first"]``."""
    def setup(image_shape, device):
        return {"vae": make_vae(image_shape).to(device), "first": []}

    def epoch(state, data, batch, generator):
        import pyro_vae as pv
        import torch
        history = pv.fit(state["vae"], data, epochs=epochs, batch_size=batch_size or batch, lr=lr, compile=compile,
                         device=data.images.device, progress=False,
                         seed=int(torch.randint(0, 2 ** 31, (1,), generator=generator)))
        state["first"].append(history[0]["seconds"])
        return history[-1]["seconds"]
    return setup, epoch


# --- stages ---------------------------------------------------------------------------------------------


def stage_speed(ctx, budget, stage):
    """Batch 128, the tutorial's 784-400-50 networks: hand-written PyTorch and fit three ways."""
    import speed
    from pyro.infer import JitTrace_ELBO, Trace_ELBO

    train = ctx["speed_train"]
    methods = {
        HAND: (speed.make_plain(speed.closed_form_loss), speed.loop_epoch),
        "fit, Trace_ELBO (default)": speed.make_fit(Trace_ELBO),
        "fit, JitTrace_ELBO": speed.make_fit(lambda: JitTrace_ELBO(ignore_jit_warnings=True)),
        "fit(compile=True): sync-free replay": compiled_fit(speed.tutorial_vae, True),
    }
    batch = ctx["batch_size"]
    times, warmup, states, notes = interleaved(methods, train, batch, budget, ctx["repeats"], "speed")
    rows = timing_rows("speed", times, warmup, states, len(train), train.num_batches(batch),
                       {"batch_size": batch, "networks": f"784-{speed.HIDDEN}-{speed.LATENT} softplus MLPs"})
    return {"rows": rows, "notes": notes, "num_images": len(train), "batch_size": batch,
            "steps_per_epoch": train.num_batches(batch)}


class SyncCheck:
    """A fit hook (made a :class:`pyro_vae.hooks.Hook` in :func:`stage_nosync`) that runs steps
    ``start + 1 .. start + steps`` of epoch 2 (the steady state) under ``set_mode("error")``."""

    def __init__(self, set_mode, start, steps):
        self.set_mode, self.start, self.steps = set_mode, start, steps
        self.count, self.armed, self.checked = 0, False, 0

    def on_epoch_start(self, trainer):
        self.count = 0

    def on_step_end(self, trainer):
        if trainer.epoch != 2:
            return
        self.count += 1
        if self.armed:
            self.checked += 1
        if self.count == self.start:
            self.set_mode("error")
            self.armed = True
        elif self.count == self.start + self.steps:
            self.set_mode("default")
            self.armed = False

    def on_fit_end(self, trainer):
        if self.armed:
            self.set_mode("default")
            self.armed = False


def stage_nosync(ctx, budget, stage):
    """Steps of ``fit(compile=True)`` in the steady state under the CUDA sync debug mode "error"."""
    import pyro_vae as pv
    import torch

    device = ctx["device"]
    batch, start, steps = (32, 1, 2) if ctx["smoke"] else (128, 4, 20)
    # every batch full, and epoch 2 long enough for `steps` checked steps and a few after them
    count = min(len(ctx["train"]), batch * (start + steps + 2)) // batch * batch
    train = ctx["train"].subset(range(count))
    on_gpu = device.type == "cuda"
    check_cls = type("SyncCheckHook", (SyncCheck, pv.hooks.Hook), {"in_run": True})   # in_run: no forked RNG
    check = check_cls(torch.cuda.set_sync_debug_mode if on_gpu else (lambda mode: None), start, steps)
    vae = pv.VAE(image_shape=train.image_shape)
    result = {"images": count, "batch_size": batch, "compile": "replay", "first_checked_step_of_epoch_2": start + 1}
    try:
        history = pv.fit(vae, train, epochs=2, batch_size=batch, compile=True, device=device, progress=False,
                         hooks=[check])
    except RuntimeError as error:
        if not on_gpu or "synchroniz" not in str(error):
            raise
        result.update(status="failed", passed=False, steps_checked=check.checked, error=first_line(error),
                      traceback=traceback_tail(16),
                      note=f"a step of fit(compile=True) synchronised with the GPU (step {check.count} of epoch 2)")
        return result
    finally:
        if on_gpu:
            torch.cuda.set_sync_debug_mode("default")
    result["steps_checked"] = check.checked
    result["train_elbo"] = history[-1]["train_elbo"]
    if check.checked != steps:
        raise RuntimeError(f"the hook checked {check.checked} steps, expected {steps}")
    if on_gpu:
        result.update(passed=True, note=f"{steps} steady-state steps of fit(compile=True), batch {batch}, under "
                                        f"torch.cuda.set_sync_debug_mode('error'): no synchronisation")
    else:
        result.update(status="skipped", passed=None,
                      note=f"no CUDA: the same fit(compile=True) and hook ran ({steps} steps) without the debug mode")
    return result


def stage_loglik(ctx, budget, stage):
    """The default VAE trained briefly, then log p(x) with K importance samples on the test set, timed.

    ``benchmarks/loglik.py``'s measurement on the data already loaded (that script loads its own and trains on
    all of it; smoke mode here trains on a few hundred images)."""
    import pyro_vae as pv
    import torch

    device, train, test = ctx["device"], ctx["loglik_train"], ctx["test"]
    vae = pv.VAE(image_shape=train.image_shape)
    started = time.perf_counter()
    pv.fit(vae, train, epochs=ctx["loglik_epochs"], device=device, progress=False)
    train_seconds = time.perf_counter() - started
    # kept in the JSON even if log p(x) then runs past the stage's limit
    stage.update(train_seconds=train_seconds, train_epochs=ctx["loglik_epochs"], train_images=len(train),
                 num_samples=ctx["num_samples"], num_images=len(test))
    test = test.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    log_px = pv.evaluate.log_likelihood(vae, test, num_samples=ctx["num_samples"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    elbo = pv.evaluate.elbo(vae, test)["elbo"]
    result = {"log_px": log_px, "elbo": elbo, "seconds": seconds, "num_samples": ctx["num_samples"],
              "num_images": len(test), "test_binarize": test.binarize, "train_images": len(train),
              "train_epochs": ctx["loglik_epochs"], "train_seconds": train_seconds, "max_pairs": pv.evaluate.MAX_PAIRS}
    if device.type == "cuda":
        result["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return result


def stage_launch(ctx, budget, stage):
    """``benchmarks/overhead.py``'s launch-bound networks (784-16-2, batch 32), with its set-ups and epochs, and
    its one CPU thread (the step is host-bound: more threads only contend)."""
    import overhead
    import torch

    saved, threads = dict(overhead.SIZE), torch.get_num_threads()
    overhead.SIZE.update(hidden=16, latent=2, batch=32)
    torch.set_num_threads(1)
    try:
        def adapt(name):   # overhead's epochs take (state, data, generator): the batch is in SIZE
            setup, epoch, _ = overhead.METHODS[name]
            return setup, (lambda state, data, batch, generator: epoch(state, data, generator))
        methods = {
            HAND: adapt("hand-written PyTorch"),
            "fit, Trace_ELBO (default)": adapt("pyro_vae.fit default"),
            "fit, JitTrace_ELBO": adapt("pyro_vae.fit JitTrace_ELBO"),
            "fit(compile=True): sync-free replay": compiled_fit(overhead.tiny_vae, True, lr=overhead.LR),
            "make_step replay, plain loop": adapt("fast replay"),
        }
        train = ctx["launch_train"]
        times, warmup, states, notes = interleaved(methods, train, 32, budget, ctx["repeats"], "launch")
        rows = timing_rows("launch", times, warmup, states, len(train), train.num_batches(32),
                           {"batch_size": 32, "networks": "784-16-2 softplus MLPs"})
    finally:
        overhead.SIZE.clear()
        overhead.SIZE.update(saved)
        torch.set_num_threads(threads)
    return {"rows": rows, "notes": notes, "num_images": len(train), "batch_size": 32, "threads": 1,
            "steps_per_epoch": train.num_batches(32)}


def stage_compile(ctx, budget, stage):
    """``fit(compile="compile")`` against hand-written PyTorch, in rounds of their own (batch 128, 784-400-50)."""
    import speed

    mode = ctx["compile_mode"]
    train = ctx["speed_train"]
    name = f'fit(compile="{mode}")' + (", CUDA graphs" if ctx["device"].type == "cuda" and mode == "compile" else "")
    methods = {HAND: (speed.make_plain(speed.closed_form_loss), speed.loop_epoch),
               name: compiled_fit(speed.tutorial_vae, mode, epochs=3)}
    batch = ctx["batch_size"]
    times, warmup, states, notes = interleaved(methods, train, batch, budget, ctx["repeats"], "compile")
    rows = timing_rows("compile", times, warmup, states, len(train), train.num_batches(batch),
                       {"batch_size": batch, "networks": f"784-{speed.HIDDEN}-{speed.LATENT} softplus MLPs",
                        "timed_epoch": 3})
    if mode != "compile":
        notes.append(f'--smoke on a CPU: compile="{mode}" stands in for "compile" '
                     '(inductor takes tens of seconds there)')
    return {"rows": rows, "notes": notes, "mode": mode, "num_images": len(train), "batch_size": batch}


STAGE_FUNCTIONS = {"speed": stage_speed, "nosync": stage_nosync, "loglik": stage_loglik, "launch": stage_launch,
                   "compile": stage_compile}


# --- the run --------------------------------------------------------------------------------------------


def environment(device):
    import pyro
    import torch

    info = {"python": platform.python_version(), "python_executable": sys.executable, "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "pyro": pyro.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
            "device_name": "cpu"}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=torch.cuda.get_device_name(device), gpu_memory_gb=props.total_memory / 2 ** 30,
                    capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count)
    return info


def load_data(ctx, args):
    import pyro_vae as pv

    where, how = find_data(args.data, args.smoke)
    train, test = pv.data.load(where, binarize="dynamic")
    name = "digits" if where == "digits" else "fashion-mnist"
    ctx["data"] = {"name": name, "path": None if where == "digits" else os.path.abspath(where), "found_by": how,
                   "train_images": len(train), "test_images": len(test), "image_shape": list(train.image_shape),
                   "train_binarize": train.binarize, "test_binarize": test.binarize,
                   "description": ("Fashion-MNIST (IDX files)" if name == "fashion-mnist" else
                                   "scikit-learn's 8x8 digits (smoke stand-in for Fashion-MNIST)")}
    device = ctx["device"]
    train = train.to(device)
    limit = 256 if args.smoke else args.train_limit
    ctx["train"] = train
    ctx["test"] = test.subset(range(min(len(test), args.loglik_images))) if args.loglik_images else test
    ctx["speed_train"] = train.subset(range(min(limit, len(train)))) if limit else train
    ctx["launch_train"] = train.subset(range(min(len(train), 64 if args.smoke else args.launch_images)))
    ctx["loglik_train"] = ctx["speed_train"] if args.smoke else train


def default_json(device_type):
    folder = os.environ.get("OUT") or os.path.join(HERE, "results")
    return os.path.join(folder, f"gpu-check-{device_type}.json")


def save(result, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".tmp"
    with open(partial, "w") as f:
        json.dump(result, f, indent=2, default=str)
        f.write("\n")
    os.replace(partial, path)


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (CUDA when present)")
    parser.add_argument("--smoke", action="store_true", help="seconds on a CPU: every stage, tiny sizes")
    parser.add_argument("--data", default=None,
                        help="folder of the four Fashion-MNIST IDX .gz files (default: $FASHION_MNIST_DIR, then "
                             + ", then ".join(DATA_DIRS) + "; in --smoke without one: 'digits')")
    parser.add_argument("--budget", type=float, default=None, help="seconds for all stages (default 420; smoke 240)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; smoke 1: tiny steps only contend)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds at most per stage (default 5; smoke 1)")
    parser.add_argument("--stages", nargs="+", default=[s for s, _ in STAGES], choices=[s for s, _ in STAGES])
    parser.add_argument("--batch-size", type=int, default=128, help="batch of the speed and compile stages")
    parser.add_argument("--train-limit", type=int, default=None,
                        help="first N training images in the speed and compile stages (default: all; smoke 256)")
    parser.add_argument("--launch-images", type=int, default=6400, help="training images of the launch stage")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="K of the log p(x) stage (default 5000; smoke 10)")
    parser.add_argument("--loglik-images", type=int, default=None,
                        help="first N test images for log p(x) (default: all 10,000; smoke 50)")
    parser.add_argument("--loglik-epochs", type=int, default=None, help="training epochs before log p(x) (default 5; "
                                                                         "smoke 1)")
    parser.add_argument("--json", default=None, help="output file (default: $OUT/gpu-check-<device>.json if OUT is "
                                                     "set, else benchmarks/results/gpu-check-<device>.json)")
    parser.add_argument("--report", metavar="JSON", default=None,
                        help="only print the table of this JSON (after adding --pytest-* if given) and exit")
    parser.add_argument("--pytest-rc", type=int, default=None, help="with --report: exit status of the CUDA tests")
    parser.add_argument("--pytest-log", default=None, help="with --report: their output (its last line is kept)")
    parser.add_argument("--pytest-seconds", type=float, default=None)
    parser.add_argument("--no-table", action="store_true", help="print no table at the end (the shell prints it)")
    args = parser.parse_args(argv)
    smoke = args.smoke
    args.budget = args.budget if args.budget is not None else (240.0 if smoke else 420.0)
    args.threads = args.threads if args.threads is not None else (1 if smoke else None)
    args.repeats = args.repeats if args.repeats is not None else (1 if smoke else 5)
    args.num_samples = args.num_samples if args.num_samples is not None else (10 if smoke else 5000)
    args.loglik_images = args.loglik_images if args.loglik_images is not None else (50 if smoke else None)
    args.loglik_epochs = args.loglik_epochs if args.loglik_epochs is not None else (1 if smoke else 5)
    return args


def main(argv=None):
    """Run the stages (or, with ``--report``, print a finished run's table); return the exit status:
    0 when every stage ran (skips allowed) and the no-sync check did not fail, else 1."""
    args = parse(sys.argv[1:] if argv is None else list(argv))
    if args.report:
        return report(args)
    return run(args, sys.argv[1:] if argv is None else list(argv))


def run(args, argv):
    began = time.perf_counter()
    previous_term = None
    if os.name == "posix":
        def terminate(signum, frame):
            raise Terminated("SIGTERM (the time limit of the shell's timeout)")
        try:
            previous_term = signal.signal(signal.SIGTERM, terminate)
        except ValueError:   # not the main thread: no handler
            previous_term = None
    result = {"argv": argv, "smoke": args.smoke, "budget_s": args.budget, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "stages": {}, "complete": False}
    path = args.json
    ctx = {"smoke": args.smoke, "repeats": args.repeats, "batch_size": args.batch_size,
           "num_samples": args.num_samples, "loglik_epochs": args.loglik_epochs}
    try:
        # --- set-up: imports, device, data (nothing runs without them) ---
        try:
            if HERE not in sys.path:
                sys.path.insert(0, HERE)   # speed.py and overhead.py, whose functions the stages reuse
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated", category=FutureWarning)
            import torch
            import pyro_vae as pv
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            if args.threads:
                torch.set_num_threads(args.threads)
            ctx["device"] = device = pv.resolve_device(args.device)
            path = path or default_json(device.type)
            result["environment"] = environment(device)
            result["device"], result["device_name"] = str(device), result["environment"]["device_name"]
            say("environment:", ", ".join(f"{k} {v}" for k, v in result["environment"].items()
                                          if k in ("python", "torch", "torch_cuda", "pyro", "device_name")))
            t = time.perf_counter()
            load_data(ctx, args)
            result["data"] = ctx["data"]
            result["data_used"] = ctx["data"]["description"]
            result["data"]["load_seconds"] = time.perf_counter() - t
            say(f"data: {ctx['data']['description']}, {ctx['data']['train_images']} train / "
                f"{ctx['data']['test_images']} test images ({ctx['data']['found_by']}), "
                f"loaded in {result['data']['load_seconds']:.1f} s")
            # on a CPU inductor takes tens of seconds: the smoke run times the stage's loop with the untraced mode
            ctx["compile_mode"] = "eager" if args.smoke and device.type == "cpu" else "compile"
        except Terminated:
            raise
        except BaseException as error:
            path = path or default_json("unknown" if args.device == "auto" else args.device.split(":")[0])
            result["setup_error"] = first_line(error)
            result["setup_traceback"] = traceback_tail()
            say("SET-UP FAILED:", first_line(error))
            save(result, path)
            print_table(result)
            return 1
        result["json"] = os.path.abspath(path)
        save(result, path)

        # --- the stages, each in its own try with its own budget ---
        chosen = [(s, w) for s, w in STAGES if s in args.stages]
        end = began + args.budget
        for i, (name, share) in enumerate(chosen):
            left = end - time.perf_counter()
            shares = sum(w for _, w in chosen[i:])
            last = i == len(chosen) - 1
            hard = left if last else left * share / shares * HARD_FACTOR + 5
            hard = min(hard, left)
            budget = hard / HARD_FACTOR
            stage = {"budget_s": budget, "hard_limit_s": hard}
            result["stages"][name] = stage
            if hard < 3:
                stage.update(status="skipped", note="no time left in the budget")
                say(f"stage {name}: skipped (no time left)")
                save(result, path)
                continue
            say(f"stage {name}: budget {budget:.0f} s (hard limit {hard:.0f} s)")
            stage["status"] = "running"   # what a crash or a kill leaves in the JSON
            save(result, path)
            t = time.perf_counter()
            del stage["status"]
            try:
                with hard_limit(hard, f"stage {name}"):
                    out = STAGE_FUNCTIONS[name](ctx, budget, stage)
                stage.update(out)
                stage.setdefault("status", "partial" if any(n.startswith("stopped") for n in out.get("notes", []))
                                 else "ok")
            except StageTimeout as error:
                if name == "compile":
                    stage.update(status="skipped", note=f"compilation and its first epochs did not finish within the "
                                                        f"stage's {hard:.0f} s ({error})")
                else:
                    stage.update(status="timeout", error=str(error))
            except Terminated:
                stage.update(status="timeout", error="terminated by SIGTERM (the shell's time limit)")
                raise
            except Exception as error:
                stage.update(status="failed", error=first_line(error), traceback=traceback_tail())
                say(f"stage {name} FAILED: {first_line(error)}")
                for line in stage["traceback"]:
                    print("    " + line, flush=True)
            finally:
                stage["seconds"] = time.perf_counter() - t
                save(result, path)
            say(f"stage {name}: {stage['status']} in {stage['seconds']:.1f} s")
        result["complete"] = True
    except Terminated as stop:
        result["terminated"] = str(stop)
        say("terminated:", stop)
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        result["seconds"] = time.perf_counter() - began
        if path:
            save(result, path)
    if not args.no_table:
        print_table(result)
    say(f"wrote {os.path.abspath(path)}")
    return exit_status(result)


# --- the table ------------------------------------------------------------------------------------------


BAD = ("failed", "timeout", "running")


def exit_status(result):
    if "setup_error" in result or not result.get("complete"):
        return 1
    return 1 if any(stage.get("status") in BAD for stage in result["stages"].values()) else 0


def _fmt(value, spec):
    return "" if value is None else format(value, spec)


def table_lines(result):
    """The rows of the final table: stage, method, seconds, ratio, notes."""
    lines = []

    def row(stage, method, seconds, ratio, notes):
        lines.append(f"{stage:8s} {method:46s} {seconds:>9s} {ratio:>6s}  {notes}")

    row("stage", "method", "seconds", "ratio", "notes")
    stages = result.get("stages", {})
    for name, stage in stages.items():
        status = stage.get("status", "?")
        if name in ("speed", "launch", "compile") and stage.get("rows"):
            for r in stage["rows"]:
                notes = [f"{r['images_per_second']:.0f} img/s"]
                if name == "launch":
                    notes.insert(0, f"{r['us_per_step']:.0f} us/step")
                if r["method"] == HAND:
                    notes.append(f"batch {r['batch_size']}, {r['networks']}, rounds: {r['rounds']}")
                else:
                    notes.append(f"ratio of medians {r['ratio_to_hand_written']:.2f}")
                if r.get("first_epoch_of_fit_seconds") is not None:
                    notes.append(f"first epoch of a fit call {r['first_epoch_of_fit_seconds']:.2f} s "
                                 f"(of the very first {r['first_epoch_of_first_fit_seconds']:.2f} s)")
                row(name, r["method"][:46], f"{r['epoch_seconds']:.3f}", f"{r['paired_ratio']:.2f}", "; ".join(notes))
            for note in stage.get("notes", []):
                row("", "", "", "", f"({name}: {note})")
        elif name == "nosync" and status in ("ok", "skipped", "failed") and "steps_checked" in stage:
            verdict = {True: "PASS", False: "FAIL", None: "skipped"}[stage.get("passed")]
            row(name, f"fit(compile=True) sync debug mode: {verdict}", f"{stage['seconds']:.1f}", "",
                stage.get("note", "") + (f" -- {stage['error']}" if stage.get("error") else ""))
        elif name == "loglik" and "log_px" in stage:
            row(name, f"log p(x) = {stage['log_px']:.2f} nats, K={stage['num_samples']}", f"{stage['seconds']:.1f}", "",
                f"{stage['num_images']} {stage['test_binarize']}-binarized test images; ELBO {stage['elbo']:.2f}; "
                f"default VAE trained {stage['train_epochs']} epoch(s) ({stage['train_seconds']:.0f} s) on "
                f"{stage['train_images']} images")
        elif name == "cuda-tests":
            row("tests", f"pytest -m cuda: {status.upper()}", _fmt(stage.get("seconds"), ".1f"), "",
                f"{stage.get('summary') or 'no summary line'} (exit status {stage.get('rc')})")
        else:
            what = stage.get("error") or stage.get("note") or ""
            if status == "running":
                status, what = "did not finish", "the driver crashed or was killed during this stage"
            row(name, status.upper(), _fmt(stage.get("seconds"), ".1f"), "", what)
    return lines


def print_table(result):
    env = result.get("environment", {})
    data = result.get("data", {})
    print()
    print("=" * 110)
    print(f"gpu-check on {env.get('device', '?')} ({env.get('device_name', '?')}): python {env.get('python', '?')}, "
          f"torch {env.get('torch', '?')} (CUDA {env.get('torch_cuda')}), pyro {env.get('pyro', '?')}"
          + ("; SMOKE RUN" if result.get("smoke") else ""))
    if data:
        print(f"data: {data.get('description')}, {data.get('train_images')} train images ({data.get('train_binarize')} "
              f"binarization), {data.get('test_images')} test ({data.get('test_binarize')}); {data.get('path') or ''}")
    if "setup_error" in result:
        print(f"SET-UP FAILED: {result['setup_error']}")
    for line in table_lines(result):
        print(line)
    print("seconds: per epoch (speed, launch, compile), of the stage (nosync), of log p(x) alone (loglik); "
          "ratio: paired, the median over interleaved rounds of epoch / hand-written epoch of the same round")
    if result.get("terminated"):
        print(f"TERMINATED: {result['terminated']} -- the stages above are what finished")
    stages = result.get("stages", {})
    bad = [n for n, s in stages.items() if s.get("status") in BAD]
    print(f"RESULT: {'FAILED: ' + ', '.join(bad) if bad else 'every stage ran (or was skipped with a note)'}"
          f"; driver {result.get('seconds', 0):.0f} s; JSON {result.get('json', '?')}")
    print("=" * 110, flush=True)


def report(args):
    """``--report JSON``: add the CUDA tests' outcome (if given) to the JSON, print the table, return the status."""
    try:
        with open(args.report) as f:
            result = json.load(f)
    except (OSError, ValueError) as error:
        result = {"stages": {}, "setup_error": f"no readable JSON from the driver ({first_line(error)})",
                  "json": os.path.abspath(args.report)}
    if args.pytest_rc is not None:
        summary = ""
        if args.pytest_log and os.path.exists(args.pytest_log):
            with open(args.pytest_log, errors="replace") as f:
                lines = [line.strip().strip("=").strip() for line in f if line.strip()]
            found = [line for line in lines if any(w in line for w in (" passed", " failed", " skipped", " error",
                                                                       " deselected", "no tests ran"))]
            summary = (found or lines or [""])[-1][:200]
        rc = args.pytest_rc
        status = "ok" if rc == 0 else ("timeout" if rc in (124, 137) else "failed")
        result["stages"]["cuda-tests"] = {"status": status, "rc": rc, "summary": summary,
                                          "seconds": args.pytest_seconds,
                                          "command": "python3 -m pytest -q -p no:cacheprovider -m cuda "
                                                     "--continue-on-collection-errors --disable-warnings --tb=short "
                                                     "--ignore=tests/test_gpu_check.py tests"}
        save(result, args.report)
    print_table(result)
    status = exit_status(result)
    return status


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # no interpreter teardown: a torch.compile worker pool or CUDA context interrupted by a stage's time
    # limit must not hang the exit (the JSON is written already)
    os._exit(code)
