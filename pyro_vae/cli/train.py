"""``pyro-vae train``: the flags checked together, turned into data, a model, an objective and a schedule, and
handed to :func:`pv.fit`; an interruption says what the run folder holds and how to go on."""

import os
import sys
import time

import pyro_vae as pv

from .common import Interrupted, Terminated, error_path, load_data, print_metrics
from .flags import COMPILED, DOWNLOADED, GUIDES, LABELLED, LIKELIHOODS, LR_SCHEDULES, NETWORKS, OBJECTIVES, \
    PART_FLAGS, PRIORS


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
    if count > pv.checks.MAX_CLASSES:
        raise pv.DataError(f"the labels of {train.name} go up to {count - 1}, more classes than the limit of "
                           f"{pv.checks.MAX_CLASSES}; labels must be class indices 0..K-1")
    if count > 2 * len(classes):
        # one class per index up to the highest: most of them would have no image, and a one-hot code that long
        raise pv.DataError(f"the labels of {train.name} are {len(classes)} classes numbered up to {count - 1} "
                           f"({shown}), so a labelled model would have {count} classes, most without an image; "
                           f"renumber the labels as class indices 0..{len(classes) - 1}")
    if args is not None and args.latent_dim + count > pv.checks.MAX_LATENT_DIM:
        raise pv.ConfigError(f"--model {args.model} feeds z and a one-hot code of the {count} classes of "
                             f"{train.name} to its decoder, {args.latent_dim + count} inputs, above the limit of "
                             f"{pv.checks.MAX_LATENT_DIM}; use a smaller --latent-dim, or fewer classes")
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
    from ..data.labels import keep_labels
    return keep_labels(train, count, seed=args.seed)


def _check_combination(args):
    """One-line :class:`ConfigError` for flags that make no sense together (before loading any data): mostly a
    flag that the parts or the objective this command picks would ignore. Rules the library enforces itself
    (--resume with --overwrite: fit; --prior vamp with a labelled model: the model) are left to its errors."""
    labelled = args.model in LABELLED
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
        with pv.checks.model_budget():
            return _build_parts(args, train, likelihood, num_classes)
    except pv.checks.BudgetError as e:
        flag = BUDGET_FLAGS.get(e.largest, "--hidden")
        raise pv.ConfigError(f"{str(e).rsplit(';', 1)[0]}; use a smaller {flag}") from None


def _build_parts(args, train, likelihood, num_classes=None):
    """The model ``--model`` names, with the prior, posterior and networks its flags name, for images of
    ``train.image_shape`` ``(C, H, W)`` (and ``num_classes`` one-hot classes for cvae and m2)."""
    from ..models.hierarchical import HierarchicalVAE
    from ..models.labelled import M2, ConditionalVAE
    from ..models.mixture import GMVAE
    kind = args.model
    prior, posterior = PRIORS[args.prior](args), GUIDES[args.guide](args)
    if kind in LABELLED:
        if num_classes is None:
            raise pv.ConfigError(f"--model {kind} needs labelled data but {train.name!r} has no labels")
        cls = ConditionalVAE if kind == "cvae" else M2
        extra = {"alpha": args.alpha} if kind == "m2" else {}
        return cls(image_shape=train.image_shape, latent_dim=args.latent_dim, num_classes=num_classes, prior=prior,
                   likelihood=likelihood, posterior=posterior, hidden=args.hidden, **extra)
    encoder, decoder = NETWORKS[args.network](train.image_shape, args, likelihood.params_per_pixel)
    if kind == "gmvae":
        return GMVAE(image_shape=train.image_shape, latent_dim=args.latent_dim, encoder=encoder, decoder=decoder,
                     prior=pv.priors.MixtureOfGaussians(args.num_components), likelihood=likelihood,
                     posterior=posterior)
    if kind == "hvae":
        return HierarchicalVAE(image_shape=train.image_shape, latent_dims=(args.latent_dim, args.top_latent_dim),
                               encoder=encoder, decoder=decoder, prior=prior, likelihood=likelihood,
                               posterior=posterior)
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


def cmd_train(args):
    """Train the run the flags describe into --out (or runs/<dataset>-<time>), then print its test scores."""
    from ..files import WriteError
    from ..runs import CONFIG, RunFolder
    from ..training.processes import processes as processes_for
    _check_combination(args)
    _apply_part_flags(args)
    _check_dataset(args)
    # fail fast, before loading data
    processes = processes_for(args.distributed, args.device)
    binarize = args.binarize or ("dynamic" if args.likelihood == "bernoulli" else "none")
    data_info = {"dataset": args.dataset, "data_dir": args.data_dir, "binarize": binarize, "seed": args.seed}
    validation = args.validation
    if validation is None and (args.early_stopping is not None or args.lr_schedule == "plateau"):
        validation = pv.data.VALIDATION_FRACTION   # what they watch, so that the test set is only scored
    if validation:
        data_info["validation"] = validation
    train, validation, test = load_data(data_info, with_validation=True)
    likelihood = LIKELIHOODS[args.likelihood](args)
    _check_data_suits(args, likelihood, (train, test) if validation is None else (train, validation, test))
    num_classes = _num_classes(train, test, args) if args.model in LABELLED and train.labels is not None else None
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
        held = f"{len(validation)} validation / " if validation is not None else ""
        print(f"training on {train.name} ({len(train)} train / {held}{len(test)} test, {binarize} binarization) "
              f"on {processes.device}; writing {out}")
    run_info = {"data": data_info, "cli": sys.argv[1:], "model": args.model, "objective": objective,
                "labels": args.labels if args.model == "m2" else None}
    if args.preset is not None:
        run_info["preset"] = args.preset
    if args.resume and args.lr_schedule == "cosine":   # also checked by fit (issue 20)
        saved = RunFolder(out, main=False)
        epochs = saved.config().get("fit", {}).get("epochs") if saved.has(CONFIG) else None
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
               hooks=hooks, validation=validation, augment=args.augment)
    except Terminated:
        raise Terminated(_saved_epochs(args, out)) from None
    except KeyboardInterrupt:
        raise Interrupted(_saved_epochs(args, out)) from None
    except WriteError as e:   # disk full, say: the message says what is still on disk
        raise WriteError(f"{e}; {_saved_epochs(args, out)}") from None
    except OSError as e:   # a picture or TensorBoard file (the run's own files raise WriteError)
        raise WriteError(f"could not write {error_path(e) or out} ({e.strerror or e}); "
                                       f"{_saved_epochs(args, out)}") from None
    if not processes.is_main:
        return 0   # rank 0 wrote the scores and pictures
    folder = RunFolder(out)
    metrics = folder.read_metrics().get("test")
    if metrics:
        print_metrics(metrics)
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
    from ..runs import CHECKPOINT, load_checkpoint
    path = os.path.join(out, CHECKPOINT)
    try:
        epoch = load_checkpoint(path)["epoch"] if os.path.exists(path) else None
    except pv.PyroVAEError:
        epoch = None
    if epoch is None:
        return f"no epoch was completed, so nothing was saved in {out}; start the run again"
    if epoch >= args.epochs:
        return (f"training finished and is saved in {out}, but its test scores and pictures are not all written; "
                f"{_again(args)} to write them")
    return f"epoch {epoch} of {args.epochs} is saved in {out}; {_again(args)} to continue"
