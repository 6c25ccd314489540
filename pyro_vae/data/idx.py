"""MNIST-style IDX files: a bounded reader (:func:`read_idx`), where a folder keeps its four files
(:func:`find_idx_files`), and the four read together (:func:`load_idx_folder`).

Every header is checked before data are read: the size it declares must be within ``max_bytes``
(default ``pyro_vae.data.MAX_DATA_BYTES``), and gzip data are decompressed in pieces, so a damaged header or a
gzip bomb costs at most what the limit allows.
"""

import gzip
import math
import os
import struct
import zlib

import numpy as np

from ..errors import DataError
from .limits import READ_CHUNK, read_exact, resolve_limit, too_large

__all__ = ["IDX_FILES", "IDX_LAYOUT", "read_idx", "find_idx_files", "has_idx_files", "load_idx_folder"]

#: the four files of an MNIST-style dataset, in the order :func:`load_idx_folder` returns them; each is also
#: found gzipped (``.gz``) and under the dotted name of the original MNIST archives (``train-images.idx3-ubyte``)
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

#: the files a folder of IDX files needs, as error messages name them
IDX_LAYOUT = ", ".join(f"{name}[.gz]" for name in IDX_FILES)

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}



def read_idx(path, max_bytes=None):
    """Read an IDX file (the format of MNIST-like datasets), gzip-compressed or raw.

    The header is read first (from the decompressed stream when the file is gzipped) and the data size it
    declares is checked against ``max_bytes`` before any data is read; gzip data are then decompressed in
    pieces and the reading stops one byte past the declared size, so memory never exceeds the declared
    size, whatever the file holds.

    :param path: path of the file; compression is detected from its content, not its name.
    :param int max_bytes: largest declared data size accepted, in bytes; default ``pyro_vae.data.MAX_DATA_BYTES``.
    :return: numpy array with the shape and dtype (in native byte order) the header declares, e.g. uint8
        of shape (N, H, W) for images and (N,) for labels.
    :raises DataError: if the file is missing, truncated, corrupt, or declares more than ``max_bytes``.
    """
    limit = resolve_limit(max_bytes, "MAX_DATA_BYTES", "max_bytes")
    path = os.fspath(path)
    try:
        handle = open(path, "rb")
    except FileNotFoundError as error:
        raise DataError(f"IDX file {path!r} does not exist; check the path") from error
    except OSError as error:
        raise DataError(f"could not read IDX file {path!r} ({error.strerror or error})") from error
    with handle:
        compressed = handle.read(2) == b"\x1f\x8b"
        handle.seek(0)
        try:
            if compressed:
                with gzip.GzipFile(fileobj=handle, mode="rb") as stream:
                    return _read_idx_stream(stream, path, limit, file_size=None)
            return _read_idx_stream(handle, path, limit, file_size=os.fstat(handle.fileno()).st_size)
        except (OSError, EOFError, zlib.error) as error:
            if not compressed:
                raise DataError(f"could not read IDX file {path!r} ({error.strerror or error})") from error
            raise _corrupt_idx(path, f"bad gzip data: {error}") from error


def _corrupt_idx(path, reason):
    return DataError(f"IDX file {path!r} is corrupt or truncated ({reason}); delete it and download it again")


def _read_idx_stream(stream, path, limit, file_size):
    """Parse an IDX stream; ``file_size`` is the size of an uncompressed file, None for a gzip stream."""
    magic = read_exact(stream, 4)
    if len(magic) < 4:
        raise _corrupt_idx(path, f"only {len(magic)} bytes, shorter than the 4-byte magic number")
    zero, type_code, ndim = struct.unpack(">HBB", magic)
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise _corrupt_idx(path, f"bad magic number 0x{magic.hex()}")
    dims = read_exact(stream, 4 * ndim)
    header_size = 4 + len(dims)
    if len(dims) < 4 * ndim:
        raise _corrupt_idx(path, f"header declares {ndim} dimensions but the file ends after {header_size} bytes")
    shape = struct.unpack(f">{ndim}I", dims)
    dtype = _IDX_DTYPES[type_code]
    # Python ints, so absurd dimensions from a damaged header cannot overflow before the size check.
    count = math.prod(shape)
    expected = count * dtype.itemsize
    if expected > limit:
        raise too_large(f"IDX file {path!r} (shape {shape})", expected, limit, "read_idx(..., max_bytes=N)")
    if file_size is not None:
        # a raw file's size is known up front: a truncated one is refused before anything is allocated
        if file_size - header_size != expected:
            raise _corrupt_idx(path, f"shape {shape} needs {expected} data bytes, found {file_size - header_size}")
        buffer = bytearray(expected)
        view, got = memoryview(buffer), 0
        while got < expected:
            step = stream.readinto(view[got:])
            if not step:
                raise _corrupt_idx(path, f"shape {shape} needs {expected} data bytes, read {got}")
            got += step
    else:
        # grows with what the stream really holds, so a header promising more than the file has costs
        # only what is there; the one byte past the end tells trailing data from a clean end (and makes
        # gzip check the stream's CRC)
        buffer = bytearray()
        while len(buffer) <= expected:
            piece = stream.read(min(READ_CHUNK, expected + 1 - len(buffer)))
            if not piece:
                break
            buffer += piece
        if len(buffer) != expected:
            found = f"more than {expected}" if len(buffer) > expected else str(len(buffer))
            raise _corrupt_idx(path, f"shape {shape} needs {expected} data bytes, found {found}")
    array = np.frombuffer(buffer, dtype=dtype, count=count)
    # no copy when the file's byte order is already the machine's (always for uint8 images)
    return array.astype(dtype.newbyteorder("="), copy=False).reshape(shape)


def _idx_candidates(name):
    # the standard name and the dotted variant of the original MNIST archives, each raw or gzipped
    for stem in (name, name.replace("-idx", ".idx", 1)):
        yield stem
        yield stem + ".gz"


def find_idx_files(folder):
    """Where ``folder`` keeps each of :data:`IDX_FILES`: in ``folder`` itself or in its ``raw/`` subfolder
    (torchvision keeps its files in ``<root>/<ClassName>/raw/``, so a folder pointing at the class folder works).

    :param folder: path of the folder (it need not exist).
    :return: a tuple of four paths in :data:`IDX_FILES` order, ``None`` for each file not found.
    """
    folder = os.path.expanduser(os.fspath(folder))
    return tuple(_find_idx_file(folder, name) for name in IDX_FILES)


def _find_idx_file(folder, name):
    for directory in (folder, os.path.join(folder, "raw")):
        for filename in _idx_candidates(name):
            path = os.path.join(directory, filename)
            if os.path.isfile(path):
                return path
    return None


def has_idx_files(folder):
    """Whether ``folder`` holds any of the four IDX files (it is then read as an IDX folder)."""
    return any(find_idx_files(folder))


def load_idx_folder(folder, max_bytes=None):
    """Read the four MNIST-style IDX files of a folder.

    Looks for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
    ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``) in ``folder`` or in its ``raw/`` subfolder.

    :param folder: path of the folder.
    :param int max_bytes: largest declared data size of one file, as in :func:`read_idx`.
    :return: ``(train_images, train_labels, test_images, test_labels)`` numpy arrays; images uint8 of shape
        (N, H, W), labels of shape (N,).
    :raises DataError: if the folder or a file is missing, a file is corrupt, or the arrays do not match.
    """
    folder = os.path.expanduser(os.fspath(folder))
    if not os.path.isdir(folder):
        raise DataError(f"IDX folder {folder!r} does not exist; pass a folder holding MNIST-style IDX files")
    if not os.listdir(folder):
        raise DataError(f"IDX folder {folder!r} is empty; it needs {IDX_LAYOUT}")
    paths = find_idx_files(folder)
    missing = [name.split("-idx")[0] for name, path in zip(IDX_FILES, paths) if path is None]
    if missing:
        raise DataError(f"IDX folder {folder!r} lacks {', '.join(missing)}; it needs {IDX_LAYOUT}")
    arrays = [read_idx(path, max_bytes=max_bytes) for path in paths]
    for images_path, labels_path, images, labels in (
        (paths[0], paths[1], arrays[0], arrays[1]),
        (paths[2], paths[3], arrays[2], arrays[3]),
    ):
        if images.ndim != 3:
            raise DataError(f"{images_path!r} holds shape {images.shape}, expected images (N, H, W)")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(
                f"{labels_path!r} holds shape {labels.shape}, expected ({images.shape[0]},) labels "
                f"matching {images_path!r}"
            )
    return tuple(arrays)


