"""Files written and read safely: the one atomic write of the package (temporary file, fsync, rename), and
JSON read with bounds (size, depth, digits) so a crafted or corrupted file is refused with a clear message."""

import json
import os
import re
import stat
import tempfile

from .errors import CheckpointError

#: a config.json or metrics.json larger than this is not one pyro_vae wrote
MAX_JSON_BYTES = 64 * 2 ** 20
#: nor one nested deeper than this (pyro_vae's are a few levels deep; deep nesting breaks comparisons and repr)
MAX_JSON_DEPTH = 64
#: nor one holding an integer with more digits than this (a float could not hold it)
MAX_JSON_DIGITS = 300
#: temporary files of writers that did not finish: ``atomic_write``'s, and those of pictures and pages
_TEMPORARY = (re.compile(r"\.tmp-.*"), re.compile(r"\..+\.[a-z0-9_]{8}\.tmp"))
#: open() flag that refuses to follow a symbolic link (0 where the platform has none)
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def is_temporary(name):
    """Whether the file name ``name`` (no folder) is one of :data:`_TEMPORARY`: a writer's unfinished file."""
    return any(p.fullmatch(name) for p in _TEMPORARY)


class WriteError(CheckpointError):
    """A file of a run folder could not be written (disk full, quota, a folder removed); the previous version of
    the file is intact."""


def atomic_write(path, write):
    """Write ``path`` by ``write(binary_file)`` to a temporary file in its folder, fsync, then rename it over
    ``path``: an interruption leaves the old complete file or the new one.

    :raises WriteError: the folder cannot be written (disk full, quota, removed); the old file is intact.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    except OSError as e:
        raise WriteError(f"cannot write {path} ({e.strerror or e}); choose a writable folder") from None
    try:
        # mkstemp makes the file private (0600) and the rename keeps that: give it the mode any new file
        # gets (0644 under the usual umask), so others who may read the folder can read the run
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):   # disk full, quota, a folder removed under us: the old file is intact
            raise WriteError(f"could not write {path} ({e.strerror or e}); the previous version is kept: "
                             f"free disk space (or fix the folder) and try again") from None
        if isinstance(e, RuntimeError) and "write" in str(e).lower():   # torch.save wraps its write errors
            raise WriteError(f"could not write {path} ({' '.join(str(e).split())[:120]}); the previous "
                             f"version is kept: free disk space and try again") from None
        raise
    # make the rename itself durable (some file systems cannot sync a folder: the file is in place anyway)
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def save_json(obj, path):
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"))


def regular_file(path):
    """``os.stat`` of ``path``, refusing what is not a regular file (a FIFO would block the reader forever)."""
    info = os.stat(path)
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(path)
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path} is not a regular file; restore the run folder")
    return info


def _parse_int(text):
    if len(text.lstrip("-")) > MAX_JSON_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def depth(value):
    """How deeply lists and dicts nest in ``value`` (iteratively: a deep value must not exhaust the stack)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, level)
            if level <= MAX_JSON_DEPTH:
                todo.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def load_json(path):
    """Read a JSON file of a run folder.

    :raises CheckpointError: missing, unreadable, not a regular file, larger than :data:`MAX_JSON_BYTES`, not
        JSON, nested deeper than :data:`MAX_JSON_DEPTH` or holding integers longer than :data:`MAX_JSON_DIGITS`.
    """
    path = os.fspath(path)
    try:
        if regular_file(path).st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path} is larger than {MAX_JSON_BYTES // 2 ** 20} MiB, so pyro_vae did not write "
                                  f"it; restore it or start a new run")
        with open(path, encoding="utf-8") as f:
            value = json.load(f, parse_int=_parse_int)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; is this a pyro-vae run folder?") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a file; restore the run folder") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path} ({e.strerror or e}); check its permissions") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        # ValueError covers JSONDecodeError and over-long numbers; RecursionError deep nesting
        detail = " ".join(str(e).split())[:100] or type(e).__name__
        raise CheckpointError(f"{path} is not valid JSON ({detail}); restore it or start a new run") from None
    if depth(value) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{path} nests more than {MAX_JSON_DEPTH} levels deep, so pyro_vae did not write it; "
                              f"restore it or start a new run")
    return value


def save_figure(fig, path, dpi=100):
    """Write the matplotlib figure ``fig`` to ``path`` as a PNG, atomically, when ``path`` is given; return ``fig``."""
    if path is not None:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    return fig
