"""``pyro-vae``: train, evaluate, sample and explore from the command line.

This module is the only place that maps names (strings) to classes; the library itself takes objects.

    pyro-vae train                                  # default VAE on mnist5k, offline, ~2 minutes on 2 cores
    pyro-vae train --prior mog --likelihood continuous-bernoulli --latent-dim 2 --out runs/cb2d
    pyro-vae evaluate runs/cb2d --num-samples 5000
    pyro-vae sample runs/cb2d --num 100
    pyro-vae explore runs/cb2d --html               # interpolation, traversal and a page to explore them
    pyro-vae train --objective iwae --num-particles 5
    pyro-vae train --beta 4 --warmup 10                 # a beta-VAE with KL warm-up
    pyro-vae train --jit                            # the same ELBO compiled by torch.jit: less Python per step
    pyro-vae train --compile                        # force the replay step (the default picks it where exact)
    pyro-vae train --step pyro                      # Pyro's own ELBO every step, never the replay
    pyro-vae train --lr-schedule cosine --early-stopping 10 --tensorboard
    pyro-vae train --model m2 --labels 100 --latent-dim 16     # semi-supervised, 100 labelled digits
    pyro-vae train --model cvae && pyro-vae sample RUN         # one row per digit

The library is imported inside :func:`main` (``pyro_vae`` loads its modules on first use), so a Ctrl-C or
SIGTERM at any moment, start-up included, ends with one line saying what is on disk.
"""

import argparse
import math
import os
import re
import signal
import sys
import time
import warnings

import pyro_vae as pv

PRIORS = {
    "standard": lambda args: pv.priors.StandardNormal(),
    "learned-normal": lambda args: pv.priors.LearnedNormal(),
    "mog": lambda args: pv.priors.MixtureOfGaussians(args.num_components),
    "vamp": lambda args: pv.priors.VampPrior(num_pseudo_inputs=args.num_pseudo_inputs),
    "flow": lambda args: pv.priors.FlowPrior(num_flows=args.num_flows, hidden=args.flow_hidden),
}
LIKELIHOODS = {
    "bernoulli": lambda args: pv.likelihoods.Bernoulli(),
    "continuous-bernoulli": lambda args: pv.likelihoods.ContinuousBernoulli(),
    "normal": lambda args: pv.likelihoods.Normal(scale=args.normal_scale),
    "normal-learned-scale": lambda args: pv.likelihoods.Normal(scale="learned"),   # one learned scale for all pixels
    "normal-per-pixel": lambda args: pv.likelihoods.Normal(scale="per-pixel"),     # a scale per pixel, from the decoder
    "laplace": lambda args: pv.likelihoods.Laplace(scale="per-pixel"),
    "logistic": lambda args: pv.likelihoods.DiscretizedLogistic(),
}
#: names that meant something else before: refused with the new name, never reinterpreted
RENAMED = {"likelihood": {"normal-shared": "normal-learned-scale", "normal-learned": "normal-per-pixel"}}
GUIDES = {
    "normal": lambda args: pv.guides.DiagonalNormal(),
    "iaf": lambda args: pv.guides.IAF(num_flows=args.num_flows, hidden=args.flow_hidden),
}
#: name -> (Pyro ELBO class name, keyword arguments); K particles are always vectorized (extra samples at dim -2)
OBJECTIVES = {
    "elbo": ("Trace_ELBO", {}),
    "meanfield": ("TraceMeanField_ELBO", {}),   # analytic KL where registered, Monte Carlo elsewhere
    "iwae": ("RenyiELBO", {"alpha": 0}),         # the importance-weighted bound of Burda et al. (2016)
}
#: --gradient: the estimators of pyro_vae.estimators.IWAE (a Normal, mean-field guide)
GRADIENTS = ("dreg", "stl", "iwae")
#: --jit: the same estimator, traced once by torch.jit (Pyro has no compiled RenyiELBO)
COMPILED = {"Trace_ELBO": "JitTrace_ELBO", "TraceMeanField_ELBO": "JitTraceMeanField_ELBO"}


def _cosine(epochs):
    """Cosine decay to 0 over the run's epochs (a resumed run keeps the schedule it started with)."""
    from torch.optim.lr_scheduler import CosineAnnealingLR
    return lambda opt: CosineAnnealingLR(opt, T_max=epochs)


def _plateau(epochs):
    """Halve the rate when the test ELBO has not improved for 5 epochs."""
    from torch.optim.lr_scheduler import ReduceLROnPlateau
    return lambda opt: ReduceLROnPlateau(opt, factor=0.5, patience=5)


#: --lr-schedule: name -> (epochs -> scheduler factory), or None for a constant rate
LR_SCHEDULES = {"constant": None, "cosine": _cosine, "plateau": _plateau}
#: model kinds; cvae and m2 need labelled data
MODEL_KINDS = ("vae", "cvae", "m2", "hvae", "gmvae")
NETWORKS = {
    "mlp": lambda shape, args, ppp: (pv.networks.MLPEncoder(shape, args.latent_dim, args.hidden),
                                     pv.networks.MLPDecoder(shape, args.latent_dim, args.hidden[::-1], ppp)),
    "conv": lambda shape, args, ppp: (pv.networks.ConvEncoder(shape, args.latent_dim),
                                      pv.networks.ConvDecoder(shape, args.latent_dim, ppp)),
}
#: datasets torchvision downloads; --data-dir is where they go
DOWNLOADED = ("mnist", "fashion-mnist", "kmnist")
_LABELLED = ("cvae", "m2")
#: flags that only one part reads. Their argparse default is None, so that a flag passed to a run whose parts
#: ignore it can be refused instead of silently doing nothing; dest -> (default, what it sets, which parts
#: read it, whether this run has one of them, the parts this run has instead)
PART_FLAGS = {
    "num_components": (10, "the number of mixture components", "--prior mog or --model gmvae",
                       lambda a: a.prior == "mog" or a.model == "gmvae", lambda a: f"--prior {a.prior}"),
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
#: upper bounds of the flags that only count (anything far beyond them is a typo, not a run)
MAX_EPOCHS = 10 ** 6
MAX_BATCH = 10 ** 6
MAX_EVAL_SAMPLES = 10 ** 6
#: a learning rate above this makes every optimizer here diverge in its first step
MAX_LR = 10.0
#: bound of a whole-number flag without a tighter one of its own (--labels): far beyond any dataset
MAX_COUNT = 10 ** 12


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (argparse prints the whole usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _choice(table, what, renamed=None):
    def parse(value):
        if renamed and value in renamed:
            raise argparse.ArgumentTypeError(f"{what} {value!r} is now called {renamed[value]!r}; use "
                                             f"{renamed[value]}")
        if value not in table:
            raise argparse.ArgumentTypeError(f"unknown {what} {value!r}; choose one of {', '.join(table)}")
        return value
    return parse


def _number(kind, allow_zero=False, limit=None):
    """argparse type for a finite positive (or non-negative) int or float up to ``limit``, with a one-line error."""
    what = f"{'non-negative' if allow_zero else 'positive'} {'whole number' if kind is int else 'number'}"

    def parse(value):
        if kind is int:
            # read as digits and compared as integers: a 400-digit count must not reach float(), which overflows
            digits = value.strip()
            if not re.fullmatch(r"\+?[0-9]+", digits):
                raise argparse.ArgumentTypeError(f"expected a {what}, got {value[:40]!r}")
            digits = digits.lstrip("+").lstrip("0") or "0"
            if len(digits) > len(str(bound)):
                raise argparse.ArgumentTypeError(f"{value[:40]}{'...' if len(value) > 40 else ''} is above the limit "
                                                 f"of {bound}; use a smaller value")
            number = int(digits)
        else:
            try:
                number = float(value)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a {what}, got {value[:40]!r}") from None
        if not (math.isfinite(number) and (number >= 0 if allow_zero else number > 0)):
            raise argparse.ArgumentTypeError(f"expected a {what}, got {value[:40]!r}")
        if number > bound:
            shown = f"{bound}" if kind is int else f"{bound:g}"
            raise argparse.ArgumentTypeError(f"{value[:40]} is above the limit of {shown}; use a smaller value")
        return number

    bound = (MAX_COUNT if kind is int else math.inf) if limit is None else limit
    return parse


def _positive(kind, limit=None):
    return _number(kind, limit=limit)


_non_negative_int = _number(int, allow_zero=True)
_non_negative_float = _number(float, allow_zero=True)


def _seed(value):
    """argparse type for a seed: numpy, which pyro.set_rng_seed also seeds, takes 0 .. 2**32 - 1 only."""
    try:
        seed = int(value)
    except ValueError:
        seed = -1
    if not 0 <= seed < 2 ** 32:
        raise argparse.ArgumentTypeError(f"expected a seed, a whole number from 0 to {2 ** 32 - 1}, got {value[:40]!r}")
    return seed


def build_parser():
    u = pv.util
    parser = Parser(prog="pyro-vae", description="Variational autoencoders in Pyro.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a VAE and write a run folder")
    train.add_argument("--dataset", default="mnist5k",
                       help=f"one of {', '.join(pv.data.DATASETS)}, a folder of IDX or image files, a .npy/.npz "
                            f"file, or idx with --data-dir (default mnist5k)")
    train.add_argument("--data-dir", default=None,
                       help=f"where {', '.join(DOWNLOADED)} are downloaded (default ~/.cache/pyro_vae), or the "
                            f"folder of IDX files for --dataset idx")
    train.add_argument("--latent-dim", type=_positive(int, u.MAX_LATENT_DIM), default=50)
    train.add_argument("--prior", type=_choice(PRIORS, "prior"), default="standard", help=", ".join(PRIORS))
    train.add_argument("--num-components", type=_positive(int, u.MAX_COMPONENTS), default=None,
                       help="mixture components (mog; default 10)")
    train.add_argument("--likelihood", type=_choice(LIKELIHOODS, "likelihood", RENAMED["likelihood"]),
                       default="bernoulli", help=", ".join(LIKELIHOODS))
    train.add_argument("--normal-scale", type=_positive(float), default=None,
                       help="fixed scale of --likelihood normal (default 0.1)")
    train.add_argument("--network", type=_choice(NETWORKS, "network"), default="mlp", help=", ".join(NETWORKS))
    train.add_argument("--hidden", type=_positive(int, u.MAX_WIDTH), nargs="+", default=None,
                       help="hidden widths of --network mlp (default 400)")
    train.add_argument("--model", type=_choice(MODEL_KINDS, "model"), default="vae",
                       help="vae, cvae (conditional on the label), m2 (semi-supervised), hvae (z2 -> z1 -> x), "
                            "gmvae (a cluster summed out in the model; --num-components clusters)")
    train.add_argument("--labels", type=_non_negative_int, default=None,
                       help="m2: number of labelled training images in all (not per class), class-balanced, at "
                            "least one per class (default: all)")
    train.add_argument("--alpha", type=_non_negative_float, default=None,
                       help="m2: weight of the classification term alpha * log q(y|x) per labelled image "
                            "(default 50)")
    train.add_argument("--top-latent-dim", type=_positive(int, u.MAX_LATENT_DIM), default=None,
                       help="hvae: size of z2 (--latent-dim is the size of z1; default 16)")
    train.add_argument("--guide", type=_choice(GUIDES, "guide"), default="normal",
                       help="posterior family: normal (diagonal), iaf (inverse autoregressive flow)")
    train.add_argument("--num-pseudo-inputs", type=_positive(int, u.MAX_COMPONENTS), default=None,
                       help="vamp prior (default 500)")
    train.add_argument("--num-flows", type=_positive(int, u.MAX_COMPONENTS), default=None,
                       help="flow prior, iaf guide (default 2)")
    train.add_argument("--flow-hidden", type=_positive(int, u.MAX_WIDTH), default=None,
                       help="flow prior, iaf guide (default 64)")
    train.add_argument("--objective", type=_choice(OBJECTIVES, "objective"), default="elbo",
                       help="elbo (Trace_ELBO), meanfield (TraceMeanField_ELBO), iwae (RenyiELBO alpha=0)")
    train.add_argument("--num-particles", type=_positive(int, u.MAX_PARTICLES), default=None,
                       help="samples per image K, vectorized (default 1; 5 for iwae)")
    train.add_argument("--gradient", type=_choice(GRADIENTS, "IWAE gradient"), default=None,
                       help="--objective iwae: the guide's gradient estimator, dreg (doubly reparameterised), stl "
                            "(sticking the landing) or iwae (plain); default: RenyiELBO's plain gradient")
    train.add_argument("--jit", action="store_true",
                       help="compile the ELBO once with torch.jit (JitTrace_ELBO): less Python per step, faster on "
                            "small batches; for models of fixed structure, not with --beta/--warmup")
    train.add_argument("--step", choices=("auto", "replay", "pyro"), default="auto",
                       help="how a step computes the ELBO: auto (default) the sync-free replay wherever it is exact "
                            "(Trace_ELBO, continuous latents, a model whose sites do not change), else Pyro's own "
                            "ELBO, the choice and its reason in config.json; replay always the replay (an error "
                            "where it cannot be used); pyro always Pyro's own ELBO")
    train.add_argument("--compile", nargs="?", const="replay", default=None, choices=("replay", "compile"),
                       help="force the sync-free fast path: Trace_ELBO's estimator traced into one graph and "
                            "replayed, no host-device sync per step (replay, what --step auto picks where it can); "
                            "compile also compiles it with torch.compile (CUDA graphs on a GPU; slow to start)")
    train.add_argument("--beta", type=_positive(float), default=1.0, help="weight of the KL term (beta-VAE)")
    train.add_argument("--warmup", type=_number(int, allow_zero=True, limit=MAX_EPOCHS), default=0,
                       help="KL warm-up: the KL weight grows linearly to --beta over this many epochs")
    train.add_argument("--binarize", type=_choice(pv.data.BINARIZATIONS, "binarization"), default=None,
                       help="none, static or dynamic (default: dynamic for bernoulli, else none)")
    train.add_argument("--epochs", type=_positive(int, MAX_EPOCHS), default=60)
    train.add_argument("--batch-size", type=_positive(int, MAX_BATCH), default=128)
    train.add_argument("--lr", type=_positive(float, MAX_LR), default=1e-3)
    train.add_argument("--lr-schedule", type=_choice(LR_SCHEDULES, "learning-rate schedule"), default="constant",
                       help="constant, cosine (decays to 0 over --epochs), plateau (halves the rate when the test "
                            "ELBO stalls for 5 epochs)")
    train.add_argument("--early-stopping", type=_positive(int, MAX_EPOCHS), default=None, metavar="N",
                       help="stop when the test ELBO has not improved for N epochs; the best epoch's weights are "
                            "kept (best.pt) and scored")
    train.add_argument("--clip-norm", type=_positive(float), default=None, help="clip gradient norm")
    train.add_argument("--seed", type=_seed, default=0)
    train.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    train.add_argument("--out", default=None, help="run folder (default runs/<dataset>-<time>)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out (--epochs may grow; --lr and --clip-norm may change)")
    train.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    train.add_argument("--eval-samples", type=_positive(int, MAX_EVAL_SAMPLES), default=250,
                       help="importance samples K for the final test log p(x) (default 250: under 20%% of the default "
                            "run's time on 2 CPU cores; the cost grows linearly with K, 1000 takes about 4x longer)")
    train.add_argument("--tensorboard", nargs="?", const="", default=None, metavar="DIR",
                       help="log scalars and pictures for TensorBoard (default DIR: RUN/tensorboard)")
    train.add_argument("--no-progress", action="store_true")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel training; launch with torchrun --nproc_per_node=N -m pyro_vae.cli train ...")

    ev = commands.add_parser("evaluate", help="test ELBO and importance-sampled log p(x) of a run")
    ev.add_argument("run", help="run folder")
    ev.add_argument("--num-samples", type=_positive(int, MAX_EVAL_SAMPLES), default=1000, help="importance samples K")
    ev.add_argument("--diagnostics", action="store_true",
                    help="also KL per latent dimension, I(x;z), the amortisation and approximation gaps, and sample "
                         "quality (Frechet distance, precision/recall in the features of a classifier trained on the "
                         "run's data, cached in the run folder) with posterior predictive checks; writes them to "
                         "metrics.json and diagnostics.png, posterior-predictive.png")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--no-progress", action="store_true")

    sample = commands.add_parser("sample", help="write a grid of samples from a run's model")
    sample.add_argument("run", help="run folder")
    sample.add_argument("--num", type=_positive(int, u.MAX_IMAGES), default=64)
    sample.add_argument("--seed", type=_seed, default=0)
    sample.add_argument("--out", default=None, help="PNG path (default RUN/samples-epochE-seedS.png)")
    sample.add_argument("--device", default="auto")

    explore = commands.add_parser("explore", help="interpolation and latent traversal pictures of a run")
    explore.add_argument("run", help="run folder")
    explore.add_argument("--html", action="store_true", help="also write explorer.html, a page to browse them")
    explore.add_argument("--out", default=None, help="folder for the pictures (default: the run folder)")
    explore.add_argument("--device", default="auto")
    for command in (ev, sample, explore):
        command.add_argument("--model-class", default=None, metavar="MODULE:CLASS",
                             help="the model class of a run trained from Python with a class of your own: "
                                  "module:Class (a module in the current folder or on sys.path) or "
                                  "path/to/file.py:Class; imported from this flag only, never from the run's files")
    return parser


def _load_data(info):
    if not isinstance(info, dict) or "dataset" not in info or "binarize" not in info:
        raise pv.CheckpointError("this run's config.json records no dataset (it was trained from Python, not with "
                                 "pyro-vae train); evaluate it in Python with pv.load_run and pv.evaluate.report")
    for key, ok in (("dataset", lambda v: isinstance(v, str)), ("binarize", lambda v: isinstance(v, str)),
                    ("data_dir", lambda v: v is None or isinstance(v, str)),
                    ("seed", lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 32)):
        if key in info and not ok(info[key]):
            raise pv.CheckpointError(f"this run's config.json is damaged: its data entry has {key} "
                                     f"{info[key]!r:.40}; restore it")
    try:
        return pv.data.load(info["dataset"], data_dir=info.get("data_dir"), binarize=info["binarize"],
                            seed=info.get("seed", 0))
    except pv.errors.DownloadError as e:   # the library's advice names its keywords; here it is flags
        raise pv.DataError(f"could not download {e.dataset!r} (no network?); offline: --dataset mnist5k, --dataset "
                           f"digits, or --dataset FOLDER (a folder of IDX or image files)") from e


def _check_dataset(args):
    """One-line errors, in flags, for --dataset and --data-dir (the library's own would name its keywords)."""
    name = args.dataset
    path = name not in pv.data.DATASETS and name != "idx"
    if path and not os.path.exists(os.path.expanduser(name)) and os.sep not in name:
        raise pv.DataError(f"unknown dataset {name!r}; use one of {', '.join(pv.data.DATASETS)}, the path of a folder "
                           f"of IDX or image files or of a .npy/.npz file, or idx with --data-dir FOLDER")
    if name == "idx" and args.data_dir is None:
        raise pv.ConfigError("--dataset idx reads the IDX files in --data-dir; add --data-dir FOLDER "
                             "(or pass the folder itself: --dataset FOLDER)")
    if args.data_dir is not None and not (name in DOWNLOADED or name == "idx"):
        what = "names its files itself" if path else "reads no folder"
        raise pv.ConfigError(f"--data-dir sets where {', '.join(DOWNLOADED)} are downloaded, or the folder of "
                             f"--dataset idx; --dataset {name} {what}: drop --data-dir")


def _check_data_suits(args, likelihood, datasets):
    """The likelihood's data check, with its advice given in flags for the likelihoods it names."""
    for data in datasets:
        try:
            likelihood.check_data(data)
        except pv.DataError as e:
            # whatever else could fail here, data.load's pixels lie in [0, 1]: these are the grid checks
            if args.likelihood == "bernoulli":
                raise pv.DataError(f"--likelihood bernoulli needs binary pixels but {data.name} has grey levels "
                                   f"(--binarize {data.binarize}); use --binarize dynamic or static, or "
                                   f"--likelihood continuous-bernoulli for grey levels") from e
            if args.likelihood == "logistic":
                raise pv.DataError(f"--likelihood logistic needs 8-bit pixels (k/255) but {data.name} has other "
                                   f"grey levels; use --likelihood continuous-bernoulli, --binarize dynamic, or "
                                   f"an 8-bit dataset such as mnist5k") from e
            raise


def _apply_part_flags(args):
    """Refuse a flag that none of the run's parts reads (it would silently do nothing), then fill in defaults."""
    for dest, (default, what, parts, used, instead) in PART_FLAGS.items():
        if getattr(args, dest) is not None and not used(args):
            flag = "--" + dest.replace("_", "-")
            raise pv.ConfigError(f"{flag} sets {what} of {parts}; drop it for {instead(args)}")
    for dest, (default, *_) in PART_FLAGS.items():
        if getattr(args, dest) is None:
            setattr(args, dest, default)


def _num_classes(train, test, args=None):
    """K from every label, before --labels hides most of them (the highest class may then have none)."""
    import torch
    labels = torch.cat([d.labels.reshape(-1) for d in (train, test) if d is not None and d.labels is not None])
    classes = torch.unique(labels[labels >= 0])
    if not len(classes):
        raise pv.DataError(f"{train.name} has no labelled image; a labelled model needs class labels 0..K-1")
    count = 1 + int(classes.max())
    shown = ", ".join(map(str, classes[:10].tolist())) + (f", ..., {count - 1}" if len(classes) > 10 else "")
    if count > pv.util.MAX_CLASSES:
        raise pv.DataError(f"the labels of {train.name} go up to {count - 1}, more classes than the limit of "
                           f"{pv.util.MAX_CLASSES}; labels must be class indices 0..K-1")
    if count > 2 * len(classes):
        # one class per index up to the highest: most of them would have no image, and a one-hot code that long
        raise pv.DataError(f"the labels of {train.name} are {len(classes)} classes numbered up to {count - 1} "
                           f"({shown}), so a labelled model would have {count} classes, most without an image; "
                           f"renumber the labels as class indices 0..{len(classes) - 1}")
    if args is not None and args.latent_dim + count > pv.util.MAX_LATENT_DIM:
        raise pv.ConfigError(f"--model {args.model} feeds z and a one-hot code of the {count} classes of "
                             f"{train.name} to its decoder, {args.latent_dim + count} inputs, above the limit of "
                             f"{pv.util.MAX_LATENT_DIM}; use a smaller --latent-dim, or fewer classes")
    return count


def _keep_labels(args, train, num_classes):
    count = args.labels
    if count < num_classes:
        # M2's classes are named only by labelled images: a class without one would be an arbitrary cluster,
        # and the accuracy reported for q(y|x) would compare cluster numbers with real labels
        raise pv.ConfigError(f"--model m2 needs a labelled image of each of the {num_classes} classes of "
                             f"{train.name}, but --labels {count} keeps {count} in all (--labels counts images, not "
                             f"images per class); use --labels {num_classes} or more, or --model vae to train "
                             f"without labels")
    # keep_labels takes the same share from every class: the smallest class bounds them all (checked here rather
    # than left to keep_labels, whose refusal near the bound depends on the seed)
    import torch
    sizes = torch.bincount(train.labels[train.labels >= 0].cpu())
    smallest, classes = int(sizes[sizes > 0].min()), int((sizes > 0).sum())
    if count > smallest * classes:
        raise pv.ConfigError(f"--labels {count} is more than class-balanced labels allow: the smallest class of "
                             f"{train.name} has {smallest} images, so {classes} classes give at most "
                             f"{smallest * classes}; use a smaller --labels, or leave it out to keep every label")
    return pv.extended.keep_labels(train, count, seed=args.seed)


def _check_combination(args):
    """One-line :class:`ConfigError` for settings that make no sense together (before loading any data)."""
    labelled = args.model in _LABELLED
    if args.resume and args.overwrite:
        raise pv.ConfigError("--resume continues the run in --out and --overwrite replaces it; pass only one")
    if args.labels is not None and args.model != "m2":
        raise pv.ConfigError(f"--labels sets how many images keep their label for --model m2; drop it for "
                             f"--model {args.model}")
    if args.model == "gmvae" and args.prior not in ("standard", "mog"):
        raise pv.ConfigError(f"--model gmvae's prior is its mixture of Gaussians (--num-components); drop "
                             f"--prior {args.prior}")
    if args.model == "gmvae" and (args.objective != "elbo" or args.jit or args.compile):
        what = "--jit" if args.jit else "--compile" if args.compile else f"--objective {args.objective}"
        raise pv.ConfigError(f"--model gmvae sums its cluster out exactly (TraceEnum_ELBO), which {what} does not "
                             f"do; drop {what}")
    if args.model == "m2" and args.objective != "elbo":
        raise pv.ConfigError(f"--model m2 sums the unknown labels out exactly (TraceEnum_ELBO), which --objective "
                             f"{args.objective} cannot do; use --objective elbo (with --num-particles K if wanted)")
    if args.model == "hvae" and args.objective == "meanfield":
        raise pv.ConfigError("--objective meanfield needs a mean-field guide, but hvae's guide q(z1|x) q(z2|z1) makes "
                             "z2 depend on z1 (the analytic KL would be biased); use --objective elbo or iwae")
    if labelled and args.network != "mlp":
        raise pv.ConfigError(f"--model {args.model} feeds the label to an MLP encoder; drop --network {args.network}")
    if labelled and args.prior == "vamp":
        raise pv.ConfigError(f"--prior vamp mixes the encoder's posteriors at pseudo-images, but --model "
                             f"{args.model}'s encoder also needs the label; choose another --prior")
    if args.jit and (args.objective == "iwae" or args.model == "m2"):
        what = "--objective iwae" if args.objective == "iwae" else "--model m2"
        raise pv.ConfigError(f"--jit compiles Trace_ELBO or TraceMeanField_ELBO, which {what} does not use; "
                             f"drop --jit")
    if args.gradient is not None and (args.objective != "iwae" or args.model in ("hvae", "m2") or args.guide == "iaf"):
        what = (f"--objective {args.objective}" if args.objective != "iwae" else
                f"--model {args.model}" if args.model in ("hvae", "m2") else "--guide iaf")
        raise pv.ConfigError(f"--gradient {args.gradient} estimates the IWAE gradient of a Normal guide whose sites "
                             f"depend on the image only, which {what} does not have; use --objective iwae with "
                             f"--model vae or cvae and --guide normal, or drop --gradient")
    if args.objective == "iwae" and args.num_particles == 1:
        raise pv.ConfigError("--objective iwae with one particle is the plain ELBO; use --num-particles 2 or more")
    if args.compile and (args.objective != "elbo" or args.model == "m2" or args.jit):
        what = "--jit" if args.jit else "--model m2" if args.model == "m2" else f"--objective {args.objective}"
        raise pv.ConfigError(f"--compile computes Trace_ELBO's estimator (--objective elbo, continuous latents), which "
                             f"{what} does not use; drop --compile or {what}")
    if args.compile and args.step != "auto":
        raise pv.ConfigError(f"--compile already chooses the replay step; drop --step {args.step} or --compile")
    if args.step == "replay" and (args.objective != "elbo" or args.model in ("m2", "gmvae") or args.jit):
        what = "--jit" if args.jit else f"--model {args.model}" if args.model in ("m2", "gmvae") else \
            f"--objective {args.objective}"
        raise pv.ConfigError(f"--step replay computes Trace_ELBO's estimator (--objective elbo, continuous latents), "
                             f"which {what} does not use; use --step auto or pyro")


def _step_request(args):
    """fit's ``compile`` argument: None (auto), False (Pyro's own ELBO), or the replay mode."""
    return args.compile or {"auto": None, "pyro": False, "replay": "replay"}[args.step]


def _objective(args):
    """The Pyro ELBO instance, and what config.json records about it."""
    import pyro.infer   # a heavy import: only when a run is built
    particles = args.num_particles or (5 if args.objective == "iwae" else 1)
    common = {"num_particles": particles, "vectorize_particles": particles > 1}
    if args.model == "gmvae":   # its cluster is summed out in the model
        loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1, **common)
    elif args.model == "m2":
        # fully labelled batches (e.g. the test set) have nothing to enumerate: not worth a warning
        loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False, **common)
    else:
        name, kwargs = OBJECTIVES[args.objective]
        if args.gradient is not None:
            return (pv.estimators.IWAE(num_particles=particles, gradient=args.gradient),
                    {"name": args.objective, "loss": "IWAE", "num_particles": particles, "gradient": args.gradient})
        if args.jit:
            name, kwargs = COMPILED[name], dict(kwargs, ignore_jit_warnings=True)
        loss = getattr(pyro.infer, name)(**kwargs, **common)
    return loss, {"name": args.objective, "loss": type(loss).__name__, "num_particles": particles}


#: the flag that sets the size of each network the CLI builds, for a model too large to build
BUDGET_FLAGS = {"MLPEncoder": "--hidden", "MLPDecoder": "--hidden", "LabelledMLPEncoder": "--hidden",
                "MLPClassifier": "--hidden", "GaussianMLP": "--top-latent-dim or --latent-dim",
                "ConvEncoder": "--latent-dim (or --network mlp for large images)",
                "ConvDecoder": "--latent-dim (or --network mlp for large images)",
                "FlowPrior": "--flow-hidden or --num-flows", "IAF": "--flow-hidden or --num-flows",
                "VampPrior": "--num-pseudo-inputs", "MixtureOfGaussians": "--num-components"}


def _build_model(args, train, likelihood, num_classes=None):
    """The model of ``args``, every network counted toward one memory budget before it is allocated."""
    try:
        with pv.util.model_budget():
            return _build_parts(args, train, likelihood, num_classes)
    except pv.util.BudgetError as e:
        flag = BUDGET_FLAGS.get(e.largest, "--hidden")
        raise pv.ConfigError(f"{str(e).rsplit(';', 1)[0]}; use a smaller {flag}") from None


def _build_parts(args, train, likelihood, num_classes=None):
    kind = args.model
    prior, posterior = PRIORS[args.prior](args), GUIDES[args.guide](args)
    if kind in _LABELLED:
        if num_classes is None:
            raise pv.ConfigError(f"--model {kind} needs labelled data but {train.name!r} has no labels")
        cls = pv.extended.ConditionalVAE if kind == "cvae" else pv.extended.M2
        extra = {"alpha": args.alpha} if kind == "m2" else {}
        return cls(image_shape=train.image_shape, latent_dim=args.latent_dim, num_classes=num_classes, prior=prior,
                   likelihood=likelihood, posterior=posterior, hidden=args.hidden, **extra)
    encoder, decoder = NETWORKS[args.network](train.image_shape, args, likelihood.params_per_pixel)
    if kind == "gmvae":
        return pv.extended.GMVAE(image_shape=train.image_shape, latent_dim=args.latent_dim, encoder=encoder,
                                 decoder=decoder, prior=pv.priors.MixtureOfGaussians(args.num_components),
                                 likelihood=likelihood, posterior=posterior)
    if kind == "hvae":
        return pv.extended.HierarchicalVAE(image_shape=train.image_shape,
                                           latent_dims=(args.latent_dim, args.top_latent_dim), encoder=encoder,
                                           decoder=decoder, prior=prior, likelihood=likelihood, posterior=posterior)
    return pv.VAE(image_shape=train.image_shape, latent_dim=args.latent_dim, encoder=encoder, decoder=decoder,
                  prior=prior, likelihood=likelihood, posterior=posterior)


def _schedule(args):
    """The --lr-schedule as fit's scheduler factory (named, so config.json says which one), or None."""
    make = LR_SCHEDULES[args.lr_schedule]
    if make is None:
        return None
    factory = make(args.epochs)
    factory.name = args.lr_schedule
    return factory


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, carrying what the interrupted command leaves behind (which :func:`main` prints)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (what is saved stays saved, and :func:`main` says so)."""


def cmd_train(args):
    _check_combination(args)
    _apply_part_flags(args)
    _check_dataset(args)
    # fail fast, before loading data
    processes = pv.distributed.processes(args.distributed, args.device)
    binarize = args.binarize or ("dynamic" if args.likelihood == "bernoulli" else "none")
    data_info = {"dataset": args.dataset, "data_dir": args.data_dir, "binarize": binarize, "seed": args.seed}
    train, test = _load_data(data_info)
    likelihood = LIKELIHOODS[args.likelihood](args)
    _check_data_suits(args, likelihood, (train, test))
    num_classes = _num_classes(train, test, args) if args.model in _LABELLED and train.labels is not None else None
    if args.model == "m2" and args.labels is not None and num_classes is not None:
        train = _keep_labels(args, train, num_classes)
    import pyro
    pyro.set_rng_seed(args.seed)  # the initial weights depend on it too
    vae = _build_model(args, train, likelihood, num_classes)
    loss, objective = _objective(args)
    out = args.out or os.path.join("runs", f"{os.path.basename(os.path.normpath(args.dataset))}-"
                                           f"{time.strftime('%Y%m%d-%H%M%S')}")
    out = processes.share(out)  # one run folder, named by rank 0
    if processes.is_main:
        print(f"training on {train.name} ({len(train)} train / {len(test)} test, {binarize} binarization) "
              f"on {processes.device}; writing {out}")
    run_info = {"data": data_info, "cli": sys.argv[1:], "model": args.model, "objective": objective,
                "labels": args.labels if args.model == "m2" else None}
    if args.resume and args.lr_schedule == "cosine":
        saved = pv.checkpoint.RunFolder(out, main=False)
        epochs = saved.config().get("fit", {}).get("epochs") if saved.has(pv.checkpoint.CONFIG) else None
        if epochs is not None and epochs != args.epochs:
            # the decay is over the first run's epochs: more of them would climb back up from 0
            raise pv.ConfigError(f"--lr-schedule cosine decays over the run's --epochs ({epochs}); resume with "
                                 f"--epochs {epochs}, or start a new run for a longer schedule")
    hooks = []
    if args.tensorboard is not None:
        hooks.append(pv.hooks.TensorBoard(args.tensorboard or os.path.join(out, "tensorboard")))
    try:
        pv.fit(vae, train, test=test, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
               device=processes.device, checkpoint_dir=out, resume=args.resume, overwrite=args.overwrite,
               progress=not args.no_progress, clip_norm=args.clip_norm, loss=loss, beta=args.beta,
               warmup=args.warmup, distributed=args.distributed, run_info=run_info, scheduler=_schedule(args),
               early_stopping=args.early_stopping, compile=_step_request(args), eval_samples=args.eval_samples,
               hooks=hooks)
    except Terminated:
        raise Terminated(_saved_epochs(args, out)) from None
    except KeyboardInterrupt:
        raise Interrupted(_saved_epochs(args, out)) from None
    except pv.checkpoint.WriteError as e:   # disk full, say: the message says what is still on disk
        raise pv.checkpoint.WriteError(f"{e}; {_saved_epochs(args, out)}") from None
    except OSError as e:   # a picture or TensorBoard file (the run's own files raise WriteError)
        raise pv.checkpoint.WriteError(f"could not write {_where(e) or out} ({e.strerror or e}); "
                                       f"{_saved_epochs(args, out)}") from None
    if not processes.is_main:
        return 0   # rank 0 wrote the scores and pictures
    folder = pv.checkpoint.RunFolder(out)
    metrics = folder.read_metrics().get("test")
    if metrics:
        _print_metrics(metrics)
    written = sorted(n for n in os.listdir(out) if not n.startswith("."))
    print(f"wrote {out}: {', '.join(written)}")
    return 0


def _again(args):
    """How to continue an interrupted ``train``: the same flags (a resumed run must match), with --resume."""
    if args.resume:
        return "run the same command again"
    return "run the same command with --resume" + (" instead of --overwrite" if args.overwrite else "")


def _saved_epochs(args, out):
    """What an interrupted ``fit`` leaves in ``out``: the checkpoint of the last completed epoch, if any."""
    # fit refuses a fresh run over a checkpoint and deletes it for --overwrite, so one found now is this run's
    path = os.path.join(out, pv.checkpoint.CHECKPOINT)
    try:
        epoch = pv.checkpoint.load_checkpoint(path)["epoch"] if os.path.exists(path) else None
    except pv.PyroVAEError:
        epoch = None
    if epoch is None:
        return f"no epoch was completed, so nothing was saved in {out}; start the run again"
    if epoch >= args.epochs:
        return (f"training finished and is saved in {out}, but its test scores and pictures are not all written; "
                f"{_again(args)} to write them")
    return f"epoch {epoch} of {args.epochs} is saved in {out}; {_again(args)} to continue"


def _print_metrics(m):
    print(f"test ({m['dataset']}, {m['num_datapoints']} images, {m['binarize']} binarization, epoch {m['epoch']}): "
          f"ELBO {m['elbo']:.2f} nats (reconstruction {m['reconstruction']:.2f}, KL {m['kl']:.2f}); "
          f"{m.get('quantity', 'log p(x)')} {m['log_likelihood']:.2f} nats with K={m['num_samples']} "
          f"({m['nll_bits_per_dim']:.4f} bits/dim); active units {m['active_units']}")
    if "accuracy" in m:
        print(f"test accuracy of q(y|x): {m['accuracy']:.4f}")


def _reason(error):
    """An exception as one short line: its type and message."""
    return f"{type(error).__name__}: {' '.join(str(error).split())[:160]}"


def _import_module(where, spec):
    """The module of ``--model-class``: a file ``path/to/file.py`` or a dotted name (current folder first, as
    ``python -m`` has it, then ``sys.path``). Either runs the user's code: that is what the flag asks for."""
    import importlib
    import importlib.util
    if where.endswith(".py"):
        path = os.path.abspath(os.path.expanduser(where))
        if not os.path.isfile(path):
            raise pv.ConfigError(f"--model-class {spec}: there is no file {where}; give the path of the .py file that "
                                 f"defines the class")
        name = "_pyro_vae_model_class_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
        module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, path))
        sys.modules[name] = module   # before it runs, as import does (dataclasses and pickling look it up)
        folder = os.path.dirname(path)
        if folder not in sys.path:
            sys.path.insert(0, folder)   # so it imports the modules beside it, as `python file.py` would
        try:
            module.__spec__.loader.exec_module(module)
        except Exception as e:
            del sys.modules[name]
            raise pv.ConfigError(f"--model-class {spec}: importing {where} failed ({_reason(e)}); fix that "
                                 f"file") from None
        return module
    if not all(part.isidentifier() for part in where.split(".")):
        raise pv.ConfigError(f"--model-class {spec!r:.80} names neither a module nor a .py file before the colon; "
                             f"write module:Class or path/to/file.py:Class")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as e:
        if e.name == where or where.startswith(f"{e.name}."):
            raise pv.ConfigError(f"--model-class {spec}: no module {where!r} in the current folder or on sys.path; "
                                 f"run from the folder that holds it, or give its file: --model-class "
                                 f"path/to/{where.split('.')[-1]}.py:{spec.rpartition(':')[2]}") from None
        raise pv.ConfigError(f"--model-class {spec}: importing {where} failed (it imports {e.name!r}, which is not "
                             f"installed); install {e.name} or fix {where}") from None
    except Exception as e:
        raise pv.ConfigError(f"--model-class {spec}: importing {where} failed ({_reason(e)}); fix that "
                             f"module") from None


def _import_model_class(spec):
    """The class ``--model-class module:Class`` (or ``path/to/file.py:Class``) names."""
    where, colon, name = spec.rpartition(":")
    if not (colon and where and all(part.isidentifier() for part in name.split("."))):
        raise pv.ConfigError(f"--model-class {spec!r:.80} is not module:Class; write e.g. --model-class "
                             f"mymodels:MyVAE, or --model-class path/to/mymodels.py:MyVAE")
    module = _import_module(where, spec)
    found = module
    for part in name.split("."):
        if not hasattr(found, part):
            own = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, pv.VAE)
                         and v.__module__ == module.__name__)
            listed = f" (its model classes: {', '.join(own)})" if own else ""
            raise pv.ConfigError(f"--model-class {spec}: {where} has no attribute {name!r}{listed}; name the "
                                 f"class after the colon")
        found = getattr(found, part)
    if not isinstance(found, type):
        raise pv.ConfigError(f"--model-class {spec}: {name} is a {type(found).__name__}, not a class; name the "
                             f"model class (e.g. a pv.VAE subclass)")
    return found


def _recorded_model(run):
    """``(class name, own)``: the model class a run's config.json names (``None`` when it cannot be read), and
    whether it is the user's own: not one of this package's, or a module of one's own wrapped by ``pv.wrap``."""
    try:
        config = pv.checkpoint.RunFolder(run, main=False).config()
    except pv.PyroVAEError:
        return None, False
    entry = config.get("vae") if isinstance(config, dict) else None
    name = entry.get("model", "VAE") if isinstance(entry, dict) else None
    if not (isinstance(name, str) and name.isidentifier()):
        return None, False
    return name, "wrapped" in entry or name not in pv.model.model_classes()


def _load_run(args):
    """``pv.load_run`` for evaluate/sample/explore, with ``--model-class``; a refusal about the class names the flag.

    config.json only names the run's class: it is compared with the class the flag imports, never imported."""
    model_class = None if args.model_class is None else _import_model_class(args.model_class)
    try:
        return pv.load_run(args.run, device=pv.distributed.resolve_device(args.device), model_class=model_class)
    except pv.ConfigError:
        recorded, own = _recorded_model(args.run)
        if recorded is None or (model_class is not None and recorded == model_class.__name__):
            raise
        if model_class is None and own:
            raise pv.ConfigError(f"{args.run} was trained with a model class of your own, {recorded}; pass it with "
                                 f"--model-class module:{recorded} (the module that defines it, in the current "
                                 f"folder or on sys.path) or --model-class path/to/file.py:{recorded}") from None
        if model_class is not None and not own:
            raise pv.ConfigError(f"{args.run} was trained with pyro_vae's own {recorded}, not "
                                 f"{model_class.__name__}; drop --model-class") from None
        if model_class is not None:
            raise pv.ConfigError(f"{args.run} was trained with the model class {recorded}, not "
                                 f"{model_class.__name__}; pass --model-class module:{recorded}") from None
        raise


def cmd_evaluate(args):
    vae, config, state = _load_run(args)
    train, test = _load_data(config.get("data"))
    cache = os.path.join(args.run, "classifier.pt")   # a run has one dataset: its feature classifier, cached
    metrics = pv.evaluate.report(vae, test, num_samples=args.num_samples, progress=not args.no_progress,
                                 diagnostics=args.diagnostics, train=train if args.diagnostics else None,
                                 classifier_cache=cache)
    metrics["epoch"] = state["epoch"]
    _print_metrics(metrics)
    if args.diagnostics:
        for line in pv.diagnostics.summary_lines(metrics):
            print(line)
        for path in pv.diagnostics.write_pictures(metrics, args.run):
            print(f"wrote {path}")
    # last, and merged with what a training run in the folder writes meanwhile: a Ctrl-C before it leaves
    # metrics.json as it was
    def record(m):
        m.setdefault("evaluations", []).append(metrics)
        for key in ("diagnostics", "sample_quality", "posterior_predictive"):   # the latest, where readers look
            if metrics.get(key) is not None:
                m[key] = metrics[key]
    pv.checkpoint.RunFolder(args.run).update_metrics(record)
    return 0


def cmd_sample(args):
    vae, _, state = _load_run(args)
    out = args.out or os.path.join(args.run, f"samples-epoch{state['epoch']}-seed{args.seed}.png")
    pv.checkpoint.refuse_run_file(out, pictures=True)
    if not out.lower().endswith(".png"):
        raise pv.ConfigError(f"--out {out} must name a .png file")
    if isinstance(vae, pv.extended.GMVAE):   # one row per cluster
        import torch
        torch.manual_seed(args.seed)
        per_cluster = max(1, round(args.num / vae.num_clusters))
        with torch.no_grad():
            images = vae.sample_by_cluster(per_cluster).cpu()
        pv.plots.show_images(images, title="One row per cluster", nrow=per_cluster, path=out)
    elif hasattr(vae, "sample_by_class"):   # cvae and m2: one row per class, one style per column
        import torch
        torch.manual_seed(args.seed)
        per_class = max(1, round(args.num / vae.num_classes))
        with torch.no_grad():
            images = vae.sample_by_class(per_class).cpu()
        pv.plots.show_images(images, title="One row per class", nrow=per_class, path=out)
    else:
        pv.plots.samples(vae, n=args.num, path=out, seed=args.seed)
    print(f"wrote {out}")
    return 0


def cmd_explore(args):
    vae, config, _ = _load_run(args)
    _, test = _load_data(config.get("data"))
    out = args.out or args.run
    if os.path.realpath(out) != os.path.realpath(args.run) and pv.checkpoint.RunFolder(out, main=False).is_run():
        # the run's own folder gets its own pictures redrawn; another run's pictures are that run's
        raise pv.ConfigError(f"--out {out} is another run's folder, whose pictures explore would replace; choose "
                             f"another folder")
    metrics = pv.checkpoint.RunFolder(args.run).read_metrics() if args.html else None   # diagnostics, if evaluated
    paths = pv.explorer.explore(vae, test.images, out, labels=test.labels, html=args.html, metrics=metrics)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "sample": cmd_sample, "explore": cmd_explore}


def _where(error):
    """The path an OSError names, or its folder when it is a temporary file (whose name means nothing to users)."""
    where = os.fspath(error.filename) if isinstance(error.filename, (str, os.PathLike)) else ""
    if pv.checkpoint.is_temporary(os.path.basename(where)):
        where = os.path.dirname(where)
    return where


#: the signals received while :func:`main` imports the library. They are held until the imports finish:
#: an exception raised in the middle of an import can leave a half-imported module that fails later with an
#: unrelated error, or abort the interpreter when it crosses C++ code (seen with torch.distributed)
_SIGNALLED = []
_HOLDING = [False]


def _on_signal(signum, frame):
    _SIGNALLED.append(signum)
    if not _HOLDING[0]:
        _raise_for(signum)


def _raise_for(signum):
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _build_parser_holding_signals():
    _SIGNALLED.clear()
    _HOLDING[0] = True
    try:
        parser = build_parser()   # the first use of the library: its imports happen here
    except Exception:
        if not _SIGNALLED:
            raise
    finally:
        _HOLDING[0] = False
    if _SIGNALLED:
        _raise_for(signal.SIGTERM if signal.SIGTERM in _SIGNALLED else _SIGNALLED[0])
    return parser


class _OneLineWarnings:
    """Warnings as one line each (``pyro-vae: warning: ...``), every distinct message once: a step that fails
    warns from every batch (Pyro's "Encountered NaN" comes twice a step), and the error that follows says the
    rest. Installed only over Python's own display, so a caller that records warnings (pytest) keeps them."""

    def __init__(self):
        self.seen, self.previous = set(), warnings.showwarning

    @classmethod
    def install(cls):
        if warnings.showwarning is not getattr(warnings, "_showwarning_orig", None):
            return None
        shown = cls()
        warnings.showwarning = shown.show
        return shown

    def show(self, message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        if (category, text) not in self.seen:
            self.seen.add((category, text))
            print(f"pyro-vae: warning: {text}", file=file or sys.stderr)

    def uninstall(self):
        if warnings.showwarning == self.show:
            warnings.showwarning = self.previous


def _out_of_memory(error):
    """Whether ``error`` is torch's refusal to allocate (its CPU allocator raises a plain RuntimeError)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(error)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def main(argv=None):
    try:
        # Ctrl-C keeps Python's meaning (KeyboardInterrupt), and stays ignored where the caller ignores it
        sigint = _on_signal if signal.getsignal(signal.SIGINT) is signal.default_int_handler else None
        previous = signal.signal(signal.SIGTERM, _on_signal), sigint and signal.signal(signal.SIGINT, sigint)
    except ValueError:   # not the main thread: leave signals alone
        previous = None
    shown_warnings = _OneLineWarnings.install()
    args = None
    try:
        parser = _build_parser_holding_signals()
        args = parser.parse_args(argv)
        return COMMANDS[args.command](args)
    except pv.PyroVAEError as e:
        if args is not None and args.debug:
            raise
        print(f"pyro-vae: error: {e}", file=sys.stderr)
        return 2
    except (OSError, MemoryError, RuntimeError) as e:   # the system's refusals (unwritable --out, full disk, memory)
        if args is not None and args.debug:
            raise
        if isinstance(e, RuntimeError) and not _out_of_memory(e):
            raise
        if isinstance(e, (MemoryError, RuntimeError)):
            print("pyro-vae: error: out of memory; use smaller sizes (--hidden, --flow-hidden, --batch-size, "
                  "--num-samples, --num)", file=sys.stderr)
        else:
            where = _where(e)
            print(f"pyro-vae: error: {where + ': ' if where else ''}{e.strerror or e}; check the path and its "
                  f"permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        if isinstance(e, Interrupted) or (isinstance(e, Terminated) and str(e)):
            note = str(e)
        elif args is None:
            note = "nothing was written"
        elif args.command == "evaluate":
            note = f"{os.path.join(args.run, pv.checkpoint.METRICS)} is unchanged"
        elif args.command in ("sample", "explore"):
            note = "no pictures were written"
        else:   # cmd_train says more once fit has started
            note = "training had not started; nothing was written"
        what = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(f"pyro-vae: {what}; {note}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if shown_warnings is not None:
            shown_warnings.uninstall()
        if "pyro_vae.distributed" in sys.modules:
            pv.distributed.shutdown()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous[0])
            if previous[1] is not None:
                signal.signal(signal.SIGINT, previous[1])


if __name__ == "__main__":
    sys.exit(main())
