"""Swap the likelihood p(x|z): Bernoulli, continuous Bernoulli and Gaussian pixels.

What you will learn:

* that the likelihood is the model's statement about what a pixel is, and that it has to match the
  data: a Bernoulli is a distribution over 0/1 pixels, not grey levels;
* why "Bernoulli on grey pixels" (the binary cross-entropy loss) is not a likelihood: it is missing a
  normalising constant that depends on the decoder's output, and ``pyro_vae`` refuses it;
* how to model grey levels properly with ``ContinuousBernoulli`` or a ``Normal`` with a learned scale;
* why log-likelihoods of binarized and grey-level data cannot be ranked against each other.

Run it as ``python tutorials/03_swap_the_likelihood.py [--out DIR]``; set ``CI=1`` for a smoke run.
"""

# %% [markdown]
# ## Setting up
#
# `CI` in the environment selects a smoke run (small subsets, one epoch: same code, smaller
# budget); figures go to `--out`, `$TUTORIAL_OUT` or `tutorials/output/<tutorial name>/`.

# %%
import argparse
import os
from pathlib import Path

import torch
from matplotlib.figure import Figure

import pyro
import pyro.distributions as dist

import pyro_vae as pv

NAME = "03_swap_the_likelihood"
SMOKE = bool(os.environ.get("CI"))
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # notebooks: cwd
parser = argparse.ArgumentParser(description="Compare likelihoods p(x|z) of a VAE.")
parser.add_argument("--out", default=os.environ.get("TUTORIAL_OUT") or HERE / "output" / NAME)
args, _ = parser.parse_known_args()  # known args only: notebook kernels pass flags of their own
OUT = Path(args.out)
OUT.mkdir(parents=True, exist_ok=True)
EPOCHS = 1 if SMOKE else 12
K_EVAL = 20 if SMOKE else 200
LATENT = 20
print(f"{'smoke' if SMOKE else 'full'} run, figures in {OUT}")

# %% [markdown]
# ## Two views of the same digits
#
# MNIST pixels are grey levels in [0, 1]. We load the digits twice: binarized (each pixel a coin flip
# with its grey level as probability; fresh flips every epoch for training, one fixed draw for the
# test set) and as they are.

# %%
pyro.set_rng_seed(0)
binary_train, binary_test = pv.data.load("mnist5k", binarize="dynamic")
grey_train, grey_test = pv.data.load("mnist5k", binarize="none")
if SMOKE:
    binary_train, binary_test = binary_train.subset(range(400)), binary_test.subset(range(200))
    grey_train, grey_test = grey_train.subset(range(400)), grey_test.subset(range(200))
grey_values = grey_train.images[(grey_train.images > 0) & (grey_train.images < 1)]
print(f"{grey_values.numel() / grey_train.images.numel():.1%} of the grey-level pixels are strictly between 0 and 1")

# %% [markdown]
# ## Why a Bernoulli on grey pixels is not a likelihood
#
# The Bernoulli's log-probability, x log p + (1 - x) log(1 - p), is a perfectly good formula for any x
# in [0, 1], and as a loss it is the familiar binary cross-entropy. But a likelihood is a density: as a
# function of the data it must integrate to one. For grey x it does not. The integral
#
#     C(p)^-1 = ∫_0^1 p^x (1 - p)^(1 - x) dx
#
# is below 1 and, worse, depends on p, i.e. on the decoder's output. Maximising the unnormalised
# score therefore is not maximum likelihood: it is biased towards outputs where the missing constant
# is small. Loaiza-Ganem & Cunningham (2019) put the constant back and call the result the
# *continuous Bernoulli*. Let us check numerically:

# %%
p = torch.linspace(0.01, 0.99, 99)
x = torch.linspace(0, 1, 2001)
unnormalised = torch.exp(x[:, None] * p.log() + (1 - x[:, None]) * (1 - p).log())   # (x, p)
mass = torch.trapezoid(unnormalised, x, dim=0)
# the continuous Bernoulli's density divided by the Bernoulli formula is exactly C(p)
c_of_p = (dist.ContinuousBernoulli(probs=p).log_prob(torch.tensor(0.3))
          - dist.Bernoulli(probs=p, validate_args=False).log_prob(torch.tensor(0.3))).exp()
for value in (0.05, 0.5, 0.95):
    i = int(torch.argmin((p - value).abs()))
    print(f"p = {p[i]:.2f}: the Bernoulli formula integrates to {mass[i]:.3f} over x in [0, 1]; "
          f"C(p) * that = {(c_of_p[i] * mass[i]):.4f}")

# %% [markdown]
# `pyro_vae` does not let this slip through: a `Bernoulli` likelihood checks the data before
# training and refuses grey levels, with a hint.

# %%
try:
    pv.fit(pv.VAE(latent_dim=LATENT, likelihood=pv.likelihoods.Bernoulli()), grey_train, epochs=1, progress=False)
except pv.DataError as error:
    print("refused:", error)

# %% [markdown]
# ## Three honest models
#
# * **Bernoulli on binarized digits**: the classic binarized-MNIST likelihood; log p(x) is the log
#   *probability* of a black/white image.
# * **Continuous Bernoulli on grey levels**: the decoder outputs a logit per pixel as before, and the
#   normaliser is included. Its mean is *not* the parameter p (it is pulled towards 1/2), so pictures
#   should show the distribution's mean, which `pv.VAE.generate` does.
# * **Normal on grey levels** with one learned scale for all pixels (`Normal(scale="learned")`): the
#   decoder outputs the mean of each pixel; the scale sets how much a squared error costs. A fixed,
#   hand-picked scale would instead make the KL weight a hidden hyper-parameter.
#
# Changing the likelihood is one argument; the decoder is built with as many outputs per pixel as the
# likelihood needs. (All three use the one-hidden-layer networks of tutorial 01, which train quickly.)

# %%
setups = {
    "Bernoulli (binarized)": (pv.likelihoods.Bernoulli(), binary_train, binary_test),
    "continuous Bernoulli (grey)": (pv.likelihoods.ContinuousBernoulli(), grey_train, grey_test),
    "Normal, learned scale (grey)": (pv.likelihoods.Normal(scale="learned"), grey_train, grey_test),
}
models, results = {}, {}
for name, (likelihood, train, test) in setups.items():
    vae = pv.VAE(image_shape=(1, 28, 28), latent_dim=LATENT, likelihood=likelihood, hidden=(400,))
    pv.fit(vae, train, test=test, epochs=EPOCHS, seed=0, device="cpu", progress=False)
    models[name] = vae.eval()
    results[name] = pv.evaluate.report(vae, test, num_samples=K_EVAL)
    extra = ""
    if isinstance(likelihood, pv.likelihoods.Normal):
        extra = f", learned pixel scale {likelihood.scale.item():.3f}"
    print(f"{name:30s} test ELBO {results[name]['elbo']:9.2f}  log p(x) {results[name]['log_likelihood']:9.2f} "
          f"nats/image (K={K_EVAL}){extra}")

# %% [markdown]
# ## Reading the numbers
#
# The Bernoulli model scores probabilities of binary images, so its log p(x) is negative. The other
# two score *densities* of grey levels, which can exceed 1 per pixel: their log p(x) can be large and
# positive, and a model that is sure of a mostly-black background piles up density there. Neither
# number says which model is "better": they are measured on different data (binarized vs grey) and
# in different units (probability vs density). Compare likelihoods only between models of the same
# data with the same kind of likelihood. (For 8-bit images, `DiscretizedLogistic` turns a
# continuous model back into probabilities of the 256 levels, and bits/dim become comparable.)

# %%
for name, r in results.items():
    print(f"{name:30s} reconstruction {r['reconstruction']:9.2f}  KL {r['kl']:6.2f}  active units "
          f"{r['active_units']:2d}/{LATENT}  binarization {r['binarize']}")

# %% [markdown]
# ## What the models see and produce
#
# Rows: the grey test digits, their binarized versions, then the reconstructions (mean of p(x|z) at
# the posterior mean) and fresh samples of each model. The Bernoulli model's means are smooth
# probabilities of "ink"; the continuous Bernoulli's means are correct but look washed out because
# that distribution's mean is pulled towards 1/2; the Normal's means are the grey levels themselves.

# %%
n = 10
rows = {"grey input": grey_test.images[:n], "binarized input": binary_test.images[:n]}
with torch.no_grad():
    for name, vae in models.items():
        source = binary_test if name.startswith("Bernoulli") else grey_test
        rows[f"{name}: reconstruction"] = vae.reconstruct(source.images[:n])
        torch.manual_seed(0)
        rows[f"{name}: samples"] = vae.sample(n)

fig = Figure(figsize=(12, 10), layout="constrained")
left, right = fig.subfigures(1, 2, width_ratios=[2.2, 1])
axes = left.subplots(len(rows), 1)
for ax, (title, images) in zip(axes, rows.items()):
    ax.imshow(pv.plots.image_grid(images, nrow=n).permute(1, 2, 0).numpy())
    ax.set_title(title, fontsize=9, loc="left")
    ax.set_axis_off()
ax = right.subplots()
ax.plot(p.numpy(), mass.numpy(), label="∫ Bernoulli formula dx")
ax.plot(p.numpy(), (mass * c_of_p).numpy(), "--", label="continuous Bernoulli")
ax.axhline(1.0, color="grey", lw=0.5)
ax.set_xlabel("decoder output p")
ax.set_ylabel("total mass over x in [0, 1]")
ax.set_title("A density integrates to 1")
ax.legend()
fig.savefig(OUT / "likelihoods.png", dpi=80)
print("wrote", ", ".join(sorted(p.name for p in OUT.glob("*.png"))))
