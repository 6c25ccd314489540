"""The bounds every file reader of :mod:`pyro_vae.data` keeps to, and the bounded reads they share.

A damaged header (or a gzip bomb) would otherwise have a reader allocate whatever it claims: every reader
checks the size a file declares against a limit before it allocates, and reads in pieces of bounded size.

The limits are settings of the package: ``pyro_vae.data.MAX_DATA_BYTES = ...`` (or ``MAX_IMAGE_FILES``)
changes them for every later read, since :func:`resolve_limit` looks them up on ``pyro_vae.data`` at call time (the
values below are only their defaults); a reader's ``max_bytes`` / ``max_files`` overrides them for one call.
"""

import sys

from ..checks import positive_int
from ..errors import DataError

__all__ = ["MAX_DATA_BYTES", "MAX_IMAGE_FILES", "READ_CHUNK", "read_exact", "resolve_limit", "too_large"]

#: Largest amount of data, in bytes, a reader accepts from one file or folder unless told otherwise: the
#: data an IDX or ``.npy`` header declares, or the float32 tensor a folder of images decodes to.
MAX_DATA_BYTES = 4 * 2**30

#: Most image files :func:`~pyro_vae.data.load_image_folder` reads unless told otherwise.
MAX_IMAGE_FILES = 100_000

#: gzip streams and .npy data are read in pieces of this size (or a small multiple), so memory follows the
#: data actually present
READ_CHUNK = 1 << 20


def resolve_limit(value, setting, argument):
    """The limit one call applies: ``value`` when given, else the package setting ``pyro_vae.data.<setting>``
    as it is now.

    :param value: the caller's ``max_bytes`` / ``max_files``, or None.
    :param str setting: ``"MAX_DATA_BYTES"`` or ``"MAX_IMAGE_FILES"``.
    :param str argument: the argument's name, for the error.
    :rtype: int
    :raises ConfigError: if ``value`` is not a positive integer.
    """
    if value is None:
        return getattr(sys.modules[__package__], setting)
    return positive_int(argument, value)


def read_exact(stream, size):
    """Up to ``size`` bytes from ``stream``, fewer only at its end (file objects may return short reads)."""
    pieces, remaining = [], size
    while remaining > 0:
        piece = stream.read(remaining)
        if not piece:
            break
        pieces.append(piece)
        remaining -= len(piece)
    return b"".join(pieces)


def too_large(what, declared, bound, override):
    """The :class:`DataError` for a header that declares ``declared`` bytes, above ``bound``; ``override``
    names the argument that raises the limit for one call (e.g. ``"read_idx(..., max_bytes=N)"``)."""
    return DataError(f"{what} declares {declared:,} bytes of data, above the limit of {bound:,} bytes "
                     f"(pyro_vae.data.MAX_DATA_BYTES); its header is corrupt, or, for a file really this large, "
                     f"pass {override} or raise the limit")
