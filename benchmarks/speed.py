"""Speed benchmark: ``pyro_vae.fit`` against the same VAE written by hand in PyTorch.

Both sides use the *same* networks (the Pyro tutorial's 784-400-50 softplus MLPs, built from
``pyro_vae.networks``), the same data resident on the device and batched by index, the same optimizer
(Adam, lr 1e-3) and a single-sample ELBO. They differ only in how the loss is written: by hand with
``torch.distributions`` (analytic KL, as in pytorch/examples), or as Pyro ``model``/``guide`` functions
with a Pyro ELBO (through ``pv.fit``, and as the smallest inline Pyro program, to tell pyro_vae's cost
from Pyro's). A third plain loop computes ``Trace_ELBO``'s estimator (Monte Carlo KL) from
``torch.distributions`` log-densities, to tell the cost of that estimator from Pyro's handling. Epochs are
timed interleaved (A, B, C, A, B, C, ...) so that machine noise hits every method alike. Reported: the
median epoch, its ratio to the median hand-written epoch, and the median of the ratios within each round
(paired, so a machine that slows down between rounds does not move it).

    python benchmarks/speed.py                        # CPU, batch sizes 32 128 512, mnist5k (4,000 images)
    python benchmarks/speed.py --device cuda --dataset fashion-mnist   # 60,000 images on a GPU
    CI=1 python benchmarks/speed.py                   # smoke mode: seconds
    python benchmarks/speed.py --final-elbo-epochs 60 --batch-sizes   # the default's final ELBO against Pyro's path

``--final-elbo-epochs N`` also trains the default ``pv.VAE()`` (``pyro-vae train``'s model) for N epochs
with the default ``fit`` (the replay step) and with ``compile=False`` (Pyro's own ``Trace_ELBO``), from
the same seeds, and reports each final test ELBO with its Monte Carlo standard error.

Prints a table and writes JSON (``--json``, default ``benchmarks/results/speed-<device>.json``).
"""

import argparse
import os
import platform
import statistics
import sys
import time
import warnings

import torch
from matplotlib.figure import Figure

import pyro
import pyro.distributions as dist
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import Adam as PyroAdam

import pyro_vae as pv
from pyro_vae.checkpoint import save_json
from pyro_vae.networks import MLPDecoder, MLPEncoder

HIDDEN, LATENT = 400, 50


def tutorial_networks(image_shape):
    """The tutorial's 784-400-50 softplus encoder and 50-400-784 decoder."""
    return (MLPEncoder(image_shape, LATENT, (HIDDEN,), activation="Softplus"),
            MLPDecoder(image_shape, LATENT, (HIDDEN,), activation="Softplus"))


def tutorial_vae(image_shape):
    encoder, decoder = tutorial_networks(image_shape)
    return pv.VAE(image_shape=image_shape, latent_dim=LATENT, encoder=encoder, decoder=decoder)


def flops_per_image(image_shape):
    """Multiply-adds x 2 of one forward pass, x 3 for forward + backward."""
    d = image_shape[0] * image_shape[1] * image_shape[2]
    forward = 2 * (d * HIDDEN + HIDDEN * 2 * LATENT + LATENT * HIDDEN + HIDDEN * d)
    return 3 * forward


def timed(epoch):
    """Wrap an epoch function so that it returns its own wall time (synchronised on a GPU)."""
    def run(state, data, batch_size, generator):
        sync(data.images.device)
        started = time.perf_counter()
        epoch(state, data, batch_size, generator)
        sync(data.images.device)
        return time.perf_counter() - started
    return run


def closed_form_loss(encoder, decoder, x):
    """The hand-written VAE's loss, as in pytorch/examples: the closed-form KL and one summed BCE."""
    loc, scale = encoder(x)
    z = loc + scale * torch.randn_like(loc)
    logits = decoder(z)
    log_lik = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    # without argument checks, as every other method here runs (fit switches Pyro's validation off)
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(loc, scale, validate_args=False),
                                           torch.distributions.Normal(0.0, 1.0, validate_args=False)).sum()
    return kl - log_lik


def log_density_loss(encoder, decoder, x):
    """``Trace_ELBO``'s single-sample estimator without Pyro: log p(x|z) + log p(z) - log q(z|x) at one
    z ~ q(z|x), each from a ``torch.distributions`` log-density. Against :func:`closed_form_loss` it
    prices the Monte Carlo KL; against the inline Pyro program, Pyro's own handling of the sites."""
    D = torch.distributions
    posterior = D.Independent(D.Normal(*encoder(x), validate_args=False), 1)
    z = posterior.rsample()
    prior = D.Independent(D.Normal(z.new_zeros(()), 1.0, validate_args=False).expand(z.shape), 1)
    likelihood = D.Independent(D.Bernoulli(logits=decoder(z), validate_args=False), 3)
    return -(likelihood.log_prob(x) + prior.log_prob(z) - posterior.log_prob(z)).sum()


def networks_and_optimizer(image_shape, device):
    encoder, decoder = (net.to(device) for net in tutorial_networks(image_shape))
    opt = torch.optim.Adam(list(encoder.parameters()) + list(decoder.parameters()), lr=1e-3)
    return encoder, decoder, opt


def make_plain(loss_fn):
    """Set-up of a plain PyTorch VAE (no Pyro) whose loss is ``loss_fn(encoder, decoder, x)``."""
    def setup(image_shape, device):
        encoder, decoder, opt = networks_and_optimizer(image_shape, device)
        return (lambda x: loss_fn(encoder, decoder, x)), opt
    return setup


def make_minimal_pyro(image_shape, device):
    """The smallest Pyro program for the same VAE, written inline as a user would without pyro_vae.

    Same networks and loop as the hand-written VAE, but the loss is ``Trace_ELBO`` of a bare model and
    guide: the difference between this and ``fit`` is what pyro_vae itself adds; the difference
    between this and the hand-written loop is what Pyro's ``Trace_ELBO`` costs.
    """
    encoder, decoder, opt = networks_and_optimizer(image_shape, device)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], LATENT), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(3), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(*encoder(x)).to_event(1))

    return Trace_ELBO()(model, guide), opt


@timed
def loop_epoch(state, data, batch_size, generator):
    """One epoch of the loop a user writes around a loss ``x -> loss``: the plain PyTorch VAEs and the
    inline Pyro program share it, so only their losses differ."""
    loss_fn, opt = state
    total = torch.zeros((), device=data.images.device)
    with pyro.validation_enabled(False):   # as in fit; the torch-only losses skip argument checks too
        for x, _ in data.batches(batch_size, generator=generator):
            loss = loss_fn(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
    return total.item()


def make_fit(loss_factory=None, **options):
    """An epoch of ``pv.fit`` with the given ELBO (``None``: fit's default) and options, timed in the steady state.

    Each call runs ``fit`` for two epochs on the same model and reports the second: with
    ``JitTrace_ELBO`` the first epoch of every ``fit`` call is slower (about 0.1 s here) while the JIT
    optimises the graph it traced before that epoch; eager ELBOs pay next to nothing. A real run of many
    epochs pays that once, not per epoch. The first epoch is kept as ``first_epoch_of_fit_seconds``; the
    set-up before it (for the default, the choice of step: probing batches and tracing their graphs) is in
    neither.
    """
    def setup(image_shape, device):
        return {"vae": tutorial_vae(image_shape).to(device), "loss": loss_factory and loss_factory(), "first": []}

    def epoch(state, data, batch_size, generator):
        # the epoch time is fit's own per-epoch "seconds" (the loop over the batches, read back once at
        # the end): the set-up a real run does once (data checks, seeding, the optimizer) is not an epoch
        history = pv.fit(state["vae"], data, epochs=2, batch_size=batch_size, loss=state["loss"],
                         device=data.images.device, progress=False,
                         seed=int(torch.randint(0, 2 ** 31, (1,), generator=generator)), **options)
        state["first"].append(history[0]["seconds"])
        return history[1]["seconds"]
    return setup, epoch


def make_svi(image_shape, device):
    pyro.clear_param_store()
    vae = tutorial_vae(image_shape).to(device)
    return vae, SVI(vae.model, vae.guide, PyroAdam({"lr": 1e-3}), loss=Trace_ELBO())


@timed
def svi_epoch(state, data, batch_size, generator):
    """The Pyro tutorial's loop: SVI.step per batch (it returns a Python float: one sync per step)."""
    _, svi = state
    with pyro.validation_enabled(False):
        return sum(svi.step(x) for x, _ in data.batches(batch_size, generator=generator))


def measure_peak_gflops(device, size=2048, repeats=5):
    """Rough peak of this machine: GFLOP/s of a large float32 matrix product."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - started)
    return 2 * size ** 3 / min(times) / 1e9


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None):
    smoke = bool(os.environ.get("CI"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[32, 128, 512],
                        help="none: only the --final-elbo-epochs comparison")
    parser.add_argument("--repeats", type=int, default=1 if smoke else 5, help="timed epochs per method")
    parser.add_argument("--limit", type=int, default=256 if smoke else None, help="use only N training images")
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--final-elbo-epochs", type=int, default=0,
                        help="also compare the default fit's final test ELBO with Pyro's path after N epochs")
    parser.add_argument("--final-elbo-seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args(argv)
    # JitTrace_ELBO uses torch.jit.trace, which PyTorch 2.14 marks deprecated once per fit call
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated", category=FutureWarning)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = pv.resolve_device(args.device)
    train, _ = pv.data.load(args.dataset, binarize="dynamic")
    if args.limit:
        train = train.subset(range(min(args.limit, len(train))))
    train = train.to(device)
    shape = train.image_shape
    methods = {
        "hand-written PyTorch": (make_plain(closed_form_loss), loop_epoch),
        "hand-written, Monte Carlo KL": (make_plain(log_density_loss), loop_epoch),
        "minimal Pyro model/guide, Trace_ELBO": (make_minimal_pyro, loop_epoch),
        # the default: the sync-free replay step, chosen by fit (Trace_ELBO, reparameterised, fixed sites)
        "pyro_vae.fit default": make_fit(),
        "pyro_vae.fit Trace_ELBO": make_fit(Trace_ELBO, compile=False),   # Pyro's own ELBO every step
        "pyro_vae.fit TraceMeanField_ELBO": make_fit(TraceMeanField_ELBO),
        "pyro_vae.fit JitTrace_ELBO": make_fit(lambda: JitTrace_ELBO(ignore_jit_warnings=True)),
        "Pyro SVI.step Trace_ELBO": (make_svi, svi_epoch),
    }
    if args.methods:
        methods = {k: v for k, v in methods.items() if k in args.methods or k == "hand-written PyTorch"}
    peak = measure_peak_gflops(device)
    rows = []
    for batch_size in args.batch_sizes:
        pyro.set_rng_seed(0)
        states = {name: setup(shape, device) for name, (setup, _) in methods.items()}
        generator = torch.Generator().manual_seed(0)
        for name, (_, epoch) in methods.items():   # warm-up epoch: allocator, JIT traces, caches
            pyro.clear_param_store()
            epoch(states[name], train, batch_size, generator)
        times = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, (_, epoch) in methods.items():
                pyro.clear_param_store()  # every model registers as "vae": keep them apart
                times[name].append(epoch(states[name], train, batch_size, generator))
        base = statistics.median(times["hand-written PyTorch"])
        for name in methods:
            median = statistics.median(times[name])
            first = states[name]["first"][1:] if isinstance(states[name], dict) else None  # not warm-up
            # each round timed every method once, back to back: the ratio within a round is immune to
            # the machine getting slower or faster between rounds
            paired = statistics.median(t / h for t, h in zip(times[name], times["hand-written PyTorch"]))
            rows.append({"batch_size": batch_size, "method": name, "epoch_seconds": median,
                         "all_seconds": times[name], "ratio_to_hand_written": median / base,
                         "paired_ratio": paired,
                         "first_epoch_of_fit_seconds": statistics.median(first) if first else None,
                         "images_per_second": len(train) / median,
                         "gflops": flops_per_image(shape) * len(train) / median / 1e9})
            print(rows[-1], flush=True)

    print(f"\n{args.dataset}: {len(train)} images {shape}, device {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}, "
          f"{torch.get_num_threads()} threads), median of {args.repeats} interleaved epochs; "
          f"rough peak {peak:.0f} GFLOP/s (float32 matmul)")
    print(f"{'batch':>5s} {'method':38s} {'epoch s':>8s} {'ratio':>6s} {'paired':>6s} {'img/s':>9s} {'GFLOP/s':>8s}")
    for r in rows:
        print(f"{r['batch_size']:5d} {r['method']:38s} {r['epoch_seconds']:8.3f} {r['ratio_to_hand_written']:6.2f} "
              f"{r['paired_ratio']:6.2f} {r['images_per_second']:9.0f} {r['gflops']:8.1f}")
    print("ratio: median epoch / median hand-written epoch; paired: median over rounds of the ratio within a round")
    final = (compare_final_elbo(args.dataset, args.final_elbo_epochs, device, args.final_elbo_seeds, args.limit)
             if args.final_elbo_epochs else None)
    out = args.json or os.path.join(os.path.dirname(__file__), "results", f"speed-{device.type}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    result = {"dataset": args.dataset, "num_images": len(train), "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
              "threads": torch.get_num_threads(), "peak_gflops": peak, "repeats": args.repeats,
              "torch": torch.__version__, "pyro": pyro.__version__, "smoke": smoke, "rows": rows,
              "final_elbo": final, "argv": sys.argv[1:]}
    save_json(result, out)
    picture = os.path.splitext(out)[0] + ".png"
    if rows:
        plot_ratios(result).savefig(picture, dpi=100)
    print(f"wrote {out}" + (f" and {picture}" if rows else ""))
    return rows


def test_elbo_with_error(vae, test, samples=10):
    """The test ELBO (nats per image, ``samples`` draws of z per image) and its Monte Carlo standard error: the
    spread of the draws, not of the images (both paths are scored on the same images)."""
    means, variances = [], []
    with pv.evaluate.eval_mode(vae), torch.no_grad():
        for x, _ in test.batches(500, shuffle=False):
            terms = pv.evaluate.log_weight_terms(vae, x, None, samples)
            log_w = terms["log_likelihood"] + terms["log_prior"] - terms["log_posterior"]   # (samples, N)
            means.append(log_w.mean(0).cpu())
            variances.append(log_w.var(0).cpu() / samples)
    means, variances = torch.cat(means), torch.cat(variances)
    return means.mean().item(), (variances.sum().sqrt() / len(means)).item()


def compare_final_elbo(dataset, epochs, device, seeds, limit=None):
    """Train ``pv.VAE()`` for ``epochs`` with the default fit and with ``compile=False`` from each seed; print and
    return the final test ELBOs. Training noise (the draws of z and of the binarization over the epochs) is
    read from the spread over seeds; the replay and Pyro's path share each seed's draws."""
    train, test = pv.data.load(dataset, binarize="dynamic")
    if limit:
        train, test = train.subset(range(min(limit, len(train)))), test.subset(range(min(limit, len(test))))
    rows = []
    for seed in seeds:
        for name, compile in (("default fit (replay)", None), ("compile=False (Pyro's Trace_ELBO)", False)):
            pyro.set_rng_seed(seed)
            vae = pv.VAE(image_shape=train.image_shape)
            started = time.perf_counter()
            history = pv.fit(vae, train, test=test, epochs=epochs, seed=seed, compile=compile, device=device,
                             progress=False)
            seconds = time.perf_counter() - started
            torch.manual_seed(1000 + seed)   # the same scoring draws for both paths
            elbo, error = test_elbo_with_error(vae, test.to(device))
            rows.append({"method": name, "seed": seed, "epochs": epochs, "fit_seconds": seconds,
                         "test_elbo_10_samples": elbo, "mc_standard_error": error,
                         "fit_test_elbo": history[-1]["test_elbo"], "train_elbo": history[-1]["train_elbo"]})
            print(rows[-1], flush=True)
    print(f"\nfinal test ELBO after {epochs} epochs on {dataset} ({len(train)} train / {len(test)} test images, "
          f"10 draws per image; +- one Monte Carlo standard error)")
    for r in rows:
        print(f"  seed {r['seed']} {r['method']:36s} {r['test_elbo_10_samples']:9.3f} +- {r['mc_standard_error']:.3f}"
              f"  ({r['fit_seconds']:.0f} s)")
    return rows


def plot_ratios(result):
    """Bar chart of the paired ratios to the hand-written VAE, one group of bars per batch size."""
    batch_sizes = sorted({r["batch_size"] for r in result["rows"]})
    methods = [m for m in dict.fromkeys(r["method"] for r in result["rows"]) if m != "hand-written PyTorch"]
    ratio = {(r["batch_size"], r["method"]): r["paired_ratio"] for r in result["rows"]}
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        xs = [b + (i - (len(methods) - 1) / 2) * width for b in range(len(batch_sizes))]
        bars = ax.bar(xs, [ratio.get((b, method), float("nan")) for b in batch_sizes], width, label=method)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=1, label="hand-written PyTorch")
    ax.set_xticks(range(len(batch_sizes)), [f"batch {b}" for b in batch_sizes])
    ax.set_ylabel("epoch time / hand-written (paired median)")
    ax.set_ylim(min([0.9] + [v - 0.05 for v in ratio.values()]), None)   # a method faster than by hand shows too
    where = result["device_name"] or result["device"]
    ax.set_title(f"{result['dataset']}, {result['num_images']} images, {where}, {result['threads']} threads",
                 fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))   # beside the bars, never over them
    return fig


if __name__ == "__main__":
    main()
