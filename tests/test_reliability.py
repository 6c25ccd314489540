"""Reliability of run folders and of the CLI's failure paths: one writer per folder, the --out rules, metrics
merged across writers, validated checkpoints, bounded sizes, and one line with a non-zero exit for every failure.

Real subprocesses where exit codes, signals or locks between processes matter; ``cli.main`` in this process
elsewhere (no interpreter start-up). Every run is a smoke run on the digits.
"""

import contextlib
import errno
import io
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch

import pyro_vae as pv
from pyro_vae import checkpoint, cli
from pyro_vae.checkpoint import RunFolder, load_checkpoint

#: the smallest run: the flags every run of this file shares (``--epochs`` comes separately)
FLAGS = ["--dataset", "digits", "--hidden", "16", "--latent-dim", "2", "--eval-samples", "5", "--no-progress"]


def train_args(out, epochs=1, *extra):
    return ["train", *FLAGS, "--epochs", str(epochs), *map(str, extra), "--out", str(out)]


def run_cli(*args, timeout=300):
    """``python -m pyro_vae.cli ARGS`` as a user would run it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "pyro_vae.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def start_cli(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pyro_vae.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL)


def main_in_process(*args):
    """``cli.main`` here: exit code (argparse's SystemExit included) and what went to stderr."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
    return types.SimpleNamespace(returncode=code, stderr=stderr.getvalue())


def error_lines(stderr):
    """stderr without the warnings Python and Pyro print (each warning is its message line and a source line)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return [line for line in lines
            if line.startswith("pyro-vae") or "Traceback" in line or "Error" in line.split(":")[0]]


def one_line(result, *needles, code=2):
    """The result failed with ``code`` and one line (no traceback) that contains every needle."""
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("pyro-vae"), result.stderr[-2000:]
    assert all(n in lines[0] for n in needles), (needles, lines[0])
    return lines[0]


def wait_for(condition, proc, timeout=240, what="the condition"):
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def epoch_of(folder):
    path = os.path.join(folder, "checkpoint.pt")
    try:
        return load_checkpoint(path)["epoch"] if os.path.exists(path) else 0
    except pv.CheckpointError:   # being replaced right now
        return 0


@contextlib.contextmanager
def killed_at_exit(proc):
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """One finished one-epoch run made by ``pyro-vae train`` (in this process), copied by the tests that change it."""
    folder = tmp_path_factory.mktemp("base") / "run"
    result = main_in_process(*train_args(folder))
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture
def run(base_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(base_run, folder)
    return folder


def saved_config(folder):
    return json.loads((folder / "config.json").read_text())


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
    "optimizer state text": (lambda s: s["optimizer"]["state"][0].__setitem__("step", "x"), "optimizer"),
    "rng dtype": (lambda s: s["rng"].__setitem__("torch", s["rng"]["torch"].float()), "random-number"),
    "rng size": (lambda s: s["rng"].__setitem__("shuffle", s["rng"]["shuffle"][:10]), "random-number"),
    "hooks": (_set("hooks", {"lr_schedule": 5}), "hook"),
    "NaN weights": (lambda s: _first_weight(s).fill_(float("nan")), "NaN or infinite"),
    "integer weights": (lambda s: s["model"].__setitem__(next(iter(s["model"])), _first_weight(s).long()),
                        "does not match this model"),
    # the optimizer's running averages are shaped like the weights: they no longer fit
    "wrong shape": (lambda s: s["model"].__setitem__(next(iter(s["model"])), torch.zeros(3)),
                    "optimizer's per-parameter state 'exp_avg' is malformed"),
    "unexpected weight": (lambda s: s["model"].__setitem__("extra", torch.zeros(16, 64)), "does not match this model"),
    "optimizer step empty": (lambda s: s["optimizer"]["state"][0].__setitem__("step", torch.zeros(0)), "'step'"),
    "optimizer betas": (lambda s: s["optimizer"]["param_groups"][0].__setitem__("betas", [0.9]), "betas"),
    "schedule": (_set("hooks", {"lr_schedule": {"last_epoch": "x"}}), "learning-rate schedule"),
    "early stopping": (_set("hooks", {"early_stopping": {"best_epoch": 1}}), "early-stopping"),
}


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
    with pytest.raises(pv.CheckpointError, match=None) as refused:
        pv.load_run(run)
    assert expected in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(pv.CheckpointError) as refused:
        _resume_in_python(run, digits_binary)
    assert expected in str(refused.value)
    one_line(main_in_process("evaluate", run, "--num-samples", "2", "--no-progress"), expected)
    one_line(main_in_process(*train_args(run, 2, "--resume")), expected)
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


# --- 6. bounded resources ---------------------------------------------------------------------


@pytest.mark.parametrize("args,limit", [
    (["--latent-dim", "100000000"], "4096"),
    (["--hidden", "10000000"], "65536"),
    (["--prior", "mog", "--num-components", str(10 ** 9)], "10000"),
    (["--prior", "vamp", "--num-pseudo-inputs", str(10 ** 9)], "10000"),
    (["--num-particles", str(10 ** 9)], "10000"),
    (["--epochs", str(10 ** 12)], "1000000"),
    (["--lr", "1e39"], "10"),
    (["--eval-samples", str(10 ** 9)], "1000000"),
])
def test_size_flags_beyond_their_limits_are_one_line_errors(args, limit, tmp_path):
    before, started = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    line = one_line(main_in_process("train", "--dataset", "digits", *args, "--out", tmp_path / "run"),
                    "above the limit of", limit)
    assert args[-2] in line
    assert time.perf_counter() - started < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024   # KiB: nothing allocated
    assert not (tmp_path / "run").exists()


def test_widths_each_within_limits_but_too_many_weights_together(tmp_path):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    one_line(main_in_process("train", "--dataset", "digits", "--hidden", "65536", "65536", "--out", tmp_path / "run"),
             "would have", "weights, above the limit of 1073741824", "use a smaller --hidden")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024   # KiB: nothing allocated
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("build", [
    lambda: pv.networks.MLPEncoder((1, 28, 28), 4, hidden=(16, 8)),
    lambda: pv.networks.MLPDecoder((3, 9, 7), 4, hidden=(8,), params_per_pixel=2),
    lambda: pv.networks.ConvEncoder((3, 30, 27), 5, channels=8, hidden=20),
    lambda: pv.networks.ConvDecoder((3, 30, 27), 5, params_per_pixel=2, channels=8, hidden=20),
    lambda: pv.extended.LabelledMLPEncoder((1, 28, 28), 4, 10, hidden=(16, 8)),
    lambda: pv.extended.MLPClassifier((1, 28, 28), 10, hidden=(16,)),
    lambda: pv.extended.GaussianMLP(4, 3, hidden=(8,)),
], ids=["mlp-encoder", "mlp-decoder", "conv-encoder", "conv-decoder", "labelled-encoder", "classifier", "gaussian"])
def test_the_weight_count_checked_before_building_is_the_built_networks(build, monkeypatch):
    counted = []
    for module in (pv.networks, pv.extended):
        monkeypatch.setattr(module, "parameter_budget", lambda who, count: counted.append(count))
    net = build()
    assert sum(counted) == sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("build,needle", [
    (lambda: pv.networks.ConvDecoder((1, 8000, 8000), 2), "ConvDecoder would have"),
    (lambda: pv.networks.ConvEncoder((1, 8000, 8000), 2), "ConvEncoder would have"),
    (lambda: pv.networks.MLPDecoder((3, 65536, 65536), 2), "values per image, above the limit of 67108864"),
])
def test_networks_too_large_to_build_are_refused_before_allocating(build, needle):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(pv.errors.ConfigError, match=needle):
        build()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024


def test_sample_count_beyond_its_limit(run):
    started = time.perf_counter()
    one_line(main_in_process("sample", run, "--num", str(10 ** 9)), "--num", "above the limit of 10000")
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize("model", ["cvae", "m2"])
def test_huge_label_values_are_a_one_line_error(model, tmp_path):
    images = (np.random.RandomState(0).rand(40, 8, 8) > 0.5).astype(np.float32)
    labels = np.array([0] * 39 + [10 ** 9])
    np.savez(tmp_path / "x.npz", images=images, labels=labels)
    assert int(pv.data.load(str(tmp_path / "x.npz"))[0].labels.max()) <= 10 ** 9   # the file reads as it is
    before, started = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    one_line(main_in_process("train", "--dataset", tmp_path / "x.npz", "--model", model, *FLAGS[2:],
                             "--out", tmp_path / "run"), "labels", "1000000000", "limit of 10000")
    assert time.perf_counter() - started < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024


@pytest.mark.parametrize("build,needle", [
    (lambda: pv.VAE(latent_dim=10 ** 8), "limit of 4096"),
    (lambda: pv.VAE(latent_dim=2.7), "latent_dim"),
    (lambda: pv.VAE(image_shape=(1, 8, 8), hidden=(10 ** 8,)), "limit of 65536"),
    (lambda: pv.priors.MixtureOfGaussians(10 ** 9), "limit of 10000"),
    (lambda: pv.priors.VampPrior(num_pseudo_inputs=10 ** 9), "limit of 10000"),
    (lambda: pv.extended.ConditionalVAE(image_shape=(1, 8, 8), num_classes=10 ** 9), "10000"),
])
def test_constructors_refuse_huge_sizes_quickly(build, needle):
    started = time.perf_counter()
    with pytest.raises(pv.ConfigError, match=needle):
        build()
    assert time.perf_counter() - started < 1


# --- 7. every CLI failure ends in one line and a non-zero exit ---------------------------------------


def _fail_checkpoint_writes_after(monkeypatch, writes_allowed):
    """os.fsync raises ENOSPC for every checkpoint write after the first ``writes_allowed`` (as a full disk would)."""
    real_fsync, seen = os.fsync, []

    def fsync(fd):
        try:
            name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            name = ""
        if name.startswith(".tmp-") and name.endswith("checkpoint.pt"):
            seen.append(name)
            if len(seen) > writes_allowed:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    return seen


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name the file being synced")
def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    """Exit status 2, as for every error pyro_vae reports: one line saying which epoch is kept and how to go on."""
    out = tmp_path / "run"
    seen = _fail_checkpoint_writes_after(monkeypatch, 1)
    line = one_line(main_in_process(*train_args(out, 3)), "No space left on device", "previous version is kept",
                    f"epoch 1 of 3 is saved in {out}", "--resume")
    assert len(seen) == 2
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1   # still complete, still loadable
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]
    assert "checkpoint.pt" in line
    monkeypatch.undo()
    assert pv.load_run(out)[2]["epoch"] == 1


def test_disk_full_while_drawing_the_final_pictures(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / ".samples.png.abcd1234.tmp"))
    monkeypatch.setattr(pv.plots, "save_all", full)
    line = one_line(main_in_process(*train_args(out)), f"could not write {out} (No space left on device)",
                    "training finished", "--resume")
    assert ".tmp" not in line
    monkeypatch.undo()
    assert main_in_process(*train_args(out, 1, "--resume")).returncode == 0   # the advice works
    assert (out / "samples.png").exists()


def test_atomic_write_failures_keep_the_old_file(tmp_path):
    path = tmp_path / "file.json"
    checkpoint.save_json({"old": True}, path)

    def disk_full(f):
        f.write(b"{")
        raise OSError(errno.ENOSPC, "No space left on device")

    def torch_wrapped(f):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")
    for write in (disk_full, torch_wrapped):
        with pytest.raises(checkpoint.WriteError, match="previous version is kept"):
            checkpoint._atomic_write(path, write)
        assert checkpoint.load_json(path) == {"old": True}
        assert os.listdir(tmp_path) == ["file.json"]


@pytest.mark.parametrize("device,needle", [("meta", "not supported"), ("mps", "not supported"), ("cuda:7", "GPU"),
                                           ("banana", "unknown device")])
def test_unusable_devices(device, needle, tmp_path):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a GPU 7")
    one_line(main_in_process(*train_args(tmp_path / "run", 1, "--device", device)), needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("out", ["/proc/pyro-vae-test", "/sys/pyro-vae-test"])
def test_unwritable_out(out):
    if not os.path.isdir(os.path.dirname(out)):
        pytest.skip(f"no {os.path.dirname(out)} here")
    one_line(main_in_process(*train_args(out)), "cannot create output folder", out)


def test_read_only_out(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores permissions (the /proc and /sys cases cover an unwritable folder)")
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        one_line(main_in_process(*train_args(parent / "run")), "output folder", str(parent / "run"))
    finally:
        parent.chmod(0o700)


def test_unwritable_sample_and_explore_outputs(run):
    one_line(main_in_process("sample", run, "--num", "4", "--out", "/proc/pyro-vae-test.png"), "/proc")
    one_line(main_in_process("explore", run, "--out", run / "config.json"), "config.json")
    assert saved_config(run)["vae"]["latent_dim"] == 2


@pytest.mark.parametrize("size", [1, 3])
def test_images_too_small_for_the_conv_networks(size, tmp_path):
    np.save(tmp_path / "tiny.npy", np.random.RandomState(0).rand(20, size, size).astype(np.float32))
    one_line(main_in_process("train", "--dataset", tmp_path / "tiny.npy", "--network", "conv", "--likelihood",
                             "continuous-bernoulli", "--epochs", "1", "--latent-dim", "2", "--no-progress",
                             "--out", tmp_path / "run"), f"{size}x{size}", "--network mlp")


@pytest.mark.parametrize("signum,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_during_the_imports_is_held_until_they_finish(signum, code, word, monkeypatch):
    """A signal raised in the middle of an import can leave a half-imported module (seen: RecursionError inside
    numpy after SIGINT during scipy's import) or abort the interpreter inside C++ code (torch.distributed):
    main holds signals until the library is imported, then exits with the signal's code and one line."""
    finished = []

    def imports():
        os.kill(os.getpid(), signum)
        time.sleep(0.05)   # the handler runs here; the import must go on
        finished.append(True)
        return cli.build_parser.__wrapped__()
    imports.__wrapped__ = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", imports)
    one_line(main_in_process("train"), word, "nothing was written", code=code)
    assert finished == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # main restored the handlers


def test_an_import_broken_while_a_signal_was_held_is_reported_as_the_signal(monkeypatch):
    def broken_import():
        cli._SIGNALLED.append(signal.SIGINT)
        raise RecursionError("maximum recursion depth exceeded")
    monkeypatch.setattr(cli, "build_parser", broken_import)
    one_line(main_in_process("train"), "interrupted", "nothing was written", code=130)


def test_an_unrelated_start_up_error_is_not_called_an_interruption(monkeypatch):
    monkeypatch.setattr(cli, "build_parser", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["train"])


@pytest.mark.slow
def test_ctrl_c_while_torch_imports(tmp_path):
    """SIGINT 0.3-0.8 s after start, while ``build_parser`` imports torch: exit 130 and one line.

    A signal in the interpreter's own start-up (site-packages, before pyro_vae runs) gives Python's traceback,
    which no code of ours can prevent: such tries are repeated a little later."""
    rng = random.Random(0)
    for attempt in range(5):
        proc = start_cli(*train_args(tmp_path / "run"))
        with killed_at_exit(proc):
            time.sleep(rng.uniform(0.3, 0.8) + 0.2 * attempt)
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=60)
        if "Traceback" in stderr and "pyro_vae" not in stderr:
            continue   # interrupted before our code started
        result = types.SimpleNamespace(returncode=proc.returncode, stderr=stderr)
        one_line(result, "interrupted", "nothing was written", code=130)
        assert not (tmp_path / "run").exists()
        return
    pytest.fail("every SIGINT landed in the interpreter's start-up")


@pytest.mark.slow
def test_sigterm_during_training_then_resume(tmp_path):
    out, epochs = tmp_path / "run", 500
    proc = start_cli(*train_args(out, epochs))
    with killed_at_exit(proc):
        wait_for(lambda: epoch_of(out) >= 1, proc, what="the first checkpoint")
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    saved = epoch_of(out)
    result = types.SimpleNamespace(returncode=proc.returncode, stderr=stderr)
    one_line(result, "terminated", f"epoch {saved} of {epochs} is saved in {out}", "--resume", code=143)
    resumed = main_in_process(*train_args(out, saved + 1, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert epoch_of(out) == saved + 1


@pytest.mark.slow
@pytest.mark.parametrize("args,needle", [(["train", "--bogus"], "unrecognized arguments: --bogus"),
                                         (["nonsense"], "invalid choice: 'nonsense'")])
def test_usage_errors_are_one_line(args, needle):
    one_line(run_cli(*args), needle)


def test_usage_errors_in_process():
    one_line(main_in_process("train", "--bogus"), "unrecognized arguments")
    one_line(main_in_process("nonsense"), "invalid choice")
    one_line(main_in_process(), "required")


@pytest.mark.slow
def test_finite_divergence_stops_and_a_gentler_resume_continues(tmp_path):
    """Resumed with --lr 5, a fixed-scale Normal likelihood explodes by orders of magnitude in epoch 2 (finite)."""
    out = tmp_path / "run"
    normal = ["--likelihood", "normal", "--normal-scale", "0.001"]
    assert main_in_process(*train_args(out, 1, *normal)).returncode == 0
    first = load_checkpoint(out / "checkpoint.pt")["history"]
    line = one_line(main_in_process(*train_args(out, 3, *normal, "--resume", "--lr", "5")),
                    "exploded", "epoch 2", "checkpoint of epoch 1 is kept", "--lr", "--clip-norm")
    assert "nan" not in line.lower()
    assert load_checkpoint(out / "checkpoint.pt")["history"] == first   # nothing of epoch 2 was saved
    gentle = main_in_process(*train_args(out, 3, *normal, "--resume", "--lr", "1e-4", "--clip-norm", "1"))
    assert gentle.returncode == 0, gentle.stderr
    config = saved_config(out)
    assert config["fit"]["lr"] == 1e-4 and config["fit"]["clip_norm"] == 1.0
    assert {"setting": "lr", "saved": 5.0, "now": 1e-4, "from_epoch": 2} in config["changes"]
    assert {"setting": "clip_norm", "saved": None, "now": 1.0, "from_epoch": 2} in config["changes"]
    assert [h["epoch"] for h in json.loads((out / "metrics.json").read_text())["history"]] == [1, 2, 3]


def test_divergence_in_the_first_epoch_stops_before_anything_is_saved(tmp_path):
    """With --lr 5 a fixed-scale Normal likelihood explodes within epoch 1: no earlier epoch to compare with, so
    the guard compares each step's loss with the epoch's first step's."""
    out = tmp_path / "run"
    line = one_line(main_in_process(*train_args(out, 1, "--likelihood", "normal", "--normal-scale", "0.001",
                                                "--lr", "5")),
                    "exploded", "epoch 1, step", "--lr", "--clip-norm")
    assert "nan" not in line.lower() and "inf" not in line.lower().replace("info", "")
    assert not (out / "checkpoint.pt").exists()
