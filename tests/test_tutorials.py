"""Every tutorial runs to completion in smoke mode (``CI`` set) and writes its figures.

The tutorials are discovered with one glob (``tutorials/[0-9][0-9]_*.py``), so a new ``tutorials/NN_name.py`` is
covered automatically, and a file that does not match the pattern (or is not a runnable script with the
expected structure) makes a test fail instead of silently going untested.
"""

import ast
import os
import subprocess
import sys
from glob import glob
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
PATTERN = "tutorials/[0-9][0-9]_*.py"
COVERED = sorted(glob(PATTERN, root_dir=ROOT))


def _smoke_env(out):
    env = dict(os.environ)
    env["CI"] = "1"
    env["TUTORIAL_OUT"] = str(out)
    env["MPLBACKEND"] = "Agg"
    # the tests share a couple of cores: one thread per process avoids oversubscription
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.mark.slow   # a subprocess per tutorial
@pytest.mark.parametrize("path", COVERED, ids=[Path(p).stem for p in COVERED])
def test_tutorial_runs_in_smoke_mode(path, tmp_path):
    out = tmp_path / "out"
    # both documented ways of choosing the output folder are exercised: TUTORIAL_OUT for half of the
    # tutorials, --out (which must win over TUTORIAL_OUT) for the other half
    use_argument = COVERED.index(path) % 2 == 1
    env = _smoke_env(tmp_path / "ignored" if use_argument else out)
    command = [sys.executable, path] + (["--out", str(out)] if use_argument else [])
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{path} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert "smoke run" in result.stdout, "CI=1 did not select the smoke run"
    pngs = sorted(out.rglob("*.png"))
    assert pngs, f"{path} wrote no PNG into {out}"
    assert all(p.stat().st_size > 0 for p in pngs)
    assert not (tmp_path / "ignored").exists(), "--out must take precedence over TUTORIAL_OUT"


def test_every_tutorial_file_is_covered():
    on_disk = {p.relative_to(ROOT).as_posix() for p in TUTORIALS.glob("*.py") if not p.name.startswith("_")}
    assert on_disk == set(COVERED), (
        f"tutorial files not matching {PATTERN} (so not run by the tests): {sorted(on_disk - set(COVERED))}")
    assert len(COVERED) >= 8
    numbers = [Path(p).name[:2] for p in COVERED]
    assert len(numbers) == len(set(numbers)), f"two tutorials share a number: {numbers}"


@pytest.mark.parametrize("path", COVERED, ids=[Path(p).stem for p in COVERED])
def test_tutorial_structure(path):
    source = (ROOT / path).read_text()
    tree = ast.parse(source)
    docstring = ast.get_docstring(tree)
    assert docstring, f"{path} must start with a module docstring"
    assert tree.body and isinstance(tree.body[0], ast.Expr), f"{path}: the docstring must come first"
    assert "what you will learn" in docstring.lower(), f"{path}: docstring lacks 'What you will learn'"
    cells = [line for line in source.splitlines() if line.startswith("# %%")]
    assert len(cells) >= 3, f"{path} needs '# %%' cells so editors open it as a notebook"
    assert "CI" in source and "TUTORIAL_OUT" in source and "--out" in source
