"""Evaluation cost of the mixture priors: ``pv.evaluate.report`` with N(0, I), VampPrior and a mixture of
Gaussians, timed side by side.

Every row is the same architecture (``pv.VAE()``: 784-400-50 MLPs on 28x28 images), trained for the same
epochs, scored on the same test images with the same K importance samples and the same random seed; the
ratio to the N(0, I) row is the price of the prior. ``--reference`` adds rows where the mixture priors
are scored by torch's generic ``MixtureSameFamily.log_prob`` (what they returned before
:class:`pyro_vae.priors.DiagonalNormalMixture`), on the same weights and samples, so the speed-up and the
agreement of the two are measured in one run.

    python benchmarks/eval_cost.py                                # mnist5k, 1,000 test digits, K=1000
    python benchmarks/eval_cost.py --num-samples 100 --reference  # with the generic scoring, smaller K
    CI=1 python benchmarks/eval_cost.py                           # smoke mode

Prints a table and writes JSON (``--json``, default ``benchmarks/results/eval-cost.json``).
"""

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch

import pyro
import pyro.distributions as dist

import pyro_vae as pv
from pyro_vae.checkpoint import save_json

DEFAULT = "N(0, I)"


@contextlib.contextmanager
def generic_scoring(prior):
    """Score ``prior`` with torch's ``MixtureSameFamily.log_prob`` for the block: the same components and
    weights, but the log-density broadcast over a ``(..., K, D)`` temporary."""
    fast = type(prior).forward

    def forward():
        mixture = fast(prior)
        return dist.MixtureSameFamily(mixture.mixture_distribution, mixture.component_distribution)

    prior.forward = forward   # an instance attribute: nn.Module.__call__ looks it up before the class's
    try:
        yield
    finally:
        del prior.forward


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None):
    smoke = bool(os.environ.get("CI"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits" if smoke else "mnist5k")
    parser.add_argument("--num-samples", type=int, default=10 if smoke else 1000, help="K importance samples")
    parser.add_argument("--limit", type=int, default=30 if smoke else None, help="first N test images only")
    parser.add_argument("--epochs", type=int, default=1,
                        help="training epochs per model before timing (0: untrained weights)")
    parser.add_argument("--train-limit", type=int, default=128 if smoke else None,
                        help="first N training images only")
    parser.add_argument("--pseudo-inputs", type=int, default=500, help="VampPrior's K")
    parser.add_argument("--components", type=int, default=10, help="MixtureOfGaussians' K (0: leave it out)")
    parser.add_argument("--reference", action="store_true", default=smoke,
                        help="also time the mixture priors scored by MixtureSameFamily.log_prob (slow)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds; in each, every row is timed once")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    for name in ("num_samples", "repeats", "pseudo_inputs"):
        if getattr(args, name) < 1:
            raise pv.ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.epochs < 0 or args.components < 0:
        raise pv.ConfigError("--epochs and --components must be >= 0")

    device = pv.resolve_device(args.device)
    train, test = pv.data.load(args.dataset, binarize="dynamic")
    if args.train_limit:
        train = train.subset(range(min(args.train_limit, len(train))))
    if args.limit:
        test = test.subset(range(min(args.limit, len(test))))
    test = test.to(device)

    priors = {DEFAULT: pv.priors.StandardNormal, f"VampPrior({args.pseudo_inputs})":
              lambda: pv.priors.VampPrior(args.pseudo_inputs)}
    if args.components:
        priors[f"MixtureOfGaussians({args.components})"] = lambda: pv.priors.MixtureOfGaussians(args.components)
    models, train_seconds = {}, {}
    for name, make in priors.items():
        pyro.set_rng_seed(0)
        vae = pv.VAE(image_shape=train.image_shape, prior=make())
        if isinstance(vae.prior, pv.priors.VampPrior):
            # real digits as the starting pseudo-inputs, as one trains a VampPrior (tutorial 02)
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
            vae.prior.initialize(train.images[order])
        started = time.perf_counter()
        if args.epochs:
            pv.fit(vae, train, epochs=args.epochs, seed=0, device=device, progress=not smoke)
        models[name] = vae.to(device)
        train_seconds[name] = time.perf_counter() - started

    # (row name, model, whether scored by the generic MixtureSameFamily)
    rows = [(name, name, False) for name in models]
    if args.reference:
        rows += [(f"{name}, MixtureSameFamily.log_prob", name, True) for name in models if name != DEFAULT]

    def score(model, generic, data, num_samples):
        vae = models[model]
        with generic_scoring(vae.prior) if generic else contextlib.nullcontext():
            pyro.set_rng_seed(1)   # the same samples for every row, so two scorings of one model agree
            return pv.evaluate.report(vae, data, num_samples=num_samples)

    for _, model, generic in rows:   # the first call of each path pays one-off costs (allocator, kernels)
        score(model, generic, test.subset(range(2)), 2)
    seconds = {row: [] for row, _, _ in rows}
    results = {}
    for _ in range(args.repeats):
        for row, model, generic in rows:   # interleaved, so slow drifts of a shared machine hit every row
            _synchronize(device)
            started = time.perf_counter()
            results[row] = score(model, generic, test, args.num_samples)
            _synchronize(device)
            seconds[row].append(time.perf_counter() - started)

    base = statistics.median(seconds[DEFAULT])
    table = []
    for row, model, generic in rows:
        median = statistics.median(seconds[row])
        entry = {"prior": row, "model": model, "scoring": "MixtureSameFamily" if generic else "package",
                 "seconds": median, "all_seconds": seconds[row], "ratio_to_default": median / base,
                 "log_px": results[row]["log_likelihood"], "elbo": results[row]["elbo"],
                 "train_seconds": train_seconds[model]}
        if generic:
            fast = statistics.median(seconds[model])
            entry["speedup_of_package"] = median / fast
            entry["log_px_minus_package"] = results[row]["log_likelihood"] - results[model]["log_likelihood"]
        table.append(entry)

    result = {"dataset": args.dataset, "num_images": len(test), "num_samples": args.num_samples,
              "test_binarize": test.binarize, "image_shape": list(train.image_shape),
              "network": "pv.VAE() default MLPs", "latent_dim": models[DEFAULT].latent_dim,
              "train_epochs": args.epochs, "num_train_images": len(train), "repeats": args.repeats,
              "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "threads": torch.get_num_threads(), "smoke": smoke, "argv": sys.argv[1:] if argv is None else argv,
              "rows": table}
    trained = f"trained {args.epochs} epoch(s)" if args.epochs else "untrained"
    print(f"pv.evaluate.report on {args.dataset}: {len(test)} {test.binarize}-binarized test images, "
          f"K={args.num_samples}, pv.VAE() {trained}, {device} ({torch.get_num_threads()} threads), "
          f"median of {args.repeats}")
    width = max(len(r["prior"]) for r in table)
    print(f"{'prior':{width}s}  {'seconds':>8s}  {'x default':>9s}  {'log p(x)':>9s}")
    for r in table:
        extra = (f"  ({r['speedup_of_package']:.1f}x the package's time; log p(x) differs by "
                 f"{r['log_px_minus_package']:+.1e})" if "speedup_of_package" in r else "")
        print(f"{r['prior']:{width}s}  {r['seconds']:8.2f}  {r['ratio_to_default']:9.2f}  {r['log_px']:9.2f}{extra}")
    out = args.json or os.path.join(os.path.dirname(__file__), "results", "eval-cost.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_json(result, out)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
