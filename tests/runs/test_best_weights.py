"""best.pt stays consistent with the history whatever write a kill interrupts: a resumed run rewrites it from the
checkpoint, and best weights inside a checkpoint are checked like the rest."""

import contextlib
import json
import os
import tempfile

import pytest
import torch

import pyro

import pyro_vae as pv
from pyro_vae import files
from pyro_vae.checkpoint import load_checkpoint
from clirun import small_vae


def _weights(vae):
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _timeless(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


# --- 1. best.pt after a kill at any write -----------------------------------------------------------

#: a run whose validation ELBO rises and falls (lr 0.12 on 32 images: best epochs 1 and 3 of 4), so early stopping
#: writes best.pt twice and ends with an earlier epoch's weights
EARLY = dict(epochs=4, batch_size=32, lr=0.12, seed=0, progress=False, eval_samples=2, pictures=False,
             early_stopping=2)


class Killed(BaseException):
    """The process died: nothing more is written (raised past every ``except Exception``)."""


def _fit(digits, run, resume=False):
    train, test = digits
    pyro.set_rng_seed(0)
    vae = small_vae()
    history = pv.fit(vae, train.subset(range(32)), validation=test.subset(range(100)),
                     test=test.subset(range(100, 200)), checkpoint_dir=run,
                     resume=resume, scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=1),
                     **EARLY)
    return vae, history


@contextlib.contextmanager
def killed_at_write(monkeypatch, n):
    """The process dies during its ``n``-th file write (its temporary file is left, the file itself not
    replaced) and writes nothing after it."""
    real, count = files.atomic_write, [0]

    def write(path, body):
        count[0] += 1
        if count[0] == n:
            fd, _ = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-",
                                     suffix=os.path.basename(path))
            os.write(fd, b"half a file")
            os.close(fd)
        if count[0] >= n:
            raise Killed(path)
        real(path, body)

    with monkeypatch.context() as patch:
        patch.setattr(files, "atomic_write", write)
        yield count


@pytest.mark.slow
def test_a_kill_at_every_write_then_resume_leaves_best_pt_consistent(digits_binary, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    vae, history = _fit(digits_binary, straight)
    best_epoch = json.loads((straight / "metrics.json").read_text())["best_epoch"]
    assert best_epoch < len(history)   # early stopping kept an earlier epoch: the case that can go stale
    reference = load_checkpoint(straight / "best.pt", best=True)
    metrics = json.loads((straight / "metrics.json").read_text())
    with killed_at_write(monkeypatch, 10 ** 9) as count:
        _fit(digits_binary, tmp_path / "counted")
    writes = count[0]
    assert writes >= 3 * len(history)   # best.pt, checkpoint.pt and metrics.json in every epoch that improved

    for n in range(1, writes + 1):
        run = tmp_path / f"killed{n}"
        with killed_at_write(monkeypatch, n), pytest.raises(Killed):
            _fit(digits_binary, run)
        # what a user does next: resume, or start again when no epoch had been saved
        again, resumed = _fit(digits_binary, run, resume=(run / "checkpoint.pt").exists())
        got = json.loads((run / "metrics.json").read_text())
        best = load_checkpoint(run / "best.pt", best=True)
        where = f"killed at write {n} of {writes}"
        assert _timeless(resumed) == _timeless(history) == _timeless(got["history"]), where
        assert got["best_epoch"] == best_epoch and best["epoch"] == best_epoch, where
        assert _same_weights(best["model"], reference["model"]), where
        assert _same_weights(_weights(again), _weights(vae)), where
        assert got["test"]["epoch"] == best_epoch and got["test"]["elbo"] == metrics["test"]["elbo"], where
        loaded, _, state = pv.load_run(run)
        assert state["epoch"] == best_epoch and _same_weights(_weights(loaded), _weights(vae)), where


def test_a_best_pt_ahead_of_the_checkpoint_is_rewritten_on_resume(digits_binary, tmp_path, monkeypatch):
    """The reported case: best.pt written for a later epoch than checkpoint.pt holds, then a resume whose next
    epochs differ (a smaller --lr, which a resume may change) and never beat the checkpoint's best epoch."""
    run = tmp_path / "run"
    seen, real = [], files.atomic_write

    def write(path, body):   # killed at the checkpoint.pt write of the second epoch that improved
        name = os.path.basename(path)
        if name == "checkpoint.pt" and seen[-1] == "best.pt" and "checkpoint.pt" in seen:
            raise Killed(path)
        seen.append(name)
        real(path, body)

    def fit(resume, lr):
        pyro.set_rng_seed(0)
        vae = small_vae()
        return vae, pv.fit(vae, digits_binary[0].subset(range(32)), validation=digits_binary[1].subset(range(100)),
                           test=digits_binary[1].subset(range(100, 200)), checkpoint_dir=run, resume=resume,
                           **{**EARLY, "lr": lr})

    with monkeypatch.context() as patch:
        patch.setattr(files, "atomic_write", write)
        with pytest.raises(Killed):
            fit(False, EARLY["lr"])
    ahead, saved = load_checkpoint(run / "best.pt", best=True), load_checkpoint(run / "checkpoint.pt")
    kept = saved["hooks"]["early_stopping"]
    assert ahead["epoch"] == saved["epoch"] + 1 and kept["best_epoch"] < saved["epoch"]   # the stale state
    again, resumed = fit(True, 2.0)
    assert [h["best_epoch"] for h in resumed][-1] == kept["best_epoch"]   # no later epoch did better
    best = load_checkpoint(run / "best.pt", best=True)
    assert best["epoch"] == kept["best_epoch"] == json.loads((run / "metrics.json").read_text())["best_epoch"]
    assert _same_weights(best["model"], kept["best_model"]) and not _same_weights(best["model"], ahead["model"])
    assert _same_weights(_weights(again), kept["best_model"])   # the final model: the best epoch in the history
    assert json.loads((run / "metrics.json").read_text())["test"]["epoch"] == kept["best_epoch"]


def test_best_weights_in_a_checkpoint_are_checked(digits_binary, tmp_path):
    run = tmp_path / "run"
    _fit(digits_binary, run)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    stopping = state["hooks"]["early_stopping"]
    assert stopping["best_model"] is not None and stopping["best_epoch"] < state["epoch"]
    for damage in ("shape", "nan", "epoch"):
        bad = {k: v for k, v in state.items()}
        bad["hooks"] = {**state["hooks"], "early_stopping": dict(stopping, best_model=dict(stopping["best_model"]))}
        weights = bad["hooks"]["early_stopping"]["best_model"]
        key = next(iter(weights))
        if damage == "shape":
            weights[key] = weights[key][:1]
        elif damage == "nan":
            weights[key] = torch.full_like(weights[key], float("nan"))
        else:
            bad["hooks"]["early_stopping"]["best_epoch"] = state["epoch"] + 1
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(pv.CheckpointError, match="best epoch"):
            load_checkpoint(tmp_path / "bad.pt")
