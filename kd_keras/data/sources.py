"""A run's own data: image folders and `.npz` arrays, besides CIFAR-10.

`--data` (`RunConfig.data`) names one of:

- CIFAR-10 (the default): the official `cifar-10-python.tar.gz` or its
  extracted `cifar-10-batches-py/` folder (see `kd_keras.data.cifar10`).
- an image folder with one subfolder per class (`cats/`, `dogs/`, ...),
  as `keras.utils.image_dataset_from_directory` reads it. Class `i` is the
  `i`-th class folder in sorted order. If the folder holds `train/` and
  `test/` subfolders, each with the same class subfolders, those are the
  training and test sets; otherwise a seeded, stratified `TEST_FRACTION`
  (20%) of each class is held out as the test set (at least one image per
  class). The validation split is then carved from the training images as
  for CIFAR-10.
- a `.npz` file (`numpy.savez`) with `x_train` (uint8 images, `(N, H, W, 3)`
  or grey `(N, H, W)` / `(N, H, W, 1)`, 0..255), `y_train` (int class ids,
  `(N,)` or `(N, 1)`), and optionally `x_test`, `y_test` (else the test set
  is carved out as for a folder without `test/`) and `class_names`
  (strings; default `"0"`, `"1"`, ...).

Every source gives what `kd_keras.data.splits.prepare_splits` consumes: uint8 RGB
images of one size, 0..255 (the models normalise inside), int64 labels,
and the class names. Images of a folder are read with Pillow: PNG, JPEG,
BMP and GIF (first frame), converted to RGB, and resized (bilinear) to
`image_size` when one is given; without one they must all have one size.

16-bit images (PNG mode `I;16`) are scaled to 8 bits, not clipped;
grey, palette and RGBA images become RGB. A class folder that is a
symbolic link is refused (it would duplicate a class or leave the data
folder), as are a linked `train/`, `test/` or subfolder and an image whose
link leads out of the data folder.

Reads are bounded before they happen: a regular file of at most
`MAX_IMAGE_BYTES` per image and `MAX_IMAGE_PIXELS` pixels (checked from the
header, before decoding), at most `MAX_IMAGE_SIDE` pixels a side without
`--image-size`, at most `MAX_IMAGES` images, and decoded images within
`memory_budget()` (a quarter of the available memory, at most
`MAX_ARRAY_BYTES`), from the image headers or the `.npz` members' npy
headers. Labels are checked (type, sign, range) before any class name is
made from them.
"""

import collections
import os
import resource
import stat
import zipfile
from pathlib import Path

import numpy as np

from kd_keras.config import data_kind  # noqa: F401 (data_kind re-exported)
from kd_keras.errors import DataSourceError
from kd_keras.text import short_list

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
TEST_FRACTION = 0.2
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test", "class_names")
MAX_IMAGE_BYTES = 64 << 20
MAX_IMAGE_PIXELS = 50_000_000
MAX_IMAGES = 2_000_000
MAX_ARRAY_BYTES = 16 << 30
MAX_NPZ_BYTES = 16 << 30
MAX_CLASSES = 10_000
# RunConfig's image_size limit: larger images need --image-size.
MAX_IMAGE_SIDE = 1024
# Decoded images are copied on the way to training (splits, tf.data).
MEMORY_SHARE = 4


def memory_budget():
    """Bytes of decoded images a source may hold: `MAX_ARRAY_BYTES`, at most
    a `1 / MEMORY_SHARE` of the available memory (and of the address-space
    limit, if one is set)."""
    limits = [MAX_ARRAY_BYTES]
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024 // MEMORY_SHARE)
    except (OSError, ValueError):
        try:
            pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            limits.append(pages // MEMORY_SHARE)
        except (ValueError, OSError, AttributeError):
            pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft // MEMORY_SHARE)
    return min(limits)


def _too_big(path, needed, what, fix):
    budget = memory_budget()
    if needed > budget:
        raise DataSourceError(
            path,
            f"{what} need {needed / 2**30:.1f} GiB decoded, more than the "
            f"{budget / 2**30:.1f} GiB allowed here (1/{MEMORY_SHARE} of the available "
            f"memory: images are copied on the way to training); {fix}",
        )


def _regular_size(path, limit, what):
    try:
        info = os.stat(path)
    except OSError as error:
        raise DataSourceError(path, f"cannot read the {what} ({error.strerror or error})") from None
    if not stat.S_ISREG(info.st_mode):
        raise DataSourceError(path, f"the {what} is not a regular file; remove it")
    if info.st_size > limit:
        raise DataSourceError(
            path, f"the {what} has {info.st_size:,} bytes, more than the {limit:,} allowed"
        )
    return info.st_size


def _as_rgb_uint8(images, path, key):
    images = np.asarray(images)
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.integer):
            hint = ""
            if np.issubdtype(images.dtype, np.floating) and images.size and images.max() <= 1.0:
                hint = " (they look scaled to 0-1: store the raw pixels, 0-255)"
            raise DataSourceError(
                path, f"'{key}' must hold uint8 pixels 0..255, got {images.dtype}{hint}"
            )
        if images.size and (images.min() < 0 or images.max() > 255):
            raise DataSourceError(
                path, f"'{key}' pixels must lie in 0..255, got [{images.min()}, {images.max()}]"
            )
        images = images.astype(np.uint8)
    if images.size and images.max() <= 1:
        raise DataSourceError(
            path,
            f"'{key}' pixels are all 0 or 1 (they look scaled to 0-1: store the raw "
            "pixels, 0-255, e.g. (x * 255).astype('uint8'))",
        )
    if images.ndim == 4 and images.shape[-1] == 1 or images.ndim == 3:
        images = np.repeat(images.reshape(images.shape[:3] + (1,)), 3, axis=-1)
    if images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[1:3], default=0) < 1:
        raise DataSourceError(
            path,
            f"'{key}' must have shape (N, height, width, 3) or (N, height, "
            f"width), got {images.shape}",
        )
    return np.ascontiguousarray(images)


def _label_values(labels, path, key):
    """`labels` as a 1-D int array of class ids >= 0, or a one-line error
    that says what they are instead (checked before any class name is made
    from them)."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels.reshape(-1)
    if labels.size == 0:
        raise DataSourceError(path, f"'{key}' is empty: it needs one class id per image")
    if labels.ndim == 2:
        raise DataSourceError(
            path,
            f"'{key}' has shape {labels.shape}: it looks one-hot; store the class ids, "
            f"e.g. {key}.argmax(axis=1)",
        )
    if labels.ndim != 1:
        raise DataSourceError(path, f"'{key}' must be 1-D class ids, got shape {labels.shape}")
    if labels.dtype == bool:
        raise DataSourceError(
            path, f"'{key}' holds booleans; store int class ids (e.g. {key}.astype(int))"
        )
    if np.issubdtype(labels.dtype, np.floating):
        if np.isnan(labels).any():
            raise DataSourceError(path, f"'{key}' holds NaN; every image needs a class id")
        whole = np.all(np.isfinite(labels)) and np.all(labels == np.round(labels))
        fix = f"{key}.astype(int)" if whole else "the class ids 0..K-1"
        raise DataSourceError(path, f"'{key}' holds floats ({labels.dtype}); store {fix}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataSourceError(path, f"'{key}' must hold int class ids, got {labels.dtype}")
    if labels.min() < 0:
        raise DataSourceError(
            path, f"'{key}' holds negative class ids (down to {labels.min()}); use 0..K-1"
        )
    return labels


def _as_labels(labels, count, num_classes, path, key):
    labels = _label_values(labels, path, key)
    if len(labels) != count:
        raise DataSourceError(
            path,
            f"'{key}' must be {count} int class ids of shape ({count},), got "
            f"{labels.dtype} {labels.shape}",
        )
    if labels.max() >= num_classes:
        raise DataSourceError(
            path,
            f"'{key}' must lie in [0, {num_classes - 1}] ({num_classes} class names), "
            f"got up to {labels.max()}",
        )
    return labels.astype(np.int64)


def _npy_bytes(npz, key, path):
    """Bytes `npz[key]` will take once read, from its npy header and zip
    entry (nothing is decompressed)."""
    info = npz.zip.getinfo(f"{key}.npy")
    try:
        with npz.zip.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise DataSourceError(path, f"'{key}' is not a readable array ({error})") from None
    return max(info.file_size, int(np.prod(shape, dtype=object)) * dtype.itemsize)


def load_npz(path):
    """Reads a `.npz` data file (keys: see the module docstring).

    Returns:
        `((x_train, y_train), (x_test, y_test), class_names)`; the test
        arrays are `None` if the file has none.

    Raises:
        DataSourceError: a missing or oversized file, a missing key, or
            arrays of the wrong dtype, shape or label range.
    """
    path = Path(path).expanduser()
    _regular_size(path, MAX_NPZ_BYTES, ".npz file")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataSourceError(path, f"not a readable .npz file ({error})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataSourceError(path, "not a .npz archive (a single .npy array?)")
    with npz:
        keys = set(npz.files)
        missing = [k for k in ("x_train", "y_train") if k not in keys]
        if missing or (("x_test" in keys) != ("y_test" in keys)):
            raise DataSourceError(
                path,
                f"the file has keys {sorted(keys)}; it needs x_train and y_train "
                "(and optionally both x_test and y_test, and class_names)",
            )
        unknown = sorted(keys - set(NPZ_KEYS))
        if unknown:
            raise DataSourceError(
                path, f"unknown keys {unknown}; the keys are {', '.join(NPZ_KEYS)}"
            )
        total = sum(_npy_bytes(npz, k, path) for k in keys)
        _too_big(path, total, "its arrays", "store fewer or smaller images")
        try:
            arrays = {k: npz[k] for k in keys}
        except ValueError as error:  # An object array needs pickle: refused.
            raise DataSourceError(path, f"unreadable array ({error})") from None
    x_train = _as_rgb_uint8(arrays["x_train"], path, "x_train")
    labels = {k: _label_values(arrays[k], path, k) for k in ("y_train", "y_test") if k in arrays}
    if "class_names" in arrays:
        names = [str(n) for n in np.asarray(arrays["class_names"]).reshape(-1)]
    else:
        highest = max(int(y.max()) for y in labels.values())
        if highest >= MAX_CLASSES:
            raise DataSourceError(
                path,
                f"class ids reach {highest} and there are no class_names: at most "
                f"{MAX_CLASSES} classes, numbered 0..K-1",
            )
        names = [str(i) for i in range(highest + 1)]
    _check_class_names(names, path)
    y_train = _as_labels(arrays["y_train"], len(x_train), len(names), path, "y_train")
    test = (None, None)
    if "x_test" in arrays:
        x_test = _as_rgb_uint8(arrays["x_test"], path, "x_test")
        if x_test.shape[1:] != x_train.shape[1:]:
            raise DataSourceError(
                path,
                f"x_test images are {x_test.shape[1:]}, x_train images "
                f"{x_train.shape[1:]}; store both at one size",
            )
        test = (x_test, _as_labels(arrays["y_test"], len(x_test), len(names), path, "y_test"))
        _check_per_class(y_train, names, path, 2, "in y_train (for training and validation)")
    return (x_train, y_train), test, names


def _check_class_names(names, path):
    if not 2 <= len(names) <= MAX_CLASSES:
        raise DataSourceError(
            path, f"found {len(names)} classes; a classifier needs 2 to {MAX_CLASSES}"
        )
    if len(set(names)) != len(names):
        repeated = sorted(n for n, count in collections.Counter(names).items() if count > 1)
        raise DataSourceError(path, f"class names repeat: {short_list(repeated)}")


def _class_folders(root):
    linked = sorted(p.name for p in root.iterdir() if p.is_symlink() and p.is_dir())
    if linked:
        raise DataSourceError(
            root,
            f"class folder(s) {short_list(linked)} are symbolic links (a link duplicates a "
            "class or leaves the data folder); replace them with real folders",
        )
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataSourceError(
            root,
            "no class subfolders; put each class's images in its own "
            "subfolder (e.g. cats/, dogs/), or give a CIFAR-10 archive or a .npz file",
        )
    return folders


def _image_files(folder, root):
    files = []
    inside = Path(os.path.realpath(root))
    for parent, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        linked = [d for d in dirs if (Path(parent) / d).is_symlink()]
        if linked:
            raise DataSourceError(
                Path(parent) / linked[0],
                "a symbolic link to a folder (it may duplicate images or leave the data "
                "folder); replace it with a real folder",
            )
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(parent) / name
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataSourceError(
                    path,
                    f"not an image file (allowed: {' '.join(IMAGE_EXTENSIONS)}); "
                    "move it out of the class folders",
                )
            if path.is_symlink() and not Path(os.path.realpath(path)).is_relative_to(inside):
                raise DataSourceError(
                    path, "a symbolic link that leads out of the data folder; copy the image in"
                )
            files.append(path)
            if len(files) > MAX_IMAGES:
                raise DataSourceError(folder, f"more than {MAX_IMAGES:,} images")
    return files


def _image_header(path, image_size):
    """`(width, height)` of an image from its header (nothing is decoded);
    refuses what would be too large to decode or to train on."""
    from PIL import Image, UnidentifiedImageError

    _regular_size(path, MAX_IMAGE_BYTES, "image")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        width = height = None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise DataSourceError(path, f"not a readable image ({error})") from None
    if width is None or width * height > MAX_IMAGE_PIXELS:
        size = "" if width is None else f"{width}x{height} = {width * height:,} pixels, "
        raise DataSourceError(
            path, f"the image has {size}more than {MAX_IMAGE_PIXELS:,} pixels; shrink it"
        )
    if image_size is None and max(width, height) > MAX_IMAGE_SIDE:
        raise DataSourceError(
            path,
            f"the image is {width}x{height}, larger than {MAX_IMAGE_SIDE} a side; pass "
            "--image-size (e.g. 224) to resize every image",
        )
    return width, height


def _as_8bit(image):
    """A Pillow image in a mode `convert("RGB")` takes without clipping:
    16-bit images are scaled to 8 bits."""
    from PIL import Image

    if image.mode.startswith("I;16") or image.mode == "I":
        pixels = np.asarray(image).astype(np.int64)
        # 16-bit PNGs (Pillow opens some as "I"): 0..65535 -> 0..255.
        pixels = (np.clip(pixels, 0, 65535) * 255 + 32767) // 65535
        return Image.fromarray(pixels.astype(np.uint8), "L")
    return image


def _read_image(path, image_size):
    from PIL import Image, UnidentifiedImageError

    _image_header(path, image_size)
    try:
        with Image.open(path) as image:
            image = _as_8bit(image).convert("RGB")
            if image_size is not None and image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except DataSourceError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise DataSourceError(path, f"not a readable image ({error})") from None


def _read_class_folders(root, image_size, names=None):
    """Images and labels of one folder of class subfolders."""
    folders = _class_folders(root)
    found = [f.name for f in folders]
    if names is not None and found != names:
        missing, extra = sorted(set(names) - set(found)), sorted(set(found) - set(names))
        raise DataSourceError(
            root,
            f"its class folders differ from the training set's (missing: "
            f"{short_list(missing) or 'none'}; extra: {short_list(extra) or 'none'})",
        )
    files = [(label, path) for label, f in enumerate(folders) for path in _image_files(f, root)]
    if len(files) > MAX_IMAGES:
        raise DataSourceError(root, f"more than {MAX_IMAGES:,} images")
    counts = np.bincount([label for label, _ in files], minlength=len(folders))
    empty = [found[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataSourceError(
            root, f"class folder(s) {short_list(empty)} hold no images; add images or remove them"
        )
    # Every header first: sizes are refused before anything is decoded.
    sides = [_image_header(path, image_size) for _, path in files]
    needed = sum(3 * (image_size**2 if image_size else w * h) for w, h in sides)
    _too_big(root, needed, f"{len(files):,} images", "pass a smaller --image-size")
    images, first = None, None
    for index, (_, path) in enumerate(files):
        pixels = _read_image(path, image_size)
        if images is None:
            first = path
            images = np.empty((len(files),) + pixels.shape, np.uint8)
        elif pixels.shape != images.shape[1:]:
            raise DataSourceError(
                path,
                f"the image is {pixels.shape[1]}x{pixels.shape[0]} but '{first}' is "
                f"{images.shape[2]}x{images.shape[1]}; pass --image-size to resize all "
                "images to one size",
            )
        images[index] = pixels
    if images.max() <= 1:
        raise DataSourceError(
            root,
            "every pixel is 0 or 1 (the images look scaled to 0-1: save the raw pixels, 0-255)",
        )
    labels = np.array([label for label, _ in files], np.int64)
    return images, labels, found


def carve_test_split(labels, fraction=TEST_FRACTION, *, seed):
    """Indices of a seeded, stratified test split: `fraction` of each class
    (rounded, at least one), leaving at least two images per class.

    Returns:
        `(test, rest)`: sorted int arrays of indices into `labels`.
    """
    rng = np.random.default_rng(seed)
    taken = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        count = min(max(1, int(round(fraction * len(members)))), len(members) - 2)
        taken.append(members[: max(count, 0)])
    test = np.sort(np.concatenate(taken)) if taken else np.array([], int)
    return test, np.setdiff1d(np.arange(len(labels)), test)


def _check_per_class(labels, names, path, minimum, where):
    counts = np.bincount(labels, minlength=len(names))
    empty = [names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataSourceError(
            path,
            f"class(es) {short_list(empty)} have no images {where}; add images of them "
            "or remove them from the class names",
        )
    few = [f"'{names[i]}' ({counts[i]})" for i in np.flatnonzero(counts < minimum)]
    if few:
        raise DataSourceError(
            path,
            f"class(es) {short_list(few, quote=False)} have fewer than {minimum} images {where}; "
            "add images or remove the class",
        )


def load_image_folder(path, *, image_size=None, seed=0):
    """Reads an image folder (layout: see the module docstring).

    Returns:
        `((x_train, y_train), (x_test, y_test), class_names)`.

    Raises:
        DataSourceError: no class subfolders, an empty or too small class, a
            file that is not a readable image, images of mixed sizes without
            `image_size`, or a `test/` whose classes differ from `train/`.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataSourceError(root, "not a folder")
    train_dir, test_dir = root / "train", root / "test"
    for linked in (train_dir, test_dir):
        if linked.is_symlink():
            raise DataSourceError(
                linked, "a symbolic link (it may leave the data folder); replace it with a folder"
            )
    if train_dir.is_dir() and test_dir.is_dir():
        x_train, y_train, names = _read_class_folders(train_dir, image_size)
        x_test, y_test, _ = _read_class_folders(test_dir, image_size, names)
        if x_test.shape[1:] != x_train.shape[1:]:
            raise DataSourceError(
                test_dir,
                f"its images are {x_test.shape[1:3]}, the training images "
                f"{x_train.shape[1:3]}; pass --image-size to resize all images",
            )
        _check_class_names(names, train_dir)
        _check_per_class(y_train, names, train_dir, 2, "for training and validation")
        return (x_train, y_train), (x_test, y_test), names
    images, labels, names = _read_class_folders(root, image_size)
    _check_class_names(names, root)
    _check_per_class(labels, names, root, 3, "(one each for training, validation, test)")
    test, rest = carve_test_split(labels, seed=seed)
    return (images[rest], labels[rest]), (images[test], labels[test]), names


def resize_images(images, image_size):
    """uint8 images resized (bilinear) to `image_size` x `image_size`."""
    from PIL import Image

    if images.shape[1:3] == (image_size, image_size):
        return images
    out = np.empty((len(images), image_size, image_size, 3), np.uint8)
    for i, image in enumerate(images):
        out[i] = np.asarray(Image.fromarray(image).resize((image_size, image_size), Image.BILINEAR))
    return out


def load_source(source=None, *, image_size=None, seed=0, cache_dir=None):
    """Loads any `--data` source as uint8 arrays and class names.

    Args:
        source: CIFAR-10 (path or `None`), an image folder or a `.npz` file.
        image_size: resize every image to this square size; `None` keeps
            the data's own size.
        seed: seed of the test split carved from a source without one.
        cache_dir: see `kd_keras.data.cifar10.load_cifar10`.

    Returns:
        `((x_train, y_train), (x_test, y_test), class_names)`.
    """
    from kd_keras.data.cifar10 import CLASS_NAMES, load_cifar10

    kind = data_kind(source)
    if kind == "cifar10":
        (x_train, y_train), (x_test, y_test) = load_cifar10(source, cache_dir=cache_dir)
        names = list(CLASS_NAMES)
    elif kind == "folder":
        return load_image_folder(source, image_size=image_size, seed=seed)
    else:
        (x_train, y_train), (x_test, y_test), names = load_npz(source)
        if x_test is None:
            _check_per_class(y_train, names, source, 3, "(one each for training, validation, test)")
            test, rest = carve_test_split(y_train, seed=seed)
            x_test, y_test = x_train[test], y_train[test]
            x_train, y_train = x_train[rest], y_train[rest]
    if image_size is not None:
        x_train, x_test = resize_images(x_train, image_size), resize_images(x_test, image_size)
    return (x_train, y_train), (x_test, y_test), names
