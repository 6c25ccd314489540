"""Named recipes: pv.presets.build and pyro-vae train --preset read the same one."""

import json

import pytest
from pyro.infer import RenyiELBO

import pyro_vae as pv
from pyro_vae import cli


def test_best_builds_the_recipe_it_names():
    vae, settings = pv.presets.build("best", (1, 28, 28))
    recipe = pv.presets.RECIPES["best"]
    assert isinstance(vae.prior, pv.priors.VampPrior) and vae.prior.num_pseudo_inputs == recipe["num_pseudo_inputs"]
    assert isinstance(settings["loss"], RenyiELBO) and settings["loss"].num_particles == recipe["num_particles"]
    assert {k: settings[k] for k in ("epochs", "augment", "early_stopping")} == \
        {k: recipe[k] for k in ("epochs", "augment", "early_stopping")}
    default, none = pv.presets.build("default", (1, 8, 8))
    assert none == {} and isinstance(default.prior, pv.priors.StandardNormal) and default.image_shape == (1, 8, 8)
    with pytest.raises(pv.ConfigError, match="unknown preset 'fast'"):
        pv.presets.build("fast")


def test_the_best_settings_train_a_model_with_its_validation_split(digits_binary):
    train, validation, test = pv.data.load("digits", binarize="dynamic", validation=100)
    vae, settings = pv.presets.build("best", train.image_shape)
    history = pv.fit(vae, train, test, validation=validation, progress=False, device="cpu",
                     **{**settings, "epochs": 2})
    assert len(history) == 2 and history[-1]["validation_elbo"] > history[0]["validation_elbo"] - 5
    assert history[-1]["best_epoch"] in (1, 2)


def test_cli_preset_sets_defaults_and_given_flags_win(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--preset", "best", "--dataset", "digits", "--epochs", "1", "--num-pseudo-inputs", "10",
                     "--hidden", "16", "--eval-samples", "1", "--no-progress", "--out", str(out)]) == 0
    assert "150 validation" in capsys.readouterr().out   # early stopping holds out its validation split
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] == "best"
    assert config["vae"]["prior"] == {"class": "VampPrior", "kwargs": {"num_pseudo_inputs": 10}}
    assert config["objective"] == {"name": "iwae", "loss": "RenyiELBO", "num_particles": 5}
    assert (config["fit"]["epochs"], config["fit"]["augment"], config["fit"]["early_stopping"]) == (1, 1, 30)
    with pytest.raises(SystemExit) as stop:   # argparse's own exit, with the one-line message
        cli.main(["train", "--preset", "fastest", "--out", str(tmp_path / "x")])
    assert stop.value.code == 2 and "unknown preset 'fastest'" in capsys.readouterr().err


def test_a_recipe_entry_build_cannot_translate_is_refused(monkeypatch):
    # the CLI would read "hidden" as its flag while build would drop it: the two would train different models
    monkeypatch.setitem(pv.presets.RECIPES, "wide", {"hidden": [800], "epochs": 5})
    with pytest.raises(pv.ConfigError, match="preset 'wide' sets hidden"):
        pv.presets.build("wide")
    settings = pv.presets.fit_settings("best")
    assert set(settings) == {"epochs", "loss", "augment", "early_stopping"} and settings["loss"].num_particles == 5
