"""Helpers of the tests that run the CLI: in this process (``main_in_process``, ``exit_and_stderr``) or as a user
would (``run_cli``, ``start_cli``), checking that a failure is one line (``one_line``, ``one_line_error``), and
small inputs (``small_vae``, ``image_folder``). The finished smoke run the tests copy is conftest's ``run``."""

import contextlib
import io
import json
import os
import subprocess
import sys
import time
import types

import numpy as np
import pytest

import pyro_vae as pv
from pyro_vae import cli
from pyro_vae.checkpoint import load_checkpoint


#: the smallest run: the flags these tests' runs share (``--epochs`` comes separately)
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


def saved_config(folder):
    return json.loads((folder / "config.json").read_text())


def small_vae():
    return pv.VAE(image_shape=(1, 8, 8), latent_dim=4, hidden=(32,))


def exit_and_stderr(*args):
    """``cli.main`` in this process: exit code and what went to stderr."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as e:   # argparse's usage errors
            code = e.code
    return code, stderr.getvalue()


def one_line_error(code, err, *needles):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


#: the flags of the smallest training run on the digits
DIGITS = ["--dataset", "digits", "--epochs", "1", "--no-progress"]


def image_folder(folder, count=12):
    from PIL import Image
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for i in range(count):
        Image.fromarray(((rng.rand(8, 8) > 0.5) * 255).astype(np.uint8)).save(folder / f"{i:02d}.png")
    return folder
