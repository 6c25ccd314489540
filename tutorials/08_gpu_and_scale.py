"""GPU and scale: the same training on CPU and CUDA, benchmarks, and multi-process training.

What you will learn:

* that moving a ``pyro_vae`` model to a GPU is one argument, ``device=``, decided once: ``fit``
  moves the model and the data, and nothing in the model code changes;
* how much of a step is Pyro's Python work, and how ``JitTrace_ELBO`` removes it;
* how to time training fairly (warm-up, synchronisation) and where to find measured benchmark tables
  (``benchmarks/README.md``) instead of trusting numbers quoted from memory;
* how data-parallel training works (one process per device, gradients averaged every step), how to
  launch it with ``torchrun``, and what to expect from it on a two-core laptop.

The CUDA part is skipped when there is no GPU. The multi-process part launches two CPU processes
(gloo backend) on a small budget.

Run it as ``python tutorials/08_gpu_and_scale.py [--out DIR]``; set ``CI=1`` for a smoke run.
"""

# %% [markdown]
# ## Setting up
#
# `CI` in the environment selects a smoke run (the small 8x8 `digits` set, one or two epochs: same
# code, smaller budget); figures go to `--out`, `$TUTORIAL_OUT` or `tutorials/output/<tutorial name>/`.

# %%
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

import pyro
from pyro.infer import JitTrace_ELBO

import pyro_vae as pv

NAME = "08_gpu_and_scale"
SMOKE = bool(os.environ.get("CI"))
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # notebooks: cwd
parser = argparse.ArgumentParser(description="CPU vs GPU, benchmarks and multi-process training.")
parser.add_argument("--out", default=os.environ.get("TUTORIAL_OUT") or HERE / "output" / NAME)
args, _ = parser.parse_known_args()  # known args only: notebook kernels pass flags of their own
OUT = Path(args.out)
OUT.mkdir(parents=True, exist_ok=True)
DATASET = "digits" if SMOKE else "mnist5k"
EPOCHS = 1 if SMOKE else 5
BATCH = 128
print(f"{'smoke' if SMOKE else 'full'} run, figures in {OUT}")

pyro.set_rng_seed(0)
train, test = pv.data.load(DATASET, binarize="dynamic")
print(train)

# %% [markdown]
# ## One argument: `device`
#
# `fit(..., device="cpu" | "cuda" | "auto")` decides the device once: it moves the VAE (its networks,
# and the prior's constants, which are registered buffers) and the whole dataset there, and draws
# every batch on the device. `"auto"` picks CUDA when there is a GPU. The model code has no `.cuda()`
# calls and no `use_cuda` flags.
#
# To time an epoch fairly we train one epoch first (the first one pays for memory allocation and,
# on a GPU, kernel selection), then time the rest. `fit` records the seconds of every epoch and reads
# the loss back from the device only once per epoch, so a GPU is not stalled every step.


# %%
def seconds_per_epoch(device, loss=None):
    vae = pv.VAE(image_shape=train.image_shape, latent_dim=20)
    history = pv.fit(vae, train, epochs=EPOCHS, batch_size=BATCH, seed=0, device=device, progress=False, loss=loss)
    timed = [record["seconds"] for record in history[1:]] or [history[0]["seconds"]]
    return sum(timed) / len(timed), history[-1]["train_elbo"]


timings = {}
timings["CPU, 1 process"], cpu_elbo = seconds_per_epoch("cpu")
print(f"CPU: {timings['CPU, 1 process']:.2f} s per epoch of {len(train)} images "
      f"({len(train) / timings['CPU, 1 process']:.0f} images/s, {torch.get_num_threads()} threads), "
      f"train ELBO {cpu_elbo:.2f}")

if torch.cuda.is_available():
    timings["CUDA, 1 process"], cuda_elbo = seconds_per_epoch("cuda")
    print(f"CUDA ({torch.cuda.get_device_name(0)}): {timings['CUDA, 1 process']:.2f} s per epoch "
          f"({len(train) / timings['CUDA, 1 process']:.0f} images/s), train ELBO {cuda_elbo:.2f}")
else:
    print("no CUDA GPU found: skipping the GPU timing (run this tutorial on a machine with one to compare)")

# %% [markdown]
# ## Less Python per step: a compiled ELBO
#
# On every step `Trace_ELBO` runs the guide and the model as Python functions: it records each sample
# site, builds distribution objects and adds up their log-densities. With small networks that Python
# work is a visible share of the step. `JitTrace_ELBO` computes the same estimator, but traces the
# guide and the model once with `torch.jit` (on the first batch) and afterwards replays the recorded
# graph. It suits models whose structure is the same on every step, as all of `pyro_vae`'s are; the
# KL weight is frozen into the graph, so `fit` refuses it together with `beta` or `warmup`. `fit`
# traces before its first epoch, and the first epoch is still a little slower (the JIT optimises the
# graph during its first runs), which is why the average below leaves it out.

# %%
timings["CPU, 1 process, JitTrace_ELBO"], jit_elbo = seconds_per_epoch(
    "cpu", JitTrace_ELBO(ignore_jit_warnings=True))
print(f"CPU with JitTrace_ELBO: {timings['CPU, 1 process, JitTrace_ELBO']:.2f} s per epoch, "
      f"{timings['CPU, 1 process'] / timings['CPU, 1 process, JitTrace_ELBO']:.2f}x the speed of Trace_ELBO; "
      f"train ELBO {jit_elbo:.2f} (Trace_ELBO: {cpu_elbo:.2f})")

# %% [markdown]
# Small MLPs on 28 x 28 digits barely occupy a GPU; the per-step overhead of Python and Pyro (building
# the trace, a few dozen small kernels) dominates, so a GPU pays off with larger batches, larger
# images, convolutional networks, many importance samples, or big datasets. For measured numbers,
# `pyro_vae.fit` against a hand-written PyTorch VAE at several batch sizes on CPU and GPU, see the
# tables in `benchmarks/README.md`, reproduced by `python benchmarks/speed.py` (add `--device cuda`
# on a GPU machine).

# %% [markdown]
# ## Several processes: data-parallel training
#
# `fit(..., distributed=True)` (or `pyro-vae train --distributed`) runs one copy of the model per
# process. Every process draws the same shuffled order of the epoch and takes its own share of each
# batch, computes gradients on it, and one all-reduce per step averages the gradients, so every copy
# takes the identical optimizer step and the weights stay equal. NCCL connects GPUs; gloo connects CPU
# processes. `--batch-size` is per process, so two processes see twice the batch per step. Only
# rank 0 writes the run folder. On a machine with 4 GPUs:
#
#     torchrun --nproc_per_node=4 -m pyro_vae.cli train --distributed --out runs/ddp
#
# Here we launch two CPU processes through `python -m torch.distributed.run` (the module behind the
# `torchrun` command) from Python, with a deadline.

# %%
ddp_out = OUT / "ddp_run"
command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "pyro_vae.cli", "train", "--distributed", "--device", "cpu", "--dataset", DATASET,
           "--latent-dim", "20", "--epochs", str(EPOCHS), "--batch-size", str(BATCH // 2),
           "--eval-samples", "10" if SMOKE else "100", "--no-progress", "--overwrite", "--out", str(ddp_out)]
print("running:", " ".join(command[1:]))
environment = {**os.environ, "OMP_NUM_THREADS": "1"}   # one thread per process: two processes, two cores
started = time.perf_counter()
result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
wall = time.perf_counter() - started
print(result.stdout[-2000:])
if result.returncode != 0:
    print(result.stderr[-4000:])
    raise SystemExit(f"the 2-process run failed with exit code {result.returncode}")

metrics = json.loads((ddp_out / "metrics.json").read_text())
ddp_history = metrics["history"]
timed = [record["seconds"] for record in ddp_history[1:]] or [ddp_history[0]["seconds"]]
timings["CPU, 2 processes (gloo)"] = sum(timed) / len(timed)
print(f"2 processes: {timings['CPU, 2 processes (gloo)']:.2f} s per epoch, train ELBO "
      f"{ddp_history[-1]['train_elbo']:.2f} (1 process: {cpu_elbo:.2f}); {wall:.0f} s including start-up "
      f"and evaluation")
print(f"run folder written by rank 0: {', '.join(sorted(p.name for p in ddp_out.iterdir()))}")

# %% [markdown]
# Two processes with a batch of 64 each take the same steps as one process with a batch of 128, so
# the ELBOs should be close. Whether it is *faster* depends on the machine: two processes on two
# shared cores compete with each other (and with anything else running), and every step now also
# exchanges gradients. Data parallelism pays when each process has a device of its own (one GPU per
# process, or machines in a cluster) and the per-step compute is large enough to hide the
# all-reduce. Here is what this machine gave:

# %%
for name, seconds in timings.items():
    print(f"{name:30s} {seconds:7.2f} s per epoch")
fig = Figure(figsize=(6.5, 3.5), layout="constrained")
ax = fig.subplots()
bars = ax.barh(list(timings), list(timings.values()), color="tab:blue")
ax.bar_label(bars, labels=[f"{s:.2f} s" for s in timings.values()])
ax.invert_yaxis()
ax.set_xlabel(f"seconds per epoch ({DATASET}, {len(train)} images, batch {BATCH} per step)")
ax.set_title("Same training, different ways to run it")
fig.savefig(OUT / "timings.png", dpi=100)
print("wrote", ", ".join(sorted(p.relative_to(OUT).as_posix() for p in OUT.rglob("*.png"))))
