"""NumPy files as image data: :func:`load_numpy` reads a ``.npy`` or ``.npz`` file with bounded memory and
without unpickling anything.

Every array's header is checked (dtype, shape, and the bytes it will take as it is held) before any of its
data is read or decompressed; the data are then read piece by piece into arrays allocated once.
"""

import math
import os
import zipfile
import zlib

import numpy as np

from ..checks import MAX_VALUES_PER_IMAGE
from ..errors import DataError
from .dataset import check_class_labels, validate_covariates, validate_images
from .limits import READ_CHUNK, read_exact, resolve_limit, too_large

__all__ = ["NPZ_KEYS", "load_numpy"]

#: the arrays a ``.npz`` file may hold
NPZ_KEYS = ("images", "labels", "covariates")

def _npy_header(stream, what, limit):
    """Read a .npy header from ``stream`` and check it; return ``(shape, dtype, header_bytes, data_bytes)``."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile) as error:
        raise DataError(f"{what} is not a readable .npy array ({str(error).strip() or type(error).__name__}); save "
                        f"it with np.save") from error
    if dtype.hasobject:
        # loading it would unpickle, which can run arbitrary code
        raise DataError(f"{what} holds Python objects (dtype {dtype}), which only pickle could load and is "
                        f"refused; save a numeric array, e.g. np.asarray(x, dtype=np.float32)")
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise DataError(f"{what} has dtype {dtype}; save plain numbers (uint8 pixels, floats in [0, 1], integer "
                        f"labels)")
    declared = math.prod(shape) * dtype.itemsize
    if declared > limit:
        raise too_large(what, declared, limit, "load_numpy(..., max_bytes=N)")
    header = _Header((shape, dtype, stream.tell(), declared))
    header.fortran = bool(fortran)
    return header


def _read_npy(open_stream, what, header, to_unit=False):
    """Read the data of one .npy array whose ``header`` (from :func:`_npy_header`) has been checked, in pieces
    into an array allocated once, so memory stays at the array itself (plus one piece); ``to_unit``: images,
    converted on the way to float32 in [0, 1] (uint8 pixels divided by 255)."""
    shape, dtype, header_bytes, declared = header
    count = math.prod(shape)
    out = np.empty(count, dtype=np.float32 if to_unit else dtype)
    piece = max(1, (16 * READ_CHUNK) // dtype.itemsize)
    try:
        with open_stream() as stream:
            read_exact(stream, header_bytes)
            for start in range(0, count, piece):
                stop = min(count, start + piece)
                if to_unit:
                    values = np.frombuffer(read_exact(stream, (stop - start) * dtype.itemsize), dtype=dtype)
                    if dtype == np.uint8:
                        np.divide(values, np.float32(255), out=out[start:stop])
                    else:
                        out[start:stop] = values
                else:
                    view, done = memoryview(out[start:stop]).cast("B"), 0
                    while done < len(view):
                        read = stream.readinto(view[done:])
                        if not read:
                            raise EOFError("the data end early")
                        done += read
    except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile, DataError) as error:
        raise DataError(f"could not read {what} ({' '.join(str(error).split())[:120] or type(error).__name__}); "
                        f"the file is corrupt: save it again") from None
    if header[1].byteorder not in ("=", "|") and not to_unit:
        out = out.astype(out.dtype.newbyteorder("="))
    fortran = getattr(header, "fortran", False)
    return out.reshape(shape[::-1]).T if fortran else out.reshape(shape)


class _Header(tuple):
    """``(shape, dtype, header_bytes, data_bytes)`` of a .npy member, with ``fortran`` (its data order)."""
    fortran = False


def _npy_headers(members, path, limit):
    """Every member's checked header: shapes and dtypes that fit together, and one memory budget for all
    of them as they will be held (images as float32), before any data is read."""
    headers = {}
    for key, (open_stream, what, stored_size) in members.items():
        with open_stream() as stream:
            headers[key] = shape, dtype, header_bytes, declared = _npy_header(stream, what, limit)
        if stored_size - header_bytes < declared:
            raise DataError(f"{what} is truncated: shape {shape} of {dtype} needs {declared:,} bytes, the file holds "
                            f"{stored_size - header_bytes:,}; save it again")
    shape, dtype = headers["images"][0], headers["images"][1]
    if len(shape) not in (3, 4):
        raise DataError(f"images in {path!r} have shape {shape}; save (N, H, W) or (N, C, H, W)")
    if dtype.kind in "iu" and dtype != np.uint8:
        raise DataError(f"images in {path!r} have integer dtype {dtype}; save uint8 pixels 0-255 or floats "
                        f"in [0, 1]")
    values = math.prod(shape[1:])
    if values > MAX_VALUES_PER_IMAGE:
        raise DataError(f"images in {path!r} have shape {shape}: {values:,} values per image, above the limit of "
                        f"{MAX_VALUES_PER_IMAGE:,} (pyro_vae.checks.MAX_VALUES_PER_IMAGE); use smaller images")
    count = shape[0]
    if "labels" in headers and headers["labels"][0] != (count,):
        raise DataError(f"labels in {path!r} have shape {headers['labels'][0]}, expected ({count},): one class "
                        f"index per image")
    if "covariates" in headers and headers["covariates"][0][:1] != (count,):
        raise DataError(f"covariates in {path!r}: got {(headers['covariates'][0] or ('no',))[0]} rows of covariates "
                        f"for {count} images; pass one row per image")
    needed = 4 * math.prod(shape) + sum(8 * math.prod(h[0]) for k, h in headers.items() if k != "images")
    if needed > limit:
        raise DataError(f"{path!r} holds {count:,} images of {'x'.join(map(str, shape[1:]))}, {needed:,} bytes as "
                        f"float32, above the limit of {limit:,} bytes (pyro_vae.data.MAX_DATA_BYTES); subsample "
                        f"them, or pass load_numpy(..., max_bytes=N)")
    return headers



def load_numpy(path, max_bytes=None):
    """Read images (and optional labels and covariates) from a ``.npy`` or ``.npz`` file.

    A ``.npy`` file holds the images alone; a ``.npz`` file (``np.savez``) holds an ``images`` array and
    optionally ``labels`` and ``covariates``, and no other arrays (a misspelt name is refused rather than
    dropped). Arrays are read with ``allow_pickle=False``: object arrays are refused, never unpickled.
    Every array's header (shape and dtype) is checked before its data is read or decompressed, against one
    budget: the images as float32 with the labels and covariates, at most ``max_bytes``; the data are then
    decompressed piece by piece into arrays allocated once.

    :param path: path of the file, ending in ``.npy`` or ``.npz``.
    :param int max_bytes: most bytes the arrays may take as they are held; default ``pyro_vae.data.MAX_DATA_BYTES``.
    :return: ``(images, labels, covariates)`` numpy arrays: images float32 (N, C, H, W) in [0, 1] (a stored
        (N, H, W) gets C = 1; uint8 pixels are divided by 255, floats must already lie in [0, 1]); labels
        int64 (N,) or ``None``; covariates (N, D) or (N,) as stored, or ``None``.
    :raises DataError: if the file is missing, corrupt, pickled, too large, or its arrays do not fit.
    """
    limit = resolve_limit(max_bytes, "MAX_DATA_BYTES", "max_bytes")
    path = os.path.expanduser(os.fspath(path))
    if not os.path.exists(path):
        raise DataError(f"NumPy file {path!r} does not exist; check the path")
    if not os.path.isfile(path):
        raise DataError(f"{path!r} is not a regular file (a folder, a device or a pipe); point at a .npy/.npz file")
    if path.lower().endswith(".npy"):
        members = {"images": (lambda: open(path, "rb"), f"NumPy file {path!r}", os.path.getsize(path))}
        return _check_numpy_arrays(_read_members(members, path, limit), path)
    if not path.lower().endswith(".npz"):
        raise DataError(f"{path!r} is neither a .npy nor a .npz file; save the images with np.save or np.savez")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{path!r} is not a readable .npz archive ({error}); save it with np.savez") from error
    with archive:
        return _check_numpy_arrays(_read_members(_npz_members(archive, path), path, limit), path)


def _read_members(members, path, limit):
    headers = _npy_headers(members, path, limit)
    return {key: _read_npy(open_stream, what, headers[key], to_unit=key == "images")
            for key, (open_stream, what, _) in members.items()}


def _npz_members(archive, path):
    members = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
    unknown = sorted(set(members) - set(NPZ_KEYS)) + sorted(
        info.filename for info in archive.infolist() if not info.filename.endswith(".npy"))
    if "images" not in members:
        found = ", ".join(map(repr, sorted(members))) or "nothing"
        raise DataError(f"{path!r} holds no 'images' array (found {found}); save it with "
                        f"np.savez(path, images=..., labels=...)")
    if unknown:
        raise DataError(f"{path!r} holds arrays other than {', '.join(NPZ_KEYS)}: {', '.join(unknown)}; "
                        f"save only those names (np.savez(path, images=..., labels=..., covariates=...))")
    return {key: (lambda info=info: archive.open(info), f"array {key!r} of {path!r}", info.file_size)
            for key, info in members.items()}


def _check_numpy_arrays(arrays, path):
    images = arrays["images"]   # float32, uint8 pixels already divided by 255 (see _read_npy)
    try:
        images = validate_images(images).numpy()
    except DataError as error:
        raise DataError(f"images in {path!r}: {error}") from error
    labels = arrays.get("labels")
    if labels is not None:
        labels = check_class_labels(labels, f"labels in {path!r}", "save them again")
        if labels.shape != (len(images),):
            raise DataError(f"labels in {path!r} have shape {labels.shape}, expected ({len(images)},): one class "
                            f"index per image")
    covariates = arrays.get("covariates")
    if covariates is not None:
        try:
            validate_covariates(covariates, len(images), "cpu")
        except DataError as error:
            raise DataError(f"covariates in {path!r}: {error}") from error
    return images, labels, covariates


