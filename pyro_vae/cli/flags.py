"""The ``pyro-vae`` argument parser, and the tables that map the names its flags take to the library's classes.

Nothing here imports torch: the tables hold functions of the parsed flags, and :func:`build_parser` reads
the library's limits (``pv.checks``, ``pv.data``) when :func:`pyro_vae.cli.main` first calls it.
"""

import argparse
import math
import re

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
    "normal": lambda args: pv.posteriors.DiagonalNormal(),
    "iaf": lambda args: pv.posteriors.IAF(num_flows=args.num_flows, hidden=args.flow_hidden),
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
#: the model kinds that need labelled data (and always build MLPs)
LABELLED = ("cvae", "m2")
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
               lambda a: a.network == "mlp" or a.model in LABELLED, lambda a: f"--network {a.network}"),
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


def _validation(value):
    """--validation: a whole number of images (0: none) or a fraction in (0, 1) of the training images."""
    if re.fullmatch(r"\s*\+?[0-9]+\s*", value):
        return _non_negative_int(value)
    number = _non_negative_float(value)
    if not 0 < number < 1:
        raise argparse.ArgumentTypeError(f"expected a number of images or a fraction in (0, 1), got {value[:40]!r}")
    return number


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
    """The ``pyro-vae`` parser: each flag parsed and bounded by its type, with one-line errors.

    The library's first use (its limits and dataset names): :func:`pyro_vae.cli.main` calls this with signals held.
    """
    u = pv.checks
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
    train.add_argument("--preset", type=_choice(pv.presets.RECIPES, "preset"), default=None,
                       help="a named recipe that sets the other flags' defaults (flags you give still win): best "
                            f"= {pv.presets.describe('best')}, measured in benchmarks/README.md; default = none")
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
    for flag, limit, used_by in (("--num-pseudo-inputs", u.MAX_COMPONENTS, "vamp prior (default 500)"),
                                 ("--num-flows", u.MAX_COMPONENTS, "flow prior, iaf guide (default 2)"),
                                 ("--flow-hidden", u.MAX_WIDTH, "flow prior, iaf guide (default 64)")):
        train.add_argument(flag, type=_positive(int, limit), default=None, help=used_by)
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
                       help="constant, cosine (decays to 0 over --epochs), plateau (halves the rate when the "
                            "validation ELBO stalls for 5 epochs)")
    train.add_argument("--early-stopping", type=_positive(int, MAX_EPOCHS), default=None, metavar="N",
                       help="stop when the validation ELBO has not improved for N epochs; the best epoch's weights "
                            "are kept (best.pt) and scored on the test set")
    train.add_argument("--validation", type=_validation, default=None, metavar="N",
                       help="hold out N training images (or a fraction, 0.1) for early stopping and the plateau "
                            "schedule, stratified by label and fixed for the dataset; default "
                            f"{pv.data.VALIDATION_FRACTION:g} with --early-stopping or --lr-schedule plateau, "
                            "else 0 (none); the test set is only scored")
    train.add_argument("--augment", type=_number(int, allow_zero=True, limit=pv.data.MAX_SHIFT), default=0,
                       metavar="PIXELS", help="data augmentation: move every training image by a random offset of "
                                              "up to PIXELS per axis, fresh each epoch (default 0: off)")
    train.add_argument("--clip-norm", type=_positive(float), default=None, help="clip gradient norm")
    train.add_argument("--seed", type=_seed, default=0)
    train.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    train.add_argument("--out", default=None, help="run folder (default runs/<dataset>-<time>)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out (--epochs may grow; --lr and --clip-norm may change)")
    train.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    train.add_argument("--eval-samples", type=_positive(int, MAX_EVAL_SAMPLES), default=pv.train.EVAL_SAMPLES,
                       help=f"importance samples K for the final test log p(x) (default {pv.train.EVAL_SAMPLES}: "
                            "under 20%% of the default run's time on 2 CPU cores; the cost grows linearly with K, "
                            "1000 takes about 4x longer)")
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
    parser.train_parser = train   # for with_preset
    return parser


def with_preset(parser, args, argv=None):
    """``args`` re-read with ``--preset``'s recipe as the train command's defaults (the flags given win)."""
    if getattr(args, "preset", None) is None:
        return args
    parser.train_parser.set_defaults(**pv.presets.RECIPES[args.preset])
    return parser.parse_args(argv)
