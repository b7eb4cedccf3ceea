"""What a data source holds, cheaply: classes, image counts, image size.

`describe_source(path)` answers before a run starts (the app shows it under
its data field) without decoding the data:

- a CIFAR-10 archive or `cifar-10-batches-py/` folder: its known facts (10
  classes, 50,000 training and 10,000 test images of 32x32), from the
  path alone;
- an image folder (one subfolder per class, or `train/` and `test/` each
  with them): files counted per class folder, and the size read from the
  header of the first image of each class (Pillow reads the header only);
- a `.npz` file: the shapes from each member's `.npy` header (numpy's
  format header, without loading the array); the classes from
  `class_names`' header, else from `y_train` when it is small.

Bounded: at most `MAX_IMAGES` files are counted and `MAX_PEEKS` headers
read; a symlink that leads out of the source folder, a FIFO, and a `.npz`
member that is not a `.npy` array are refused. Keras-free (numpy, and
Pillow for the image headers).
"""

import dataclasses
import os
import stat
import zipfile
from pathlib import Path

import numpy as np

from kd_keras.config import data_kind
from kd_keras.data.cifar10 import CLASS_NAMES, IMAGE_SHAPE
from kd_keras.data.image_folders import IMAGE_EXTENSIONS
from kd_keras.data.source_checks import MAX_IMAGES
from kd_keras.errors import DataSourceError

CIFAR10_IMAGES = (50_000, 10_000)  # Training, test.
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
MAX_PEEKS = 64  # Image headers read (the first image of each class, up to this many).
MAX_LABEL_BYTES = 16 << 20  # A `y_train` read to count classes is at most this big.
MAX_LISTED = 8  # Class names shown in a summary; the rest are counted.


@dataclasses.dataclass
class SourceDescription:
    """What `describe_source` found.

    Attributes:
        kind: "cifar10", "folder" or "npz".
        classes: the class names, in label order (None if unknown).
        class_count: how many classes (None if unknown).
        train_images: images for training and validation.
        test_images: test images, or None when the test split is carved
            from the training images (20% of each class).
        image_size: `(width, height)` of the images peeked, or None.
        mixed_sizes: True if the images peeked differ in size (then
            `--image-size` must be given).
        per_class: `{class: images}` of an image folder's training images.
    """

    kind: str
    classes: tuple = None
    class_count: int = None
    train_images: int = None
    test_images: int = None
    image_size: tuple = None
    mixed_sizes: bool = False
    per_class: dict = None

    @property
    def total_images(self):
        return (self.train_images or 0) + (self.test_images or 0)

    def summary(self):
        """One line: kind, classes, images, size."""
        kind = {"cifar10": "CIFAR-10", "folder": "image folder", "npz": ".npz arrays"}[self.kind]
        if self.classes:
            shown = ", ".join(self.classes[:MAX_LISTED])
            more = len(self.classes) - MAX_LISTED
            classes = (
                f"{len(self.classes)} classes ({shown}{f', and {more} more' if more > 0 else ''})"
            )
        elif self.class_count:
            classes = f"{self.class_count} classes"
        else:
            classes = "classes read at launch"
        if self.test_images is None:
            images = f"{self.train_images:,} images (20% of each class held out for testing)"
        else:
            images = f"{self.train_images:,} training + {self.test_images:,} test images"
        if self.mixed_sizes:
            size = "images of different sizes (set an image size)"
        elif self.image_size:
            size = f"{self.image_size[0]}x{self.image_size[1]} pixels"
        else:
            size = "size unknown"
        return f"{kind}: {classes}; {images}; {size}."


def _inside(path, root):
    try:
        return Path(path).resolve().is_relative_to(Path(root).resolve())
    except (OSError, RuntimeError, ValueError):
        return False


def _check_entry(path, root):
    """Refuses a symlink out of `root` and anything but a file or folder."""
    if path.is_symlink() and not _inside(path, root):
        raise DataSourceError(path, f"a symlink that leads out of '{root}'; copy the data in")
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise DataSourceError(path, f"cannot be read ({error.strerror or error})") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise DataSourceError(path, "not a regular file or folder (a FIFO or device?)")


def _class_folders(folder, root):
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    for entry in entries:
        _check_entry(entry, root)
    folders = [p for p in entries if p.is_dir()]
    if not folders:
        raise DataSourceError(
            folder,
            "no class subfolders; put each class's images in its own subfolder "
            "(e.g. cats/, dogs/), or name a CIFAR-10 archive or a .npz file",
        )
    return folders


def _image_files(folder, root, budget):
    """The image files under one class folder (sorted, no hidden ones)."""
    files = []
    for parent, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in dirs:
            _check_entry(Path(parent) / name, root)
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(parent) / name
            _check_entry(path, root)
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataSourceError(
                    path,
                    f"not an image file (allowed: {' '.join(IMAGE_EXTENSIONS)}); "
                    "move it out of the class folders",
                )
            files.append(path)
            if len(files) > budget:
                raise DataSourceError(folder, f"more than {MAX_IMAGES:,} images")
    return files


def _peek_size(path):
    """`(width, height)` from an image's header (nothing decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise DataSourceError(path, f"not a readable image ({error})") from None


def _count_folder(folder, root, budget):
    """`(names, {name: count}, [first file of each class])` of one layer of class folders."""
    names, counts, firsts = [], {}, []
    for class_folder in _class_folders(folder, root):
        files = _image_files(class_folder, root, budget)
        budget -= len(files)
        names.append(class_folder.name)
        counts[class_folder.name] = len(files)
        if files:
            firsts.append(files[0])
    empty = [name for name in names if not counts[name]]
    if empty:
        raise DataSourceError(folder, f"class folder(s) {empty[:MAX_LISTED]} hold no images")
    return names, counts, firsts


def _describe_folder(root):
    train, test = root / "train", root / "test"
    if train.is_dir() and test.is_dir():
        for part in (train, test):
            _check_entry(part, root)
        names, counts, firsts = _count_folder(train, root, MAX_IMAGES)
        test_names, test_counts, _ = _count_folder(test, root, MAX_IMAGES - sum(counts.values()))
        if test_names != names:
            raise DataSourceError(
                test, f"its class folders differ from train/'s ({len(names)} classes)"
            )
        test_images = sum(test_counts.values())
    else:
        names, counts, firsts = _count_folder(root, root, MAX_IMAGES)
        test_images = None
    sizes = {_peek_size(path) for path in firsts[:MAX_PEEKS]}
    return SourceDescription(
        kind="folder",
        classes=tuple(names),
        class_count=len(names),
        train_images=sum(counts.values()),
        test_images=test_images,
        image_size=next(iter(sizes)) if len(sizes) == 1 else None,
        mixed_sizes=len(sizes) > 1,
        per_class=counts,
    )


def _npy_header(archive, name):
    """`(shape, dtype)` of a `.npz` member from its `.npy` header only."""
    with archive.open(name) as member:
        try:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        except ValueError as error:
            raise DataSourceError(name, f"not a .npy array in the .npz ({error})") from None
    return shape, dtype


def _npz_labels(archive, name, shape, dtype):
    """The distinct labels of a small `y_train`, or None if it is too big."""
    count = int(np.prod(shape)) if shape else 1
    if dtype.hasobject or count * dtype.itemsize > MAX_LABEL_BYTES:
        return None
    with archive.open(name) as member:
        labels = np.lib.format.read_array(member, allow_pickle=False)
    return np.unique(labels.reshape(-1))


def _describe_npz(path):
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        raise DataSourceError(path, f"not a readable .npz file ({error})") from None
    with archive:
        members = {Path(n).stem: n for n in archive.namelist() if n.endswith(".npy")}
        missing = [key for key in ("x_train", "y_train") if key not in members]
        if missing:
            raise DataSourceError(path, f"no {' or '.join(missing)} array in the .npz")
        headers = {key: _npy_header(archive, name) for key, name in members.items()}
        x_shape = headers["x_train"][0]
        if len(x_shape) not in (3, 4):
            raise DataSourceError(path, f"x_train has shape {x_shape}; expected (N, H, W[, C])")
        classes, class_count = None, None
        if "class_names" in headers:
            class_count = int(np.prod(headers["class_names"][0]))
            if class_count <= 64 and not headers["class_names"][1].hasobject:
                with archive.open(members["class_names"]) as member:
                    names = np.lib.format.read_array(member, allow_pickle=False)
                classes = tuple(str(n) for n in names.reshape(-1))
        else:
            labels = _npz_labels(archive, members["y_train"], *headers["y_train"])
            class_count = None if labels is None else len(labels)
        test = headers.get("x_test")
    return SourceDescription(
        kind="npz",
        classes=classes,
        class_count=class_count,
        train_images=int(x_shape[0]),
        test_images=int(test[0][0]) if test and test[0] else None,
        image_size=(int(x_shape[2]), int(x_shape[1])),
    )


def describe_source(path):
    """What the data source at `path` holds (see the module docstring).

    Raises:
        DataSourceError: it does not exist, is not a file or folder, or its
            layout is wrong (no class folders, an empty class, a non-image
            file, a symlink out of the folder, a `.npz` without `x_train`).
    """
    path = Path(str(path)).expanduser()
    if not path.exists():
        raise DataSourceError(path, "does not exist")
    _check_entry(path, path.parent)
    kind = data_kind(path)
    if kind == "cifar10":
        if path.is_file() and not path.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise DataSourceError(
                path,
                "not a data source: name a CIFAR-10 archive (cifar-10-python.tar.gz), "
                "a cifar-10-batches-py/ folder, an image folder or a .npz file",
            )
        if path.is_dir():  # A batches folder, or the folder holding one.
            for entry in (path, *(p for p in path.iterdir() if not p.name.startswith("."))):
                _check_entry(entry, path)
        return SourceDescription(
            kind="cifar10",
            classes=tuple(CLASS_NAMES),
            class_count=len(CLASS_NAMES),
            train_images=CIFAR10_IMAGES[0],
            test_images=CIFAR10_IMAGES[1],
            image_size=IMAGE_SHAPE[1::-1],
        )
    if kind == "npz":
        return _describe_npz(path)
    return _describe_folder(path)
