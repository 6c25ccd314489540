"""Run folders hold up under real use: one writer at a time, the --out rules, metrics merged across writers,
and validated checkpoints (a tampered one is refused everywhere and nothing is trained).

Real subprocesses where exit codes, signals or locks between processes matter; ``cli.main`` in this process
elsewhere. Every run is a smoke run on the digits.
"""

import json
import os
import shutil
import signal
import time

import pytest
import torch

import pyro_vae as pv
from pyro_vae.checkpoint import RunFolder, load_checkpoint
from clirun import (train_args, run_cli, start_cli, main_in_process, one_line, wait_for, epoch_of, killed_at_exit,
                   saved_config)


# --- 1. two writers -----------------------------------------------------------------------------


@pytest.mark.slow
def test_second_writer_is_refused_while_the_first_trains(tmp_path):
    out = tmp_path / "run"
    epochs = 80
    first = start_cli(*train_args(out, epochs))
    with killed_at_exit(first):
        # config.json is written with the lock held, after the lock file records the holder's pid
        wait_for(lambda: (out / "config.json").exists(), first, what="the first run took the folder")
        assert (out / ".lock").read_text().strip() == str(first.pid)
        second = run_cli(*train_args(out, 3, "--seed", "5"))
        assert first.poll() is None, "the first run ended before the second tried the folder: give it more epochs"
        line = one_line(second, str(out), f"pid {first.pid}", "in use")
        assert "another pyro-vae process" in line
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    # one consistent run: the first one's settings, its checkpoint, its history
    config = saved_config(out)
    assert config["fit"]["epochs"] == epochs and config["fit"]["seed"] == 0 and "--seed" not in config["cli"]
    state = load_checkpoint(out / "checkpoint.pt", config=config["vae"])
    assert state["epoch"] == epochs and len(state["history"]) == epochs
    assert [h["epoch"] for h in json.loads((out / "metrics.json").read_text())["history"]] == list(range(1, epochs + 1))
    # and it resumes
    resumed = main_in_process(*train_args(out, epochs + 1, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == epochs + 1


@pytest.mark.slow
def test_sigkill_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    proc = start_cli(*train_args(out, 500))
    with killed_at_exit(proc):
        wait_for(lambda: epoch_of(out) >= 1, proc, what="the first checkpoint")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert (out / ".lock").read_text().strip() == str(proc.pid)   # the dead holder's pid is still in the file
    done = epoch_of(out)
    assert done >= 1
    resumed = main_in_process(*train_args(out, done + 1, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert epoch_of(out) == done + 1
    assert (out / ".lock").read_text().strip() == str(os.getpid())


def test_two_run_folder_objects_in_one_process_exclude_each_other(tmp_path):
    first, second = RunFolder(tmp_path), RunFolder(tmp_path)
    first.lock()
    try:
        with pytest.raises(pv.CheckpointError, match=f"in use by another RunFolder of this process "
                                                     f"\\(pid {os.getpid()}\\)"):
            second.lock()
        with pytest.raises(pv.CheckpointError, match="in use"):
            second.open({"vae": {"model": "VAE"}, "fit": {}})
        first.lock()   # the holder itself may ask again
    finally:
        first.release()
    second.lock()
    second.release()


# --- 2. --out rules -----------------------------------------------------------------------------


def test_out_at_a_folder_of_other_files_is_refused_and_left_alone(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    files = {"config.json": '{"learning": "mine"}\n', "notes.txt": "hello\n", ".tmp-draft": "keep me\n"}
    for name, text in files.items():
        (folder / name).write_text(text)
    one_line(main_in_process(*train_args(folder)), str(folder), "not a pyro-vae run", "config.json", "notes.txt")
    # nothing written, nothing removed: not even a lock file
    assert sorted(os.listdir(folder)) == sorted(files)
    assert {name: (folder / name).read_text() for name in files} == files


def test_out_at_an_empty_existing_folder_is_fine(digits_binary, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=2, hidden=(16,))
    pv.fit(vae, digits_binary[0], epochs=1, progress=False, checkpoint_dir=folder, eval_samples=0, pictures=False)
    assert load_checkpoint(folder / "checkpoint.pt")["epoch"] == 1


@pytest.mark.parametrize("name", ["checkpoint.pt", "config.json", "metrics.json", "best.pt"])
def test_sample_never_writes_over_a_run_file(run, name):
    target = run / name
    before = target.read_bytes() if target.exists() else None   # this run has no best.pt: refused all the same
    one_line(main_in_process("sample", run, "--num", "4", "--out", target), "one of the run's own files")
    assert (target.read_bytes() if target.exists() else None) == before
    assert pv.load_run(run)[2]["epoch"] == 1


def test_sample_out_must_be_a_png(run, tmp_path):
    one_line(main_in_process("sample", run, "--out", tmp_path / "x.jpg"), "x.jpg", ".png")
    assert not (tmp_path / "x.jpg").exists()


def test_leftover_temporary_files_are_removed_when_a_run_opens(run, tmp_path):
    leftovers = [".tmp-k2j3h4checkpoint.pt", ".tmp-abcdefconfig.json", ".samples.png.a1b2c3d4.tmp"]
    for name in leftovers:
        (run / name).write_bytes(b"half a file")
    config = {k: v for k, v in saved_config(run).items() if k != "changes"}
    folder = RunFolder(run)
    folder.open(config, resume=True)   # what a resumed run does first
    folder.release()
    assert not set(leftovers) & set(os.listdir(run))
    # a new run in a folder that only a killed writer had touched
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".tmp-zzzzzzconfig.json").write_bytes(b"{")
    folder = RunFolder(fresh)
    folder.open(config)
    folder.release()
    assert sorted(os.listdir(fresh)) == [".lock", "config.json"]


# --- 3. metrics.json merged across writers -------------------------------------------------------


@pytest.mark.slow
def test_evaluation_during_training_survives_the_run(run):
    epochs = 80
    proc = start_cli(*train_args(run, epochs, "--resume"))
    with killed_at_exit(proc):
        def resumed_and_wrote():
            try:
                return len(json.loads((run / "metrics.json").read_text())["history"]) >= 3
            except (ValueError, KeyError):
                return False
        wait_for(resumed_and_wrote, proc, what="the resumed run wrote its metrics")
        evaluated = main_in_process("evaluate", run, "--num-samples", "3", "--no-progress")
        assert evaluated.returncode == 0, evaluated.stderr
        assert proc.poll() is None, "training ended before the evaluation: give it more epochs"
        stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, epochs + 1))
    assert [e["num_samples"] for e in metrics["evaluations"]] == [3]
    assert metrics["test"]["epoch"] == epochs


# --- 4. validated checkpoints ------------------------------------------------------------------


def _set(key, value):
    return lambda state: state.__setitem__(key, value)


def _first_weight(state):
    return state["model"][next(iter(state["model"]))]


TAMPERINGS = {
    "epoch -5": (_set("epoch", -5), "its epoch is -5"),
    "epoch 0": (_set("epoch", 0), "its epoch is 0"),
    "epoch float": (_set("epoch", 1.0), "its epoch is 1.0"),
    "epoch bool": (_set("epoch", True), "its epoch is True"),
    "history shortened": (lambda s: s["history"].pop(), "history has 0 entries for 1 epochs"),
    "history wrong epoch": (lambda s: s["history"][0].__setitem__("epoch", 7), "history entry 1"),
    "history NaN": (lambda s: s["history"][0].__setitem__("train_elbo", float("nan")), "history entry 1"),
    "config differs": (lambda s: s["config"].__setitem__("latent_dim", 3), "does not match this model"),
    **{f"no {key}": (lambda s, key=key: s.pop(key), "is damaged")
       for key in ("model", "optimizer", "rng", "history", "epoch", "config", "format")},
    "model as list": (lambda s: s.__setitem__("model", list(s["model"].values())), "model weights"),
    "optimizer without param_groups": (lambda s: s["optimizer"].pop("param_groups"), "optimizer"),
    "optimizer groups not dicts": (lambda s: s["optimizer"].__setitem__("param_groups", [1]), "optimizer"),
    "optimizer state for no parameter": (lambda s: s["optimizer"]["state"].__setitem__(99, {}), "optimizer"),
    "optimizer state text": (lambda s: s["optimizer"]["state"][0].__setitem__("step", "x"), "optimizer state"),
    "rng dtype": (lambda s: s["rng"].__setitem__("torch", s["rng"]["torch"].float()), "random-number"),
    "rng size": (lambda s: s["rng"].__setitem__("shuffle", s["rng"]["shuffle"][:10]), "random-number"),
    "hooks": (_set("hooks", {"lr_schedule": 5}), "hook"),
    "NaN weights": (lambda s: _first_weight(s).fill_(float("nan")), "NaN or infinite"),
    "integer weights": (lambda s: s["model"].__setitem__(next(iter(s["model"])), _first_weight(s).long()),
                        "does not match this model"),
    "wrong shape": (lambda s: s["model"].__setitem__(next(iter(s["model"])), torch.zeros(3)),
                    "does not match this model"),
    "unexpected weight": (lambda s: s["model"].__setitem__("extra", torch.zeros(16, 64)), "does not match this model"),
    "optimizer step empty": (lambda s: s["optimizer"]["state"][0].__setitem__("step", torch.zeros(0)),
                             "optimizer state"),
    "optimizer betas": (lambda s: s["optimizer"]["param_groups"][0].__setitem__("betas", [0.9]), "optimizer state"),
    "schedule": (_set("hooks", {"lr_schedule": {"last_epoch": "x"}}), "learning-rate schedule"),
    "early stopping": (_set("hooks", {"early_stopping": {"best_epoch": 1}}), "early-stopping"),
}
#: what torch's own states hold is judged where they are restored (a resumed run loads them into throw-away
#: copies of its optimizer and schedule first): load_run and evaluate, which read the weights only, load these
RESTORED_ONLY = ("optimizer state text", "optimizer step empty", "optimizer betas", "schedule")


def _tamper(folder, change):
    path = folder / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


def _resume_in_python(folder, digits):
    """``fit(..., resume=True)`` with everything as the run was made, so only the checkpoint can be refused."""
    config = saved_config(folder)
    vae = pv.build_vae(config["vae"])
    run_info = {k: v for k, v in config.items() if k not in ("vae", "fit", "cli", "changes")}
    return pv.fit(vae, digits[0], test=digits[1], epochs=2, progress=False, checkpoint_dir=folder, resume=True,
                  run_info=run_info, eval_samples=0, pictures=False)


def test_an_untampered_copy_resumes(run, digits_binary):
    """The control for the tamperings below: the same calls succeed on the run as it was written."""
    assert pv.load_run(run)[2]["epoch"] == 1
    assert [h["epoch"] for h in _resume_in_python(run, digits_binary)] == [1, 2]


@pytest.mark.parametrize("name", list(TAMPERINGS) + ["a PNG", "a plain pickle"])
def test_tampered_checkpoint_is_refused_everywhere_and_nothing_is_trained(name, run, digits_binary):
    if name == "a PNG":
        shutil.copy(run / "samples.png", run / "checkpoint.pt")
        expected = "not a PyTorch checkpoint file (it looks like a PNG image)"
    elif name == "a plain pickle":
        import pickle
        (run / "checkpoint.pt").write_bytes(pickle.dumps({"format": 1, "epoch": 1}))
        expected = "pickled objects"
    else:
        change, expected = TAMPERINGS[name]
        _tamper(run, change)
    before = {n: (run / n).read_bytes() for n in ("checkpoint.pt", "metrics.json")}
    with pytest.raises(pv.CheckpointError) as refused:
        _resume_in_python(run, digits_binary)
    assert expected in str(refused.value) and "\n" not in str(refused.value)
    one_line(main_in_process(*train_args(run, 2, "--resume")), expected)
    if name in RESTORED_ONLY:
        assert pv.load_run(run)[2]["epoch"] == 1
    else:
        with pytest.raises(pv.CheckpointError, match=None) as refused:
            pv.load_run(run)
        assert expected in str(refused.value) and "\n" not in str(refused.value)
        one_line(main_in_process("evaluate", run, "--num-samples", "2", "--no-progress"), expected)
    assert {n: (run / n).read_bytes() for n in before} == before   # nothing trained, nothing written


@pytest.mark.parametrize("metrics", ['{"evaluations": 5}', '{"history": {"a": 1}}', '{"test": []}', "[1, 2]"])
def test_damaged_metrics_are_refused_before_anything_is_trained(run, metrics):
    (run / "metrics.json").write_text(metrics)
    before = (run / "checkpoint.pt").read_bytes()
    one_line(main_in_process(*train_args(run, 2, "--resume")), "metrics.json", "delete or restore it")
    assert (run / "checkpoint.pt").read_bytes() == before
    # evaluate scores the run, then refuses to write into the damaged file (it is left as it was)
    one_line(main_in_process("evaluate", run, "--num-samples", "2", "--no-progress"), "metrics.json")
    assert (run / "metrics.json").read_text() == metrics


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("name", ["config.json", "checkpoint.pt", "metrics.json"])
def test_a_named_pipe_in_place_of_a_run_file_does_not_block(run, name):
    os.remove(run / name)
    os.mkfifo(run / name)
    started = time.perf_counter()
    one_line(main_in_process("evaluate", run, "--num-samples", "2", "--no-progress"), "not a regular file")
    assert time.perf_counter() - started < 10


