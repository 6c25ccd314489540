"""Evaluation at scale: importance-sampled log p(x) with K samples on a whole test set, timed.

Trains (or loads) a model, then runs ``pyro_vae.evaluate.log_likelihood`` — vectorized over samples and
datapoints in memory-bounded chunks, on the model's device — and records the wall time.

    python benchmarks/loglik.py --dataset fashion-mnist --num-samples 5000 --epochs 5
    python benchmarks/loglik.py --run runs/my-run --num-samples 5000      # a trained run folder
    CI=1 python benchmarks/loglik.py                                       # smoke mode

Prints the result and writes JSON (``--json``, default ``benchmarks/results/loglik-<dataset>.json``).
"""

import argparse
import os
import sys
import time

import torch

import pyro_vae as pv
from pyro_vae.checkpoint import save_json


def main(argv=None):
    smoke = bool(os.environ.get("CI"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits" if smoke else "fashion-mnist")
    parser.add_argument("--run", default=None, help="evaluate this run folder instead of training")
    parser.add_argument("--num-samples", type=int, default=50 if smoke else 5000)
    parser.add_argument("--epochs", type=int, default=1 if smoke else 5)
    parser.add_argument("--limit", type=int, default=100 if smoke else None, help="first N test images only")
    parser.add_argument("--max-pairs", type=int, default=pv.evaluate.MAX_PAIRS,
                        help="(sample, image) pairs per vectorized pass: the memory bound")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    device = pv.resolve_device(args.device)
    if args.run:
        vae, config, _ = pv.load_run(args.run, device=device)
        info = config["data"]
        _, test = pv.data.load(info["dataset"], data_dir=info.get("data_dir"), binarize=info["binarize"],
                               seed=info.get("seed", 0))
        dataset, train_seconds = info["dataset"], None
    else:
        train, test = pv.data.load(args.dataset, binarize="dynamic")
        vae = pv.VAE(image_shape=train.image_shape)
        started = time.perf_counter()
        pv.fit(vae, train, epochs=args.epochs, device=device, progress=not smoke)
        train_seconds, dataset = time.perf_counter() - started, args.dataset
    if args.limit:
        test = test.subset(range(min(args.limit, len(test))))
    test = test.to(device)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    log_px = pv.evaluate.log_likelihood(vae, test, num_samples=args.num_samples, max_pairs=args.max_pairs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    elbo = pv.evaluate.elbo(vae, test)["elbo"]
    result = {"dataset": dataset, "num_images": len(test), "num_samples": args.num_samples,
              "test_binarize": test.binarize, "log_px": log_px, "elbo": elbo, "seconds": seconds,
              "train_epochs": None if args.run else args.epochs, "train_seconds": train_seconds,
              "max_pairs": args.max_pairs, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "threads": torch.get_num_threads(), "smoke": smoke, "argv": sys.argv[1:]}
    if device.type == "cuda":
        result["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    print(f"{dataset}: log p(x) = {log_px:.2f} nats (K={args.num_samples}, {len(test)} {test.binarize}-binarized "
          f"test images; ELBO {elbo:.2f}) in {seconds:.1f} s on {device}")
    out = args.json or os.path.join(os.path.dirname(__file__), "results", f"loglik-{dataset}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_json(result, out)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
