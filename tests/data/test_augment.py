"""Random-shift augmentation (pv.data.augment, ImageDataset.augmented) on real MNIST digits."""

import json

import pytest
import torch

import pyro_vae as pv
from pyro_vae import cli
from pyro_vae.data.augment import random_shifts


def _offset_of(original, moved, shift):
    """The (dy, dx) with moved == original translated by it (the edge pixels repeated), or None."""
    padded = torch.nn.functional.pad(original[None], (shift,) * 4, mode="replicate")[0]
    height, width = original.shape[-2:]
    for dy in range(-shift, shift + 1):
        for dx in range(-shift, shift + 1):
            window = padded[..., shift - dy: shift - dy + height, shift - dx: shift - dx + width]
            if torch.equal(window, moved):
                return dy, dx
    return None


def test_every_digit_moves_by_a_whole_offset_within_the_shift(mnist5k):
    train, _ = mnist5k
    x = train.images[:400]
    torch.manual_seed(0)
    moved = random_shifts(x, 2)
    assert moved.shape == x.shape and moved.dtype == x.dtype
    offsets = [_offset_of(a, b, 2) for a, b in zip(x, moved)]
    assert None not in offsets
    # a digit whose outer two rows and columns are blank loses no ink (most of them; a few touch the frame)
    inner = torch.zeros(28, 28, dtype=torch.bool)
    inner[2:-2, 2:-2] = True
    blank = (x[:, 0, ~inner] == 0).all(1)
    assert blank.sum() > 300
    torch.testing.assert_close(moved[blank].sum((1, 2, 3)), x[blank].sum((1, 2, 3)))
    # all 25 offsets are drawn, none of them much more often than the others (400 draws, 16 expected)
    counts = torch.tensor([offsets.count((dy, dx)) for dy in range(-2, 3) for dx in range(-2, 3)])
    assert (counts > 0).all() and counts.max() < 40
    assert random_shifts(x, 0) is x


def test_the_border_repeats_the_edge_pixels():
    x = torch.arange(16.).reshape(1, 1, 4, 4) / 16
    generator = torch.Generator().manual_seed(3)
    moved = random_shifts(x.expand(64, 1, 4, 4), 1, generator=generator)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    windows = {tuple(padded[0, 0, a:a + 4, b:b + 4].flatten().tolist()) for a in range(3) for b in range(3)}
    assert {tuple(m.flatten().tolist()) for m in moved} == windows


def test_only_shuffled_batches_are_shifted_and_copies_keep_the_setting(mnist5k):
    train, _ = mnist5k
    grey = pv.data.from_tensor(train.images[:256], labels=train.labels[:256]).augmented(1)
    assert grey.shift == 1 and grey.subset(range(10)).shift == 1 and grey.to("cpu").shift == 1
    x, y = next(grey.batches(256, shuffle=False))
    assert torch.equal(x, grey.images) and torch.equal(y, grey.labels)
    torch.manual_seed(0)
    x, y = next(grey.batches(256, generator=torch.Generator().manual_seed(0)))
    order = torch.randperm(256, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, grey.labels[order])
    moved = [_offset_of(a, b, 1) for a, b in zip(grey.images[order], x)]
    assert None not in moved and sum(m != (0, 0) for m in moved) > 200
    assert grey.augmented(0).shift == 0


@pytest.mark.parametrize("shift", [-1, 1.5, True, "2", 8])
def test_a_bad_shift_is_refused_in_one_line(digits_grey, shift):
    with pytest.raises(pv.ConfigError, match="shift"):
        digits_grey[0].augmented(shift)


def test_fit_trains_on_shifted_digits_and_config_records_it(mnist5k, tmp_path):
    train, test = mnist5k
    train, test = train.subset(range(512)), test.subset(range(100))

    def run(**options):
        torch.manual_seed(0)
        vae = pv.VAE(latent_dim=4, hidden=(32,))
        history = pv.fit(vae, train, test, epochs=2, progress=False, device="cpu", **options)
        return vae, history
    plain, plain_history = run()
    shifted, shifted_history = run(augment=1)
    # same seed, same initial weights: only the shifted batches can tell the runs apart
    assert plain_history[-1]["train_elbo"] != shifted_history[-1]["train_elbo"]
    _, again = run(augment=1)
    assert again == [{**h, "seconds": again[i]["seconds"]} for i, h in enumerate(shifted_history)]
    with pytest.raises(pv.ConfigError, match="augment"):
        run(augment=9)
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "digits", "--epochs", "1", "--hidden", "16", "--latent-dim", "2",
                     "--augment", "1", "--eval-samples", "1", "--no-progress", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["fit"]["augment"] == 1
    plain_out = tmp_path / "plain"
    assert cli.main(["train", "--dataset", "digits", "--epochs", "1", "--hidden", "16", "--latent-dim", "2",
                     "--eval-samples", "1", "--no-progress", "--out", str(plain_out)]) == 0
    assert "augment" not in json.loads((plain_out / "config.json").read_text())["fit"]
