"""CLI inputs end in one line: integer flags bounded before any float conversion, activations from a closed list,
labels that are not class indices, explorer names that are not UTF-8, overwrite and output rules, warnings of a
failed step shown once."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch


import pyro_vae as pv
from clirun import small_vae, exit_and_stderr, one_line_error, DIGITS, image_folder


# --- 6. integer flags --------------------------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["train", "--epochs", "1" + "0" * 400], "--epochs: 1000"),
    (["train", "--warmup", "1" + "0" * 400], "--warmup"),
    (["train", "--labels", "9" * 5000], "--labels"),
    (["train", "--batch-size", "+" + "9" * 30], "--batch-size"),
    (["train", "--hidden", "8", "1" + "0" * 400], "--hidden"),
    (["sample", "RUN", "--num", "1" + "0" * 400], "--num"),
    (["evaluate", "RUN", "--num-samples", "1" + "0" * 400], "--num-samples"),
])
def test_huge_integer_flags_are_one_line_errors(args, needle):
    code, err = exit_and_stderr(*args)
    line = one_line_error(code, err, needle, "above the limit of")
    assert len(line) < 300 and "OverflowError" not in err


@pytest.mark.parametrize("value", ["2.5", "1e3", "-3", "0x10", "１０", "nan", ""])
def test_integer_flags_take_digits_only(value):
    one_line_error(*exit_and_stderr("train", "--epochs", value), "--epochs", "whole number")


# --- 7. activations from a closed list ---------------------------------------------------------------

@pytest.fixture
def digits_run(tmp_path):
    """A tiny run folder that the CLI commands can read back (its config records the data)."""
    run = tmp_path / "run"
    code, err = exit_and_stderr("train", *DIGITS, "--hidden", "8", "--latent-dim", "2", "--eval-samples", "2",
                                "--out", run)
    assert code == 0, err
    return run


@pytest.mark.parametrize("name", ["Module", "Upsample", "Softmax2d", "Flatten", "Identity", "__class__", 3])
def test_a_config_naming_any_other_torch_class_as_activation_is_refused(name, digits_run):
    config = json.loads((digits_run / "config.json").read_text())
    config["vae"]["encoder"]["kwargs"]["activation"] = name
    (digits_run / "config.json").write_text(json.dumps(config))
    with pytest.raises(pv.ConfigError, match="unknown activation .* use one of CELU"):
        pv.load_run(digits_run)
    for command in (["evaluate", digits_run, "--num-samples", "2", "--no-progress"], ["sample", digits_run],
                    ["explore", digits_run]):
        one_line_error(*exit_and_stderr(*command), "unknown activation")


def test_every_listed_activation_builds_and_runs():
    for name in pv.networks.ACTIVATIONS:
        encoder = pv.networks.MLPEncoder((1, 4, 4), 2, hidden=(4,), activation=name)
        loc, scale = encoder(torch.rand(3, 1, 4, 4))
        assert loc.shape == scale.shape == (3, 2) and bool((scale > 0).all())


# --- 8. class labels that are not class indices ---------------------------------------------------------

@pytest.mark.parametrize("model", ["cvae", "m2"])
def test_labels_with_one_far_class_name_the_classes(model, tmp_path):
    images = (np.random.RandomState(0).rand(41, 8, 8) > 0.5).astype(np.float32)
    np.savez(tmp_path / "x.npz", images=images, labels=np.array(list(range(10)) * 4 + [9999]))
    line = one_line_error(*exit_and_stderr("train", "--dataset", tmp_path / "x.npz", "--model", model, *DIGITS[2:],
                                           "--hidden", "8", "--out", tmp_path / "run"),
                          "11 classes numbered up to 9999", "renumber the labels")
    assert "latent_dim" not in line


def test_many_real_classes_and_a_large_latent_name_the_classes(tmp_path):
    images = (np.random.RandomState(0).rand(8000, 2, 2) > 0.5).astype(np.float32)
    np.savez(tmp_path / "x.npz", images=images, labels=np.arange(8000) % 4000)
    one_line_error(*exit_and_stderr("train", "--dataset", tmp_path / "x.npz", "--model", "cvae", *DIGITS[2:],
                                    "--hidden", "8", "--latent-dim", "200", "--out", tmp_path / "run"),
                   "one-hot code of the 4000 classes", "--latent-dim")


# --- 9. explorer text ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["digits-\udcff", "caf\udce9", "lone \ud800 surrogate"])
def test_explorer_page_with_a_name_that_is_not_utf8(name, tmp_path):
    torch.manual_seed(0)
    vae = small_vae()
    path = pv.explorer.write_html(vae, torch.rand(6, 1, 8, 8).round(), tmp_path / "page.html", dataset=name)
    text = path.read_bytes().decode("utf-8")   # valid UTF-8
    assert "\ufffd" in text or "?" in text


# --- the smaller items -------------------------------------------------------------------------------

def test_overwrite_removes_everything_the_old_run_wrote(digits_run, tmp_path):
    assert exit_and_stderr("sample", digits_run, "--num", "4", "--seed", "3")[0] == 0
    assert exit_and_stderr("explore", digits_run, "--html")[0] == 0
    logs = digits_run / "tensorboard"
    logs.mkdir()
    (logs / "events.out.tfevents.1.host").write_bytes(b"old")
    old = set(os.listdir(digits_run))
    assert {"samples-epoch1-seed3.png", "explorer.html", "samples.png", "tensorboard"} <= old
    code, err = exit_and_stderr("train", *DIGITS, "--hidden", "8", "--latent-dim", "3", "--eval-samples", "2",
                                "--overwrite", "--out", digits_run)
    assert code == 0, err
    new = set(os.listdir(digits_run))
    assert not {"samples-epoch1-seed3.png", "explorer.html", "tensorboard", "latent_manifold.png"} & new
    # a TensorBoard folder holding a user's own files is not the run's to delete
    (digits_run / "tensorboard").mkdir()
    (digits_run / "tensorboard" / "notes.txt").write_text("mine")
    assert exit_and_stderr("train", *DIGITS, "--hidden", "8", "--eval-samples", "2", "--overwrite",
                           "--out", digits_run)[0] == 0
    assert (digits_run / "tensorboard" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("name", ["samples.png", "reconstructions.png", "curves.png", "latent_scatter.png",
                                  "traversal.png", "interpolation.png"])
def test_sample_never_writes_over_the_pictures_training_drew(name, digits_run):
    before = (digits_run / name).read_bytes()
    one_line_error(*exit_and_stderr("sample", digits_run, "--out", digits_run / name), "pictures training drew")
    assert (digits_run / name).read_bytes() == before



@pytest.mark.slow
def test_one_failed_step_warns_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pyro_vae.cli", "train", *DIGITS, "--hidden", "8", "--latent-dim",
                           "2", "--beta", "1e308", "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    # (whether the step warns at all depends on the estimator: Pyro's Trace_ELBO does, the replayed step not)
    assert len(lines) <= 2 and all(line.startswith("pyro-vae: warning: ") for line in lines[:-1]), proc.stderr
    assert lines[-1].startswith("pyro-vae: error: the loss became nan")


def test_repeated_warnings_of_a_failed_step_are_shown_once(tmp_path, monkeypatch):
    def fit(*args, **kwargs):
        for _ in range(12):
            warnings.warn("Encountered NaN: loss", UserWarning)
            warnings.warn("Encountered NaN:\n  loss", UserWarning)
        raise pv.TrainingError("the loss became nan at epoch 1, step 1")
    monkeypatch.setattr(pv, "fit", fit)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = warnings._showwarning_orig   # Python's own display, as in a terminal
        code, err = exit_and_stderr("train", *DIGITS, "--hidden", "8", "--out", tmp_path / "run")
        assert warnings.showwarning is warnings._showwarning_orig   # given back
    assert code == 2
    assert err.splitlines() == ["pyro-vae: warning: Encountered NaN: loss",
                                "pyro-vae: error: the loss became nan at epoch 1, step 1"], err


def test_a_one_image_test_set_gives_no_warning(tmp_path):
    folder = tmp_path / "one"
    image_folder(folder / "train")
    image_folder(folder / "test", count=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, err = exit_and_stderr("train", "--dataset", folder, *DIGITS[2:], "--hidden", "8", "--latent-dim", "2",
                                    "--eval-samples", "2", "--out", tmp_path / "run")
    assert code == 0, err


def test_explore_never_writes_into_another_runs_folder(digits_run, tmp_path):
    other = tmp_path / "other"
    assert exit_and_stderr("train", *DIGITS, "--hidden", "8", "--latent-dim", "2", "--eval-samples", "2",
                           "--out", other)[0] == 0
    before = (other / "traversal.png").read_bytes()
    one_line_error(*exit_and_stderr("explore", digits_run, "--out", other), "another run's folder")
    assert (other / "traversal.png").read_bytes() == before
