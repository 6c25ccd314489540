"""The experiments of Auto-Encoding Variational Bayes (Kingma & Welling, 2014), at laptop scale.

What you will learn:

* how to reproduce the paper's two MNIST pictures with ``pyro_vae``: the learned 2-D latent manifold
  (the paper's figure 4) and the lower bound against training progress for several latent sizes
  (figure 2);
* what the paper's set-up was, and what we change to fit a laptop and a few minutes;
* how the latent size trades reconstruction against the KL term, and why more latent dimensions did
  not make the model overfit;
* how to fetch an optional dataset (Frey Face) and skip it cleanly when there is no network.

Run it as ``python tutorials/06_aevb_reproduction.py [--out DIR]``; set ``CI=1`` for a smoke run.
"""

# %% [markdown]
# ## Setting up
#
# `CI` in the environment selects a smoke run (small subsets, one epoch: same code, smaller
# budget); figures go to `--out`, `$TUTORIAL_OUT` or `tutorials/output/<tutorial name>/`.

# %%
import argparse
import os
import threading
import time
import urllib.request
from pathlib import Path

import torch
from matplotlib.figure import Figure

import pyro

import pyro_vae as pv

NAME = "06_aevb_reproduction"
SMOKE = bool(os.environ.get("CI"))
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # notebooks: cwd
parser = argparse.ArgumentParser(description="Reproduce the AEVB paper's experiments at small scale.")
parser.add_argument("--out", default=os.environ.get("TUTORIAL_OUT") or HERE / "output" / NAME)
args, _ = parser.parse_known_args()  # known args only: notebook kernels pass flags of their own
OUT = Path(args.out)
OUT.mkdir(parents=True, exist_ok=True)
EPOCHS = 1 if SMOKE else 50
LATENT_DIMS = [2, 5, 10, 20]
print(f"{'smoke' if SMOKE else 'full'} run, figures in {OUT}")

# %% [markdown]
# ## The paper's set-up, and ours
#
# Kingma & Welling trained on the 60,000 MNIST training digits with encoder and decoder MLPs of one
# hidden layer (500 units for MNIST, 200 for Frey Face), a standard Normal prior, a diagonal Normal
# recognition model, one sample of z per datapoint, minibatches of 100 and Adagrad, for up to 10^8
# training samples evaluated. We keep the model (one hidden layer of 500 units, N(0, I) prior,
# Bernoulli pixels, one sample) except its activation (SiLU, `pv.VAE`'s default, where the paper's
# MLPs used tanh) and change the budget: the 4,000 training digits of `mnist5k`
# (dynamically binarized), Adam, and `EPOCHS` passes over the data, i.e. about
# `EPOCHS * 4000` training samples instead of 10^8. Expect the shapes of the paper's results, not
# its numbers.

# %%
pyro.set_rng_seed(0)
train, test = pv.data.load("mnist5k", binarize="dynamic")
if SMOKE:
    train, test = train.subset(range(400)), test.subset(range(200))

models, histories = {}, {}
for latent in LATENT_DIMS:
    vae = pv.VAE(image_shape=(1, 28, 28), latent_dim=latent, hidden=(500,))
    started = time.perf_counter()
    histories[latent] = pv.fit(vae, train, test=test, epochs=EPOCHS, batch_size=100, seed=0, device="cpu",
                               progress=False)
    models[latent] = vae.eval()
    last = histories[latent][-1]
    print(f"latent dim {latent:2d}: train ELBO {last['train_elbo']:8.2f}, test ELBO {last['test_elbo']:8.2f} "
          f"nats/image ({time.perf_counter() - started:.0f} s)")

# %% [markdown]
# ## Figure 4: the learned manifold
#
# With a 2-D latent space we can decode a regular grid of codes and look at the whole generative
# model at once. The grid points are quantiles of the N(0, I) prior (the paper maps a uniform grid
# through the inverse Gaussian CDF for the same reason), so each tile stands for an equal share of
# the prior's mass. Neighbouring codes decode to similar digits, and one digit class morphs into the
# next along smooth paths: that smoothness, not any single sample, is what the KL term buys.

# %%
pv.plots.latent_manifold(models[2], n=20, path=OUT / "manifold_mnist.png")
pv.plots.latent_scatter(models[2], test.images, test.labels, path=OUT / "latent_scatter_mnist.png")

# %% [markdown]
# ## Figure 2: the lower bound against training progress
#
# The paper plots the average ELBO on the training and test sets against the number of training
# samples evaluated, one panel per latent size. Its observation: more latent dimensions gave a better
# bound and did *not* lead to overfitting, because the KL term stops the model from using dimensions
# it does not need. Here are our curves, all on one set of axes.

# %%
fig = Figure(figsize=(8, 5), layout="constrained")
ax = fig.subplots()
for i, latent in enumerate(LATENT_DIMS):
    seen = [record["epoch"] * len(train) for record in histories[latent]]
    colour = f"C{i}"
    ax.plot(seen, [r["train_elbo"] for r in histories[latent]], color=colour, ls="--", alpha=0.7)
    ax.plot(seen, [r["test_elbo"] for r in histories[latent]], color=colour, marker="o", ms=3,
            label=f"$N_z$ = {latent}")
ax.set_xscale("log")
ax.set_xlabel("training samples evaluated")
ax.set_ylabel("ELBO (nats per digit)")
ax.set_title("MNIST, mnist5k: test (solid) and train (dashed) lower bound")
ax.legend()
ax.grid(alpha=0.3)
fig.savefig(OUT / "elbo_vs_latent_dim.png", dpi=100)

for latent in LATENT_DIMS:
    r = pv.evaluate.elbo(models[latent], test)
    print(f"latent dim {latent:2d}: test ELBO {r['elbo']:8.2f} = reconstruction {r['reconstruction']:8.2f} "
          f"- KL {r['kl']:6.2f}; active units {pv.evaluate.active_units(models[latent], test):2d}/{latent}; "
          f"train - test ELBO {histories[latent][-1]['train_elbo'] - histories[latent][-1]['test_elbo']:+.2f}")

# %% [markdown]
# The printout splits each bound into its two terms. A bigger latent space buys a better
# reconstruction for a larger KL; the active-unit count shows how many dimensions the model chose to
# use, and the train-minus-test gap is the overfitting check. (The training ELBO is averaged over an
# epoch while the model is still improving, so early on it lags behind the test ELBO; a training ELBO
# clearly *above* the test ELBO is the sign of overfitting.)

# %% [markdown]
# ## Frey Face (when it can be downloaded)
#
# The paper's second dataset is 1,965 frames of one face, 20 x 28 grey pixels, modelled with a
# Gaussian decoder. It is not shipped with any package we depend on, so we try to download it once
# (into `~/.cache/pyro_vae`) and skip this part with a message when that fails, e.g. offline.
# The check runs in a thread with a deadline, so a network that hangs cannot hang the tutorial.

# %%
FREY_URL = "https://cs.nyu.edu/~roweis/data/frey_rawface.mat"
frey_path = Path("~/.cache/pyro_vae/frey_rawface.mat").expanduser()


def fetch(url, path, deadline=20.0):
    """Download ``url`` to ``path`` unless it is there; return an error message or None."""
    if path.exists():
        return None
    outcome = {}

    def worker():
        try:
            with urllib.request.urlopen(url, timeout=deadline / 2) as response:
                outcome["data"] = response.read()
        except Exception as error:  # any failure means: no Frey Face today
            outcome["error"] = f"{type(error).__name__}: {error}"

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    thread.join(deadline)
    if "data" not in outcome:
        return outcome.get("error", f"no answer within {deadline:.0f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(outcome["data"])
    return None


problem = fetch(FREY_URL, frey_path)
if problem:
    print(f"skipping Frey Face: could not download {FREY_URL} ({problem})")
else:
    from scipy.io import loadmat

    faces = torch.as_tensor(loadmat(frey_path, squeeze_me=True)["ff"].T, dtype=torch.float32)  # (1965, 560)
    faces = faces.reshape(-1, 1, 28, 20) / 255.0
    order = torch.randperm(len(faces), generator=torch.Generator().manual_seed(0))
    cut = int(0.9 * len(faces))
    frey_train = pv.data.from_tensor(faces[order[:cut]], name="frey/train")
    frey_test = pv.data.from_tensor(faces[order[cut:]], name="frey/test")
    if SMOKE:
        frey_train = frey_train.subset(range(300))
    # a Gaussian decoder with a scale per pixel from the network, as in the paper; 200 hidden units
    frey = pv.VAE(image_shape=(1, 28, 20), latent_dim=2, hidden=(200,),
                  likelihood=pv.likelihoods.Normal(scale="per-pixel"))
    frey_history = pv.fit(frey, frey_train, test=frey_test, epochs=5 if SMOKE else 200, batch_size=100,
                          seed=0, device="cpu", progress=False, clip_norm=100.0)
    print(f"Frey Face, 2-D latent: test ELBO {frey_history[-1]['test_elbo']:.2f} nats per face "
          f"(a density of grey levels: positive values are normal)")
    pv.plots.latent_manifold(frey.eval(), n=12, path=OUT / "manifold_frey.png")

print("wrote", ", ".join(sorted(p.name for p in OUT.glob("*.png"))))
