"""Folders of PNG/JPEG images as a train/test pair of tensors: :func:`load_image_folder`.

Images are opened through Pillow, whose ``Image.open`` reads a file's header only: every image's size and
mode are checked (against ``max_bytes``, default ``pyro_vae.data.MAX_DATA_BYTES``, and against Pillow's own
decompression-bomb limit, ``PIL.Image.MAX_IMAGE_PIXELS``) before any image of the folder is decoded, so a small
file declaring a huge image costs nothing. Where the images are is found by :mod:`~pyro_vae.data.folders`.
"""

import collections
import math
import os
import re
import struct
import warnings

import numpy as np
import torch

from ..checks import MAX_VALUES_PER_IMAGE
from ..errors import DataError
from .folders import IMAGE_EXTENSIONS, IMAGE_LAYOUTS, find_images
from .limits import resolve_limit

__all__ = ["ImageFolderData", "load_image_folder", "read_images", "image_header", "decode_image"]

ImageFolderData = collections.namedtuple(
    "ImageFolderData", ["train_images", "train_labels", "test_images", "test_labels", "classes"])
ImageFolderData.__doc__ = """What :func:`load_image_folder` returns.

``train_images`` / ``test_images``: float32 tensors (N, C, H, W) in [0, 1]; ``train_labels`` /
``test_labels``: int64 tensors (N,), or ``None`` for a folder without class subfolders; ``classes``: the
class names in label order (a tuple of str), or ``None``."""

#: the Pillow formats read
_FORMATS = ("PNG", "JPEG")
#: Pillow modes of grey images (an alpha channel aside); every other mode decodes to three channels
_GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
#: Pillow modes of 16-bit grey PNGs (Pillow reads 16-bit colour PNGs as 8-bit RGB or RGBA)
_16_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
#: Pillow modes kept as they decode: grey or RGB, each with or without alpha
_DIRECT_MODES = ("L", "LA", "RGB", "RGBA") + _16_BIT_MODES


def _open_image(path, limit):
    """``path`` opened through Pillow, its header read and checked and its pixels not yet decoded.

    :param int limit: most bytes one image may take: its file, and its decoding (16 bytes a pixel, which bound
        four channels held as float32).
    :return: an open ``PIL.Image.Image``, for the caller to close.
    :raises DataError: if the file cannot be read, is empty, is not a PNG or JPEG file, declares more pixels
        than ``limit`` or Pillow allow, or has a transparent colour (a PNG ``tRNS`` chunk).
    """
    from PIL import Image, UnidentifiedImageError
    try:
        size = os.stat(path).st_size
    except OSError as error:
        raise DataError(f"could not read image {path!r} ({error.strerror or error}); check its permissions") \
            from None
    if size > limit:
        raise DataError(f"image file {path!r} is {size:,} bytes, above the limit of {limit:,} bytes "
                        f"(pyro_vae.data.MAX_DATA_BYTES); resize it, or pass load_image_folder(..., max_bytes=N)")
    if size == 0:
        raise DataError(f"image {path!r} is empty; replace it, convert it to PNG, or delete it")
    try:
        with warnings.catch_warnings():
            # above MAX_IMAGE_PIXELS (but not twice as many) Pillow only warns: this reader's own limit decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path, formats=_FORMATS)
    except Image.DecompressionBombError as error:
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        declared = f"{int(pixels.group(1)):,} pixels" if pixels else "more pixels"
        raise DataError(f"image {path!r} declares {declared}, more than Pillow decodes (twice "
                        f"PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,}); resize it, or raise "
                        f"PIL.Image.MAX_IMAGE_PIXELS") from None
    except UnidentifiedImageError:   # (the file's bytes are not shown: it may be any file a link points to)
        raise DataError(f"image {path!r} is not a PNG or JPEG file (or its header is corrupt); replace it, convert "
                        f"it to PNG, or delete it") from None
    except (OSError, ValueError, SyntaxError, struct.error, EOFError):
        raise DataError(f"could not read image {path!r} (its header is corrupt); replace or delete it") from None
    try:
        width, height = image.size
        if height * width * 16 > limit:
            raise DataError(f"image {path!r} declares {height}x{width} pixels, more than the limit of {limit:,} "
                            f"bytes (pyro_vae.data.MAX_DATA_BYTES) allows to decode; resize it, or pass "
                            f"load_image_folder(..., max_bytes=N)")
        if "transparency" in image.info:
            raise DataError(f"image {path!r} has a transparent colour (tRNS chunk); save it without transparency, "
                            f"e.g. flattened onto a background with PIL")
    except DataError:
        image.close()
        raise
    return image


def image_header(path, limit):
    """``(height, width, channels)`` an image file declares, read from its header alone (nothing is decoded),
    with the checks of a file before it is decoded; ``channels`` is 1 for grey modes and 3 for every other,
    palettes included (an upper bound: a palette of greys decodes to one channel).

    :param path: the file.
    :param int limit: most bytes the image may take, as in :func:`decode_image`.
    :raises DataError: as :func:`decode_image` does for a header.
    """
    with _open_image(path, limit) as image:
        return image.size[1], image.size[0], 1 if image.mode in _GREY_MODES else 3


def decode_image(path, limit):
    """Decode one PNG or JPEG file into pixels (C, H, W) in [0, 1] with C = 1 (grey) or 3 (RGB).

    Palettes are expanded to their colours (to one grey channel when every colour is grey), 1-bit images to
    0/1, CMYK JPEGs converted to RGB; 16-bit grey PNGs are scaled by 1/65535, others by 1/255. A fully opaque
    alpha channel is dropped.

    :param path: the file.
    :param int limit: most bytes its decoding may take; checked against the size its header declares.
    :return: float32 tensor (C, H, W).
    :raises DataError: if the file cannot be read or decoded, is too large, or has transparent pixels.
    """
    with _open_image(path, limit) as image:
        mode, palette = image.mode, image.mode == "P"
        try:
            image.load()
            if mode not in _DIRECT_MODES:
                # bilevel as 0/255 grey; palette indices as their colours; CMYK (four JPEG channels are not RGB
                # plus alpha), YCbCr and the rest as RGB
                image = image.convert("L" if mode == "1" else "RGB")
            pixels = np.asarray(image)
        except (OSError, ValueError, SyntaxError, struct.error, EOFError, IndexError) as error:
            reason = " ".join(str(error).split())[:200] or type(error).__name__
            raise DataError(f"could not decode image {path!r} ({reason}); the file is corrupt: replace or delete "
                            f"it") from None
    full_scale = 65535 if mode in _16_BIT_MODES else 255
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    # (H, W, C) -> (C, H, W) in the one copy that converts the pixels to float32 (exact for 16-bit values)
    decoded = torch.from_numpy(np.ascontiguousarray(np.moveaxis(pixels, -1, 0), dtype=np.float32))
    if decoded.shape[0] in (2, 4):
        if bool((decoded[-1] < full_scale).any()):
            raise DataError(f"image {path!r} has transparent pixels (an alpha channel); save it without alpha, "
                            f"e.g. flattened onto a background with PIL")
        # a fully opaque alpha channel carries nothing
        decoded = decoded[:-1]
    if palette and bool((decoded[0] == decoded[1]).all() and (decoded[1] == decoded[2]).all()):
        # a palette of greys (what PIL's convert("P") makes of a grey image) is a grey image
        decoded = decoded[:1]
    return decoded.div_(full_scale)


def _check_headers(paths, folder, limit):
    """Every image's declared size, checked before any is decoded: one size for all, and the float32 tensor of
    all of them (C = 3 if any is in colour) within ``limit``."""
    first, size, colour = None, None, False
    for path in paths:
        height, width, channels = image_header(path, limit)
        if size is None:
            first, size = path, (height, width)
        elif (height, width) != size:
            raise DataError(f"images in {folder!r} differ in size: {os.path.relpath(first, folder)!r} is "
                            f"{size[0]}x{size[1]} but {os.path.relpath(path, folder)!r} is {height}x{width} "
                            f"(height x width); resize them to one size first, e.g. with "
                            f"torchvision.transforms.functional.resize")
        colour = colour or channels == 3
    if size is None:
        return
    shape = (3 if colour else 1, *size)
    if math.prod(shape) > MAX_VALUES_PER_IMAGE:   # no model takes them: refused before gigabytes are decoded
        raise DataError(f"images in {folder!r} are {size[0]}x{size[1]} pixels with {shape[0]} channel(s): "
                        f"{math.prod(shape):,} values per image, above the limit of {MAX_VALUES_PER_IMAGE:,} "
                        f"(pyro_vae.checks.MAX_VALUES_PER_IMAGE); resize them")
    _check_image_bytes(len(paths), shape, folder, limit)


def _decode_images(paths, folder, limit):
    """Decode ``paths`` into one float32 tensor (N, C, H, W) in [0, 1], checking sizes and the byte limit.

    Colour decides C for the whole folder: with any RGB image every grey one is repeated over three
    channels (what torchvision's ``ImageFolder`` does by converting everything to RGB); a folder of grey
    images only keeps C = 1. Every header is checked first, so nothing is decoded for a folder that would
    not fit.
    """
    _check_headers(paths, folder, limit)
    out, first = None, None
    for index, path in enumerate(paths):
        image = decode_image(path, limit)
        if out is None:
            first = path
            _check_image_bytes(len(paths), image.shape, folder, limit)
            out = torch.empty((len(paths), *image.shape), dtype=torch.float32)
        elif image.shape[1:] != out.shape[2:]:
            raise DataError(f"images in {folder!r} differ in size: {os.path.relpath(first, folder)!r} is "
                            f"{out.shape[2]}x{out.shape[3]} but {os.path.relpath(path, folder)!r} is "
                            f"{image.shape[1]}x{image.shape[2]} (height x width); resize them to one size first, "
                            f"e.g. with torchvision.transforms.functional.resize")
        if image.shape[0] != out.shape[1]:
            if out.shape[1] == 1:
                _check_image_bytes(len(paths), image.shape, folder, limit)
                out = out.repeat(1, 3, 1, 1)
            else:
                image = image.expand(3, -1, -1)
        out[index] = image
    return out


def _check_image_bytes(count, shape, folder, limit):
    needed = count * math.prod(shape) * 4
    if needed > limit:
        raise DataError(f"{count:,} images of {'x'.join(map(str, shape))} in {folder!r} take {needed:,} bytes as "
                        f"float32, above the limit of {limit:,} bytes (pyro_vae.data.MAX_DATA_BYTES); resize or "
                        f"subsample them, or pass load_image_folder(..., max_bytes=N)")


def read_images(folder, layout, max_bytes=None):
    """Decode the files of ``layout`` (an :class:`~pyro_vae.data.folders.ImageLayout` of ``folder``) into
    one train/test pair: every header checked first, then one tensor for both splits, so that colour, size and
    the byte limit are decided over all images.

    :param int max_bytes: largest float32 tensor of all images; default ``pyro_vae.data.MAX_DATA_BYTES``.
    :rtype: ImageFolderData
    """
    limit = resolve_limit(max_bytes, "MAX_DATA_BYTES", "max_bytes")
    images = _decode_images(layout.train_files + layout.test_files, folder, limit)
    if layout.classes is None:
        labels = [None, None]
    else:
        labels = [torch.tensor(layout.train_labels), torch.tensor(layout.test_labels)]
    cut = len(layout.train_files)
    return ImageFolderData(images[:cut], labels[0], images[cut:], labels[1], layout.classes)


def load_image_folder(folder, max_files=None, max_bytes=None):
    """Read a folder of PNG/JPEG images (``.png``, ``.jpg``, ``.jpeg``, any case) as a train/test pair.

    Layouts, as torchvision's ``ImageFolder`` reads them:

    * ``FOLDER/*.png``: unlabelled images;
    * ``FOLDER/<class>/*.png`` (also nested deeper inside a class folder): labels are the class folders'
      indices in sorted order, and ``classes`` their names (:func:`~pyro_vae.data.folders.find_classes`);
    * ``FOLDER/train/`` and ``FOLDER/test/``, each laid out as above, give the split; test labels use the
      class indices of ``train/``. Without them a fixed 90% / 10% split (at least one test image) is drawn
      that does not depend on any seed, so runs with different seeds are scored on the same images. Next to
      ``train/`` and ``test/`` other entries are ignored.

    Files are visited in sorted order; hidden files and folders (``.name``) and files with other endings
    are ignored. Every image must have the same height and width. Grey images give C = 1; if any image is
    in colour, grey ones are repeated over three channels and C = 3. Palette PNGs are expanded to their
    colours (to grey when the palette holds only greys); 16-bit grey PNGs are scaled by 1/65535, others by
    1/255 (Pillow reads 16-bit colour PNGs as 8-bit); CMYK JPEGs are converted to RGB. An alpha channel that
    is fully opaque is dropped; transparency (an alpha below full scale, or a PNG ``tRNS`` chunk) is refused,
    since what lies under a transparent pixel is not the image.

    :param folder: path of the folder.
    :param int max_files: most image files read; default ``pyro_vae.data.MAX_IMAGE_FILES``.
    :param int max_bytes: largest float32 tensor of all images, in bytes; default ``pyro_vae.data.MAX_DATA_BYTES``.
    :return: :class:`ImageFolderData` ``(train_images, train_labels, test_images, test_labels, classes)``;
        images float32 tensors (N, C, H, W) in [0, 1]; labels int64 tensors (N,) or ``None``; ``classes``
        a tuple of names or ``None``.
    :raises DataError: if the folder is missing or holds no images, a class folder is empty, a file cannot
        be decoded, sizes differ, an image is transparent, or there are more files or bytes than allowed.
    """
    folder = os.path.expanduser(os.fspath(folder))
    if not os.path.isdir(folder):
        raise DataError(f"image folder {folder!r} does not exist; check the path")
    layout = find_images(folder, max_files)
    if layout is None:
        raise DataError(f"{folder!r} holds no {'/'.join(IMAGE_EXTENSIONS)} images; lay them out as "
                        f"{IMAGE_LAYOUTS}")
    return read_images(folder, layout, max_bytes)
