"""Quality benchmark: pyro_vae against the Pyro tutorial's VAE, at equal epoch budgets.

The reference ("peer") is the VAE of Pyro's introductory tutorial, re-implemented here on its own:
784-400-50 softplus MLPs, Bernoulli likelihood, ``SVI`` with ``Trace_ELBO`` and ``pyro.optim.Adam(1e-3)``,
batch 256. Every configuration trains on dynamically binarized images and is scored on a statically
binarized test set: test ELBO and importance-sampled log p(x) with K samples, in nats per image.

    python benchmarks/quality.py --dataset mnist5k --epochs 100            # mnist5k, peer and default
    python benchmarks/quality.py --dataset fashion-mnist --epochs 50       # (b), needs dataset-fashion-mnist
    python benchmarks/quality.py --no-peer --seeds 0 1 2 --configs "pyro_vae default" vamp iwae5 iaf
                                                                           # parts swapped, 3 seeds
    python benchmarks/quality.py --dataset mnist5k --epochs 60 --no-peer \
        --configs "pyro_vae default" "default + cosine + early stopping"   # does the schedule help?
    CI=1 python benchmarks/quality.py                                      # smoke mode: seconds

Prints a table and writes JSON (``--json``, default ``benchmarks/results/quality-<dataset>.json``).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

import torch
from torch import nn

import pyro
import pyro.distributions as dist
from pyro.infer import SVI, RenyiELBO, Trace_ELBO
from pyro.optim import Adam

import pyro_vae as pv
from pyro_vae.checkpoint import save_json


class TutorialVAE(nn.Module):
    """The Pyro tutorial's VAE: 784-400-z_dim encoder and z_dim-400-784 decoder, softplus, exp scale."""

    def __init__(self, image_shape=(1, 28, 28), z_dim=50, hidden_dim=400):
        super().__init__()
        pixels = image_shape[0] * image_shape[1] * image_shape[2]
        self.fc1, self.fc21, self.fc22 = nn.Linear(pixels, hidden_dim), nn.Linear(hidden_dim, z_dim), \
            nn.Linear(hidden_dim, z_dim)
        self.fc3, self.fc4 = nn.Linear(z_dim, hidden_dim), nn.Linear(hidden_dim, pixels)
        self.z_dim = z_dim
        self.image_shape = tuple(image_shape)

    def encode(self, x):
        h = nn.functional.softplus(self.fc1(x.flatten(-3)))
        return self.fc21(h), torch.exp(self.fc22(h))

    def decode_logits(self, z):
        return self.fc4(nn.functional.softplus(self.fc3(z))).unflatten(-1, self.image_shape)

    def model(self, x, y=None):
        pyro.module("peer", self)
        with pyro.plate("data", x.shape[-4]):
            loc = x.new_zeros(x.shape[-4], self.z_dim)
            z = pyro.sample("z", dist.Normal(loc, torch.ones_like(loc)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decode_logits(z), validate_args=False).to_event(3), obs=x)

    def guide(self, x, y=None):
        pyro.module("peer", self)
        with pyro.plate("data", x.shape[-4]):
            loc, scale = self.encode(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def train_peer(train, epochs, seed, device):
    """The tutorial's own loop: SVI.step per mini-batch of 256."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    peer = TutorialVAE(train.image_shape).to(device)
    svi = SVI(peer.model, peer.guide, Adam({"lr": 1e-3}), loss=Trace_ELBO())
    data = train.to(device)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for x, _ in data.batches(256, generator=generator):
            svi.step(x)
    return peer


#: ``pv.presets.build("best")`` / ``pyro-vae train --preset best`` (its epochs are ``--epochs``'s)
BEST = "best (--preset best)"
#: what ``pyro-vae train --lr-schedule cosine --early-stopping 10 --tensorboard`` does
SCHEDULED = "default + cosine + early stopping"


def configurations(epochs=100, validation=None, log_dir=None, patience=10):
    """name -> (builder(image_shape) -> VAE, fit keyword arguments).

    Apart from "pyro_vae conv", each is the default VAE (784-400-50 SiLU MLPs, Bernoulli) with one part
    swapped: the prior (VampPrior with 100 pseudo-inputs: with the paper's 500
    a training step took 6.5 times as long as the default's on the 2-core CPU, with 100 2.3 times), the
    objective (IWAE, K=5) or the posterior family (2 IAF flows). :data:`SCHEDULED` is the default model
    trained as the CLI's ``--lr-schedule cosine --early-stopping 10 --tensorboard`` trains it: the rate decays
    to 0 over ``epochs`` (``CosineAnnealingLR(T_max=epochs)``), the run stops after ``patience`` epochs without
    a better ELBO on ``validation`` and ends with its best epoch's weights, and TensorBoard logs go to
    ``log_dir``. Early stopping watches a validation split carved from the training images (``--validation``,
    10% by default when this configuration runs, as the CLI does), never the test set that is scored.
    """
    def cosine(optimizer):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    cosine.name = "cosine"   # what config.json would record, as for the CLI's schedule
    return {
        "pyro_vae default": (lambda shape: pv.VAE(image_shape=shape), {}),
        "vamp": (lambda shape: pv.VAE(image_shape=shape, prior=pv.priors.VampPrior(100)), {}),
        "iwae5": (lambda shape: pv.VAE(image_shape=shape),
                  {"loss": RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True, max_plate_nesting=1)}),
        "iaf": (lambda shape: pv.VAE(image_shape=shape, posterior=pv.posteriors.IAF(num_flows=2)), {}),
        "pyro_vae conv": (lambda shape: pv.VAE(
            image_shape=shape, latent_dim=32,
            encoder=pv.networks.ConvEncoder(shape, 32), decoder=pv.networks.ConvDecoder(shape, 32)), {}),
        "hvae iwae5": (lambda shape: pv.extended.HierarchicalVAE(image_shape=shape),
                       {"loss": RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True, max_plate_nesting=1)}),
        "hvae ladder iwae5": (lambda shape: pv.extended.HierarchicalVAE(image_shape=shape, inference="ladder"),
                              {"loss": RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True,
                                                 max_plate_nesting=1)}),
        BEST: (lambda shape: pv.presets.build("best", shape)[0],
               {**{k: v for k, v in pv.presets.fit_settings("best").items() if k != "epochs"},
                "validation": validation}),
        SCHEDULED: (lambda shape: pv.VAE(image_shape=shape),
                    {"validation": validation, "scheduler": cosine, "early_stopping": patience,
                     "hooks": [pv.hooks.TensorBoard(log_dir)] if log_dir is not None else []}),
    }


def summarize(rows):
    """config -> mean and sample standard deviation over seeds of the test ELBO and log p(x)."""
    summary = {}
    for name in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == name]
        entry = {"seeds": len(mine)}
        for key in ("test_elbo", "log_px"):
            values = torch.tensor([r[key] for r in mine], dtype=torch.float64)
            entry[f"{key}_mean"] = values.mean().item()
            entry[f"{key}_sd"] = values.std().item() if len(mine) > 1 else 0.0
        summary[name] = entry
    return summary


def score(vae, test, num_samples):
    return {"test_elbo": pv.evaluate.elbo(vae, test)["elbo"],
            "log_px": pv.evaluate.log_likelihood(vae, test, num_samples=num_samples),
            "active_units": pv.evaluate.active_units(vae, test) if isinstance(vae, pv.VAE) else None}


def main(argv=None):
    smoke = bool(os.environ.get("CI"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--epochs", type=int, default=2 if smoke else 100)
    parser.add_argument("--num-samples", type=int, default=20 if smoke else 1000, help="K for log p(x)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--configs", nargs="*", default=None,
                        help=f"configurations to run (default: pyro_vae default); known: {', '.join(configurations())}")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, default=200 if smoke else None, help="use only N train/test images")
    parser.add_argument("--test-limit", type=int, default=None,
                        help="score on the first N test images only (the same N for every configuration)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--patience", type=int, default=10, help=f"early stopping of {SCHEDULED!r} (default 10)")
    parser.add_argument("--log-dir", default=None,
                        help=f"TensorBoard logs of {SCHEDULED!r}, one folder per seed (default: a temporary "
                             f"folder, deleted at the end)")
    parser.add_argument("--validation", type=float, default=None,
                        help=f"validation images (N, or a fraction) carved from the training set for {SCHEDULED!r}'s "
                             f"early stopping (default {pv.data.VALIDATION_FRACTION:g} when it runs, else none); every "
                             f"configuration then trains on the rest")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = pv.resolve_device(args.device)
    # the convolutional configuration is much slower on a CPU: ask for it by name
    chosen = args.configs if args.configs is not None else ["pyro_vae default"]
    unknown = [name for name in chosen if name not in configurations()]
    if unknown:
        parser.error(f"unknown configuration {unknown[0]!r}; known: {', '.join(configurations())}")
    held = args.validation if args.validation is not None else (
        pv.data.VALIDATION_FRACTION if SCHEDULED in chosen or BEST in chosen else None)
    if held is not None and held >= 1:
        held = int(held)
    if args.limit:   # the smoke run: the first images, then the split carved from them
        train, test = pv.data.load(args.dataset, binarize="dynamic")
        train, test = train.subset(range(min(args.limit, len(train)))), test.subset(range(min(args.limit, len(test))))
        validation = None
        if held:
            keep, out = pv.data.validation_split(len(train), held, train.labels)
            train, validation = train.subset(keep), train.subset(out)
    elif held:
        train, validation, test = pv.data.load(args.dataset, binarize="dynamic", validation=held)
    else:
        (train, test), validation = pv.data.load(args.dataset, binarize="dynamic"), None
    if args.test_limit:
        test = test.subset(range(min(args.test_limit, len(test))))
    rows = []
    out = args.json or os.path.join(os.path.dirname(__file__), "results", f"quality-{args.dataset}.json")

    def save():   # atomically, after every row: an interrupted run keeps what it measured
        save_json({"dataset": args.dataset, "epochs": args.epochs, "num_samples": args.num_samples,
                   "train_binarize": "dynamic", "test_binarize": "static", "device": str(device),
                   "train_size": len(train), "test_size": len(test), "threads": torch.get_num_threads(),
                   "validation_size": None if validation is None else len(validation),
                   "smoke": smoke, "patience": args.patience, "rows": rows, "summary": summarize(rows),
                   "argv": sys.argv[1:]}, out)

    log_root = args.log_dir or tempfile.mkdtemp(prefix="quality-tensorboard-")
    for seed in args.seeds:
        if not args.no_peer:
            started = time.perf_counter()
            peer = train_peer(train, args.epochs, seed, device)
            seconds = time.perf_counter() - started
            rows.append({"config": "peer (Pyro tutorial VAE)", "seed": seed, "seconds": seconds,
                         **score(peer, test.to(device), args.num_samples)})
            print(rows[-1], flush=True)
            save()
        for name in chosen:
            build, fit_kwargs = configurations(args.epochs, validation, os.path.join(log_root, f"seed{seed}"),
                                               args.patience)[name]
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            vae = build(train.image_shape)
            started = time.perf_counter()
            history = pv.fit(vae, train, epochs=args.epochs, seed=seed, device=device, progress=False, **fit_kwargs)
            seconds = time.perf_counter() - started
            row = {"config": name, "seed": seed, "seconds": seconds, "epochs_trained": len(history)}
            # fit returned the best epoch's weights: those are scored
            if "early_stopping" in fit_kwargs and "best_epoch" in history[-1]:
                row["best_epoch"] = history[-1]["best_epoch"]
                row["best_epoch_validation_elbo"] = history[row["best_epoch"] - 1]["validation_elbo"]
            if "lr" in history[-1]:
                row["last_lr"] = history[-1]["lr"]
            rows.append({**row, **score(vae, test, args.num_samples)})
            print(rows[-1], flush=True)
            save()

    print(f"\n{args.dataset}: train {len(train)} (dynamic binarization), test {len(test)} (static), "
          f"{args.epochs} epochs, K={args.num_samples}, device {device}")
    print(f"{'configuration':34s} {'seed':>4s} {'test ELBO':>10s} {'log p(x)':>10s} {'seconds':>8s} {'epochs':>6s}"
          f" {'best':>4s}")
    for r in rows:
        print(f"{r['config']:34s} {r['seed']:4d} {r['test_elbo']:10.2f} {r['log_px']:10.2f} {r['seconds']:8.1f} "
              f"{r.get('epochs_trained', args.epochs):6d} {r.get('best_epoch', ''):>4}")
    summary = summarize(rows)
    if len(args.seeds) > 1:
        print(f"\n{'configuration':34s} {'seeds':>5s} {'test ELBO':>16s} {'log p(x)':>16s}   (mean +- sd over seeds)")
        for name, s in summary.items():
            print(f"{name:34s} {s['seeds']:5d} {s['test_elbo_mean']:9.2f} +- {s['test_elbo_sd']:4.2f} "
                  f"{s['log_px_mean']:9.2f} +- {s['log_px_sd']:4.2f}")
    save()
    if args.log_dir is None:
        shutil.rmtree(log_root, ignore_errors=True)
    else:
        print(f"TensorBoard logs of {SCHEDULED!r}: tensorboard --logdir {log_root}")
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
