"""One exploratory run on mnist5k's own split, for the regularisation study of benchmarks/README.md
("Quality on small data"): 3,600 training digits (dynamic binarization), the 400-digit validation split,
scored on the 1,000 test digits (static binarization), log p(x) with K=1000, one CPU thread.

    python benchmarks/small_data_run.py NAME EPOCHS SEED [key=value ...]

keys: shift=N (augment), iw=K (IWAE), vamp=K (VampPrior), model=h (HierarchicalVAE) with hid=400,
dims=50,16, lh=128, inf=ladder; es=N (early stopping), warmup=N, bs=N (batch size), lr=X, K=N (scoring).
Appends one JSON line to benchmarks/results/measured-small-data-runs.jsonl (or ``--json PATH``, last).
``CI=1``: smoke mode, 200 training and 100 test digits, K=2.
"""
import json
import os
import sys
import time

import pyro
import torch
from pyro.infer import RenyiELBO

import pyro_vae as pv

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "measured-small-data-runs.jsonl")


def sizes(text):
    return tuple(int(v) for v in text.split(","))


def main(argv):
    out = OUT
    if "--json" in argv:
        out, argv = argv[argv.index("--json") + 1], argv[:argv.index("--json")]
    smoke = bool(os.environ.get("CI"))
    name, epochs, seed = argv[0], int(argv[1]), int(argv[2])
    opts = dict(a.split("=") for a in argv[3:])
    torch.set_num_threads(1)
    train, validation, test = pv.data.load("mnist5k", binarize="dynamic", validation=400)
    if smoke:
        train, test = train.subset(range(200)), test.subset(range(100))
        opts.setdefault("K", "2")
    iw = int(opts.get("iw", 1))
    loss = RenyiELBO(alpha=0, num_particles=iw, vectorize_particles=True, max_plate_nesting=1) if iw > 1 else None
    prior = pv.priors.VampPrior(int(opts["vamp"])) if "vamp" in opts else None
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    if opts.get("model") == "h":
        keys = {"inf": ("inference", str), "hid": ("hidden", sizes), "lh": ("latent_hidden", sizes),
                "dims": ("latent_dims", sizes)}
        options = {keys[k][0]: keys[k][1](v) for k, v in opts.items() if k in keys}
        vae = pv.extended.HierarchicalVAE(image_shape=train.image_shape, prior=prior, **options)
    else:
        vae = pv.VAE(image_shape=train.image_shape, prior=prior)
    fit_keys = {"es": "early_stopping", "bs": "batch_size", "warmup": "warmup", "shift": "augment"}
    kw = {fit_keys[k]: int(v) for k, v in opts.items() if k in fit_keys}
    if "lr" in opts:
        kw["lr"] = float(opts["lr"])
    started = time.perf_counter()
    history = pv.fit(vae, train, epochs=epochs, seed=seed, progress=False, validation=validation, loss=loss, **kw)
    row = {"name": name, "opts": opts, "smoke": smoke, "epochs": len(history),
           "seconds": round(time.perf_counter() - started, 1),
           "best_val": max(r["validation_elbo"] for r in history), "val_last": history[-1]["validation_elbo"],
           "test_elbo": pv.evaluate.elbo(vae, test)["elbo"],
           "log_px": pv.evaluate.log_likelihood(vae, test, num_samples=int(opts.get("K", 1000)))}
    kl = pv.evaluate.diagnostics.kl_per_dim(vae, test, limit=500)
    row["kl"] = {k: round(float(v.sum()), 2) for k, v in kl.items() if v is not None}
    row["used"] = {k: int((v > 0.01).sum()) for k, v in kl.items() if v is not None}
    print(json.dumps(row), flush=True)
    with open(out, "a") as file:
        file.write(json.dumps(row) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
