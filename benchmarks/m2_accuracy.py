"""Semi-supervised M2 (Kingma et al. 2014) on mnist5k: test accuracy of q(y|x) with few labels.

Trains :class:`pyro_vae.extended.M2` on the 4,000 mnist5k training digits (dynamic binarization) with only
N of their labels kept (class-balanced, :func:`~pyro_vae.extended.keep_labels`), the other labels summed
out by ``TraceEnum_ELBO``, and reports the accuracy of the classifier q(y|x) on the 1,000 test digits.

    python benchmarks/m2_accuracy.py --epochs 10                 # labels 100, 600, 1000
    CI=1 python benchmarks/m2_accuracy.py                        # smoke mode: one short epoch each

Prints a table and writes JSON (``--json``, default ``benchmarks/results/m2_accuracy.json``). For scale:
Pyro's SS-VAE tutorial reports about 93% test accuracy with 100 labels on full MNIST (60,000 images, many
more epochs); 4,000 images and a CPU budget of minutes are a much smaller setting.
"""

import argparse
import json
import os
import time

import torch

import pyro
from pyro.infer import TraceEnum_ELBO

import pyro_vae as pv
from pyro_vae import extended


def run(num_labels, train, test, args):
    pyro.set_rng_seed(args.seed)
    model = extended.M2(latent_dim=args.latent_dim, alpha=args.alpha, hidden=tuple(args.hidden),
                        classifier_hidden=tuple(args.hidden[:1]))
    partial = extended.keep_labels(train, num_labels, seed=args.seed)
    curve = []

    def progress(vae, record):
        curve.append(extended.accuracy(vae, test))
        print(f"  labels {num_labels}: epoch {record['epoch']} train objective {record['train_elbo']:.1f} "
              f"test accuracy {curve[-1]:.4f} ({record['seconds']:.0f} s)", flush=True)
    started = time.perf_counter()
    history = pv.fit(model, partial, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                     loss=TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False), progress=False,
                     callback=progress)
    seconds = time.perf_counter() - started
    return {"labels": num_labels, "epochs": len(history), "test_accuracy": curve[-1], "accuracy_per_epoch": curve,
            "final_train_objective": history[-1]["train_elbo"], "seconds": seconds}


def main(argv=None):
    smoke = "CI" in os.environ
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, nargs="+", default=[100, 600, 1000])
    parser.add_argument("--epochs", type=int, default=1 if smoke else 10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--alpha", type=float, default=None,
                        help="weight of alpha * log q(y|x) per labelled image (default 0.1 * N, as in the paper)")
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "m2_accuracy.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    train, test = pv.data.load("mnist5k", binarize="dynamic")
    if smoke:   # seconds, not minutes: a slice of the data, one epoch
        train, test = train.subset(range(500)), test.subset(range(200))
        args.labels = [min(n, 100) for n in args.labels[:1]]
    if args.alpha is None:
        args.alpha = 0.1 * len(train)
    results = [run(n, train, test, args) for n in args.labels]

    print(f"M2 on {train.name} ({len(train)} train, dynamic binarization) -> {test.name} ({len(test)} test); "
          f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, alpha {args.alpha}, latent {args.latent_dim}, "
          f"hidden {args.hidden}")
    print(f"{'labels':>7} {'test accuracy':>14} {'epochs':>7} {'seconds':>8}")
    for r in results:
        print(f"{r['labels']:>7} {r['test_accuracy']:>14.4f} {r['epochs']:>7} {r['seconds']:>8.0f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"smoke": smoke, "settings": {**vars(args), "smoke": smoke, "train_size": len(train),
                                "test_size": len(test), "binarize": "dynamic train / static test",
                                "torch_threads": args.threads},
                   "results": results}, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
