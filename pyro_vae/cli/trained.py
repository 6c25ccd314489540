"""``pyro-vae evaluate``, ``sample`` and ``explore``: the commands that read a trained run folder."""

import os

import pyro_vae as pv

from .common import load_data, print_metrics
from .model_class import load_run


def cmd_evaluate(args):
    """Score the run on its test set (``--diagnostics``: and diagnose it), appending the scores to metrics.json."""
    from ..runs import RunFolder
    vae, config, state = load_run(args)
    train, test = load_data(config.get("data"))
    cache = os.path.join(args.run, "classifier.pt")   # a run has one dataset: its feature classifier, cached
    metrics = pv.evaluate.report(vae, test, num_samples=args.num_samples, progress=not args.no_progress,
                                 diagnostics=args.diagnostics, train=train if args.diagnostics else None,
                                 classifier_cache=cache)
    metrics["epoch"] = state["epoch"]
    print_metrics(metrics)
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
    RunFolder(args.run).update_metrics(record)
    return 0


def cmd_sample(args):
    """A PNG grid of samples: one row per cluster (GMVAE) or per class (a model that classifies), else a square."""
    from ..models.mixture import GMVAE
    from ..runs import refuse_run_file
    from ..viz import figures
    vae, _, state = load_run(args)
    out = args.out or os.path.join(args.run, f"samples-epoch{state['epoch']}-seed{args.seed}.png")
    refuse_run_file(out, pictures=True)
    if not out.lower().endswith(".png"):
        raise pv.ConfigError(f"--out {out} must name a .png file")
    # GMVAE: one row per cluster; cvae and m2 (models that classify): one row per class, one style per column
    rows = ((vae.num_clusters, "cluster", vae.sample_by_cluster) if isinstance(vae, GMVAE) else
            (vae.num_classes, "class", vae.sample_by_class) if getattr(vae, "classifies", False) else None)
    if rows is None:
        figures.samples(vae, n=args.num, path=out, seed=args.seed)
    else:
        import torch
        count, what, sample = rows
        torch.manual_seed(args.seed)
        per_row = max(1, round(args.num / count))
        with torch.no_grad():
            images = sample(per_row).cpu()   # (count * per_row, C, H, W), row by row
        figures.show_images(images, title=f"One row per {what}", nrow=per_row, path=out)
    print(f"wrote {out}")
    return 0


def cmd_explore(args):
    """Interpolation and latent traversal pictures of the run (``--html``: and a page to browse them)."""
    from ..runs import RunFolder
    from ..viz import explorer
    vae, config, _ = load_run(args)
    _, test = load_data(config.get("data"))
    out = args.out or args.run
    if os.path.realpath(out) != os.path.realpath(args.run) and RunFolder(out, main=False).is_run():
        # the run's own folder gets its own pictures redrawn; another run's pictures are that run's
        raise pv.ConfigError(f"--out {out} is another run's folder, whose pictures explore would replace; choose "
                             f"another folder")
    metrics = RunFolder(args.run).read_metrics() if args.html else None   # diagnostics, if evaluated
    paths = explorer.explore(vae, test.images, out, labels=test.labels, html=args.html, metrics=metrics)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
