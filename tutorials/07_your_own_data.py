"""Your own data: a folder of images or a NumPy array in, a trained model and pictures out.

What you will learn:

* the one data format ``pyro_vae`` needs: a float tensor of images ``(N, C, H, W)`` in [0, 1],
  wrapped by ``pv.data.from_tensor`` (with optional integer labels and a binarization);
* how to get there from a folder of PNG/JPEG files (``pv.data.load(folder)``, or ``torchvision``'s
  ``ImageFolder`` and PIL when you need transforms) and from a NumPy array, and what errors you get for
  common mistakes (0-255 integers, wrong shapes);
* how to plug in your own encoder and decoder (here the convolutional ones of ``pv.networks``);
* how to save a run, load it back and make the standard pictures.

To make it self-contained, the tutorial first writes a small folder of PNGs from real MNIST digits;
point ``IMAGE_FOLDER`` at your own images instead.

Run it as ``python tutorials/07_your_own_data.py [--out DIR]``; set ``CI=1`` for a smoke run.
"""

# %% [markdown]
# ## Setting up
#
# `CI` in the environment selects a smoke run (small subsets, one epoch: same code, smaller
# budget); figures go to `--out`, `$TUTORIAL_OUT` or `tutorials/output/<tutorial name>/`.

# %%
import argparse
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets, transforms

import pyro

import pyro_vae as pv

NAME = "07_your_own_data"
SMOKE = bool(os.environ.get("CI"))
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # notebooks: cwd
parser = argparse.ArgumentParser(description="Train a VAE on a folder of images or a NumPy array.")
parser.add_argument("--out", default=os.environ.get("TUTORIAL_OUT") or HERE / "output" / NAME)
args, _ = parser.parse_known_args()  # known args only: notebook kernels pass flags of their own
OUT = Path(args.out)
OUT.mkdir(parents=True, exist_ok=True)
NUM_IMAGES = 300 if SMOKE else 2000
EPOCHS = 1 if SMOKE else 20
print(f"{'smoke' if SMOKE else 'full'} run, figures in {OUT}")

# %% [markdown]
# ## A folder of images
#
# We write `NUM_IMAGES` real MNIST digits as 8-bit grey PNG files, one sub-folder per class
# (`my_digits/3/0042.png`), the layout `torchvision.datasets.ImageFolder` reads. The sub-folder
# names become labels; a single sub-folder is fine if you have no labels.

# %%
IMAGE_FOLDER = OUT / "my_digits"
source, _ = pv.data.load("mnist5k", binarize="none")
shutil.rmtree(IMAGE_FOLDER, ignore_errors=True)
for i in range(NUM_IMAGES):
    folder = IMAGE_FOLDER / str(int(source.labels[i]))
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (source.images[i, 0] * 255).round().to(torch.uint8).numpy()
    Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
print(f"wrote {NUM_IMAGES} PNG files into {IMAGE_FOLDER}")

# %% [markdown]
# Reading them back: `ImageFolder` opens each file with PIL and applies a transform. `Grayscale`
# makes sure we get one channel whatever the files hold (colour images: drop it and get C = 3),
# `Resize` brings every image to one size (a VAE needs a fixed input shape), and `ToTensor` turns
# 0-255 pixels into floats in [0, 1], channel first. Then we stack everything into one tensor: the
# library keeps datasets in memory as tensors, which is fast for small images.

# %%
to_tensor = transforms.Compose([transforms.Grayscale(num_output_channels=1), transforms.Resize((28, 28)),
                                transforms.ToTensor()])
folder = datasets.ImageFolder(IMAGE_FOLDER, transform=to_tensor)
images = torch.stack([image for image, _ in folder])                       # (N, 1, 28, 28), floats in [0, 1]
labels = torch.tensor([int(folder.classes[target]) for _, target in folder.samples])
print(f"read {images.shape[0]} images of shape {tuple(images.shape[1:])}, pixel range "
      f"[{images.min():.2f}, {images.max():.2f}], classes {folder.classes}")

# %% [markdown]
# The same folder in one line: `pv.data.load` reads a folder of PNG/JPEG files itself (with
# torchvision's decoder), takes class sub-folders as labels, and splits off a fixed tenth as the test
# set (or uses `train/` and `test/` sub-folders when they exist). Images of different sizes are refused
# with the names of two of them rather than resized behind your back: resize them first, as above.

# %%
direct_train, direct_test = pv.data.load(IMAGE_FOLDER, binarize="dynamic")
print(direct_train, direct_test, sep="\n")

# %% [markdown]
# ## A NumPy array
#
# If your images are already an array, say a `.npy` file of `uint8` pixels with shape (N, H, W), the
# only step is to scale them to [0, 1]. `pyro_vae` refuses integer pixels rather than guessing what
# 255 means, and images laid out channels-last (N, H, W, C), as PIL and most image libraries give
# them, rather than reading them as (N, C, H, W); each time it says what to do:

# %%
np.save(OUT / "my_digits.npy", (images[:, 0] * 255).round().to(torch.uint8).numpy())
array = np.load(OUT / "my_digits.npy")
print(f"array: dtype {array.dtype}, shape {array.shape}")
for mistake in (array, array[..., None].astype(np.float32) / 255.0):   # 0-255 integers; channels last
    try:
        pv.data.from_tensor(mistake)
    except pv.DataError as error:
        print("refused:", error)
from_array = pv.data.from_tensor(array.astype(np.float32) / 255.0, labels=labels, binarize="dynamic")
print(from_array)
print(f"same pixels as the PNG route: {torch.equal(from_array.images, images)}")

# %% [markdown]
# Both routes give the same tensor (PNG is lossless). We split off a tenth as a test set with a fixed
# seed and binarize: these are digits, so a Bernoulli likelihood with dynamic binarization for
# training and a fixed (static) binarization for testing, as in the other tutorials. For photographs
# keep the grey levels (`binarize="none"`) and choose `ContinuousBernoulli` or `Normal` (tutorial 03).

# %%
order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
cut = int(0.9 * len(images))
train = pv.data.from_tensor(images[order[:cut]], labels[order[:cut]], binarize="dynamic", name="my_digits/train")
test = pv.data.from_tensor(images[order[cut:]], labels[order[cut:]], binarize="static", name="my_digits/test")
print(train, test, sep="\n")

# %% [markdown]
# ## Your own networks
#
# An encoder is any module mapping images `(..., C, H, W)` to the `(loc, scale)` of q(z|x), each
# `(..., latent_dim)`; a decoder maps `(..., latent_dim)` to the likelihood's parameters
# `(..., C, H, W)` (Bernoulli logits here). The convolutional pair in `pv.networks` follows that
# contract; your own modules go in the same two arguments.

# %%
pyro.set_rng_seed(0)
LATENT = 16
shape = train.image_shape
vae = pv.VAE(image_shape=shape, latent_dim=LATENT,
             encoder=pv.networks.ConvEncoder(shape, LATENT), decoder=pv.networks.ConvDecoder(shape, LATENT))
RUN = OUT / "run"
history = pv.fit(vae, train, test=test, epochs=EPOCHS, seed=0, device="cpu", progress=False, checkpoint_dir=RUN,
                 overwrite=True, eval_samples=100)
print(f"test ELBO after {EPOCHS} epochs: {history[-1]['test_elbo']:.2f} nats per image")

# %% [markdown]
# ## Save, load, draw
#
# `checkpoint_dir` made `fit` write `config.json` (what rebuilds the model), `checkpoint.pt` (the
# weights, optimizer and random states) and `metrics.json` after every epoch, and the final test scores
# and the standard pictures at the end: the run folder `pyro-vae train` writes. `pv.load_run` rebuilds
# the model from it; it runs no code from the folder. `pv.plots.save_all` draws the same figures for any
# model, here into the tutorial's own folder.

# %%
loaded, config, state = pv.load_run(RUN)
print(f"loaded a {config['vae']['model']} with a {config['vae']['encoder']['class']} encoder, "
      f"trained for {state['epoch']} epochs")
check = pv.evaluate.elbo(loaded, test)["elbo"]
print(f"loaded model's test ELBO: {check:.2f} (a fresh Monte Carlo estimate of the same bound)")
paths = pv.plots.save_all(loaded, train.images, train.labels, test.images, history, OUT, test_labels=test.labels)
print("wrote", ", ".join(sorted(p.name for p in OUT.glob("*.png"))))
