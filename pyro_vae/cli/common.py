"""What the ``pyro-vae`` commands share: a run's data, its scores printed, and how an interruption or an
OSError is reported."""

import os

import pyro_vae as pv


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, carrying what the interrupted command leaves behind (which :func:`pyro_vae.cli.main` prints)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (what is saved stays saved, and :func:`pyro_vae.cli.main` says so)."""


def load_data(info, with_validation=False):
    """``(train, test)`` of a run's recorded ``data`` entry (what ``pyro-vae train`` writes to config.json), with
    errors that name flags and the fix; ``(train, validation, test)`` with ``with_validation`` (``validation``
    ``None`` when the entry holds none). The training set is the one the run trained on, its validation
    images held out."""
    if not isinstance(info, dict) or "dataset" not in info or "binarize" not in info:
        raise pv.CheckpointError("this run's config.json records no dataset (it was trained from Python, not with "
                                 "pyro-vae train); evaluate it in Python with pv.load_run and pv.evaluate.report")
    for key, ok in (("dataset", lambda v: isinstance(v, str)), ("binarize", lambda v: isinstance(v, str)),
                    ("data_dir", lambda v: v is None or isinstance(v, str)),
                    ("seed", lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 32),
                    ("validation", lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)))):
        if key in info and not ok(info[key]):
            raise pv.CheckpointError(f"this run's config.json is damaged: its data entry has {key} "
                                     f"{info[key]!r:.40}; restore it")
    try:
        splits = pv.data.load(info["dataset"], data_dir=info.get("data_dir"), binarize=info["binarize"],
                              seed=info.get("seed", 0), validation=info.get("validation"))
    except pv.errors.DownloadError as e:   # the library's advice names its keywords; here it is flags
        raise pv.DataError(f"could not download {e.dataset!r} (no network?); offline: --dataset mnist5k, --dataset "
                           f"digits, or --dataset FOLDER (a folder of IDX or image files)") from e
    train, validation, test = splits if len(splits) == 3 else (splits[0], None, splits[1])
    return (train, validation, test) if with_validation else (train, test)


def print_metrics(m):
    """The test scores of ``m`` (a metrics dict of :func:`pv.evaluate.report`) as one line, two for a classifier."""
    print(f"test ({m['dataset']}, {m['num_datapoints']} images, {m['binarize']} binarization, epoch {m['epoch']}): "
          f"ELBO {m['elbo']:.2f} nats (reconstruction {m['reconstruction']:.2f}, KL {m['kl']:.2f}); "
          f"{m.get('quantity', 'log p(x)')} {m['log_likelihood']:.2f} nats with K={m['num_samples']} "
          f"({m['nll_bits_per_dim']:.4f} bits/dim); active units {m['active_units']}")
    if "accuracy" in m:
        print(f"test accuracy of q(y|x): {m['accuracy']:.4f}")


def error_path(error):
    """The path an OSError names, or its folder when it is a temporary file (whose name means nothing to users)."""
    from ..files import is_temporary
    where = os.fspath(error.filename) if isinstance(error.filename, (str, os.PathLike)) else ""
    if is_temporary(os.path.basename(where)):
        where = os.path.dirname(where)
    return where
