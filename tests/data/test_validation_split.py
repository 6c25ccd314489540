"""The validation split carved from a training set: stratified, fixed, disjoint, binarized like the test set."""

import json

import numpy as np
import pytest
import torch

import pyro_vae as pv
from pyro_vae import cli


def _rows(images):
    """The images as a set of byte strings (order-free comparison of two datasets' pixels)."""
    return {bytes(row) for row in (images.reshape(len(images), -1) * 255).round().to(torch.uint8).numpy()}


def test_mnist5k_validation_is_carved_from_the_training_digits_stratified_and_fixed():
    train, test = pv.data.load("mnist5k")
    kept, validation, test_again = pv.data.load("mnist5k", validation=400)
    assert (len(kept), len(validation), len(test_again)) == (3600, 400, 1000)
    assert torch.equal(test_again.images, test.images)   # the test set is untouched
    # together the two are the 4,000 training digits, each once
    assert torch.equal(torch.cat([kept.labels, validation.labels]).sort().values, train.labels.sort().values)
    assert _rows(kept.images) | _rows(validation.images) == _rows(train.images)
    # stratified: each class gives its share of 10% to within one image
    share = torch.bincount(train.labels, minlength=10).double() * 0.1
    assert (torch.bincount(validation.labels, minlength=10).double() - share).abs().max() <= 1
    # fixed: another call, or another training seed, holds out the same digits
    _, again, _ = pv.data.load("mnist5k", validation=0.1, seed=7)
    assert torch.equal(again.images, validation.images) and validation.name == "mnist5k/validation"


def test_validation_of_dynamically_binarized_data_is_a_fixed_binary_set():
    train, validation, test = pv.data.load("digits", binarize="dynamic", validation=100)
    assert train.binarize == "dynamic" and validation.binarize == test.binarize == "static"
    assert validation.is_binary
    _, again, _ = pv.data.load("digits", binarize="dynamic", validation=100, seed=3)
    assert torch.equal(again.images, validation.images)   # the training seed does not redraw it


def test_split_indices_cover_the_training_set_once_and_follow_class_sizes():
    labels = np.repeat(np.arange(3), [600, 300, 100])
    keep, held = pv.data.validation_split(len(labels), 100, labels)
    assert len(held) == 100 and np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(1000))
    assert np.bincount(labels[held]).tolist() == [60, 30, 10]
    keep2, held2 = pv.data.validation_split(1000, 100, labels, seed=1)
    assert not np.array_equal(held, held2)   # the seed draws it
    _, plain = pv.data.validation_split(1000, 0.25)
    assert len(plain) == 250


@pytest.mark.parametrize("bad", [0, 1000, 1.0, -0.5, "10", True])
def test_a_validation_request_that_leaves_no_split_is_a_one_line_error(bad):
    with pytest.raises(pv.ConfigError) as error:
        pv.data.validation_split(1000, bad)
    assert "validation" in str(error.value) and "\n" not in str(error.value)


def test_cli_early_stopping_holds_out_a_validation_split_and_records_it(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--dataset", "digits", "--epochs", "3", "--hidden", "16", "--latent-dim", "2",
                     "--early-stopping", "2", "--eval-samples", "2", "--no-progress", "--out", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "1347 train / 150 validation / 300 test" in printed
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["validation"] == pv.data.VALIDATION_FRACTION and config["fit"]["validation"] == 150
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert all(h["validation_elbo"] is not None and h["test_elbo"] is not None for h in history)
    # evaluate reloads the same split: its training set is the 1,347 digits trained on
    assert cli.main(["evaluate", str(run), "--num-samples", "2", "--no-progress"]) == 0

    plain = tmp_path / "plain"
    assert cli.main(["train", "--dataset", "digits", "--epochs", "1", "--hidden", "16", "--latent-dim", "2",
                     "--eval-samples", "1", "--no-progress", "--out", str(plain)]) == 0
    assert "validation" not in json.loads((plain / "config.json").read_text())["data"]
    assert "1497 train / 300 test" in capsys.readouterr().out


def test_cli_early_stopping_with_no_validation_is_refused_in_one_line(tmp_path, capsys):
    code = cli.main(["train", "--dataset", "digits", "--epochs", "2", "--early-stopping", "2", "--validation", "0",
                     "--no-progress", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "validation" in err[0]
