"""What users of a VAE toolkit expect around a training run (the training options), on real 8x8 digits:
TensorBoard logs, learning-rate schedules, early stopping with the best weights kept,
interpolation/traversal/explorer from the command line, and a trained run used from Python in a fresh
interpreter."""

import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

import pyro

import pyro_vae as pv
from pyro_vae import cli
from pyro_vae.checkpoint import load_checkpoint

SCALARS = ("train/objective", "train/lr", "test/elbo", "test/reconstruction", "test/kl", "test/active_units")
PADDING, TILE = 2, 8   # pyro_vae.plots.image_grid's white border, and the digits' size


def small_vae(**kwargs):
    return pv.VAE(image_shape=(1, 8, 8), **{"latent_dim": 4, "hidden": (32,), **kwargs})


def _weights(vae):
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _events(log_dir):
    """Everything TensorBoard itself would show for ``log_dir`` (no sampling of long series)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def _steps(events, tag, kind="Scalars"):
    return [e.step for e in getattr(events, kind)(tag)]


def _values(events, tag):
    return [e.value for e in events.Scalars(tag)]


def _png(image_event):
    """An image event's picture, decoded: ``(H, W, 3)`` uint8."""
    with Image.open(io.BytesIO(image_event.encoded_image_string)) as image:
        assert image.format == "PNG"
        pixels = np.array(image.convert("RGB"))
    assert pixels.shape == (image_event.height, image_event.width, 3)
    return pixels


def _grid_size(rows, columns):
    """(height, width) of ``rows x columns`` tiles of digits with image_grid's padding."""
    return rows * (TILE + PADDING) + PADDING, columns * (TILE + PADDING) + PADDING


def _cosine(lr0, epochs):
    """The learning rate of each epoch under cosine decay to 0 over ``epochs``, in closed form."""
    return [lr0 * (1 + math.cos(math.pi * t / epochs)) / 2 for t in range(epochs)]


# --- TensorBoard ----------------------------------------------------------------------------------


def test_tensorboard_logs_every_epoch_and_the_pictures(digits_binary, tmp_path):
    train, test = digits_binary
    log = tmp_path / "tb"
    pyro.set_rng_seed(0)
    vae = small_vae()
    halve = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    history = pv.fit(vae, train, test=test, epochs=5, lr=4e-3, progress=False, scheduler=halve,
                     hooks=[pv.hooks.TensorBoard(log, image_every=2, num_images=6)])
    events = _events(log)
    assert set(SCALARS) <= set(events.Tags()["scalars"])
    for tag in SCALARS:
        assert _steps(events, tag) == [1, 2, 3, 4, 5], tag   # one value per epoch, none twice
    assert _values(events, "train/objective") == pytest.approx([h["train_elbo"] for h in history], rel=1e-6)
    assert _values(events, "test/elbo") == pytest.approx([h["test_elbo"] for h in history], rel=1e-6)
    # the rate each epoch trained with, which the schedule changed
    assert _values(events, "train/lr") == pytest.approx([4e-3, 4e-3, 2e-3, 2e-3, 1e-3], rel=1e-6)
    assert _values(events, "train/lr") == pytest.approx([h["lr"] for h in history], rel=1e-6)
    parts = zip(_values(events, "test/reconstruction"), _values(events, "test/kl"), _values(events, "test/elbo"))
    assert all(kl > 0 and rec - kl == pytest.approx(elbo, abs=1e-3) for rec, kl, elbo in parts)
    active = _values(events, "test/active_units")
    assert all(a in range(5) for a in active)
    assert active[-1] == pv.evaluate.active_units(vae, test)   # the model as it ended

    # pictures every image_every epochs and at the last one
    assert set(events.Tags()["images"]) == {"reconstructions", "samples"}
    assert _steps(events, "reconstructions", "Images") == [2, 4, 5]
    assert _steps(events, "samples", "Images") == [2, 4, 5]
    for shown in events.Images("reconstructions"):
        pixels = _png(shown)
        assert pixels.shape[:2] == _grid_size(2, 6)   # the 6 test images above their reconstructions
        for i in range(6):
            top = pixels[PADDING:PADDING + TILE, PADDING + i * (TILE + PADDING):][:, :TILE, 0]
            assert np.array_equal(top, (test.images[i, 0] * 255).round().numpy().astype(np.uint8))
    assert all(_png(e).shape[:2] == _grid_size(2, 4) for e in events.Images("samples"))   # 6 samples, 4 a row


def test_tensorboard_of_a_resumed_run_continues_the_same_log(digits_binary, tmp_path):
    train, test = digits_binary
    run, log = tmp_path / "run", tmp_path / "tb"
    options = dict(test=test, seed=2, progress=False, eval_samples=0, pictures=False, checkpoint_dir=run)

    def board():
        return [pv.hooks.TensorBoard(log, image_every=2, num_images=4)]

    pv.fit(small_vae(), train, epochs=2, hooks=board(), **options)
    epoch_2 = (run / "checkpoint.pt").read_bytes()
    first = pv.fit(small_vae(), train, epochs=4, resume=True, hooks=board(), **options)
    events = _events(log)
    assert all(_steps(events, tag) == [1, 2, 3, 4] for tag in SCALARS)
    assert _values(events, "train/objective") == pytest.approx([h["train_elbo"] for h in first], rel=1e-6)
    assert _steps(events, "samples", "Images") == [2, 4]

    # back to the copy of epoch 2 and on with another rate: the log's old epochs 3 and 4 give way to the new
    (run / "checkpoint.pt").write_bytes(epoch_2)
    second = pv.fit(small_vae(), train, epochs=4, lr=3e-3, resume=True, hooks=board(), **options)
    assert second[2]["train_elbo"] != first[2]["train_elbo"]
    events = _events(log)
    for tag in SCALARS:
        assert _steps(events, tag) == [1, 2, 3, 4], tag
    assert _values(events, "train/objective") == pytest.approx([h["train_elbo"] for h in second], rel=1e-6)
    assert _values(events, "test/elbo") == pytest.approx([h["test_elbo"] for h in second], rel=1e-6)
    assert _values(events, "train/lr") == pytest.approx([1e-3, 1e-3, 3e-3, 3e-3], rel=1e-6)
    assert _steps(events, "reconstructions", "Images") == [2, 4]


# --- learning-rate schedules ---------------------------------------------------------------------


def test_cosine_schedule_follows_the_closed_form(digits_binary):
    epochs, lr0 = 6, 5e-3
    history = pv.fit(small_vae(), digits_binary[0], epochs=epochs, lr=lr0, progress=False,
                     scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs))
    assert [h["lr"] for h in history] == pytest.approx(_cosine(lr0, epochs), rel=1e-9, abs=1e-15)
    assert history[-1]["train_elbo"] > history[0]["train_elbo"]


class RecordingPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """ReduceLROnPlateau that remembers what it was fed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fed = []

    def step(self, metrics, epoch=None):
        self.fed.append(metrics)
        super().step(metrics)


def test_plateau_schedule_is_fed_the_negative_validation_elbo(digits_binary):
    train, test = digits_binary
    keep, held = pv.data.validation_split(len(train), 0.1, train.labels)
    train, validation = train.subset(keep), test.subset(range(150))
    made = []

    def plateau(opt):
        made.append(RecordingPlateau(opt, factor=0.5, patience=0))
        return made[-1]

    lr0 = 3e-3
    history = pv.fit(small_vae(), train, test=test.subset(range(150, 300)), epochs=8, lr=lr0, progress=False,
                     scheduler=plateau, validation=validation)
    # not the test ELBO, not the training objective, not the ELBO itself
    assert made[0].fed == [-h["validation_elbo"] for h in history]
    assert made[0].fed != [-h["test_elbo"] for h in history]
    # the rule of ReduceLROnPlateau (mode min, relative threshold 1e-4, patience 0) applied by hand
    best, lr, expected = math.inf, lr0, []
    for loss in made[0].fed:
        expected.append(lr)
        if loss < best * (1 - 1e-4):
            best = loss
        else:
            lr *= 0.5
    assert [h["lr"] for h in history] == pytest.approx(expected, rel=1e-12)


def test_plateau_schedule_halves_the_rate_when_the_validation_elbo_stalls(digits_binary):
    train, test = digits_binary
    # a rate so small that the weights hardly move: the validation ELBO only wobbles by its Monte Carlo noise,
    # never by the one nat that counts as an improvement here
    history = pv.fit(small_vae(), train, validation=test, epochs=5, lr=1e-5, progress=False,
                     scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(
                         opt, factor=0.5, patience=0, threshold=1.0, threshold_mode="abs"))
    elbos = [h["validation_elbo"] for h in history]
    assert max(elbos) - min(elbos) < 1.0
    # epoch 1 sets the first best; every later one is no better, and patience 0 halves the rate straight away
    assert [h["lr"] for h in history] == pytest.approx([1e-5, 1e-5, 5e-6, 2.5e-6, 1.25e-6], rel=1e-12)


def test_plateau_schedule_without_a_validation_set_watches_the_training_objective(digits_binary):
    train, test = digits_binary
    made = []

    def plateau(opt):
        made.append(RecordingPlateau(opt, factor=0.5, patience=0))
        return made[-1]

    history = pv.fit(small_vae(), train, test=test, epochs=3, lr=3e-3, progress=False, scheduler=plateau)
    assert made[0].fed == [-h["train_elbo"] for h in history]   # the test set that is scored is never read


def test_resume_with_a_schedule_is_exact(digits_binary, tmp_path):
    train, test = digits_binary
    cosine = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    options = dict(test=test, seed=5, lr=4e-3, progress=False, eval_samples=0, pictures=False, scheduler=cosine)
    pyro.set_rng_seed(5)
    straight = small_vae()
    full = pv.fit(straight, train, epochs=4, checkpoint_dir=tmp_path / "a", **options)

    pyro.set_rng_seed(5)
    pv.fit(small_vae(), train, epochs=2, checkpoint_dir=tmp_path / "b", **options)
    state = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert state["hooks"]["lr_schedule"]["last_epoch"] == 2 and state["hooks"]["lr_schedule"]["T_max"] == 4
    again = small_vae()
    resumed = pv.fit(again, train, epochs=4, checkpoint_dir=tmp_path / "b", resume=True, **options)
    assert [h["epoch"] for h in resumed] == [1, 2, 3, 4]
    for key in ("train_elbo", "test_elbo", "lr"):
        assert [h[key] for h in resumed] == [h[key] for h in full], key
    assert [h["lr"] for h in full] == pytest.approx(_cosine(4e-3, 4), rel=1e-9)   # the schedule was not restarted
    assert _same_weights(_weights(again), _weights(straight))
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["hooks"]["lr_schedule"]["last_epoch"] == 4


def test_resuming_a_scheduled_run_with_another_rate_is_refused(digits_binary, tmp_path):
    cosine = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3)
    options = dict(progress=False, eval_samples=0, pictures=False, scheduler=cosine, checkpoint_dir=tmp_path)
    pv.fit(small_vae(), digits_binary[0], epochs=1, **options)
    with pytest.raises(pv.CheckpointError, match="learning-rate schedule.*same lr"):
        pv.fit(small_vae(), digits_binary[0], epochs=3, lr=1e-4, resume=True, **options)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1   # nothing was trained


# --- early stopping -------------------------------------------------------------------------------

# 32 training digits and a large rate: the validation ELBO levels off after a dozen epochs
EARLY = dict(epochs=40, batch_size=32, lr=0.04, seed=0, progress=False, eval_samples=0, pictures=False)
PATIENCE = 2


def _early_stopped(digits, run, **options):
    train, test = digits
    pyro.set_rng_seed(0)
    vae = small_vae()
    history = pv.fit(vae, train.subset(range(32)), validation=test, checkpoint_dir=run, early_stopping=PATIENCE,
                     **{**EARLY, **options})
    return vae, history


def _best(history):
    """The epoch of the best validation ELBO, the first one if several tie (only a better one counts)."""
    elbos = [h["validation_elbo"] for h in history]
    return elbos.index(max(elbos)) + 1


def test_early_stopping_stops_after_patience_and_ends_with_the_best_weights(digits_binary, tmp_path):
    run = tmp_path / "run"
    vae, history = _early_stopped(digits_binary, run)
    best = _best(history)
    assert len(history) < EARLY["epochs"]
    assert len(history) == best + PATIENCE   # stopped after PATIENCE epochs without a better validation ELBO
    # each record names the best epoch so far
    assert [h["best_epoch"] for h in history] == [_best(history[:i]) for i in range(1, len(history) + 1)]

    saved = load_checkpoint(run / "best.pt", best=True)
    assert saved["epoch"] == best and saved["validation_elbo"] == history[best - 1]["validation_elbo"]
    assert _same_weights(_weights(vae), saved["model"])
    last = load_checkpoint(run / "checkpoint.pt")
    assert last["epoch"] == len(history) and not _same_weights(_weights(vae), last["model"])
    assert json.loads((run / "metrics.json").read_text())["best_epoch"] == best

    # the same run trained for exactly `best` epochs, without early stopping, ends with the same weights (saved to
    # a folder too: see test_saving_to_a_folder_leaves_the_random_stream_alone)
    pyro.set_rng_seed(0)
    again = small_vae()
    replay = pv.fit(again, digits_binary[0].subset(range(32)), validation=digits_binary[1],
                    checkpoint_dir=tmp_path / "b", **{**EARLY, "epochs": best})
    assert [h["validation_elbo"] for h in replay] == [h["validation_elbo"] for h in history[:best]]
    assert _same_weights(_weights(again), _weights(vae))

    loaded, _, state = pv.load_run(run)   # best.pt by default
    assert state["epoch"] == best and _same_weights(_weights(loaded), _weights(vae))
    loaded, _, state = pv.load_run(run, best=False)
    assert state["epoch"] == len(history) and _same_weights(_weights(loaded), last["model"])


def test_resuming_a_run_that_stopped_trains_nothing_more(digits_binary, tmp_path):
    run = tmp_path / "run"
    vae, history = _early_stopped(digits_binary, run)
    best = _best(history)
    last = (run / "checkpoint.pt").read_bytes()
    pyro.set_rng_seed(1)   # other starting weights, which the resumed run must replace
    again = small_vae()
    resumed = pv.fit(again, digits_binary[0].subset(range(32)), validation=digits_binary[1], checkpoint_dir=run,
                     resume=True, early_stopping=PATIENCE, **{**EARLY, "epochs": 60})
    assert resumed == history
    assert (run / "checkpoint.pt").read_bytes() == last
    assert _same_weights(_weights(again), _weights(vae))   # the best epoch's, as when it stopped
    assert pv.load_run(run)[2]["epoch"] == best


@pytest.mark.parametrize("test", [False, True])
def test_early_stopping_without_a_validation_set_is_a_one_line_error(digits_binary, tmp_path, test):
    # a test set alone is not enough: early stopping on it would select on the images that are then scored
    with pytest.raises(pv.ConfigError) as error:
        pv.fit(small_vae(), digits_binary[0], test=digits_binary[1] if test else None, epochs=2, early_stopping=3,
               progress=False, checkpoint_dir=tmp_path)
    assert "validation" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_early_stopping_reads_only_the_validation_split(digits_binary, tmp_path):
    """Swapping the test set for other images, or dropping it, changes nothing of the run but its test
    ELBOs: the epochs trained, the best epoch (the validation ELBO's) and the final weights are the same."""
    train, test = digits_binary
    keep, held = pv.data.validation_split(len(train), 150, train.labels)
    train, validation = train.subset(keep[:64]), train.subset(held)
    noise = pv.data.from_tensor(torch.rand(150, *train.image_shape, generator=torch.Generator().manual_seed(3)),
                                binarize="static")
    runs = []
    for scored in (test, noise, None):
        pyro.set_rng_seed(0)
        vae = small_vae()
        history = pv.fit(vae, train, test=scored, validation=validation, early_stopping=PATIENCE,
                         **{**EARLY, "lr": 0.05})
        runs.append((history, _weights(vae)))
    (first, weights), *others = runs
    assert len(first) < EARLY["epochs"] and len(first) == _best(first) + PATIENCE
    assert first[-1]["best_epoch"] == _best(first)
    assert [h["test_elbo"] for h in first] != [h["test_elbo"] for h in others[0][0]]   # other images were scored
    drop = ("test_elbo", "seconds")
    for history, other in others:
        assert [{k: v for k, v in h.items() if k not in drop} for h in history] == \
            [{k: v for k, v in h.items() if k not in drop} for h in first]
        assert _same_weights(other, weights)


def test_saving_to_a_folder_leaves_the_random_stream_alone(digits_binary, tmp_path):
    runs = []
    for folder in (None, tmp_path / "run"):
        pyro.set_rng_seed(0)
        vae = small_vae()
        history = pv.fit(vae, digits_binary[0], epochs=2, progress=False, checkpoint_dir=folder, eval_samples=0,
                         pictures=False)
        runs.append(([h["train_elbo"] for h in history], _weights(vae)))
    assert runs[0][0] == runs[1][0]
    assert _same_weights(runs[0][1], runs[1][1])


# --- the command line: one run with every option of the training options -------------------------------------

CLI_EPOCHS = 30
CLI_LR = 0.03


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """``pyro-vae train --tensorboard --lr-schedule cosine --early-stopping 2`` on 200 digits (180 train / 20 test,
    as a .npz file), which early stopping ends after about 18 epochs: (folder, stdout)."""
    folder = tmp_path_factory.mktemp("cli")
    grey, _ = pv.data.load("digits", binarize="none")
    data = folder / "digits200.npz"
    np.savez(data, images=grey.images[:200].numpy(), labels=grey.labels[:200].numpy())
    run = folder / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["train", "--dataset", str(data), "--epochs", str(CLI_EPOCHS), "--hidden", "32",
                         "--latent-dim", "4", "--lr", str(CLI_LR), "--batch-size", "32", "--lr-schedule", "cosine",
                         "--early-stopping", "2", "--tensorboard", "--eval-samples", "10", "--no-progress",
                         "--out", str(run)])
    assert code == 0
    return run, printed.getvalue()


def _metrics(run):
    return json.loads((run / "metrics.json").read_text())


def test_cli_early_stopping_scores_the_best_epoch(cli_run):
    run, printed = cli_run
    metrics = _metrics(run)
    history, best = metrics["history"], metrics["best_epoch"]
    assert len(history) < CLI_EPOCHS and len(history) == best + 2 and best == _best(history)
    assert metrics["test"]["epoch"] == best and metrics["test"]["num_samples"] == 10
    assert load_checkpoint(run / "best.pt", best=True)["epoch"] == best
    assert f"epoch {best})" in printed and "log p(x)" in printed
    config = json.loads((run / "config.json").read_text())
    assert config["fit"]["early_stopping"] == 2


def test_cli_cosine_schedule_is_recorded(cli_run):
    run, _ = cli_run
    config = json.loads((run / "config.json").read_text())
    assert config["fit"]["scheduler"] == "cosine" and config["fit"]["lr"] == CLI_LR
    history = _metrics(run)["history"]
    # decays to 0 over --epochs, though early stopping ended the run before
    assert [h["lr"] for h in history] == pytest.approx(_cosine(CLI_LR, CLI_EPOCHS)[:len(history)], rel=1e-9)


def test_cli_tensorboard_logs_into_the_run_folder(cli_run):
    run, _ = cli_run
    history = _metrics(run)["history"]
    epochs = len(history)
    events = _events(run / "tensorboard")
    for tag in SCALARS:
        assert _steps(events, tag) == list(range(1, epochs + 1)), tag
    assert _values(events, "test/elbo") == pytest.approx([h["test_elbo"] for h in history], rel=1e-6)
    assert _values(events, "train/lr") == pytest.approx([h["lr"] for h in history], rel=1e-6)
    pictured = [e for e in range(1, epochs + 1) if e % 5 == 0] + [epochs]   # every 5 epochs and the last
    assert _steps(events, "reconstructions", "Images") == sorted(set(pictured))
    assert all(_png(e).shape[:2] == _grid_size(2, 16) for e in events.Images("reconstructions"))
    assert all(_png(e).shape[:2] == _grid_size(4, 4) for e in events.Images("samples"))


@pytest.mark.parametrize("schedule", ["plateau", "constant"])
def test_cli_other_schedules(schedule, tmp_path):
    run, log = tmp_path / "run", tmp_path / "logs"
    assert cli.main(["train", "--dataset", "digits", "--epochs", "2", "--hidden", "16", "--latent-dim", "2",
                     "--lr-schedule", schedule, "--tensorboard", str(log), "--eval-samples", "2", "--no-progress",
                     "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    history = _metrics(run)["history"]
    if schedule == "plateau":
        assert config["fit"]["scheduler"] == "plateau"
        assert [h["lr"] for h in history] == [1e-3, 1e-3]   # halves only after 5 epochs without progress
    else:
        assert "scheduler" not in config["fit"]
        assert all(h.get("lr", 1e-3) == 1e-3 for h in history)
    # --tensorboard DIR: the log goes there, not into the run folder
    assert not (run / "tensorboard").exists()
    assert _values(_events(log), "train/lr") == pytest.approx([1e-3, 1e-3])


# --- interpolation, traversal and the explorer from the command line --------------------------------


class _Refs(HTMLParser):
    """Every URL a page refers to (src, href, ...) and its tag names."""

    def __init__(self, text):
        super().__init__()
        self.urls, self.tags = [], []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [value for name, value in attrs if name in ("src", "href", "srcset", "data", "action", "poster")]


def _check_page(path):
    text = path.read_text(encoding="utf-8")
    page = _Refs(text)
    assert "img" in page.tags and "script" in page.tags and "input" in page.tags
    assert page.urls and all(u.startswith("data:image/png;base64,") for u in page.urls)   # no file, no network
    assert not {"link", "iframe", "object", "embed"} & set(page.tags)
    assert not re.search(r"https?://|url\(|@import", text.replace("http://www.w3.org", ""))
    return page


def _is_png(path):
    with Image.open(path) as image:
        return image.format == "PNG" and image.size[0] > 0


def test_cli_train_writes_and_explore_rewrites_the_pictures(cli_run, tmp_path):
    run, _ = cli_run
    trained = {name: (run / name).read_bytes() for name in ("interpolation.png", "traversal.png")}
    assert all(_is_png(run / name) for name in trained)
    for name in trained:
        (run / name).unlink()
    assert cli.main(["explore", str(run)]) == 0
    # the same pictures again: the run's best weights, the same test images
    assert {name: (run / name).read_bytes() for name in trained} == trained
    assert not (run / "explorer.html").exists()

    out = tmp_path / "explored"
    assert cli.main(["explore", str(run), "--html", "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["explorer.html", "interpolation.png", "traversal.png"]
    assert (out / "interpolation.png").read_bytes() == trained["interpolation.png"]
    _check_page(out / "explorer.html")
    assert not (run / "explorer.html").exists()


@pytest.mark.parametrize("kind", ["vae", "cvae", "m2", "hvae"])
def test_every_model_kind_explores_from_the_cli(kind, tmp_path):
    run = tmp_path / kind
    extra = {"m2": ["--labels", "20"], "hvae": ["--top-latent-dim", "2"]}.get(kind, [])
    assert cli.main(["train", "--model", kind, "--dataset", "digits", "--epochs", "1", "--hidden", "16",
                     "--latent-dim", "3", "--eval-samples", "2", "--no-progress", "--out", str(run), *extra]) == 0
    assert {"interpolation.png", "traversal.png"} <= set(os.listdir(run))
    assert cli.main(["explore", str(run), "--html"]) == 0
    assert all(_is_png(run / name) for name in ("interpolation.png", "traversal.png"))
    page = _check_page(run / "explorer.html")
    assert page.tags.count("input") >= 2   # a slider per traversed dimension and one for the interpolation


# --- a trained run used from Python, in a new interpreter ----------------------------------------

#: what README's "Use a trained model" shows, with the run folder's path filled in
USE_A_TRAINED_MODEL = """
import torch
import pyro_vae as pv

vae, config, state = pv.load_run(RUN)                      # best epoch's weights if early-stopped
train, test = pv.data.load(config["data"]["dataset"], binarize=config["data"]["binarize"])
x = test.images[:8]
with torch.no_grad():
    codes = vae.encode(x)[0]                   # posterior means, (8, latent_dim)
    again = vae.reconstruct(x)                 # (8, 1, H, W)
    new = vae.sample(16)                       # mean images of 16 draws from the model
pv.plots.interpolation(vae, x[0], x[1], steps=10, path=OUT / "between.png")
pv.plots.traversal(vae, x[0], data=test, path=OUT / "traversal.png")  # one row per most active latent unit
print("epoch", state["epoch"], "codes", tuple(codes.shape), "again", tuple(again.shape), "new", tuple(new.shape))
print("ranges", all(0 <= float(t.min()) and float(t.max()) <= 1 for t in (again, new)))
print("z0", codes[0].tolist())
"""


@pytest.mark.slow   # a new interpreter imports torch and Pyro: about 4 s
def test_a_trained_run_is_usable_from_a_fresh_interpreter(cli_run, tmp_path):
    run, _ = cli_run
    code = f"from pathlib import Path\nRUN = {str(run)!r}\nOUT = Path({str(tmp_path)!r})\n" + USE_A_TRAINED_MODEL
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    best = _metrics(run)["best_epoch"]
    assert lines[0] == f"epoch {best} codes (8, 4) again (8, 1, 8, 8) new (16, 1, 8, 8)"
    assert lines[1] == "ranges True"
    assert _is_png(tmp_path / "between.png") and _is_png(tmp_path / "traversal.png")
    # the fresh interpreter's codes are this one's, from the best weights
    vae, config, _ = pv.load_run(run)
    _, test = pv.data.load(config["data"]["dataset"], binarize="dynamic")
    with torch.no_grad():
        z0 = vae.encode(test.images[:1])[0][0]
    assert json.loads(lines[2][len("z0 "):]) == pytest.approx(z0.tolist(), abs=1e-6)


def test_cli_cosine_run_resumes_only_with_its_own_epochs(cli_run, capsys):
    run, _ = cli_run
    before = (run / "checkpoint.pt").read_bytes()
    code = cli.main(["train", "--dataset", str(run.parent / "digits200.npz"), "--epochs", str(CLI_EPOCHS + 10),
                     "--hidden", "32", "--latent-dim", "4", "--lr", str(CLI_LR), "--batch-size", "32",
                     "--lr-schedule", "cosine", "--early-stopping", "2", "--tensorboard", "--eval-samples", "10",
                     "--no-progress", "--out", str(run), "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--epochs" in err[0] and "cosine" in err[0]
    assert (run / "checkpoint.pt").read_bytes() == before
