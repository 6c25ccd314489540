"""Data-parallel training with torch.distributed: two real processes launched by torchrun, gloo backend."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist

import pyro

import pyro_vae as pv

WORKER = textwrap.dedent("""
    import json, os, sys
    import pyro, torch
    import pyro_vae as pv

    out = sys.argv[1]
    rank = int(os.environ["RANK"])
    train, test = pv.data.load("digits", binarize="dynamic")
    pyro.set_rng_seed(100 + rank)          # different initial weights on purpose: fit must broadcast rank 0's
    vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=4, hidden=(64,))
    history = pv.fit(vae, train, test=test, epochs=4, batch_size=32, seed=5, device="cpu", progress=False,
                     checkpoint_dir=os.path.join(out, "run"), distributed=True)
    torch.save(vae.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    with open(os.path.join(out, f"history{rank}.json"), "w") as f:
        json.dump(history, f)
    # the same run interrupted after 2 epochs and resumed by fresh models: every rank's own noise is restored
    for epochs, resume in ((2, False), (4, True)):
        pyro.set_rng_seed(100 + rank)
        again = pv.VAE(image_shape=(1, 8, 8), latent_dim=4, hidden=(64,))
        pv.fit(again, train, test=test, epochs=epochs, batch_size=32, seed=5, device="cpu", progress=False,
               checkpoint_dir=os.path.join(out, "resumed"), distributed=True, resume=resume)
    torch.save(again.state_dict(), os.path.join(out, f"resumed{rank}.pt"))
    pv.distributed.shutdown()
""")


@pytest.mark.slow   # torchrun with two processes
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_gloo_processes_agree_and_match_single_process(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(tmp_path / "worker.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]

    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "ranks ended with different weights"
    resumed = torch.load(tmp_path / "resumed0.pt", weights_only=True)
    assert all(torch.equal(rank0[k], resumed[k]) for k in rank0), "the resumed run differs from the straight one"
    h0, h1 = (json.loads((tmp_path / f"history{r}.json").read_text()) for r in (0, 1))
    assert h0 == h1 and [h["epoch"] for h in h0] == list(range(1, 5))

    # rank 0 alone wrote the run folder, and its checkpoint holds the final weights
    state = pv.checkpoint.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["epoch"] == 4 and all(torch.equal(state["model"][k], rank0[k]) for k in rank0)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["fit"]["world_size"] == 2

    # the same global batch (2 x 32) in one process reaches the same quality, up to seed noise
    train, test = pv.data.load("digits", binarize="dynamic")
    single = []
    for seed in (5, 6):
        pyro.set_rng_seed(100)
        vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=4, hidden=(64,))
        single.append(pv.fit(vae, train, test=test, epochs=4, batch_size=64, seed=seed, device="cpu",
                             progress=False)[-1]["test_elbo"])
    start = h0[0]["test_elbo"]
    assert h0[-1]["test_elbo"] > start + 1.0          # it learned
    spread = abs(single[0] - single[1])
    assert abs(h0[-1]["test_elbo"] - sum(single) / 2) < max(1.5, 3 * spread), (h0[-1], single)


def test_distributed_without_torchrun_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    train, _ = pv.data.load("digits", binarize="dynamic")
    with pytest.raises(pv.ConfigError, match="torchrun"):
        pv.fit(pv.VAE(image_shape=(1, 8, 8), latent_dim=2), train, epochs=1, distributed=True, progress=False)
