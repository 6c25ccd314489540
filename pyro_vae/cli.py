"""``pyro-vae``: train, evaluate and sample from the command line.

This module is the only place that maps names (strings) to classes; the library itself takes objects.

    pyro-vae train                                  # default VAE on mnist5k, offline, ~2 minutes on 2 cores
    pyro-vae train --prior mog --likelihood continuous-bernoulli --latent-dim 2 --out runs/cb2d
    pyro-vae evaluate runs/cb2d --num-samples 5000
    pyro-vae sample runs/cb2d --num 100
    pyro-vae train --objective iwae --num-particles 5 --beta 1 --warmup 10
    pyro-vae train --jit                            # the same ELBO compiled by torch.jit: less Python per step
    pyro-vae train --model m2 --labels 100 --latent-dim 16     # semi-supervised, 100 labelled digits
    pyro-vae train --model cvae && pyro-vae sample RUN         # one row per digit
"""

import argparse
import math
import os
import sys
import time

import pyro
import torch
from pyro.infer import (JitTrace_ELBO, JitTraceMeanField_ELBO, RenyiELBO, Trace_ELBO, TraceEnum_ELBO,
                        TraceMeanField_ELBO)

from . import data as data_module
from . import distributed as parallel
from . import evaluate, extended, guides, likelihoods, networks, plots, priors
from .checkpoint import CHECKPOINT, METRICS, load_checkpoint, load_json, load_run, save_json
from .errors import ConfigError, DataError, PyroVAEError
from .model import VAE
from .train import fit, resolve_device

PRIORS = {
    "standard": lambda args: priors.StandardNormal(),
    "learned-normal": lambda args: priors.LearnedNormal(),
    "mog": lambda args: priors.MixtureOfGaussians(args.num_components),
    "vamp": lambda args: priors.VampPrior(num_pseudo_inputs=args.num_pseudo_inputs),
    "flow": lambda args: priors.FlowPrior(num_flows=args.num_flows, hidden=args.flow_hidden),
}
LIKELIHOODS = {
    "bernoulli": lambda args: likelihoods.Bernoulli(),
    "continuous-bernoulli": lambda args: likelihoods.ContinuousBernoulli(),
    "normal": lambda args: likelihoods.Normal(scale=args.normal_scale),
    "normal-shared": lambda args: likelihoods.Normal(scale="learned"),     # one learned scale for all pixels
    "normal-learned": lambda args: likelihoods.Normal(scale="per-pixel"),  # a scale per pixel, from the decoder
    "laplace": lambda args: likelihoods.Laplace(scale="per-pixel"),
    "logistic": lambda args: likelihoods.DiscretizedLogistic(),
}
GUIDES = {
    "normal": lambda args: guides.DiagonalNormal(),
    "iaf": lambda args: guides.IAF(num_flows=args.num_flows, hidden=args.flow_hidden),
}
#: name -> (ELBO class, keyword arguments); K particles are always vectorized (extra samples at dim -2)
OBJECTIVES = {
    "elbo": (Trace_ELBO, {}),
    "meanfield": (TraceMeanField_ELBO, {}),   # analytic KL where registered, Monte Carlo elsewhere
    "iwae": (RenyiELBO, {"alpha": 0}),         # the importance-weighted bound of Burda et al. (2016)
}
#: --jit: the same estimator, traced once by torch.jit (Pyro has no compiled RenyiELBO)
COMPILED = {Trace_ELBO: JitTrace_ELBO, TraceMeanField_ELBO: JitTraceMeanField_ELBO}
#: model kinds; cvae and m2 need labelled data
MODEL_KINDS = ("vae", "cvae", "m2", "hvae")
NETWORKS = {
    "mlp": lambda shape, args, ppp: (networks.MLPEncoder(shape, args.latent_dim, args.hidden),
                                     networks.MLPDecoder(shape, args.latent_dim, args.hidden[::-1], ppp)),
    "conv": lambda shape, args, ppp: (networks.ConvEncoder(shape, args.latent_dim),
                                      networks.ConvDecoder(shape, args.latent_dim, ppp)),
}
#: datasets torchvision downloads; --data-dir is where they go
DOWNLOADED = ("mnist", "fashion-mnist", "kmnist")
_LABELLED = ("cvae", "m2")
#: flags that only one part reads. Their argparse default is None, so that a flag passed to a run whose parts
#: ignore it can be refused instead of silently doing nothing; dest -> (default, what it sets, which parts
#: read it, whether this run has one of them, the parts this run has instead)
PART_FLAGS = {
    "num_components": (10, "the number of mixture components", "--prior mog",
                       lambda a: a.prior == "mog", lambda a: f"--prior {a.prior}"),
    "num_pseudo_inputs": (500, "the number of pseudo-inputs", "--prior vamp",
                          lambda a: a.prior == "vamp", lambda a: f"--prior {a.prior}"),
    "num_flows": (2, "the number of flows", "--prior flow and --guide iaf",
                  lambda a: a.prior == "flow" or a.guide == "iaf", lambda a: f"--prior {a.prior} --guide {a.guide}"),
    "flow_hidden": (64, "the flows' hidden width", "--prior flow and --guide iaf",
                    lambda a: a.prior == "flow" or a.guide == "iaf", lambda a: f"--prior {a.prior} --guide {a.guide}"),
    "normal_scale": (0.1, "the fixed pixel scale", "--likelihood normal",
                     lambda a: a.likelihood == "normal", lambda a: f"--likelihood {a.likelihood}"),
    # cvae and m2 always build MLPs (--network conv is refused for them)
    "hidden": ([400], "the hidden widths", "--network mlp",
               lambda a: a.network == "mlp" or a.model in _LABELLED, lambda a: f"--network {a.network}"),
    "alpha": (50.0, "the weight of the classification term", "--model m2",
              lambda a: a.model == "m2", lambda a: f"--model {a.model}"),
    "top_latent_dim": (16, "the size of z2", "--model hvae",
                       lambda a: a.model == "hvae", lambda a: f"--model {a.model}"),
}


def _choice(table, what):
    def parse(value):
        if value not in table:
            raise argparse.ArgumentTypeError(f"unknown {what} {value!r}; choose one of {', '.join(table)}")
        return value
    return parse


def _number(kind, allow_zero=False):
    """argparse type for a finite positive (or non-negative) int or float, with a one-line error."""
    what = f"{'non-negative' if allow_zero else 'positive'} {'whole number' if kind is int else 'number'}"

    def parse(value):
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what}, got {value!r}") from None
        if not (math.isfinite(number) and (number >= 0 if allow_zero else number > 0)):
            raise argparse.ArgumentTypeError(f"expected a {what}, got {value!r}")
        return number
    return parse


def _positive(kind):
    return _number(kind)


_non_negative_int = _number(int, allow_zero=True)
_non_negative_float = _number(float, allow_zero=True)


def _seed(value):
    """argparse type for a seed: numpy, which pyro.set_rng_seed also seeds, takes 0 .. 2**32 - 1 only."""
    try:
        seed = int(value)
    except ValueError:
        seed = -1
    if not 0 <= seed < 2 ** 32:
        raise argparse.ArgumentTypeError(f"expected a seed, a whole number from 0 to {2 ** 32 - 1}, got {value!r}")
    return seed


def build_parser():
    parser = argparse.ArgumentParser(prog="pyro-vae", description="Variational autoencoders in Pyro.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a VAE and write a run folder")
    train.add_argument("--dataset", default="mnist5k",
                       help=f"one of {', '.join(data_module.DATASETS)}, a folder of IDX files, or idx with "
                            f"--data-dir (default mnist5k)")
    train.add_argument("--data-dir", default=None,
                       help=f"where {', '.join(DOWNLOADED)} are downloaded (default ~/.cache/pyro_vae), or the "
                            f"folder of IDX files for --dataset idx")
    train.add_argument("--latent-dim", type=_positive(int), default=50)
    train.add_argument("--prior", type=_choice(PRIORS, "prior"), default="standard", help=", ".join(PRIORS))
    train.add_argument("--num-components", type=_positive(int), default=None,
                       help="mixture components (mog; default 10)")
    train.add_argument("--likelihood", type=_choice(LIKELIHOODS, "likelihood"), default="bernoulli",
                       help=", ".join(LIKELIHOODS))
    train.add_argument("--normal-scale", type=_positive(float), default=None,
                       help="fixed scale of --likelihood normal (default 0.1)")
    train.add_argument("--network", type=_choice(NETWORKS, "network"), default="mlp", help=", ".join(NETWORKS))
    train.add_argument("--hidden", type=_positive(int), nargs="+", default=None,
                       help="hidden widths of --network mlp (default 400)")
    train.add_argument("--model", type=_choice(MODEL_KINDS, "model"), default="vae",
                       help="vae, cvae (conditional on the label), m2 (semi-supervised), hvae (z2 -> z1 -> x)")
    train.add_argument("--labels", type=_non_negative_int, default=None,
                       help="m2: number of labelled training images in all (not per class), class-balanced, at "
                            "least one per class (default: all)")
    train.add_argument("--alpha", type=_non_negative_float, default=None,
                       help="m2: weight of the classification term alpha * log q(y|x) per labelled image "
                            "(default 50)")
    train.add_argument("--top-latent-dim", type=_positive(int), default=None,
                       help="hvae: size of z2 (--latent-dim is the size of z1; default 16)")
    train.add_argument("--guide", type=_choice(GUIDES, "guide"), default="normal",
                       help="posterior family: normal (diagonal), iaf (inverse autoregressive flow)")
    train.add_argument("--num-pseudo-inputs", type=_positive(int), default=None, help="vamp prior (default 500)")
    train.add_argument("--num-flows", type=_positive(int), default=None, help="flow prior, iaf guide (default 2)")
    train.add_argument("--flow-hidden", type=_positive(int), default=None,
                       help="flow prior, iaf guide (default 64)")
    train.add_argument("--objective", type=_choice(OBJECTIVES, "objective"), default="elbo",
                       help="elbo (Trace_ELBO), meanfield (TraceMeanField_ELBO), iwae (RenyiELBO alpha=0)")
    train.add_argument("--num-particles", type=_positive(int), default=None,
                       help="samples per image K, vectorized (default 1; 5 for iwae)")
    train.add_argument("--jit", action="store_true",
                       help="compile the ELBO once with torch.jit (JitTrace_ELBO): less Python per step, faster on "
                            "small batches; for models of fixed structure, not with --beta/--warmup")
    train.add_argument("--beta", type=_positive(float), default=1.0, help="weight of the KL term (beta-VAE)")
    train.add_argument("--warmup", type=_non_negative_int, default=0,
                       help="KL warm-up: the KL weight grows linearly to --beta over this many epochs")
    train.add_argument("--binarize", type=_choice(data_module.BINARIZATIONS, "binarization"), default=None,
                       help="none, static or dynamic (default: dynamic for bernoulli, else none)")
    train.add_argument("--epochs", type=_positive(int), default=60)
    train.add_argument("--batch-size", type=_positive(int), default=128)
    train.add_argument("--lr", type=_positive(float), default=1e-3)
    train.add_argument("--clip-norm", type=_positive(float), default=None, help="clip gradient norm")
    train.add_argument("--seed", type=_seed, default=0)
    train.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    train.add_argument("--out", default=None, help="run folder (default runs/<dataset>-<time>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    train.add_argument("--eval-samples", type=_positive(int), default=1000,
                       help="importance samples K for the final test log p(x)")
    train.add_argument("--no-progress", action="store_true")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel training; launch with torchrun --nproc_per_node=N -m pyro_vae.cli train ...")

    ev = commands.add_parser("evaluate", help="test ELBO and importance-sampled log p(x) of a run")
    ev.add_argument("run", help="run folder")
    ev.add_argument("--num-samples", type=_positive(int), default=1000, help="importance samples K")
    ev.add_argument("--device", default="auto")

    sample = commands.add_parser("sample", help="write a grid of samples from a run's model")
    sample.add_argument("run", help="run folder")
    sample.add_argument("--num", type=_positive(int), default=64)
    sample.add_argument("--seed", type=_seed, default=0)
    sample.add_argument("--out", default=None, help="PNG path (default RUN/samples.png)")
    sample.add_argument("--device", default="auto")
    return parser


def _load_data(info):
    try:
        return data_module.load(info["dataset"], data_dir=info.get("data_dir"), binarize=info["binarize"],
                                seed=info.get("seed", 0))
    except DataError as e:
        # a failed download advises "a folder of IDX files via data_dir", the library's keyword; from the
        # command line such a folder is given as --dataset FOLDER (--data-dir there is torchvision's root)
        if "via data_dir" not in str(e):
            raise
        raise DataError(str(e).replace("a folder of IDX files via data_dir",
                                       "--dataset FOLDER (a folder of IDX files)")) from e


def _check_dataset(args):
    """One-line errors, in flags, for --dataset and --data-dir (the library's own would name its keywords)."""
    name = args.dataset
    folder = name not in data_module.DATASETS and name != "idx"
    if folder and os.sep not in name and not os.path.isdir(os.path.expanduser(name)):
        raise DataError(f"unknown dataset {name!r}; use one of {', '.join(data_module.DATASETS)}, the path of a "
                        f"folder of IDX files, or idx with --data-dir FOLDER")
    if name == "idx" and args.data_dir is None:
        raise ConfigError("--dataset idx reads the IDX files in --data-dir; add --data-dir FOLDER "
                          "(or pass the folder itself: --dataset FOLDER)")
    if args.data_dir is not None and not (name in DOWNLOADED or name == "idx"):
        what = "names the IDX folder itself" if folder else "reads no folder"
        raise ConfigError(f"--data-dir sets where {', '.join(DOWNLOADED)} are downloaded, or the folder of "
                          f"--dataset idx; --dataset {name} {what}: drop --data-dir")


def _check_data_suits(args, likelihood, datasets):
    """The likelihood's data check, with its advice given in flags for the likelihoods it names."""
    for data in datasets:
        try:
            likelihood.check_data(data)
        except DataError as e:
            # whatever else could fail here, data.load's pixels lie in [0, 1]: these are the grid checks
            if args.likelihood == "bernoulli":
                raise DataError(f"--likelihood bernoulli needs binary pixels but {data.name} has grey levels "
                                f"(--binarize {data.binarize}); use --binarize dynamic or static, or "
                                f"--likelihood continuous-bernoulli for grey levels") from e
            if args.likelihood == "logistic":
                raise DataError(f"--likelihood logistic needs 8-bit pixels (k/255) but {data.name} has other "
                                f"grey levels; use --likelihood continuous-bernoulli, --binarize dynamic, or "
                                f"an 8-bit dataset such as mnist5k") from e
            raise


def _apply_part_flags(args):
    """Refuse a flag that none of the run's parts reads (it would silently do nothing), then fill in defaults."""
    for dest, (default, what, parts, used, instead) in PART_FLAGS.items():
        if getattr(args, dest) is not None and not used(args):
            flag = "--" + dest.replace("_", "-")
            raise ConfigError(f"{flag} sets {what} of {parts}; drop it for {instead(args)}")
    for dest, (default, *_) in PART_FLAGS.items():
        if getattr(args, dest) is None:
            setattr(args, dest, default)


def _num_classes(train, test):
    """K from every label, before --labels hides most of them (the highest class may then have none)."""
    return 1 + max(int(d.labels.max()) for d in (train, test) if d is not None and d.labels is not None)


def _keep_labels(args, train, num_classes):
    count = args.labels
    if count < num_classes:
        # M2's classes are named only by labelled images: a class without one would be an arbitrary cluster,
        # and the accuracy reported for q(y|x) would compare cluster numbers with real labels
        raise ConfigError(f"--model m2 needs a labelled image of each of the {num_classes} classes of "
                          f"{train.name}, but --labels {count} keeps {count} in all (--labels counts images, not "
                          f"images per class); use --labels {num_classes} or more, or --model vae to train without "
                          f"labels")
    # keep_labels takes the same share from every class: the smallest class bounds them all (checked here rather
    # than left to keep_labels, whose refusal near the bound depends on the seed)
    sizes = torch.bincount(train.labels[train.labels >= 0].cpu())
    smallest, classes = int(sizes[sizes > 0].min()), int((sizes > 0).sum())
    if count > smallest * classes:
        raise ConfigError(f"--labels {count} is more than class-balanced labels allow: the smallest class of "
                          f"{train.name} has {smallest} images, so {classes} classes give at most "
                          f"{smallest * classes}; use a smaller --labels, or leave it out to keep every label")
    return extended.keep_labels(train, count, seed=args.seed)


def _check_combination(args):
    """One-line :class:`ConfigError` for settings that make no sense together (before loading any data)."""
    labelled = args.model in _LABELLED
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it; pass only one")
    if args.labels is not None and args.model != "m2":
        raise ConfigError(f"--labels sets how many images keep their label for --model m2; drop it for --model {args.model}")
    if args.model == "m2" and args.objective != "elbo":
        raise ConfigError(f"--model m2 sums the unknown labels out exactly (TraceEnum_ELBO), which --objective "
                          f"{args.objective} cannot do; use --objective elbo (with --num-particles K if wanted)")
    if args.model == "hvae" and args.objective == "meanfield":
        raise ConfigError("--objective meanfield needs a mean-field guide, but hvae's guide q(z1|x) q(z2|z1) makes "
                          "z2 depend on z1 (the analytic KL would be biased); use --objective elbo or iwae")
    if labelled and args.network != "mlp":
        raise ConfigError(f"--model {args.model} feeds the label to an MLP encoder; drop --network {args.network}")
    if labelled and args.prior == "vamp":
        raise ConfigError(f"--prior vamp mixes the encoder's posteriors at pseudo-images, but --model {args.model}'s "
                          f"encoder also needs the label; choose another --prior")
    if args.jit and (args.objective == "iwae" or args.model == "m2"):
        what = "--objective iwae" if args.objective == "iwae" else "--model m2"
        raise ConfigError(f"--jit compiles Trace_ELBO or TraceMeanField_ELBO, which {what} does not use; drop --jit")
    if args.objective == "iwae" and args.num_particles == 1:
        raise ConfigError("--objective iwae with one particle is the plain ELBO; use --num-particles 2 or more")


def _objective(args):
    """The Pyro ELBO instance, and what config.json records about it."""
    particles = args.num_particles or (5 if args.objective == "iwae" else 1)
    common = {"num_particles": particles, "vectorize_particles": particles > 1}
    if args.model == "m2":
        # fully labelled batches (e.g. the test set) have nothing to enumerate: not worth a warning
        loss = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False, **common)
    else:
        cls, kwargs = OBJECTIVES[args.objective]
        if args.jit:
            cls, kwargs = COMPILED[cls], dict(kwargs, ignore_jit_warnings=True)
        loss = cls(**kwargs, **common)
    return loss, {"name": args.objective, "loss": type(loss).__name__, "num_particles": particles}


def _build_model(args, train, likelihood, num_classes=None):
    kind = args.model
    prior, posterior = PRIORS[args.prior](args), GUIDES[args.guide](args)
    if kind in _LABELLED:
        if num_classes is None:
            raise ConfigError(f"--model {kind} needs labelled data but {train.name!r} has no labels")
        cls = extended.ConditionalVAE if kind == "cvae" else extended.M2
        extra = {"alpha": args.alpha} if kind == "m2" else {}
        return cls(image_shape=train.image_shape, latent_dim=args.latent_dim, num_classes=num_classes, prior=prior,
                   likelihood=likelihood, posterior=posterior, hidden=args.hidden, **extra)
    encoder, decoder = NETWORKS[args.network](train.image_shape, args, likelihood.params_per_pixel)
    if kind == "hvae":
        return extended.HierarchicalVAE(image_shape=train.image_shape, latent_dims=(args.latent_dim, args.top_latent_dim),
                                        encoder=encoder, decoder=decoder, prior=prior, likelihood=likelihood,
                                        posterior=posterior)
    return VAE(image_shape=train.image_shape, latent_dim=args.latent_dim, encoder=encoder, decoder=decoder,
               prior=prior, likelihood=likelihood, posterior=posterior)


def _scored(vae, test):
    """The test set the generative scores use: M2 is scored on log p(x), its labels are for accuracy."""
    return extended.without_labels(test) if isinstance(vae, extended.M2) else test


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, carrying what the interrupted command leaves behind (which :func:`main` prints)."""


def cmd_train(args):
    _check_combination(args)
    _apply_part_flags(args)
    _check_dataset(args)
    # fail fast, before loading data
    device = parallel.init(args.device)[2] if args.distributed else resolve_device(args.device)
    binarize = args.binarize or ("dynamic" if args.likelihood == "bernoulli" else "none")
    data_info = {"dataset": args.dataset, "data_dir": args.data_dir, "binarize": binarize, "seed": args.seed}
    train, test = _load_data(data_info)
    likelihood = LIKELIHOODS[args.likelihood](args)
    _check_data_suits(args, likelihood, (train, test))
    num_classes = _num_classes(train, test) if args.model in _LABELLED and train.labels is not None else None
    if args.model == "m2" and args.labels is not None and num_classes is not None:
        train = _keep_labels(args, train, num_classes)
    pyro.set_rng_seed(args.seed)  # the initial weights depend on it too
    vae = _build_model(args, train, likelihood, num_classes)
    loss, objective = _objective(args)
    out = args.out or os.path.join("runs", f"{os.path.basename(os.path.normpath(args.dataset))}-"
                                           f"{time.strftime('%Y%m%d-%H%M%S')}")
    if args.distributed:
        out = parallel.share(out)  # one run folder, named by rank 0
    metrics_path = os.path.join(out, METRICS)
    # metrics.json also holds what `pyro-vae evaluate` appended; a resumed run keeps that (read now, so that a
    # broken file stops the run before training rather than after). A new run starts it afresh.
    stored = load_json(metrics_path) if args.resume and os.path.exists(metrics_path) else {}
    if parallel.is_main():
        print(f"training on {train.name} ({len(train)} train / {len(test)} test, {binarize} binarization) "
              f"on {device}; writing {out}")
    run_info = {"data": data_info, "cli": sys.argv[1:], "model": args.model, "objective": objective,
                "labels": args.labels if args.model == "m2" else None}
    try:
        history = fit(vae, train, test=_scored(vae, test), epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, seed=args.seed, device=device, checkpoint_dir=out, resume=args.resume,
                      overwrite=args.overwrite, progress=not args.no_progress, clip_norm=args.clip_norm,
                      loss=loss, beta=args.beta, warmup=args.warmup, distributed=args.distributed,
                      run_info=run_info)
    except KeyboardInterrupt:
        raise Interrupted(_saved_epochs(args, out)) from None
    if not parallel.is_main():
        return 0   # rank 0 evaluates and writes the pictures
    try:
        metrics = _evaluate_run(vae, test, args.eval_samples, epoch=history[-1]["epoch"])
        stored.update(history=history, test=metrics)
        save_json(stored, metrics_path)
        figures = plots.save_all(vae, train.images, train.labels, test.images, history, out,
                                 test_labels=test.labels)
    except KeyboardInterrupt:
        raise Interrupted(f"training finished and is saved in {out}, but its test scores and pictures are not all "
                          f"written; {_again(args)} to write them") from None
    _print_metrics(metrics)
    print(f"wrote {out}: config.json, {CHECKPOINT}, {METRICS}, "
          + ", ".join(os.path.basename(str(p)) for p in figures.values()))
    return 0


def _again(args):
    """How to continue an interrupted ``train``: the same flags (a resumed run must match), with --resume."""
    if args.resume:
        return "run the same command again"
    return "run the same command with --resume" + (" instead of --overwrite" if args.overwrite else "")


def _saved_epochs(args, out):
    """What a Ctrl-C during ``fit`` leaves in ``out``: the checkpoint of the last completed epoch, if any."""
    # fit refuses a fresh run over a checkpoint and deletes it for --overwrite, so one found now is this run's
    path = os.path.join(out, CHECKPOINT)
    try:
        epoch = load_checkpoint(path)["epoch"] if os.path.exists(path) else None
    except PyroVAEError:
        epoch = None
    if epoch is None:
        return f"no epoch was completed, so nothing was saved in {out}; start the run again"
    return f"epoch {epoch} of {args.epochs} is saved in {out}; {_again(args)} to continue"


def _evaluate_run(vae, test, num_samples, epoch):
    result = evaluate.report(vae, _scored(vae, test), num_samples=num_samples)
    result["dataset"] = test.name
    # a resumed run keeps the evaluations made before it: the epoch tells them from later ones
    result["epoch"] = epoch
    # a ConditionalVAE conditions on the label: its score is log p(x|y)
    result["quantity"] = "log p(x|y)" if type(vae) is extended.ConditionalVAE else "log p(x)"
    if isinstance(vae, extended.M2):
        result["accuracy"] = extended.accuracy(vae, test)
    return result


def _print_metrics(m):
    print(f"test ({m['dataset']}, {m['num_datapoints']} images, {m['binarize']} binarization): "
          f"ELBO {m['elbo']:.2f} nats (reconstruction {m['reconstruction']:.2f}, KL {m['kl']:.2f}); "
          f"{m.get('quantity', 'log p(x)')} {m['log_likelihood']:.2f} nats with K={m['num_samples']} "
          f"({m['nll_bits_per_dim']:.4f} bits/dim); active units {m['active_units']}")
    if "accuracy" in m:
        print(f"test accuracy of q(y|x): {m['accuracy']:.4f}")


def cmd_evaluate(args):
    device = resolve_device(args.device)
    vae, config, state = load_run(args.run, device=device)
    _, test = _load_data(config["data"])
    metrics = _evaluate_run(vae, test, args.num_samples, epoch=state["epoch"])
    path = os.path.join(args.run, METRICS)
    stored = load_json(path) if os.path.exists(path) else {}
    stored.setdefault("evaluations", []).append(metrics)
    _print_metrics(metrics)
    save_json(stored, path)   # last, so that a Ctrl-C before it leaves metrics.json as it was
    return 0


def cmd_sample(args):
    device = resolve_device(args.device)
    vae, _, _ = load_run(args.run, device=device)
    out = args.out or os.path.join(args.run, "samples.png")
    if isinstance(vae, extended.ConditionalVAE):   # cvae and m2: one row per class, one style per column
        torch.manual_seed(args.seed)
        per_class = max(1, round(args.num / vae.num_classes))
        with torch.no_grad():
            images = vae.sample_by_class(per_class).cpu()
        plots.show_images(images, title="One row per class", nrow=per_class, path=out)
    else:
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
    except KeyboardInterrupt as e:
        if isinstance(e, Interrupted):
            note = str(e)
        elif args.command == "evaluate":
            note = f"{os.path.join(args.run, METRICS)} is unchanged"
        elif args.command == "sample":
            note = "no samples were written"
        else:   # cmd_train says more once fit has started
            note = "training had not started; nothing was written"
        print(f"pyro-vae: interrupted; {note}", file=sys.stderr)
        return 130
    finally:
        parallel.shutdown()


if __name__ == "__main__":
    sys.exit(main())
