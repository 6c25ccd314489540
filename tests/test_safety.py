"""Loading a run folder never executes code from it; broken or mismatched files get clear errors;
config parsing survives arbitrary input."""

import json
import os
import pickle

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
