"""Diagnostics: what a VAE uses its latent space for, where its bound loses, and how good its samples are.

What you will learn:

* how to read the KL term per latent dimension, the active units and the mutual information I(x; z),
  and what posterior collapse looks like in them (a beta-VAE with beta = 4 against the default);
* how the gap log p(x) - ELBO splits into an *amortisation gap* (the encoder) and an *approximation gap*
  (the posterior family), measured by refining q(z|x) for each test image with Pyro's SVI;
* a sample-quality score that needs no download: the Fréchet distance and precision/recall in the features
  of a small classifier trained on the same data, with the floor that real images get;
* posterior predictive checks: simple image statistics of samples against test images.

Run it as ``python tutorials/09_diagnostics.py [--out DIR]``; set ``CI=1`` for a smoke run.
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

from matplotlib.figure import Figure

import pyro

import pyro_vae as pv

NAME = "09_diagnostics"
SMOKE = bool(os.environ.get("CI"))
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # notebooks: cwd
parser = argparse.ArgumentParser(description="Diagnostics of a VAE and an offline sample-quality score.")
parser.add_argument("--out", default=os.environ.get("TUTORIAL_OUT") or HERE / "output" / NAME)
args, _ = parser.parse_known_args()  # known args only: notebook kernels pass flags of their own
OUT = Path(args.out)
OUT.mkdir(parents=True, exist_ok=True)
EPOCHS = 1 if SMOKE else 20
LATENT = 16
print(f"{'smoke' if SMOKE else 'full'} run, figures in {OUT}")

pyro.set_rng_seed(0)
train, test = pv.data.load("mnist5k", binarize="dynamic")
if SMOKE:
    train, test = train.subset(range(400)), test.subset(range(60))
else:
    test = test.subset(range(500))
# the refinement behind the gaps costs (images x steps x particles) decoder passes: a subset is enough
SETTINGS = ({"gap_images": 8, "refine_steps": 20, "refine_particles": 2, "elbo_samples": 10, "mi_images": 60}
            if SMOKE else {"gap_images": 100, "refine_steps": 300, "mi_images": 500})
K = 20 if SMOKE else 1000

# %% [markdown]
# ## Two models
#
# The default VAE, and the same network trained with the KL term weighted by beta = 4 (`fit(beta=4)`),
# which pushes latent dimensions towards being switched off: the posterior of a switched-off dimension
# equals the prior for every image, so its KL is 0 and it carries no information about x.

# %%
models = {}
for name, beta in (("default", 1.0), ("beta = 4", 4.0)):
    pyro.set_rng_seed(0)
    vae = pv.VAE(latent_dim=LATENT)
    pv.fit(vae, train, epochs=EPOCHS, beta=beta, progress=False, device="cpu")
    models[name] = vae

# %% [markdown]
# ## The diagnostics
#
# `pv.evaluate.report(vae, test, diagnostics=True, train=train)` (or `pyro-vae evaluate RUN --diagnostics`)
# adds them to the usual report:
#
# * **KL per dimension**: the ELBO's KL term split over the latent dimensions, largest first. Dimensions
#   near 0 are collapsed; `active_units` counts those whose posterior mean varies across images.
# * **I(x; z)** under the aggregate posterior, by the minibatch estimator over the N test images: at most
#   log N (its bias), 0 for an encoder that ignores x. The KL term is I(x; z) plus the divergence of the
#   aggregate posterior from the prior ("ELBO surgery", Hoffman & Johnson 2016).
# * **The two gaps** (Cremer et al. 2018). For each test image a posterior of the same family is fitted to
#   that image alone by a few hundred SVI steps, starting from the encoder's output. The **amortisation
#   gap** ELBO(refined) - ELBO(encoder) is what the encoder loses by predicting q for every image at once:
#   large means the encoder is the bottleneck (train longer, widen it, or refine at test time). The
#   **approximation gap** log p(x) - ELBO(refined) is what the best q of the family still misses about the
#   true posterior: large means the family is too simple for the posterior this model has. Two rows of the
#   README's table of swaps shrink it: a richer posterior (`posterior=pv.posteriors.IAF(2)`, `--guide iaf`)
#   or a richer prior or graphical model (`VampPrior`, `extended.HierarchicalVAE`), whose true posteriors
#   are easier for a diagonal Gaussian to fit (benchmarks/README.md's diagnostics table measures both on
#   mnist5k). The objective row works the other way: IWAE (`--objective iwae`) trains an encoder that is a
#   good proposal for K samples rather than the best single Gaussian, so both of its gaps grow while its
#   log p(x) improves. Neither gap judges the decoder and prior themselves: log p(x) and the samples do.

# %%
reports = {}
for name, vae in models.items():
    reports[name] = pv.evaluate.report(vae, test, num_samples=K, diagnostics=True, train=train,
                                       classifier_cache=OUT / "classifier.pt", diagnostics_settings=SETTINGS)
    for line in pv.diagnostics.summary_lines(reports[name]):
        print(f"[{name}] {line}")

# %% [markdown]
# ## A picture of both
#
# Left: the KL of every dimension, sorted: the beta-VAE's are all smaller, its last ones close to 0 (on
# the way to collapse, though still above the active-unit threshold), and its I(x; z) is lower. Right:
# ELBO(encoder), ELBO(refined) and log p(x) of each model; the steps between the points are the two gaps.
# The beta-VAE's amortisation gap is by far the larger: its encoder was trained for another objective
# (beta = 4), so for the true ELBO it is a poor encoder, and refining q per image recovers most of the
# difference; its approximation gap is small, since a posterior kept close to the prior is close to
# Gaussian. The full run's numbers: tutorials/figures/09_diagnostics.png.

# %%
fig = Figure(figsize=(11, 3.8))
ax_kl, ax_gap = fig.subplots(1, 2)
for name, r in reports.items():
    values = r["diagnostics"]["kl_per_dim"]["z"]
    ax_kl.plot(range(len(values)), values, "o-", label=f"{name}: {r['diagnostics']['active_units']} active units, "
                                                       f"I(x;z) = {r['diagnostics']['mutual_information']:.2f}")
    d = r["diagnostics"]
    ax_gap.plot(range(3), [d["elbo_encoder"], d["elbo_refined"], d["log_likelihood"]], "o-",
                label=f"{name}: amortisation {d['amortization_gap']:.2f}, approximation {d['approximation_gap']:.2f}")
ax_kl.set_xlabel("latent dimension, sorted by KL")
ax_kl.set_ylabel("KL, nats")
ax_kl.legend(fontsize=8)
ax_gap.set_xticks(range(3))
ax_gap.set_xticklabels(["ELBO (encoder)", "ELBO (refined)", "log p(x)"])
ax_gap.set_ylabel("nats per image")
ax_gap.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "diagnostics.png", dpi=100)

# %% [markdown]
# ## Sample quality without Inception
#
# A small MLP classifier is trained on the same training digits; its penultimate layer gives the
# features in which 500 model samples (x ~ p(x|z), binary like the test digits) and the test digits are
# compared: the Fréchet distance between Gaussians fitted to the two sets (the formula of FID), and
# precision (share of samples inside the k-NN balls of the test digits) and recall (share of test digits
# inside those of the samples; Kynkäänniemi et al. 2019). The floor is the score of as many *training*
# digits: what a perfect model would get. These numbers compare models on this dataset with this
# classifier only; they are not Inception FIDs.

# %%
for name, r in reports.items():
    q = r["sample_quality"]
    print(f"[{name}] FD {q['fd']:.2f} (floor {q['floor_fd']:.2f}), precision {q['precision']:.3f}, recall "
          f"{q['recall']:.3f}; classifier test accuracy {q['classifier_accuracy']:.3f}")

# %% [markdown]
# ## Posterior predictive checks
#
# Statistics of samples against the same statistics of test digits: mean intensity, the number of
# edges (neighbouring pixels on either side of 0.5) and the classifier's class frequencies. A
# statistic far off in units of the test set's standard deviation is a defect the log-likelihood
# does not name: blurry samples have too few edges, salt-and-pepper samples too many.

# %%
for name, r in reports.items():
    pv.quality.plot_posterior_predictive(r["posterior_predictive"], OUT / f"ppc-{name.replace(' = ', '')}.png")
print("wrote", ", ".join(sorted(p.name for p in OUT.glob("*.png"))))
