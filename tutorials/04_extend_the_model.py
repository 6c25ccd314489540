"""Extend the graphical model with a label: a conditional VAE, then semi-supervised M2.

What you will learn:

* how adding a variable to the generative model changes what it can do: with the digit's label y
  next to the code z, the code only has to carry the *style*, and you can ask for a particular digit;
* the conditional VAE (label always observed) as a few extra lines in ``model`` and ``guide``;
* the M2 model of Kingma, Rezende, Mohamed & Welling (2014), where y is observed for a few images and
  latent for the rest, and how Pyro's ``TraceEnum_ELBO`` sums over the unknown label exactly;
* that the unlabelled images are not wasted: they make a classifier trained on 100 labels better.

Run it as ``python tutorials/04_extend_the_model.py [--out DIR]``; set ``CI=1`` for a smoke run.
"""

# %% [markdown]
# ## Setting up
#
# `CI` in the environment selects a smoke run (small subsets, one epoch: same code, smaller
# budget); figures go to `--out`, `$TUTORIAL_OUT` or `tutorials/output/<tutorial name>/`.

# %%
import argparse
import os
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn

import pyro
from pyro.infer import TraceEnum_ELBO

import pyro_vae as pv
from pyro_vae.extended import M2, ConditionalVAE, accuracy, keep_labels

NAME = "04_extend_the_model"
SMOKE = bool(os.environ.get("CI"))
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # notebooks: cwd
parser = argparse.ArgumentParser(description="Conditional and semi-supervised VAEs.")
parser.add_argument("--out", default=os.environ.get("TUTORIAL_OUT") or HERE / "output" / NAME)
args, _ = parser.parse_known_args()  # known args only: notebook kernels pass flags of their own
OUT = Path(args.out)
OUT.mkdir(parents=True, exist_ok=True)
CVAE_EPOCHS = 1 if SMOKE else 40
M2_EPOCHS = 1 if SMOKE else 20
NUM_LABELS = 50 if SMOKE else 100
LATENT, HIDDEN = 4, (400,)   # a small code, one hidden layer (quick to train)
print(f"{'smoke' if SMOKE else 'full'} run, figures in {OUT}")

pyro.set_rng_seed(0)
train, test = pv.data.load("mnist5k", binarize="dynamic")
if SMOKE:
    train, test = train.subset(range(400)), test.subset(range(200))

# %% [markdown]
# ## A conditional VAE
#
# The plain VAE's generative story is z ~ p(z), x ~ p(x|z). If we always know the label, we can
# condition on it:
#
#     z ~ p(z)                           the style: slant, thickness, size ...
#     x ~ p(x | z, y)                    the decoder reads [z, onehot(y)]
#
# and let the recognition model read the label too, q(z | x, y). We keep z small (`LATENT` numbers):
# a large code could learn to carry the digit's identity itself early in training, and the decoder
# would then be slow to start listening to y. In Pyro the change to `model` is one
# extra argument to the decoder (`ConditionalVAE.model` in `pyro_vae/extended.py` is five lines), and
# `pv.fit` passes each batch's labels as `y`. Because y is given, the ELBO it reports bounds
# log p(x | y), not log p(x).

# %%
cvae = ConditionalVAE(image_shape=(1, 28, 28), latent_dim=LATENT, num_classes=10, hidden=HIDDEN)
started = time.perf_counter()
history = pv.fit(cvae, train, test=test, epochs=CVAE_EPOCHS, seed=0, device="cpu", progress=False)
print(f"conditional VAE: test ELBO (bound on log p(x|y)) {history[-1]['test_elbo']:.2f} nats/image "
      f"after {CVAE_EPOCHS} epochs ({time.perf_counter() - started:.0f} s)")

# %% [markdown]
# Now we can ask for digits. In the grid below each row is one label and each column one code
# z ~ p(z): the same style written as every digit.

# %%
cvae.eval()
with torch.no_grad():
    torch.manual_seed(0)
    grid = cvae.sample_by_class(10)
pv.plots.show_images(grid, title="Conditional VAE: row = label y, column = one style z ~ p(z)", nrow=10,
                     path=OUT / "cvae_by_class.png")

# %% [markdown]
# Going the other way: encode a real test digit with its own label, keep its code z, and decode it with
# every other label. The style of the handwriting carries over to the other digits.

# %%
x, y = test.images[:6], test.labels[:6]
with torch.no_grad():
    z = cvae.encode(x, y)[0]                                     # (6, latent)
    swapped = torch.stack([cvae.generate(z, torch.full((6,), c)) for c in range(10)], dim=1)  # (6, 10, ...)
rows = torch.cat([x.unsqueeze(1), swapped], dim=1).flatten(0, 1)
pv.plots.show_images(rows, title="First column: test digit; then its style z decoded as 0 .. 9", nrow=11,
                     path=OUT / "cvae_style_transfer.png")

# %% [markdown]
# ## Semi-supervised learning: M2
#
# Labels are expensive and images are cheap. Kingma et al. (2014) make y part of the generative model
# rather than a given:
#
#     y ~ Categorical(1/10, ..., 1/10)
#     z ~ p(z)
#     x ~ p(x | z, y)
#
# For labelled images y is observed. For the others it is latent, and the recognition model gets a
# classifier q(y|x) next to q(z|x, y). That classifier is exactly what we want at the end, and it is
# trained by the ELBO of *every* image: an unlabelled image teaches it which label makes the image
# easiest to explain.
#
# Sampling a discrete y to estimate the ELBO would give high-variance gradients (no
# reparameterization trick for a categorical). With only ten values it is cheaper to sum over all of
# them: the guide marks the site with `infer={"enumerate": "parallel"}` and `TraceEnum_ELBO`
# evaluates the model once for a batch with an extra dimension of size 10 in front, weighting each
# value by q(y|x). Since only unlabelled images train the classifier through the ELBO, the paper adds
# a classification term alpha * log q(y|x) for the labelled ones; M2 includes it while training, and we
# set alpha = 0.1 N for N training images, as the paper does. The code z gets more room here than in
# the conditional VAE (16 numbers): y is no longer given, and z has to carry the rest.
#
# We keep `NUM_LABELS` labels (balanced over the classes) and hide the rest: `keep_labels` sets them
# to -1, which M2 reads as "unknown".
#
# The test ELBO M2 reports bounds log p(x), like a plain VAE's: y is part of M2's generative model, so
# the evaluation sums it out even though the test digits carry labels (scoring them with their labels
# would bound log p(x, y) = log p(x) + log p(y|x), a smaller number that measures something else). The
# test labels are used for the accuracy of the classifier q(y|x). The conditional VAE's number above
# bounds log p(x|y) instead, so it compares with neither.

# %%
few = keep_labels(train, NUM_LABELS, seed=0)
print(f"training on {len(few)} digits, {int((few.labels >= 0).sum())} of them labelled")
m2 = M2(image_shape=(1, 28, 28), latent_dim=16, num_classes=10, hidden=HIDDEN, alpha=0.1 * len(few))
started = time.perf_counter()
m2_history = pv.fit(m2, few, test=test, epochs=M2_EPOCHS, seed=0, device="cpu", progress=False,
                    loss=TraceEnum_ELBO(max_plate_nesting=1))
m2_accuracy = accuracy(m2, test)
print(f"M2: test ELBO (bound on log p(x)) {m2_history[-1]['test_elbo']:.2f} nats/image, "
      f"test accuracy {m2_accuracy:.1%} ({time.perf_counter() - started:.0f} s)")

# %% [markdown]
# ## Did the unlabelled images help?
#
# The honest baseline is the same kind of classifier trained on the labelled images alone (plain
# supervised learning, an MLP with one hidden layer, trained to convergence on those few digits).

# %%
torch.manual_seed(0)
labelled = few.labels >= 0
x_lab, y_lab = train.images[labelled], few.labels[labelled]
baseline = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.Softplus(), nn.Linear(512, 10))
optimizer = torch.optim.Adam(baseline.parameters(), lr=1e-3, weight_decay=1e-4)
for step in range(300):
    optimizer.zero_grad()
    nn.functional.cross_entropy(baseline(torch.bernoulli(x_lab)), y_lab).backward()
    optimizer.step()
with torch.no_grad():
    baseline_accuracy = (baseline(test.images).argmax(-1) == test.labels).float().mean().item()
print(f"test accuracy with {NUM_LABELS} labels: supervised MLP {baseline_accuracy:.1%}, "
      f"M2 (plus {len(few) - NUM_LABELS} unlabelled digits) {m2_accuracy:.1%}")

# %%
gain = m2_accuracy - baseline_accuracy
# two standard errors of an accuracy measured on len(test) digits: smaller differences are noise
noise = 2 * (baseline_accuracy * (1 - baseline_accuracy) / len(test)) ** 0.5
verdict = "they helped" if gain > noise else "they hurt" if gain < -noise else "no clear difference"
print(f"the {len(few) - NUM_LABELS} unlabelled digits changed test accuracy by {gain:+.1%} "
      f"(noise level about {noise:.1%}: {verdict})")

# %% [markdown]
# Whether M2 wins at this budget depends on how long it trains: the paper trains on 50,000 MNIST
# digits for far more epochs than a few minutes allow, and a generative classifier starts out
# worse than a discriminative one and catches up as the generative model improves. Raise
# `M2_EPOCHS` and watch the gap. M2 is also a generative model of digits given labels, like the
# conditional VAE:

# %%
m2.eval()
with torch.no_grad():
    torch.manual_seed(0)
    grid = m2.sample_by_class(10)
pv.plots.show_images(grid, title=f"M2 trained with {NUM_LABELS} labels: row = label y", nrow=10,
                     path=OUT / "m2_by_class.png")

fig = Figure(figsize=(5, 3.5), layout="constrained")
ax = fig.subplots()
bars = ax.bar(["supervised MLP", "M2"], [baseline_accuracy, m2_accuracy], color=["tab:grey", "tab:blue"])
ax.bar_label(bars, labels=[f"{baseline_accuracy:.1%}", f"{m2_accuracy:.1%}"])
ax.set_ylim(0, 1)
ax.set_ylabel("test accuracy")
ax.set_title(f"{NUM_LABELS} labelled digits")
fig.savefig(OUT / "accuracy.png", dpi=100)
print("wrote", ", ".join(sorted(p.name for p in OUT.glob("*.png"))))
