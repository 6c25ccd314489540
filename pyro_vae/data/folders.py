"""Where the images of a folder are, laid out as torchvision's ``ImageFolder`` reads them: flat (unlabelled),
one sub-folder per class (:func:`find_classes`), optionally split into ``train/`` and ``test/``.

Files are counted while they are listed, so a folder of millions of files is refused before it has been listed
whole (``max_files``, default ``pyro_vae.data.MAX_IMAGE_FILES``); nothing here opens an image.
"""

import collections
import os
import warnings

from ..errors import DataError
from .limits import resolve_limit
from .splits import fixed_split, take, train_count

__all__ = ["IMAGE_EXTENSIONS", "IMAGE_LAYOUTS", "ImageLayout", "find_classes", "find_images"]

#: File name endings (compared case-insensitively) read as images; other files in a folder are ignored.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

#: the layouts :func:`find_images` reads, as error messages name them
IMAGE_LAYOUTS = "FOLDER/*.png, FOLDER/<class>/*.png, or FOLDER/train/ and FOLDER/test/ laid out either way"

ImageLayout = collections.namedtuple(
    "ImageLayout", ["train_files", "train_labels", "test_files", "test_labels", "classes"])
ImageLayout.__doc__ = """What :func:`find_images` finds: ``train_files`` / ``test_files`` lists of paths;
``train_labels`` / ``test_labels`` lists of class indices, one per file, or ``None`` for unlabelled images;
``classes`` the class names in index order (a tuple of str), or ``None``."""


def _is_image_name(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


class _FileBudget:
    """Counts image files as they are found, so a huge folder is refused while it is being listed; ``limit``
    None counts nothing."""

    def __init__(self, folder, limit):
        self.folder, self.limit, self.count = folder, limit, 0
        #: files with an image name that are not regular files (pipes, links to devices, broken links)
        self.skipped = []

    def warn_skipped(self):
        """One warning for every skipped file, naming the first."""
        if self.skipped:
            first = os.path.relpath(min(self.skipped), self.folder)
            # stacklevel: the line that called find_images' caller (load_image_folder, or load's reader)
            warnings.warn(f"skipped {len(self.skipped)} file(s) in {self.folder!r} with an image name that are not "
                          f"regular files (a named pipe, a link to a device, or a broken link), e.g. {first!r}; "
                          f"replace them with image files or remove them", UserWarning, stacklevel=4)

    def add(self, number=1):
        self.count += number
        if self.limit is not None and self.count > self.limit:
            raise DataError(f"{self.folder!r} holds more than {self.limit:,} image files, the cap "
                            f"(pyro_vae.data.MAX_IMAGE_FILES); pass load_image_folder(..., max_files=N) or raise "
                            f"the cap, or point at a smaller folder")


def _list_folder(directory, budget, follow_links=True):
    """Sorted image files and subfolders directly in ``directory``; hidden entries (".name") are skipped."""
    images, folders = [], []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=follow_links):
                    folders.append(entry.path)
                elif _is_image_name(entry.name) and entry.is_file():
                    budget.add()
                    images.append(entry.path)
                elif _is_image_name(entry.name):
                    budget.skipped.append(entry.path)
    except OSError as error:
        raise DataError(f"could not list folder {directory!r} ({error.strerror or error}); check its "
                        f"permissions") from error
    return sorted(images), sorted(folders)


def _classes(folders):
    """``(classes, class_to_idx)`` of the sorted class folders ``folders``."""
    classes = [os.path.basename(folder) for folder in folders]
    return classes, {name: index for index, name in enumerate(classes)}


def find_classes(directory):
    """The classes of an image folder, found as torchvision's ``datasets.folder.find_classes`` finds them: the
    names of its sub-folders in sorted order, each labelled by its index in that order. Unlike torchvision's,
    hidden sub-folders (``.name``, e.g. ``.ipynb_checkpoints``) are no class, and a folder without any gives
    empty results rather than an error.

    :param directory: path of the folder.
    :return: ``(classes, class_to_idx)``: a list of the names, and a dict name -> index.
    :raises DataError: if the folder cannot be listed.
    """
    return _classes(_list_folder(os.fspath(directory), _FileBudget(directory, None))[1])


def _images_below(directory, budget, follow_links=True):
    """Every image file in ``directory`` and its subfolders, in sorted order (as ImageFolder finds them)."""
    images, folders = _list_folder(directory, budget, follow_links)
    for folder in folders:
        # a class folder may be a link, but links further down could loop back up the tree
        images += _images_below(folder, budget, follow_links=False)
    return images


def _split_layout(root, budget):
    """``(files, labels, classes)`` of one split's folder, or None when it holds no images.

    Images directly in ``root`` are unlabelled (labels and classes None); images in subfolders are
    labelled by the subfolder's index in sorted order (:func:`find_classes`).
    """
    images, folders = _list_folder(root, budget)
    if images and folders:
        raise DataError(f"{root!r} holds both images ({os.path.basename(images[0])}, ...) and subfolders "
                        f"({os.path.basename(folders[0])}/, ...); put every image in a class subfolder, or move "
                        f"the subfolders out")
    if images:
        return images, None, None
    classes, class_to_idx = _classes(folders)
    members = [_images_below(folder, budget) for folder in folders]
    if not any(members):
        return None
    for folder, found in zip(folders, members):
        if not found:
            raise DataError(f"class folder {folder!r} holds no {'/'.join(IMAGE_EXTENSIONS)} images; add images "
                            f"or remove the folder")
    files = [path for found in members for path in found]
    labels = [class_to_idx[name] for name, found in zip(classes, members) for _ in found]
    return files, labels, tuple(classes)


def _image_layout(folder, budget):
    """The :class:`ImageLayout` of an image folder, or None when it holds no images."""
    splits = [os.path.join(folder, split) for split in ("train", "test")]
    present = [os.path.isdir(split) for split in splits]
    if present == [True, True]:
        layouts = []
        for split in splits:
            layout = _split_layout(split, budget)
            if layout is None:
                raise DataError(f"{split!r} holds no {'/'.join(IMAGE_EXTENSIONS)} images; add some, laid out "
                                f"as FOLDER/train/*.png or FOLDER/train/<class>/*.png")
            layouts.append(layout)
        (train_files, train_labels, classes), (test_files, test_labels, test_classes) = layouts
        if (classes is None) != (test_classes is None):
            labelled, unlabelled = ("train", "test") if classes is not None else ("test", "train")
            raise DataError(f"{folder!r}: {labelled}/ has class subfolders but {unlabelled}/ holds loose images; "
                            f"lay out both the same way")
        if classes is not None:
            unknown = sorted(set(test_classes) - set(classes))
            if unknown:
                raise DataError(f"{folder!r}: test/ has classes that train/ lacks ({', '.join(unknown)}); give "
                                f"train/ images of every class")
            # a class missing from test/ must not shift the indices of the others
            class_to_idx = {name: index for index, name in enumerate(classes)}
            test_labels = [class_to_idx[test_classes[label]] for label in test_labels]
        return ImageLayout(train_files, train_labels, test_files, test_labels, classes)
    if any(present):
        have, lack = ("train", "test") if present[0] else ("test", "train")
        raise DataError(f"{folder!r} has {have}/ but no {lack}/; add {lack}/ laid out like {have}/, or rename "
                        f"{have}/ if it is a class")
    layout = _split_layout(folder, budget)
    if layout is None:
        return None
    files, labels, classes = layout
    train, test = fixed_split(len(files), train_count(len(files), f"image folder {folder!r}"))
    return ImageLayout(take(files, train), take(labels, train), take(files, test), take(labels, test), classes)


def find_images(folder, max_files=None):
    """The image files of ``folder`` and their labels, in one of the layouts of
    :func:`~pyro_vae.data.load_image_folder` (which documents them); without ``train/`` and ``test/`` the
    fixed 90% / 10% split of :mod:`~pyro_vae.data.splits` is drawn. A file with an image name that is not a
    regular file (a pipe, a link to a device, a broken link) is skipped, with one warning for all of them.

    :param folder: path of an existing folder.
    :param int max_files: most image files listed; default ``pyro_vae.data.MAX_IMAGE_FILES``.
    :return: an :class:`ImageLayout`, or None when the folder holds no images.
    :raises DataError: on a layout that mixes images and class folders, an empty class folder, train/ without
        test/ (or the other way round), or more than ``max_files`` files.
    """
    budget = _FileBudget(folder, resolve_limit(max_files, "MAX_IMAGE_FILES", "max_files"))
    layout = _image_layout(folder, budget)
    budget.warn_skipped()
    return layout
