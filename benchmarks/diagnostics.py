"""Diagnostics of the model families on one dataset: log p(x), ELBO, amortisation and approximation gaps,
active units, I(x; z) and the sample Fréchet distance, one row per configuration.

Every row is a ``pyro-vae train`` command (printed and stored with the row) followed by
``pv.evaluate.report(..., diagnostics=True)``, what ``pyro-vae evaluate RUN --diagnostics`` computes. Runs
are kept in ``--runs`` and rows in ``RUN/diagnostics-row.json``, so an interrupted benchmark continues where it
stopped, and several invocations with different ``--configs`` can share the work (the last one collects them).

    python benchmarks/diagnostics.py                                  # mnist5k, the table of benchmarks/README.md
    python benchmarks/diagnostics.py --configs default iwae5-dreg     # some rows only
    CI=1 python benchmarks/diagnostics.py                             # smoke mode (digits, 1 epoch)

Writes JSON (``--json``, default ``benchmarks/results/diagnostics.json``).
"""

import argparse
import os
import platform
import sys
import time

import torch

import pyro_vae as pv
from pyro_vae.checkpoint import load_json, save_json

#: row name -> (pyro-vae train flags, epochs multiplier note); the epochs come from --epochs (or --k50-epochs)
CONFIGS = {
    "default": [],
    "vamp": ["--prior", "vamp"],
    "iaf": ["--guide", "iaf"],
    "hvae": ["--model", "hvae"],
    "iwae5": ["--objective", "iwae", "--num-particles", "5"],
    "iwae5-dreg": ["--objective", "iwae", "--num-particles", "5", "--gradient", "dreg"],
    "iwae5-stl": ["--objective", "iwae", "--num-particles", "5", "--gradient", "stl"],
    "iwae50": ["--objective", "iwae", "--num-particles", "50"],
    "iwae50-dreg": ["--objective", "iwae", "--num-particles", "50", "--gradient", "dreg"],
}
#: rows trained for --k50-epochs instead of --epochs (50 particles cost about 25x a step of the default)
SHORT = ("iwae50", "iwae50-dreg")
SMOKE_SETTINGS = {"gap_images": 8, "refine_steps": 10, "refine_particles": 2, "elbo_samples": 5, "mi_images": 60}


def _row(name, args, smoke, runs):
    folder = os.path.join(runs, name)
    epochs = args.k50_epochs if name in SHORT else args.epochs
    command = ["train", "--dataset", args.dataset, *CONFIGS[name], "--epochs", str(epochs), "--seed", str(args.seed),
               "--out", folder, "--no-progress", "--eval-samples", "1"]
    saved = os.path.join(folder, "diagnostics-row.json")
    if os.path.exists(saved):
        row = load_json(saved)
        if row.get("command") == command and row.get("num_samples") == args.num_samples and row.get("smoke") == smoke:
            print(f"{name}: kept {saved}")
            return row
    started = time.perf_counter()
    if not os.path.exists(os.path.join(folder, pv.checkpoint.CHECKPOINT)):
        print("pyro-vae " + " ".join(command), flush=True)
        if pv.cli.main(command) != 0:
            raise SystemExit(f"{name}: training failed")
    trained = time.perf_counter() - started
    vae, config, _ = pv.load_run(folder)
    train, test = pv.data.load(args.dataset, binarize=config["data"]["binarize"], seed=args.seed)
    if args.test_limit:
        test = test.subset(torch.arange(min(args.test_limit, len(test))))
    settings = dict(SMOKE_SETTINGS) if smoke else {}
    if smoke:
        settings["classifier_settings"] = {"min_steps": 20, "epochs": 1}
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    report = pv.evaluate.report(vae, test, num_samples=args.num_samples, diagnostics=True, train=train,
                                classifier_cache=os.path.join(runs, f"classifier-{args.dataset}.pt"),
                                diagnostics_settings=settings)
    evaluated = time.perf_counter() - started
    d, q = report["diagnostics"], report["sample_quality"]
    row = {"config": name, "command": command, "cli": "pyro-vae " + " ".join(command), "epochs": epochs,
           "train_seconds": trained, "evaluate_seconds": evaluated, "num_samples": args.num_samples, "smoke": smoke,
           "test_elbo": report["elbo"], "log_px": report["log_likelihood"], "active_units": report["active_units"],
           "mutual_information": d["mutual_information"], "amortization_gap": d["amortization_gap"],
           "approximation_gap": d["approximation_gap"], "gap_images": d["num_images"],
           "gap_log_px": d["log_likelihood"], "gap_elbo_encoder": d["elbo_encoder"],
           "gap_elbo_refined": d["elbo_refined"], "kl_per_dim": d["kl_per_dim"],
           "fd": q["fd"], "precision": q["precision"], "recall": q["recall"], "floor_fd": q["floor_fd"],
           "floor_precision": q["floor_precision"], "floor_recall": q["floor_recall"],
           "classifier_accuracy": q["classifier_accuracy"],
           "class_total_variation": report["posterior_predictive"]["class_frequencies"]["total_variation"],
           "test_images": len(test), "binarize": report["binarize"]}
    save_json(row, saved)
    return row


def main(argv=None):
    smoke = bool(os.environ.get("CI"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits" if smoke else "mnist5k")
    parser.add_argument("--configs", nargs="+", default=["default", "iwae5-dreg"] if smoke else list(CONFIGS),
                        choices=list(CONFIGS))
    parser.add_argument("--epochs", type=int, default=1 if smoke else 30)
    parser.add_argument("--k50-epochs", type=int, default=1 if smoke else 5, help="epochs of the K=50 rows")
    parser.add_argument("--num-samples", type=int, default=10 if smoke else 1000, help="K of log p(x)")
    parser.add_argument("--test-limit", type=int, default=60 if smoke else None, help="first N test images only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", default=None, help="folder of the runs (default runs/benchmark-diagnostics-DATASET)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = args.runs or (os.path.join(os.path.dirname(args.json or "."), "runs") if smoke else
                         os.path.join("runs", f"benchmark-diagnostics-{args.dataset}"))
    rows = [_row(name, args, smoke, runs) for name in args.configs]
    print(f"{args.dataset}, {rows[0]['test_images']} test images ({rows[0]['binarize']} binarization), "
          f"K={args.num_samples}, "
          f"{args.epochs} epochs ({args.k50_epochs} for {', '.join(SHORT)}), {args.threads} thread(s):")
    print(f"{'config':12} {'log p(x)':>9} {'ELBO':>9} {'amort.':>7} {'approx.':>7} {'AU':>3} {'I(x;z)':>7} {'FD':>7} "
          f"{'prec.':>6} {'recall':>6}")
    for r in rows:
        print(f"{r['config']:12} {r['log_px']:9.2f} {r['test_elbo']:9.2f} {r['amortization_gap']:7.2f} "
              f"{r['approximation_gap']:7.2f} {r['active_units']:3d} {r['mutual_information']:7.2f} {r['fd']:7.2f} "
              f"{r['precision']:6.3f} {r['recall']:6.3f}")
    print(f"floor (training vs test images): FD {rows[0]['floor_fd']:.2f}, precision {rows[0]['floor_precision']:.3f}, "
          f"recall {rows[0]['floor_recall']:.3f}; classifier test accuracy {rows[0]['classifier_accuracy']:.4f}")
    result = {"dataset": args.dataset, "epochs": args.epochs, "k50_epochs": args.k50_epochs,
              "num_samples": args.num_samples, "threads": args.threads, "smoke": smoke, "rows": rows,
              "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
              "argv": sys.argv[1:] if argv is None else argv}
    out = args.json or os.path.join(os.path.dirname(__file__), "results", "diagnostics.json")
    save_json(result, out)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
