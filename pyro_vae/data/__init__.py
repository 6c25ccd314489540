"""Image datasets held in memory as tensors (:class:`ImageDataset`), and the readers that make them.

Where each job lives: :mod:`.dataset` (:class:`ImageDataset`, :func:`from_tensor`, binarization, batches),
:mod:`.sources` (:func:`load`: the bundled, offline and downloaded datasets, and a user's files by path),
:mod:`.idx` (MNIST-style IDX files), :mod:`.folders` (where the images of a folder are) and :mod:`.images`
(decoding them through Pillow), :mod:`.arrays` (NumPy files), :mod:`.splits` (the fixed train/test splits),
:mod:`.labels` (keeping a few labels), :mod:`.augment` (random shifts of training batches), and
:mod:`.limits` (the bounds the readers keep to).

Files are read with bounded memory: an IDX or NumPy header that declares more than :data:`MAX_DATA_BYTES`
of data (NumPy arrays: as they will be held, images as float32), image headers (read through Pillow) that
declare more, or a folder of more than :data:`MAX_IMAGE_FILES` images, is refused before anything large is
decoded or allocated (the readers take ``max_bytes`` / ``max_files`` to override the limits for one call).
Both limits are settings of this package: ``pyro_vae.data.MAX_DATA_BYTES = ...`` changes them for every later
read.
"""

from .arrays import load_numpy
from .augment import MAX_SHIFT, random_shifts
from .dataset import BINARIZATIONS, ImageDataset, from_tensor
from .folders import IMAGE_EXTENSIONS, find_classes, find_images
from .idx import IDX_FILES, find_idx_files, load_idx_folder, read_idx
from .images import ImageFolderData, load_image_folder
from .labels import keep_labels, without_labels
from .limits import MAX_DATA_BYTES, MAX_IMAGE_FILES
from .sources import DATASETS, DEFAULT_DATA_DIR, FASHION_MNIST_DEBIAN_DIR, load
from .splits import VALIDATION_FRACTION, validation_split

__all__ = [
    "BINARIZATIONS",
    "DATASETS",
    "DEFAULT_DATA_DIR",
    "FASHION_MNIST_DEBIAN_DIR",
    "IDX_FILES",
    "IMAGE_EXTENSIONS",
    "MAX_DATA_BYTES",
    "MAX_IMAGE_FILES",
    "MAX_SHIFT",
    "VALIDATION_FRACTION",
    "ImageDataset",
    "ImageFolderData",
    "find_classes",
    "random_shifts",
    "find_idx_files",
    "find_images",
    "from_tensor",
    "keep_labels",
    "load",
    "load_idx_folder",
    "load_image_folder",
    "load_numpy",
    "read_idx",
    "validation_split",
    "without_labels",
]
