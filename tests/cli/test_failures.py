"""Every failure of the CLI ends in one line and a non-zero exit: sizes beyond their limits, a full disk,
unusable devices and outputs, signals during the imports and the training, usage errors, divergence.

Real subprocesses where exit codes or signals matter; ``cli.main`` in this process elsewhere.
"""

import errno
import json
import os
import random
import resource
import signal
import time
import types

import numpy as np
import pytest
import torch

import pyro_vae as pv
from pyro_vae import checkpoint, cli
from pyro_vae.checkpoint import load_checkpoint
from clirun import (FLAGS, train_args, run_cli, start_cli, main_in_process, one_line, wait_for, epoch_of,
                   killed_at_exit, saved_config)


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
    monkeypatch.setattr(pv.networks, "parameter_budget", lambda who, count: counted.append(count))
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
            pv.files.atomic_write(path, write)
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
