"""Loading a run folder never executes code from it; broken or mismatched files get clear errors;
config parsing survives arbitrary input."""

import contextlib
import io
import json
import os
import pickle
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyro_vae as pv
from pyro_vae import checkpoint, cli, priors


@pytest.fixture
def run_dir(digits_binary, tmp_path):
    folder = tmp_path / "run"
    vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=3, hidden=(16,))
    pv.fit(vae, digits_binary[0], epochs=1, progress=False, checkpoint_dir=folder)
    return folder


class _Payload:
    """Unpickling this object would create a file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_pickle_is_refused_and_runs_nothing(run_dir, tmp_path):
    marker = tmp_path / "pwned"
    state = checkpoint.load_checkpoint(run_dir / "checkpoint.pt")
    state["history"] = [_Payload(str(marker))]
    with open(run_dir / "checkpoint.pt", "wb") as f:
        torch.save(state, f)                      # a file an attacker could hand over
    with pytest.raises(pv.CheckpointError, match="refusing to load .*pickled objects"):
        pv.load_run(str(run_dir))
    assert not marker.exists()
    # a plain pickle (not even torch's zip format) is refused too
    with open(run_dir / "checkpoint.pt", "wb") as f:
        pickle.dump(_Payload(str(marker)), f)
    with pytest.raises(pv.CheckpointError):
        pv.load_run(str(run_dir))
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0, 100, 0.5])
def test_truncated_checkpoint_is_a_clear_error(run_dir, keep):
    data = (run_dir / "checkpoint.pt").read_bytes()
    size = int(len(data) * keep) if isinstance(keep, float) else keep
    (run_dir / "checkpoint.pt").write_bytes(data[:size])
    with pytest.raises(pv.CheckpointError, match="truncated or corrupt"):
        pv.load_run(str(run_dir))


def test_missing_files_are_clear_errors(run_dir):
    os.remove(run_dir / "checkpoint.pt")
    with pytest.raises(pv.CheckpointError, match="no checkpoint"):
        pv.load_run(str(run_dir))
    (run_dir / "config.json").write_text("{not json")
    with pytest.raises(pv.CheckpointError, match="not valid JSON"):
        pv.load_run(str(run_dir))


@pytest.mark.parametrize("change", [{"latent_dim": 5},
                                    {"prior": {"class": "MixtureOfGaussians", "kwargs": {"num_components": 3}}}],
                         ids=["latent_dim", "prior"])
def test_mismatched_checkpoint_is_a_clear_error(run_dir, change):
    config = json.loads((run_dir / "config.json").read_text())
    config["vae"].update(change)
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(pv.CheckpointError, match="does not match this model"):
        pv.load_run(str(run_dir))


def test_unknown_class_in_config_is_refused(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    config["vae"]["prior"] = {"class": "__import__", "kwargs": {}}
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(pv.ConfigError, match="unknown prior"):
        pv.load_run(str(run_dir))


def test_mixture_prior_needs_a_positive_size():
    with pytest.raises(pv.ConfigError, match="num_components"):
        priors.MixtureOfGaussians(0)


# --- property tests: arbitrary input never crashes with anything but our own errors ---------------

_ARGS = st.lists(st.one_of(
    st.sampled_from(["train", "evaluate", "sample", "--epochs", "--batch-size", "--latent-dim", "--prior", "--lr",
                     "--likelihood", "--binarize", "--seed", "--device", "--num", "mog", "-1", "0", "1e-3",
                     "nan", "inf", "bernoulli", "static", "x"]),
    st.text(max_size=8)), max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_ARGS)
def test_cli_parsing_never_crashes(argv):
    parser = cli.build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:          # argparse's own usage error: exit status 2 with a message
        assert e.code in (0, 2)
        return
    if args.command == "train":
        assert args.epochs > 0 and args.batch_size > 0 and args.lr > 0 and args.latent_dim > 0


_JSONISH = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True),
                                  st.text(max_size=12)),
                        lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                        max_leaves=12)
_KEYS = ["model", "image_shape", "latent_dim", "encoder", "decoder", "prior", "likelihood", "posterior"]


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.sampled_from(_KEYS), _JSONISH, max_size=8))
def test_build_vae_from_arbitrary_config_raises_only_our_errors(config):
    base = pv.VAE(image_shape=(1, 8, 8), latent_dim=2, hidden=(8,)).config
    merged = {**base, **config}
    try:
        pv.build_vae(merged)
    except pv.PyroVAEError:
        pass


# --- config.json abuse: every malformed config is one of our errors, and builds nothing -------------

@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A run written by ``pyro-vae train`` (its config.json has the "data" entry evaluate reads)."""
    folder = tmp_path_factory.mktemp("cli") / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["train", "--dataset", "digits", "--hidden", "16", "--latent-dim", "2", "--epochs", "1",
                         "--eval-samples", "5", "--no-progress", "--out", str(folder)]) == 0
    return folder


@pytest.fixture
def abused(cli_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(cli_run, folder, ignore=shutil.ignore_patterns("*.png"))
    return folder


def _evaluate(folder):
    """``pyro-vae evaluate FOLDER`` in this process: exit code and the lines it printed to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["evaluate", str(folder), "--num-samples", "2", "--no-progress"])
    lines = [line for line in err.getvalue().splitlines() if line.startswith("pyro-vae") or "Traceback" in line]
    return code, lines


def _refused_everywhere(folder, *needles):
    """pv.load_run raises one of our errors (one line) and `pyro-vae evaluate` prints it and exits 2."""
    with pytest.raises((pv.CheckpointError, pv.ConfigError)) as refused:
        pv.load_run(str(folder))
    message = str(refused.value)
    assert "\n" not in message and len(message) < 600 and all(n in message for n in needles), message
    code, lines = _evaluate(folder)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("pyro-vae: error:"), lines
    return message


def _edit_config(folder, change):
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("text,needle", [
    ("[" * 100000, "not valid JSON"),
    ('{"vae": ' + "[" * 500 + "]" * 500 + "}", "nests more than"),
    ('{"vae": {"latent_dim": ' + "7" * 5000 + "}}", "not valid JSON"),
    ('{"vae": {"latent_dim": ' + "7" * 400 + "}}", "not valid JSON"),   # under Python's own limit of 4300 digits
    ("\xff\xfe", "not valid JSON"),
    ("", "not valid JSON"),
], ids=["nested 100000", "nested 500", "5000 digits", "400 digits", "not utf-8", "empty"])
def test_unparseable_config_json(abused, text, needle):
    (abused / "config.json").write_text(text, encoding="latin-1")
    _refused_everywhere(abused, needle)


def test_huge_config_json_is_not_read(abused):
    with open(abused / "config.json", "r+b") as f:
        f.truncate(checkpoint.MAX_JSON_BYTES + 1)   # sparse: no disk used
    _refused_everywhere(abused, "larger than")


WRONG = [None, "x", -1, 2.5, [], {}, True, [1, 2], {"class": 5}]


@pytest.mark.parametrize("key", ["model", "image_shape", "latent_dim", "encoder", "decoder", "prior", "likelihood",
                                 "posterior"])
@pytest.mark.parametrize("value", WRONG, ids=repr)
def test_wrong_types_in_the_vae_entry(abused, key, value):
    _edit_config(abused, lambda c: c["vae"].__setitem__(key, value))
    _refused_everywhere(abused)


@pytest.mark.parametrize("key", ["model", "image_shape", "latent_dim", "encoder", "decoder", "prior", "likelihood",
                                 "posterior"])
def test_missing_keys_in_the_vae_entry(abused, key):
    _edit_config(abused, lambda c: c["vae"].pop(key))
    _refused_everywhere(abused)


@pytest.mark.parametrize("change", [lambda c: c.pop("vae"), lambda c: c.__setitem__("vae", []),
                                    lambda c: c.clear(), lambda c: c.pop("data"), lambda c: c.__setitem__("data", 5)],
                         ids=["no vae", "vae list", "empty", "no data", "data int"])
def test_missing_or_malformed_top_level_entries(abused, change):
    _edit_config(abused, change)
    code, lines = _evaluate(abused)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("pyro-vae: error:"), lines


@pytest.mark.parametrize("key,value", [(k, v) for k in ("dataset", "data_dir", "binarize", "seed") for v in WRONG
                                       if not (k == "data_dir" and (v is None or isinstance(v, str)))])
def test_wrong_types_in_the_data_entry(abused, key, value):
    _edit_config(abused, lambda c: c["data"].__setitem__(key, value))
    code, lines = _evaluate(abused)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("pyro-vae: error:"), lines


def _valid_change(key, value):
    """Values a resumed run may legitimately find in config.json's fit entry (lr and clip_norm may change)."""
    return (key == "lr" and value == 2.5) or (key == "clip_norm" and (value is None or value == 2.5))


@pytest.mark.parametrize("key", ["epochs", "batch_size", "lr", "seed", "world_size", "loss", "clip_norm", "beta",
                                 "warmup"])
@pytest.mark.parametrize("value", WRONG, ids=repr)
def test_wrong_types_in_the_fit_entry_refuse_a_resume(abused, key, value):
    if _valid_change(key, value):
        pytest.skip("a value a resumed run may change to")
    original = json.loads((abused / "config.json").read_text())
    _edit_config(abused, lambda c: c["fit"].__setitem__(key, value))
    folder = checkpoint.RunFolder(abused)
    try:
        with pytest.raises(pv.CheckpointError):   # exactly what `pyro-vae train --resume` does first
            folder.open(original, resume=True)
    finally:
        folder.release()
    assert pv.load_run(str(abused))[2]["epoch"] == 1   # evaluate does not read the fit entry


@pytest.mark.parametrize("changes", [5, "abc", {"a": 1}, [1]], ids=repr)
def test_malformed_changes_refuse_a_resume(abused, changes):
    _edit_config(abused, lambda c: c.__setitem__("changes", changes))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["train", "--dataset", "digits", "--hidden", "16", "--latent-dim", "2", "--epochs", "1",
                         "--eval-samples", "5", "--no-progress", "--out", str(abused), "--resume"])
    assert code == 2 and "'changes' entry" in err.getvalue(), err.getvalue()


@pytest.mark.parametrize("role,spec", [
    ("prior", {"class": "AutoRegressiveNN"}), ("prior", {"class": "Module"}), ("prior", {"class": "__class__"}),
    ("encoder", {"class": "Linear", "kwargs": {"in_features": 64, "out_features": 4}}),
    ("likelihood", {"class": "Normal", "kwargs": {"scale": "learned", "__class__": 1}}),
    ("model", "Module"), ("model", "__builtins__"),
])
def test_non_library_classes_are_refused_and_nothing_is_built(abused, role, spec, monkeypatch):
    import pyro.nn

    def never(*args, **kwargs):
        raise AssertionError("a class named by config.json was constructed")
    # AutoRegressiveNN is what a flow prior would build; nothing may build it for a config that names it
    monkeypatch.setattr(pyro.nn.AutoRegressiveNN, "__init__", never)
    _edit_config(abused, lambda config: config["vae"].__setitem__(role, spec))
    message = _refused_everywhere(abused, "config")
    assert any(n in message for n in ("unknown", "not one of this package's", "invalid")), message
