"""The README's promises: the test command CI runs, and the subclassing example, which must really work."""

import os
import re

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
    assert history[-1]["test_elbo"] > history[0]["test_elbo"] - 5.0
