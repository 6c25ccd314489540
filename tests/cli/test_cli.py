"""The pyro-vae command line, end to end on tiny budgets, in real subprocesses where exit codes matter."""

import contextlib
import gzip
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import types

import pytest
import torch

import pyro_vae as pv
from pyro_vae import cli
from pyro_vae.errors import DataError
from pyro_vae.checkpoint import load_checkpoint

PICTURES = {"reconstructions.png", "samples.png", "latent_scatter.png", "curves.png"}


def run_cli(*args, timeout=300):
    """Run ``python -m pyro_vae.cli ARGS`` like a user would; returns the CompletedProcess."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "pyro_vae.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def main_in_process(*args):
    """``cli.main`` in this process (no interpreter start-up): exit code and what went to stderr."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as e:   # argparse's usage errors
            code = e.code
    return types.SimpleNamespace(returncode=code, stderr=stderr.getvalue())


def test_train_evaluate_sample_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--dataset", "digits", "--epochs", "3", "--latent-dim", "2", "--hidden", "64",
                     "--eval-samples", "20", "--out", str(run), "--no-progress"]) == 0
    files = set(os.listdir(run))
    assert {"config.json", "checkpoint.pt", "metrics.json", "latent_manifold.png"} | PICTURES <= files
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["history"]) == 3
    assert metrics["test"]["num_samples"] == 20 and metrics["test"]["binarize"] == "static"
    assert metrics["test"]["log_likelihood"] >= metrics["test"]["elbo"] - 1.0
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == {"dataset": "digits", "data_dir": None, "binarize": "dynamic", "seed": 0}
    assert config["vae"]["latent_dim"] == 2
    assert "log p(x)" in capsys.readouterr().out

    assert cli.main(["evaluate", str(run), "--num-samples", "30"]) == 0
    assert json.loads((run / "metrics.json").read_text())["evaluations"][0]["num_samples"] == 30
    # a new picture beside the run's own samples.png, named after the epoch and seed it shows
    trained = (run / "samples.png").read_bytes()
    assert cli.main(["sample", str(run), "--num", "16"]) == 0
    assert (run / "samples-epoch3-seed0.png").stat().st_size > 0
    assert (run / "samples.png").read_bytes() == trained
    # never over the run's own files
    assert cli.main(["sample", str(run), "--out", str(run / "checkpoint.pt")]) == 2
    assert pv.load_run(run)[2]["epoch"] == 3


def test_other_parts_from_the_cli(tmp_path):
    run = tmp_path / "run"
    assert cli.main(["train", "--dataset", "digits", "--epochs", "1", "--prior", "mog", "--num-components", "3",
                     "--likelihood", "continuous-bernoulli", "--network", "conv", "--latent-dim", "3",
                     "--eval-samples", "5", "--out", str(run), "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["vae"]["prior"] == {"class": "MixtureOfGaussians", "kwargs": {"num_components": 3, "spread": 1.0}}
    assert config["vae"]["likelihood"]["class"] == "ContinuousBernoulli"
    assert config["vae"]["encoder"]["class"] == "ConvEncoder"
    assert config["data"]["binarize"] == "none"   # grey levels for a continuous likelihood
    assert cli.main(["sample", str(run), "--num", "4", "--out", str(tmp_path / "s.png")]) == 0


def _one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines and all(n in lines[-1] for n in needles), result.stderr
    return lines[-1]


def _truncated_idx_folder(path):
    path.mkdir()
    for name in ["train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"]:
        with gzip.open(path / name, "wb") as f:
            f.write(bytes([0, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 28, 0, 0, 0, 28]) + bytes(100))  # 10 images promised
    for name in ["train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]:
        with gzip.open(path / name, "wb") as f:
            f.write(bytes([0, 0, 8, 1, 0, 0, 0, 10]) + bytes(10))
    return path


def test_bad_input_gets_one_line_errors(tmp_path):
    # a real process for the first case (exit status, no traceback on stderr); the rest in-process
    last = _one_line_error(run_cli("train", "--dataset", "nope", "--out", tmp_path / "a"), "mnist5k", "digits")
    assert "--data-dir" in last and "data_dir" not in last
    _one_line_error(main_in_process("train", "--prior", "gamma"), "unknown prior", "standard", "mog")
    _one_line_error(main_in_process("train", "--likelihood", "poisson"), "unknown likelihood", "bernoulli")
    _one_line_error(main_in_process("train", "--epochs", "0"), "positive")
    _one_line_error(main_in_process("train", "--batch-size", "-5"), "positive")
    _one_line_error(main_in_process("train", "--beta", "0"), "positive")
    _one_line_error(main_in_process("train", "--dataset", tmp_path / "missing"), "does not exist")
    (tmp_path / "empty").mkdir()
    _one_line_error(main_in_process("train", "--dataset", tmp_path / "empty"), "empty")
    _one_line_error(main_in_process("train", "--dataset", _truncated_idx_folder(tmp_path / "idx")), "truncated")
    (tmp_path / "file").write_text("x")
    _one_line_error(main_in_process("train", "--dataset", "digits", "--epochs", "1",
                                    "--out", tmp_path / "file" / "run"), "output folder")
    _one_line_error(main_in_process("evaluate", tmp_path / "nowhere"), "does not exist")
    if not torch.cuda.is_available():
        _one_line_error(main_in_process("train", "--device", "cuda"), "no GPU", "--device cpu")
    # numpy, which every run seeds, takes seeds 0 .. 2**32 - 1 only
    for seed in ["-1", "4294967296"]:
        _one_line_error(main_in_process("train", "--dataset", "digits", "--seed", seed), "--seed", "0 to")
    _one_line_error(main_in_process("sample", tmp_path / "nowhere", "--seed", "-1"), "--seed", "0 to")
    # with --debug the exception (and so its traceback) comes through
    with pytest.raises(DataError, match="unknown dataset"):
        cli.main(["--debug", "train", "--dataset", "nope"])


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--dataset", "digits", "--epochs", "1", "--hidden", "32", "--eval-samples", "5",
            "--out", run, "--no-progress"]
    evaluate = ["evaluate", run, "--num-samples", "3"]
    assert main_in_process(*args).returncode == 0
    assert main_in_process(*evaluate).returncode == 0
    _one_line_error(main_in_process(*args), "already holds a run", "--resume", "--overwrite")
    assert main_in_process(*args, "--overwrite").returncode == 0
    assert "evaluations" not in json.loads((run / "metrics.json").read_text())   # they scored the replaced run
    assert main_in_process(*evaluate).returncode == 0
    longer = [a if a != "1" else "2" for a in args]
    done = main_in_process(*longer, "--resume")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    # the evaluation made after epoch 1 outlives the resumed run, told apart by its epoch
    assert [(e["epoch"], e["num_samples"]) for e in metrics["evaluations"]] == [(1, 3)]
    assert metrics["test"]["epoch"] == 2 and metrics["test"]["num_samples"] == 5


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_matches_uninterrupted(tmp_path):
    """Kill a real training process with SIGKILL, resume it, and compare with a run never interrupted."""
    common = ["train", "--dataset", "mnist5k", "--epochs", "6", "--latent-dim", "8", "--hidden", "128",
              "--eval-samples", "5", "--seed", "7", "--no-progress"]
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pyro_vae.cli", *common, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if (killed / "checkpoint.pt").exists() and load_checkpoint(killed / "checkpoint.pt")["epoch"] >= 2:
                break
            assert proc.poll() is None, "training ended before it could be interrupted"
            time.sleep(0.05)
        time.sleep(0.3)  # land inside a later epoch
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    state = load_checkpoint(killed / "checkpoint.pt")   # still a complete, loadable checkpoint
    assert 2 <= state["epoch"] < 6 and len(state["history"]) == state["epoch"]
    # metrics.json, written after the checkpoint, holds the same epochs or one fewer; no final scores yet
    partial = json.loads((killed / "metrics.json").read_text())
    assert partial["history"] == state["history"][:len(partial["history"])] and len(partial["history"]) >= 1
    assert "test" not in partial

    resumed = run_cli(*common, "--out", killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    straight = run_cli(*common, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    a = json.loads((killed / "metrics.json").read_text())["history"]
    b = json.loads((tmp_path / "straight" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in a] == list(range(1, 7))
    assert [h["train_elbo"] for h in a] == [h["train_elbo"] for h in b]
    assert [h["test_elbo"] for h in a] == [h["test_elbo"] for h in b]


# --- extended models, objectives and parts from the CLI -------------------------------------------

TINY = ["--dataset", "digits", "--epochs", "1", "--hidden", "32", "--latent-dim", "3", "--eval-samples", "5",
        "--batch-size", "64", "--no-progress"]


@pytest.mark.parametrize("kind,extra", [
    ("cvae", ["--prior", "mog", "--num-components", "3", "--guide", "iaf", "--objective", "iwae",
              "--num-particles", "2"]),
    ("m2", ["--labels", "50", "--num-particles", "2", "--beta", "0.5", "--warmup", "2"]),
    ("hvae", ["--top-latent-dim", "2", "--prior", "vamp", "--num-pseudo-inputs", "5", "--objective", "iwae"]),
])
def test_extended_models_end_to_end(kind, extra, tmp_path, capsys):
    run = tmp_path / kind
    assert cli.main(["train", "--model", kind, *TINY, *extra, "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == kind and config["vae"]["model"] == {"cvae": "ConditionalVAE", "m2": "M2",
                                                                  "hvae": "HierarchicalVAE"}[kind]
    assert config["objective"]["num_particles"] == 2 if kind != "hvae" else config["objective"]["name"] == "iwae"
    assert {"config.json", "checkpoint.pt", "metrics.json"} | PICTURES <= set(os.listdir(run))
    out = capsys.readouterr().out
    assert ("log p(x|y)" if kind == "cvae" else "log p(x)") in out
    if kind == "m2":
        assert config["labels"] == 50 and config["fit"]["beta"] == 0.5 and config["fit"]["loss"] == "TraceEnum_ELBO"
        assert config["vae"]["num_classes"] == 10 and config["vae"]["alpha"] == 50.0
        assert "test accuracy" in out and 0 <= json.loads((run / "metrics.json").read_text())["test"]["accuracy"] <= 1
    assert cli.main(["evaluate", str(run), "--num-samples", "5"]) == 0
    assert ("test accuracy" in capsys.readouterr().out) == (kind == "m2")
    assert cli.main(["sample", str(run), "--num", "20", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0


@pytest.mark.parametrize("likelihood,guide,objective,jit,loss", [
    ("normal-per-pixel", "iaf", "meanfield", True, "JitTraceMeanField_ELBO"),
    ("laplace", "normal", "iwae", False, "RenyiELBO"),
    ("bernoulli", "normal", "elbo", True, "JitTrace_ELBO")])
def test_new_parts_from_the_cli(likelihood, guide, objective, jit, loss, tmp_path):
    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "--prior", "flow", "--likelihood", likelihood, "--guide", guide,
                     "--objective", objective, *(["--jit"] if jit else []), "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["vae"]["prior"]["class"] == "FlowPrior" and config["objective"]["name"] == objective
    assert config["fit"]["loss"] == loss
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert math.isfinite(history[0]["train_elbo"]) and history[0]["test_elbo"] < 0
    assert cli.main(["evaluate", str(run), "--num-samples", "3"]) == 0


@pytest.mark.parametrize("args,needles", [
    (["--model", "m2", "--objective", "iwae"], ["m2", "--objective elbo"]),
    (["--model", "m2", "--objective", "meanfield"], ["m2", "--objective elbo"]),
    (["--model", "hvae", "--objective", "meanfield"], ["mean-field"]),
    (["--model", "cvae", "--prior", "vamp"], ["VampPrior", "another prior", "mog"]),   # the model refuses it
    (["--model", "cvae", "--network", "conv"], ["conv"]),
    (["--labels", "10"], ["--labels", "m2"]),
    (["--objective", "iwae", "--num-particles", "1"], ["iwae", "--num-particles"]),
    (["--likelihood", "logistic"], ["8-bit", "--likelihood continuous-bernoulli"]),   # digits are multiples of 1/16
    (["--model", "m2", "--labels", "100000"], ["--labels 100000", "at most 1430"]),   # 143 images in the smallest class
    # M2 names its classes after labelled images: fewer labels than classes (here 10) would leave some unnamed
    (["--model", "m2", "--labels", "3"], ["--labels 3", "10 classes", "--labels 10"]),
    (["--model", "m2", "--labels", "0"], ["--labels 0", "--model vae"]),
    (["--jit", "--objective", "iwae"], ["--jit", "iwae"]),
    (["--jit", "--model", "m2"], ["--jit", "m2"]),
    (["--jit", "--warmup", "2"], ["JitTrace_ELBO", "warmup", "Trace_ELBO"]),   # the weight would be frozen
    (["--resume", "--overwrite"], ["--resume", "--overwrite", "only one"]),
    # flags that no part of the run reads, even when they repeat the default value
    (["--alpha", "50"], ["--alpha", "--model m2", "--model vae"]),
    (["--top-latent-dim", "4"], ["--top-latent-dim", "--model hvae"]),
    (["--num-components", "10"], ["--num-components", "--prior mog", "--prior standard"]),
    (["--prior", "flow", "--num-pseudo-inputs", "5"], ["--num-pseudo-inputs", "--prior vamp", "--prior flow"]),
    (["--num-flows", "2"], ["--num-flows", "--prior flow", "--guide iaf"]),
    (["--prior", "mog", "--flow-hidden", "8"], ["--flow-hidden", "--prior mog --guide normal"]),
    (["--normal-scale", "0.5"], ["--normal-scale", "--likelihood normal", "--likelihood bernoulli"]),
    (["--network", "conv"], ["--hidden", "--network conv"]),            # TINY sets --hidden
    (["--data-dir", "anywhere"], ["--data-dir", "--dataset digits"]),
    # the library's own messages would say data_dir= and binarize='dynamic'
    (["--dataset", "idx"], ["--dataset idx", "--data-dir FOLDER"]),
    (["--binarize", "none"], ["--likelihood bernoulli", "--binarize dynamic", "--likelihood continuous-bernoulli"]),
])
def test_nonsense_combinations_are_one_line_errors(args, needles, tmp_path, capsys):
    assert cli.main(["train", *TINY, *args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(n in err[0] for n in needles), err
    # flags, not the library's keyword arguments or class names
    assert not re.search(r"\b[a-z_]+=|data_dir|ContinuousBernoulli|num_labelled", err[0]), err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_failed_download_points_to_flags(tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision")

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")
    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    last = _one_line_error(main_in_process("train", "--dataset", "mnist", "--data-dir", tmp_path),
                           "could not download", "--dataset FOLDER", "mnist5k")
    assert "data_dir" not in last


def test_ctrl_c_says_what_was_left(tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) at each stage: the message says what is saved and how to go on."""
    run = tmp_path / "run"
    args = ["train", *TINY, "--epochs", "2", "--out", run]
    real_fit, real_evaluate = pv.fit, pv.evaluate.report

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    def fit_interrupted_after_epoch_1(*args, **kwargs):
        def callback(vae, record):
            if record["epoch"] == 1:
                raise KeyboardInterrupt
        return real_fit(*args, **kwargs, callback=callback)

    def interrupted(result, *needles):
        assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert all(n in last for n in needles), last
        return last

    monkeypatch.setattr(cli.train, "load_data", interrupt)
    assert "--resume" not in interrupted(main_in_process(*args), "had not started", "nothing was written")
    monkeypatch.undo()

    monkeypatch.setattr(pv, "fit", interrupt)   # within the first epoch: no checkpoint yet, nothing to resume
    assert "--resume" not in interrupted(main_in_process(*args), "no epoch was completed")
    monkeypatch.setattr(pv, "fit", fit_interrupted_after_epoch_1)
    interrupted(main_in_process(*args), f"epoch 1 of 2 is saved in {run}", "with --resume")
    monkeypatch.setattr(pv, "fit", real_fit)
    monkeypatch.setattr(pv.evaluate, "report", interrupt)   # the final scores, after the last epoch
    interrupted(main_in_process(*args, "--resume"), "training finished", "same command again")
    assert "test" not in json.loads((run / "metrics.json").read_text())
    monkeypatch.setattr(pv.evaluate, "report", real_evaluate)
    assert main_in_process(*args, "--resume").returncode == 0   # the advice works: the run is complete
    metrics = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2] and metrics["test"]["epoch"] == 2

    before = (run / "metrics.json").read_text()
    monkeypatch.setattr(pv.evaluate, "report", interrupt)
    assert "--resume" not in interrupted(main_in_process("evaluate", run), "metrics.json is unchanged")
    assert (run / "metrics.json").read_text() == before
    monkeypatch.setattr(pv.plots, "samples", interrupt)
    assert "--resume" not in interrupted(main_in_process("sample", run, "--out", tmp_path / "s.png"),
                                         "no pictures were written")


@pytest.mark.parametrize("flag,value,valid", [("--model", "vqvae", "cvae"), ("--objective", "dreg", "iwae"),
                                              ("--guide", "flowy", "iaf"), ("--prior", "gamma", "vamp"),
                                              ("--likelihood", "poisson", "logistic")])
def test_unknown_names_list_the_valid_ones(flag, value, valid, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", flag, value])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unknown" in last and valid in last
