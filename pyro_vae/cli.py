"""``pyro-vae``: train, evaluate and sample from the command line.

This module is the only place that maps names (strings) to classes; the library itself takes objects.

    pyro-vae train                                  # default VAE on mnist5k, offline, ~2 minutes on 2 cores
    pyro-vae train --prior mog --likelihood continuous-bernoulli --latent-dim 2 --out runs/cb2d
    pyro-vae evaluate runs/cb2d --num-samples 5000
    pyro-vae sample runs/cb2d --num 100
"""

import argparse
import os
import sys
import time

import pyro

from . import data as data_module
from . import evaluate, likelihoods, networks, plots, priors
from .checkpoint import CHECKPOINT, METRICS, load_json, load_run, save_json
from .errors import ConfigError, PyroVAEError
from .model import VAE
from .train import fit, resolve_device

PRIORS = {
    "standard": lambda args: priors.StandardNormal(),
    "learned-normal": lambda args: priors.LearnedNormal(),
    "mog": lambda args: priors.MixtureOfGaussians(args.num_components),
}
LIKELIHOODS = {
    "bernoulli": lambda args: likelihoods.Bernoulli(),
    "continuous-bernoulli": lambda args: likelihoods.ContinuousBernoulli(),
    "normal": lambda args: likelihoods.Normal(scale=args.normal_scale),
    "normal-learned": lambda args: likelihoods.Normal(scale="learned"),
}
NETWORKS = {
    "mlp": lambda shape, args, ppp: (networks.MLPEncoder(shape, args.latent_dim, args.hidden),
                                     networks.MLPDecoder(shape, args.latent_dim, args.hidden[::-1], ppp)),
    "conv": lambda shape, args, ppp: (networks.ConvEncoder(shape, args.latent_dim),
                                      networks.ConvDecoder(shape, args.latent_dim, ppp)),
}


def _choice(table, what):
    def parse(value):
        if value not in table:
            raise argparse.ArgumentTypeError(f"unknown {what} {value!r}; choose one of {', '.join(table)}")
        return value
    return parse


def _positive(kind):
    def parse(value):
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {value!r}") from None
        if not number > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {value!r}")
        return number
    return parse


def build_parser():
    parser = argparse.ArgumentParser(prog="pyro-vae", description="Variational autoencoders in Pyro.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a VAE and write a run folder")
    train.add_argument("--dataset", default="mnist5k",
                       help=f"one of {', '.join(data_module.DATASETS)}, or a folder of IDX files (default mnist5k)")
    train.add_argument("--data-dir", default=None, help="where datasets are read (and downloaded)")
    train.add_argument("--latent-dim", type=_positive(int), default=32)
    train.add_argument("--prior", type=_choice(PRIORS, "prior"), default="standard", help=", ".join(PRIORS))
    train.add_argument("--num-components", type=_positive(int), default=10, help="mixture components (mog)")
    train.add_argument("--likelihood", type=_choice(LIKELIHOODS, "likelihood"), default="bernoulli",
                       help=", ".join(LIKELIHOODS))
    train.add_argument("--normal-scale", type=_positive(float), default=0.1, help="fixed scale of 'normal'")
    train.add_argument("--network", type=_choice(NETWORKS, "network"), default="mlp", help=", ".join(NETWORKS))
    train.add_argument("--hidden", type=_positive(int), nargs="+", default=[512, 256], help="MLP widths")
    train.add_argument("--binarize", type=_choice(data_module.BINARIZATIONS, "binarization"), default=None,
                       help="none, static or dynamic (default: dynamic for bernoulli, else none)")
    train.add_argument("--epochs", type=_positive(int), default=100)
    train.add_argument("--batch-size", type=_positive(int), default=128)
    train.add_argument("--lr", type=_positive(float), default=1e-3)
    train.add_argument("--clip-norm", type=_positive(float), default=None, help="clip gradient norm")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    train.add_argument("--out", default=None, help="run folder (default runs/<dataset>-<time>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    train.add_argument("--eval-samples", type=_positive(int), default=1000,
                       help="importance samples K for the final test log p(x)")
    train.add_argument("--no-progress", action="store_true")

    ev = commands.add_parser("evaluate", help="test ELBO and importance-sampled log p(x) of a run")
    ev.add_argument("run", help="run folder")
    ev.add_argument("--num-samples", type=_positive(int), default=1000, help="importance samples K")
    ev.add_argument("--device", default="auto")

    sample = commands.add_parser("sample", help="write a grid of samples from a run's model")
    sample.add_argument("run", help="run folder")
    sample.add_argument("--num", type=_positive(int), default=64)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", default=None, help="PNG path (default RUN/samples.png)")
    sample.add_argument("--device", default="auto")
    return parser


def _load_data(info):
    return data_module.load(info["dataset"], data_dir=info.get("data_dir"), binarize=info["binarize"],
                            seed=info.get("seed", 0))


def cmd_train(args):
    device = resolve_device(args.device)  # fail fast, before loading data
    binarize = args.binarize or ("dynamic" if args.likelihood == "bernoulli" else "none")
    data_info = {"dataset": args.dataset, "data_dir": args.data_dir, "binarize": binarize, "seed": args.seed}
    train, test = _load_data(data_info)
    pyro.set_rng_seed(args.seed)  # the initial weights depend on it too
    likelihood = LIKELIHOODS[args.likelihood](args)
    encoder, decoder = NETWORKS[args.network](train.image_shape, args, likelihood.params_per_pixel)
    vae = VAE(image_shape=train.image_shape, latent_dim=args.latent_dim, encoder=encoder, decoder=decoder,
              prior=PRIORS[args.prior](args), likelihood=likelihood)
    out = args.out or os.path.join("runs", f"{os.path.basename(os.path.normpath(args.dataset))}-"
                                           f"{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"training on {train.name} ({len(train)} train / {len(test)} test, {binarize} binarization) "
          f"on {device}; writing {out}")
    history = fit(vae, train, test=test, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                  seed=args.seed, device=device, checkpoint_dir=out, resume=args.resume,
                  overwrite=args.overwrite, progress=not args.no_progress, clip_norm=args.clip_norm,
                  run_info={"data": data_info, "cli": sys.argv[1:]})
    metrics = _evaluate_run(vae, test, args.eval_samples)
    save_json({"history": history, "test": metrics}, os.path.join(out, METRICS))
    figures = plots.save_all(vae, train.images, train.labels, test.images, history, out, test_labels=test.labels)
    _print_metrics(metrics)
    print(f"wrote {out}: config.json, {CHECKPOINT}, {METRICS}, "
          + ", ".join(os.path.basename(str(p)) for p in figures.values()))
    return 0


def _evaluate_run(vae, test, num_samples):
    result = evaluate.report(vae, test, num_samples=num_samples)
    result["dataset"] = test.name
    return result


def _print_metrics(m):
    print(f"test ({m['dataset']}, {m['num_datapoints']} images, {m['binarize']} binarization): "
          f"ELBO {m['elbo']:.2f} nats (reconstruction {m['reconstruction']:.2f}, KL {m['kl']:.2f}); "
          f"log p(x) {m['log_likelihood']:.2f} nats with K={m['num_samples']} "
          f"({m['nll_bits_per_dim']:.4f} bits/dim); active units {m['active_units']}")


def cmd_evaluate(args):
    device = resolve_device(args.device)
    vae, config, _ = load_run(args.run, device=device)
    _, test = _load_data(config["data"])
    metrics = _evaluate_run(vae, test, args.num_samples)
    path = os.path.join(args.run, METRICS)
    stored = load_json(path) if os.path.exists(path) else {}
    stored.setdefault("evaluations", []).append(metrics)
    save_json(stored, path)
    _print_metrics(metrics)
    return 0


def cmd_sample(args):
    device = resolve_device(args.device)
    vae, _, _ = load_run(args.run, device=device)
    out = args.out or os.path.join(args.run, "samples.png")
    plots.samples(vae, n=args.num, path=out, seed=args.seed)
    print(f"wrote {out}")
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    command = {"train": cmd_train, "evaluate": cmd_evaluate, "sample": cmd_sample}[args.command]
    try:
        return command(args)
    except PyroVAEError as e:
        if args.debug:
            raise
        print(f"pyro-vae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pyro-vae: interrupted; the last completed epoch is saved, continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
