"""Crafted images and arrays are refused from their headers, at bounded memory, before anything is decoded; files
of a folder that are not regular images are counted in one warning and never read."""

import os
import re
import resource
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib

import numpy as np
import pytest


import pyro_vae as pv
from clirun import one_line_error, image_folder


# --- 2-3. crafted images and arrays are refused from their headers, at bounded memory ------------------

def _png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def craft_png(path, width, height, colour=0):
    """A valid PNG of black pixels declaring ``width x height`` (grey, or RGB for ``colour=2``), compressed row by
    row: a few hundred kB on disk, nothing of its decoded size held while writing it."""
    row = b"\0" * (1 + (3 if colour == 2 else 1) * width)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0))
                + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b""))


def craft_npz(path, arrays):
    """An .npz of zero-filled arrays ``{name: (shape, dtype)}``, deflated while written piece by piece."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, (shape, dtype) in arrays.items():
            dtype = np.dtype(dtype)
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                              "fortran_order": False, "shape": shape})
                left, piece = int(np.prod(shape)) * dtype.itemsize, b"\0" * (1 << 20)
                while left > 0:
                    member.write(piece[:left])
                    left -= len(piece)


#: runs the CLI and prints its own peak resident memory (VmHWM belongs to the address space exec made, so the
#: size of the process that started it, e.g. a pytest run holding gigabytes, does not count, as it does in
#: wait4's ru_maxrss, which keeps the high-water mark from before exec)
_MEASURED_CLI = """
import sys
from pyro_vae import cli
try:
    code = cli.main(sys.argv[1:])
finally:
    peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0].split()[1]
    print(int(peak) * 1024, flush=True)
sys.exit(code)
"""


def peak_of_cli(*args):
    """``pyro-vae ARGS`` in a fresh process: (exit code, stderr, its peak resident memory in bytes)."""
    done = subprocess.run([sys.executable, "-c", _MEASURED_CLI, *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    return done.returncode, done.stderr, int(done.stdout.split()[-1])


#: the issue's bound on the peak memory of refusing a crafted file (the interpreter with torch takes ~0.8 GB)
PEAK = 1.5e9


def test_png_declaring_16000x16000_pixels_is_refused_before_decoding(tmp_path):
    folder = tmp_path / "bomb"
    folder.mkdir()
    craft_png(folder / "a.png", 16000, 16000)
    (folder / "b.png").write_bytes((folder / "a.png").read_bytes())
    assert (folder / "a.png").stat().st_size < 300_000
    code, err, peak = peak_of_cli("train", "--dataset", folder, "--epochs", "1", "--out", tmp_path / "run")
    line = one_line_error(code, err, "a.png", "pixels", "MAX_IMAGE_PIXELS")
    assert peak < PEAK, (peak, line)


@pytest.mark.parametrize("size,colour,needle", [
    ((9000, 9000), 0, "81,000,000 values per image, above the limit of 67,108,864"),   # under Pillow's limit
    ((5000, 5000), 2, "75,000,000 values per image"),
])
def test_images_too_large_for_any_model_are_refused_from_their_headers(size, colour, needle, tmp_path):
    folder = tmp_path / "large"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        craft_png(folder / name, *size, colour=colour)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(pv.DataError, match=needle):
        pv.data.load_image_folder(folder)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024


def test_a_folder_of_images_is_refused_from_its_headers_for_the_whole_budget(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    craft_png(folder / "grey.png", 64, 64)
    craft_png(folder / "colour.png", 64, 64, colour=2)   # one colour image makes every image 3 channels
    decoded = []
    real = pv.data.images.decode_image
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pv.data.images, "decode_image", lambda *a: decoded.append(a) or real(*a))
        with pytest.raises(pv.DataError, match="2 images of 3x64x64 .* take 98,304 bytes as float32, above the limit"):
            pv.data.load_image_folder(folder, max_bytes=98_303)
        assert not decoded   # refused from the headers alone
        assert pv.data.load_image_folder(folder, max_bytes=98_304).train_images.shape[1:] == (3, 64, 64)


@pytest.mark.parametrize("arrays,needle", [
    ({"images": ((1, 16384, 16384), "uint8")}, "268,435,456 values per image"),
    ({"images": ((4096, 256, 256), "uint8"), "labels": ((10,), "int64")}, "labels in .* have shape \\(10,\\)"),
    ({"images": ((2, 4096, 128, 128), "int16")}, "integer dtype int16"),
    ({"images": ((512,) + (2,) * 19, "uint8")}, "save \\(N, H, W\\)"),
])
def test_compressed_npz_of_256_mib_is_refused_before_decompressing(arrays, needle, tmp_path):
    path = tmp_path / "bomb.npz"
    craft_npz(path, arrays)
    assert path.stat().st_size < 400_000
    code, err, peak = peak_of_cli("train", "--dataset", path, "--epochs", "1", "--out", tmp_path / "run")
    assert re.search(needle, one_line_error(code, err)), err
    assert peak < PEAK, peak


def test_npz_within_the_budget_is_read_piece_by_piece(tmp_path):
    """Decompressing holds the float32 images and one piece, not the stored array and its conversion too."""
    path = tmp_path / "zeros.npz"
    craft_npz(path, {"images": ((2048, 128, 256), "uint8")})   # 64 MiB stored, 256 MiB as float32
    script = textwrap.dedent(f"""
        import resource, torch, pyro_vae as pv, pyro_vae.data
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        images, _, _ = pv.data.load_numpy({str(path)!r})
        assert images.shape == (2048, 1, 128, 256) and images.dtype.name == "float32" and not images.any()
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
    """)
    grown = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    assert grown < 256 * 2 ** 20 + 64 * 2 ** 20, grown   # the float32 images, and little else
    with pytest.raises(pv.DataError, match="268,435,456 bytes as float32, above the limit of 100,000,000"):
        pv.data.load_numpy(path, max_bytes=10 ** 8)



def test_files_that_are_not_regular_are_counted_in_one_warning(tmp_path):
    folder = image_folder(tmp_path / "images")
    os.mkfifo(folder / "pipe.png")
    os.symlink("/dev/zero", folder / "zero.png")
    os.symlink(tmp_path / "missing.png", folder / "broken.png")
    with pytest.warns(UserWarning) as caught:
        data = pv.data.load_image_folder(folder)
    assert len(data.train_images) + len(data.test_images) == 12
    messages = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(messages) == 1 and "skipped 3 file(s)" in messages[0] and "broken.png" in messages[0]


def test_an_image_linked_to_a_system_file_shows_none_of_its_bytes(tmp_path):
    folder = image_folder(tmp_path / "images")
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:secret-content\n")
    os.symlink(secret, folder / "zz.png")
    with pytest.raises(pv.DataError) as caught:
        pv.data.load_image_folder(folder)
    message = str(caught.value)
    assert "not a PNG or JPEG" in message
    assert "secret-content" not in message and "x:0:0" not in message and secret.read_bytes()[:8].hex() not in message
