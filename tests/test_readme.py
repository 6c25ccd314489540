"""The README's promises: the test command CI runs, and the subclassing example, which must really work."""

import os
import re
import subprocess
import sys

import pytest

import pyro_vae as pv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def _code_blocks(text, language):
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_test_command():
    commands = [line for block in _code_blocks(_readme(), "bash") for line in block.splitlines() if "pytest" in line]
    assert len(commands) == 1
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert commands[0].strip() in [line.strip() for line in f]


def test_subclassing_example_trains(digits_binary):
    block = next(b for b in _code_blocks(_readme(), "python") if "class LabelledVAE" in b)
    namespace = {}
    exec(block, namespace)
    vae = namespace["LabelledVAE"](image_shape=(1, 8, 8), latent_dim=2, hidden=(32,))
    history = pv.fit(vae, digits_binary[0], test=digits_binary[1], epochs=2, progress=False)
    terms = pv.evaluate.log_weight_terms(vae, *next(digits_binary[1].batches(5, shuffle=False)))
    assert terms["log_likelihood"].shape == (1, 5)
    assert history[-1]["test_elbo"] > history[0]["test_elbo"]


def test_hook_example_records_the_learning_rate(digits_binary):
    block = next(b for b in _code_blocks(_readme(), "python") if "class RecordLR" in b)
    namespace = {"pv": pv, "vae": pv.VAE(image_shape=(1, 8, 8), latent_dim=2, hidden=(16,)),
                 "train": digits_binary[0].subset(range(256)), "test": digits_binary[1]}
    exec(block.replace("epochs=20", "epochs=2, progress=False"), namespace)
    assert [h["lr"] for h in namespace["history"]] == [1e-3, 1e-3]


@pytest.mark.slow
def test_use_a_trained_model_in_a_fresh_process(tmp_path):
    from pyro_vae import cli
    run = tmp_path / "run"
    assert cli.main(["train", "--dataset", "digits", "--epochs", "1", "--hidden", "16", "--latent-dim", "3",
                     "--eval-samples", "3", "--no-progress", "--out", str(run)]) == 0
    block = next(b for b in _code_blocks(_readme(), "python") if "pv.load_run(" in b and "interpolation" in b)
    block = block.replace("runs/mnist5k-20261201-120000", str(run)) + (
        "\nprint(tuple(codes.shape), tuple(again.shape), tuple(new.shape))\n")
    done = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "(8, 3) (8, 1, 8, 8) (16, 1, 8, 8)"
    assert (tmp_path / "between.png").stat().st_size > 0 and (tmp_path / "traversal.png").stat().st_size > 0
