"""``pyro-vae evaluate|sample|explore RUN --model-class module:Class``: a run trained from Python with a model
class of one's own, loaded by the command line; the class comes from the flag only, never from config.json."""

import contextlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import warnings

import pytest
import torch
from PIL import Image

import pyro_vae as pv
from pyro_vae import cli

# the user's module: two latent groups with priors of their own (a Laplace style, a Normal code)
MODULE = '''
import pyro, pyro.distributions as dist, torch
import pyro_vae as pv

class TwoGroupVAE(pv.VAE):
    top_sites = ("z_style", "z")

    def __init__(self, image_shape=(1, 8, 8), latent_dim=4, style_dim=2, **parts):
        super().__init__(image_shape=image_shape, latent_dim=latent_dim, **parts)
        self.style_dim = style_dim

    def model(self, x, y=None, covariates=None):
        self.register()
        s = self.style_dim
        with pyro.plate("data", x.shape[-4]):
            style = pyro.sample("z_style", dist.Laplace(x.new_zeros(s), 0.5).to_event(1))
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim - s), 2.0).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(torch.cat([style, z], -1))), obs=x)

    def guide(self, x, y=None, covariates=None):
        self.register()
        s = self.style_dim
        with pyro.plate("data", x.shape[-4]):
            loc, scale = self.encoder(x)
            pyro.sample("z_style", dist.Normal(loc[..., :s], scale[..., :s]).to_event(1))
            pyro.sample("z", dist.Normal(loc[..., s:], scale[..., s:]).to_event(1))

    @property
    def config(self):
        return {**super().config, "style_dim": self.style_dim}

not_a_class = 3
'''


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``(folder of mymodels.py, run folder)``: TwoGroupVAE trained one epoch on 48 real 8x8 digits."""
    home = tmp_path_factory.mktemp("user")
    (home / "mymodels.py").write_text(MODULE)
    spec = importlib.util.spec_from_file_location("_test_mymodels", home / "mymodels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    train, test = pv.data.load("digits", binarize="dynamic")
    torch.manual_seed(0)
    vae = module.TwoGroupVAE(hidden=(16,))
    folder = home / "run"
    # the data entry is what `pyro-vae train` records, so the commands can load the test set
    with pytest.warns(pv.train.RebuildWarning, match="model_class=TwoGroupVAE"):
        pv.fit(vae, train.subset(range(48)), test=test.subset(range(32)), epochs=1, batch_size=16,
               progress=False, device="cpu", checkpoint_dir=folder, eval_samples=2, pictures=False,
               run_info={"data": {"dataset": "digits", "binarize": "dynamic", "seed": 0}})
    return home, folder


def run_cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "pyro_vae.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)


@pytest.fixture
def in_folder(monkeypatch):
    """``cli.main`` run in-process from a folder, with sys.path and the imported user modules put back after."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield lambda folder: monkeypatch.chdir(folder)
    for name in set(sys.modules) - before:
        if name.startswith("_pyro_vae_model_class_") or name in ("mymodels", "TwoGroupVAE"):
            del sys.modules[name]


def error_of(*args):
    """``cli.main(args)`` in this process: (exit code, stderr)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main([str(a) for a in args])
    return code, stderr.getvalue()


@pytest.mark.slow   # three commands in fresh interpreters
def test_evaluate_sample_and_explore_load_the_users_class(run, tmp_path):
    home, folder = run
    done = run_cli("evaluate", folder, "--model-class", "mymodels:TwoGroupVAE", "--num-samples", "3",
                   "--no-progress", cwd=home)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((folder / "metrics.json").read_text())
    (evaluation,) = metrics["evaluations"]
    assert evaluation["epoch"] == 1 and evaluation["num_samples"] == 3 and evaluation["dataset"] == "digits/test"
    assert evaluation["log_likelihood"] >= evaluation["elbo"] - 5.0 and evaluation["elbo"] < 0

    # a path to the file, from another folder
    done = run_cli("sample", folder, "--model-class", f"{home / 'mymodels.py'}:TwoGroupVAE", "--num", "9",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    png = folder / "samples-epoch1-seed0.png"
    assert f"wrote {png}" in done.stdout
    with Image.open(png) as image:
        assert image.size[0] >= 100

    out = tmp_path / "pictures"
    done = run_cli("explore", folder, "--model-class", "mymodels:TwoGroupVAE", "--out", out, "--html", cwd=home)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} == {"interpolation.png", "traversal.png", "explorer.html"}
    page = (out / "explorer.html").read_text(encoding="utf-8")
    assert 'aria-label="z_style[0]"' in page and "latent z_style: 2 dimensions, z: 2 dimensions" in page


def test_a_run_of_a_users_class_without_the_flag_names_the_flag(run, tmp_path, in_folder):
    home, folder = run
    # a module named like the recorded class, which would leave a mark if anything imported it
    (tmp_path / "TwoGroupVAE.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
    in_folder(tmp_path)
    for command in (["evaluate", folder], ["sample", folder], ["explore", folder]):
        code, err = error_of(*command)
        assert code == 2
        assert err.count("\n") == 1 and "TwoGroupVAE" in err
        assert "--model-class module:TwoGroupVAE" in err and "path/to/file.py:TwoGroupVAE" in err
    assert not (tmp_path / "imported").exists()   # config.json names the class; nothing imports it


@pytest.mark.parametrize("spec, match", [
    ("mymodels", "is not module:Class"),
    ("mymodels:", "is not module:Class"),
    (":TwoGroupVAE", "is not module:Class"),
    ("my-models:TwoGroupVAE", "names neither a module nor a .py file"),
    ("nosuchmodule:TwoGroupVAE", "no module 'nosuchmodule' in the current folder or on sys.path.*path/to/"
                                 "nosuchmodule.py:TwoGroupVAE"),
    ("nowhere/mymodels.py:TwoGroupVAE", "there is no file nowhere/mymodels.py"),
    ("mymodels:TwoGroupVA", r"mymodels has no attribute 'TwoGroupVA' \(its model classes: TwoGroupVAE\)"),
    ("mymodels:not_a_class", "not_a_class is a int, not a class"),
    ("broken:Model", r"importing broken failed \(ZeroDivisionError: division by zero\); fix that module"),
    ("needs:Model", r"it imports 'no_such_dependency', which is not installed"),
])
def test_a_bad_model_class_is_one_line(run, spec, match, in_folder):
    home, folder = run
    (home / "broken.py").write_text("1 / 0\n")
    (home / "needs.py").write_text("import no_such_dependency\n")
    in_folder(home)
    code, err = error_of("evaluate", folder, "--model-class", spec)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("pyro-vae: error: --model-class")
    assert re.search(match, err), err


def test_the_flag_must_name_the_class_the_run_was_trained_with(run, tmp_path, in_folder):
    home, folder = run
    (tmp_path / "others.py").write_text("import pyro_vae as pv\nclass OtherVAE(pv.VAE):\n    pass\n")
    in_folder(tmp_path)
    code, err = error_of("sample", folder, "--model-class", "others:OtherVAE", "--out", tmp_path / "s.png")
    assert code == 2 and "trained with the model class TwoGroupVAE, not OtherVAE" in err
    assert "--model-class module:TwoGroupVAE" in err and not (tmp_path / "s.png").exists()
    builtin = tmp_path / "builtin"
    digits = pv.data.load("digits", binarize="dynamic")[0].subset(range(16))
    pv.fit(pv.VAE(image_shape=(1, 8, 8), latent_dim=2, hidden=(8,)), digits,
           epochs=1, progress=False, device="cpu", checkpoint_dir=builtin, pictures=False)
    code, err = error_of("sample", builtin, "--model-class", "others:OtherVAE", "--out", tmp_path / "s.png")
    assert code == 2 and "trained with pyro_vae's own VAE, not OtherVAE; drop --model-class" in err


def test_a_wrapped_pair_loads_through_the_flag(tmp_path, in_folder):
    # Pyro's tutorial VAE (tests/fixtures), through pv.wrap: config.json names its module class, VAE
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tutorial = os.path.join(tests, "fixtures", "pyro_tutorial_vae.py")
    spec = importlib.util.spec_from_file_location("_test_pyro_tutorial_vae", tutorial)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    train, _ = pv.data.load("mnist5k", binarize="dynamic")
    sizes = {"z_dim": 3, "hidden_dim": 16}
    vae = pv.wrap(module.VAE(**sizes), image_shape=(1, 28, 28), init_kwargs=sizes)
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pv.train.RebuildWarning)
        pv.fit(vae, train.subset(range(32)), epochs=1, batch_size=16, progress=False, device="cpu",
               checkpoint_dir=run, pictures=False)
    in_folder(tmp_path)
    code, err = error_of("sample", run, "--out", tmp_path / "s.png")
    assert code == 2 and "a model class of your own, VAE; pass it with --model-class module:VAE" in err
    assert error_of("sample", run, "--model-class", f"{tutorial}:VAE", "--num", "4", "--out", tmp_path / "s.png") \
        == (0, "")
    with Image.open(tmp_path / "s.png") as image:
        assert image.size[0] >= 100
