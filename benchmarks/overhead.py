"""Launch-bound benchmark: host time per training step when the networks are too small to matter.

The comparison of ``speed.py`` (hand-written PyTorch against ``pyro_vae.fit`` and Pyro's own loops) with
784-16-2 MLPs instead of 784-400-50: encoder 784 -> 16 -> (loc, scale) of 2 latents, decoder 2 -> 16 -> 784
Bernoulli logits, softplus, batch 32, Adam 1e-3, mnist5k (4,000 images, dynamic binarization), data resident
and batched by index everywhere. The arithmetic of such a step is a few microseconds per kernel, so what is
timed is the host's work per step: Python, the dispatcher, autograd, and (on a GPU) every wait for the
device. That is what a small model costs on a GPU, where the device finishes each kernel before the host
issues the next. Also timed: the sync-free step of :mod:`pyro_vae.fast` in each of its modes, and the
ways of compiling Pyro's ELBO that were tried and not kept (``torch.compile`` over Pyro's poutine stack,
``torch.jit.trace``).

One warm-up epoch per method (tracing and compilation happen there; its time is kept as
``first_epoch_seconds``), then ``--repeats`` rounds in each of which every method trains one epoch, back to
back. Per step: epoch time / steps per epoch. *ratio*: median over median hand-written; *paired*: median
over the rounds of the ratio within a round (immune to the machine slowing down between rounds).

    python benchmarks/overhead.py                       # CPU, 1 thread, every method (compilation: minutes)
    python benchmarks/overhead.py --methods "pyro_vae.fit Trace_ELBO" "fast replay"
    python benchmarks/overhead.py --device cuda         # where the host-device round trips show
    python benchmarks/overhead.py --hidden 400 --latent 50 --batch-size 128   # speed.py's networks
    CI=1 python benchmarks/overhead.py                  # smoke mode: seconds, the methods that do not compile

Prints a table and writes JSON (``--json``, default ``benchmarks/results/overhead.json``).
"""

import argparse
import os
import platform
import statistics
import sys
import time
import warnings

import torch

import pyro
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO
from pyro.optim import Adam as PyroAdam

import pyro_vae as pv
from pyro_vae.checkpoint import save_json
from pyro_vae.fast import make_step, sync_free_loss
from pyro_vae.networks import MLPDecoder, MLPEncoder

#: network and batch sizes of the run: the launch-bound defaults, changed by --hidden, --latent, --batch-size
SIZE = {"hidden": 16, "latent": 2, "batch": 32}
LR = 1e-3


def tiny_vae(image_shape):
    """``pv.VAE`` with the 784-16-2 softplus encoder and the 2-16-784 decoder (by default)."""
    hidden, latent = (SIZE["hidden"],), SIZE["latent"]
    return pv.VAE(image_shape=image_shape, latent_dim=latent,
                  encoder=MLPEncoder(image_shape, latent, hidden, activation="Softplus"),
                  decoder=MLPDecoder(image_shape, latent, hidden, activation="Softplus"))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the plain PyTorch VAE -------------------------------------------------------------------------------


def closed_form_loss(vae, x):
    """The hand-written VAE's loss (pytorch/examples): the closed-form KL and one summed BCE, no Pyro."""
    D = torch.distributions
    loc, scale = vae.encoder(x)
    z = loc + scale * torch.randn_like(loc)
    log_lik = -torch.nn.functional.binary_cross_entropy_with_logits(vae.decoder(z), x, reduction="sum")
    kl = D.kl_divergence(D.Normal(loc, scale, validate_args=False), D.Normal(0.0, 1.0, validate_args=False)).sum()
    return kl - log_lik


def monte_carlo_loss(vae, x):
    """``Trace_ELBO``'s single-sample estimator written with ``torch.distributions``, no Pyro."""
    D = torch.distributions
    posterior = D.Independent(D.Normal(*vae.encoder(x), validate_args=False), 1)
    z = posterior.rsample()
    prior = D.Independent(D.Normal(z.new_zeros(()), 1.0, validate_args=False).expand(z.shape), 1)
    likelihood = D.Independent(D.Bernoulli(logits=vae.decoder(z), validate_args=False), 3)
    return -(likelihood.log_prob(x) + prior.log_prob(z) - posterior.log_prob(z)).sum()


# --- set-ups: each returns the state its epoch function needs --------------------------------------------


def plain(loss_fn):
    """A loop around a differentiable loss ``loss_fn(vae, x)``: zero_grad, backward, Adam step."""
    def setup(shape, device):
        vae = tiny_vae(shape).to(device)
        vae.register_params = False
        return {"loss": lambda x: loss_fn(vae, x), "opt": torch.optim.Adam(vae.parameters(), lr=LR)}
    return setup


def pyro_module(compiled):
    """Pyro's ``Trace_ELBO`` as a module in the same loop; ``compiled``: under ``torch.compile`` (dynamo)."""
    def setup(shape, device):
        vae = tiny_vae(shape).to(device)
        vae.register_params = False
        loss = Trace_ELBO()(vae.model, vae.guide)
        return {"loss": torch.compile(loss) if compiled else loss, "opt": torch.optim.Adam(vae.parameters(), lr=LR)}
    return setup


class _SyncFreeLoss(torch.nn.Module):
    """:func:`pyro_vae.fast.sync_free_loss` of a VAE as a module (for ``torch.jit.trace``/``torch.compile``)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x):
        return sync_free_loss(Trace_ELBO(), self.vae.model, self.vae.guide, x)


def sync_free_compiled(shape, device):
    """``torch.compile`` (dynamo, graph breaks allowed) over the sync-free estimator run by Pyro."""
    vae = tiny_vae(shape).to(device)
    vae.register_params = False
    return {"loss": torch.compile(_SyncFreeLoss(vae)), "opt": torch.optim.Adam(vae.parameters(), lr=LR)}


def sync_free_jit(shape, device):
    """``torch.jit.trace`` of the sync-free estimator, traced on the first batch (deprecated in torch 2.14)."""
    vae = tiny_vae(shape).to(device)
    vae.register_params = False
    module = _SyncFreeLoss(vae)
    state = {"opt": torch.optim.Adam(vae.parameters(), lr=LR), "traced": None}

    def loss(x):
        if state["traced"] is None:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                state["traced"] = torch.jit.trace(module, (x,), check_trace=False)
        return state["traced"](x)
    state["loss"] = loss
    return state


def fast(mode, with_optimizer=False):
    """:func:`pyro_vae.fast.make_step` in ``mode``; the optimizer step inside ``step`` or after it."""
    def setup(shape, device):
        vae = tiny_vae(shape).to(device)
        vae.register_params = False
        opt = torch.optim.Adam(vae.parameters(), lr=LR)
        step = make_step(Trace_ELBO(), vae, device, optimizer=opt if with_optimizer else None, mode=mode)
        return {"step": step, "opt": None if with_optimizer else opt}
    return setup


def fit_setup(elbo_factory=None, **options):
    """``pv.fit`` with this ELBO (``None``: fit's default) and these options (e.g. ``compile=False``)."""
    def setup(shape, device):
        return {"vae": tiny_vae(shape).to(device), "elbo": elbo_factory and elbo_factory(), "first": [],
                "options": options}
    return setup


def svi_setup(shape, device):
    vae = tiny_vae(shape).to(device)
    return {"svi": SVI(vae.model, vae.guide, PyroAdam({"lr": LR}), loss=Trace_ELBO())}


# --- epochs: each returns its own wall time in seconds --------------------------------------------------


def _without_validation(epoch):
    """Pyro's argument validation off in the loops written here, as ``fit`` has run its loop (it checks each
    distribution's arguments on the host, every step); the torch-only losses skip those checks too."""
    def run(*args):
        with pyro.validation_enabled(False):
            return epoch(*args)
    run.__doc__ = epoch.__doc__
    return run



@_without_validation
def loop_epoch(state, data, generator):
    """The loop a user writes around a loss ``x -> loss``: zero_grad, backward, optimizer step."""
    device = data.images.device
    total = torch.zeros((), device=device)
    sync(device)
    started = time.perf_counter()
    for x, _ in data.batches(SIZE["batch"], generator=generator):
        loss = state["loss"](x)
        state["opt"].zero_grad(set_to_none=True)
        loss.backward()
        state["opt"].step()
        total += loss.detach()
    sync(device)
    seconds = time.perf_counter() - started
    total.item()
    return seconds


@_without_validation
def step_epoch(state, data, generator):
    """The loop ``fit(..., compile=True)`` will run: the step leaves the gradients, the optimizer steps."""
    device = data.images.device
    step, opt = state["step"], state["opt"]
    total = torch.zeros((), device=device)
    sync(device)
    started = time.perf_counter()
    for x, _ in data.batches(SIZE["batch"], generator=generator):
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        total += step(x)
        if opt is not None:
            opt.step()
    sync(device)
    seconds = time.perf_counter() - started
    total.item()
    return seconds


def fit_epoch(state, data, generator):
    """The second epoch of a two-epoch ``pv.fit`` (its own ``seconds``): the first pays for a JIT trace. Run
    as a user runs it: with whatever Pyro validation setting ``fit`` chooses."""
    history = pv.fit(state["vae"], data, epochs=2, batch_size=SIZE["batch"], lr=LR, loss=state["elbo"],
                     device=data.images.device, progress=False,
                     seed=int(torch.randint(0, 2 ** 31, (1,), generator=generator)), **state["options"])
    return history[1]["seconds"]


@_without_validation
def svi_epoch(state, data, generator):
    """The Pyro tutorial's loop: ``SVI.step`` per batch, which returns a float (a host read per step)."""
    device = data.images.device
    sync(device)
    started = time.perf_counter()
    for x, _ in data.batches(SIZE["batch"], generator=generator):
        state["svi"].step(x)
    sync(device)
    return time.perf_counter() - started


#: name -> (set-up, epoch, compiles: left out of the smoke run)
METHODS = {
    "hand-written PyTorch": (plain(closed_form_loss), loop_epoch, False),
    "hand-written, Monte Carlo KL": (plain(monte_carlo_loss), loop_epoch, False),
    # the default: fit chooses the sync-free replay step for this model by itself
    "pyro_vae.fit default": (fit_setup(), fit_epoch, False),
    "pyro_vae.fit Trace_ELBO": (fit_setup(Trace_ELBO, compile=False), fit_epoch, False),   # Pyro's own ELBO
    "pyro_vae.fit JitTrace_ELBO": (fit_setup(lambda: JitTrace_ELBO(ignore_jit_warnings=True)), fit_epoch, False),
    "Pyro SVI.step Trace_ELBO": (svi_setup, svi_epoch, False),
    "Trace_ELBO module, same loop": (pyro_module(compiled=False), loop_epoch, False),
    "fast eager (sync-free Trace_ELBO)": (fast("eager"), step_epoch, False),
    "fast replay": (fast("replay"), step_epoch, False),
    "fast replay, optimizer inside": (fast("replay", with_optimizer=True), step_epoch, False),
    "fast compile": (fast("compile"), step_epoch, True),
    "fast compile, optimizer inside": (fast("compile", with_optimizer=True), step_epoch, True),
    "tried: torch.jit.trace of the sync-free loss": (sync_free_jit, loop_epoch, False),
    "tried: torch.compile of Trace_ELBO module": (pyro_module(compiled=True), loop_epoch, True),
    "tried: torch.compile of the sync-free loss": (sync_free_compiled, loop_epoch, True),
}


def main(argv=None):
    smoke = bool(os.environ.get("CI"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1 if smoke else 7, help="timed epochs per method")
    parser.add_argument("--limit", type=int, default=128 if smoke else None, help="use only N training images")
    parser.add_argument("--methods", nargs="*", default=None,
                        help="methods to time (hand-written PyTorch always runs); default: all, or in smoke mode "
                             "those that compile nothing")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the step is host-bound, more threads only contend)")
    parser.add_argument("--hidden", type=int, default=16, help="hidden width of encoder and decoder")
    parser.add_argument("--latent", type=int, default=2, help="latent size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    SIZE.update(hidden=args.hidden, latent=args.latent, batch=args.batch_size)
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args, smoke, parser, sys.argv[1:] if argv is None else list(argv))
    finally:
        torch.set_num_threads(threads)   # the test suite calls main() in-process: leave its threads as they were


def _run(args, smoke, parser, argv):
    device = pv.resolve_device(args.device)
    train, _ = pv.data.load(args.dataset, binarize="dynamic")
    if args.limit:
        train = train.subset(range(min(args.limit, len(train))))
    train = train.to(device)
    shape = train.image_shape
    if args.methods:
        unknown = [m for m in args.methods if m not in METHODS]
        if unknown:
            parser.error(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
        chosen = ["hand-written PyTorch"] + [m for m in METHODS if m in args.methods and m != "hand-written PyTorch"]
    else:
        chosen = [m for m, (_, _, compiles) in METHODS.items() if not (smoke and compiles)]
    steps = train.num_batches(SIZE["batch"])
    load_before = os.getloadavg()

    pyro.set_rng_seed(0)
    states = {name: METHODS[name][0](shape, device) for name in chosen}
    generator = torch.Generator().manual_seed(0)
    first = {}
    for name in chosen:   # warm-up epoch: traces, compilation, allocator, caches
        pyro.clear_param_store()
        first[name] = METHODS[name][1](states[name], train, generator)
        print(f"warm-up {name}: {first[name]:.2f} s", flush=True)
    times = {name: [] for name in chosen}
    for _ in range(args.repeats):
        for name in chosen:
            pyro.clear_param_store()   # SVI registers its VAE as "vae": keep it apart from the others
            times[name].append(METHODS[name][1](states[name], train, generator))

    base = [t / steps * 1e6 for t in times["hand-written PyTorch"]]
    rows = []
    for name in chosen:
        per_step = [t / steps * 1e6 for t in times[name]]
        rows.append({"method": name, "us_per_step": statistics.median(per_step), "all_us_per_step": per_step,
                     "ratio_to_hand_written": statistics.median(per_step) / statistics.median(base),
                     "paired_ratio": statistics.median(t / h for t, h in zip(per_step, base)),
                     "first_epoch_seconds": first[name]})
    load_after = os.getloadavg()

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"\n{args.dataset}: {len(train)} images {shape}, batch {SIZE['batch']} ({steps} steps per epoch), "
          f"784-{SIZE['hidden']}-{SIZE['latent']} MLPs, device {device} ({where}, {torch.get_num_threads()} threads), "
          f"median of {args.repeats} interleaved epochs; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"{'method':46s} {'us/step':>9s} {'ratio':>6s} {'paired':>6s} {'warm-up s':>9s}")
    for r in rows:
        print(f"{r['method']:46s} {r['us_per_step']:9.0f} {r['ratio_to_hand_written']:6.2f} {r['paired_ratio']:6.2f} "
              f"{r['first_epoch_seconds']:9.2f}")
    print("ratio: median step / median hand-written step; paired: median over rounds of the ratio within a round; "
          "warm-up: the first epoch (traces, compilation)")
    out = args.json or os.path.join(os.path.dirname(__file__), "results", "overhead.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_json({"dataset": args.dataset, "num_images": len(train), "batch_size": SIZE["batch"],
               "steps_per_epoch": steps, "networks": f"784-{SIZE['hidden']}-{SIZE['latent']} softplus MLPs",
               "device": str(device), "device_name": where,
               "threads": torch.get_num_threads(), "repeats": args.repeats, "load_average": [load_before, load_after],
               "torch": torch.__version__, "pyro": pyro.__version__, "smoke": smoke, "rows": rows,
               "argv": argv}, out)
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
