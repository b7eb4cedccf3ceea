"""Reading an image folder (one subfolder per class), one of the `--data` sources.

Keras-free (Pillow is imported when an image is read). The layout, the
`train/` / `test/` split and the image formats are described in
`kd_keras.data.sources`. Every header is read before anything is decoded: a
regular file of at most `MAX_IMAGE_BYTES`, at most `MAX_IMAGE_PIXELS`
pixels, at most `MAX_IMAGE_SIDE` pixels a side without `--image-size`.
Symbolic links to class folders, to `train/` or `test/`, to subfolders, and
images whose link leads out of the data folder are refused, and so are two
entries that are one file (a link or hard link: one image, counted twice).
"""

import os
from pathlib import Path

import numpy as np

from kd_keras.data.source_checks import (
    MAX_IMAGES,
    carve_test_split,
    check_class_names,
    check_per_class,
    regular_size,
    too_big,
)
from kd_keras.errors import DataSourceError
from kd_keras.text import clip, short_list

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
MAX_IMAGE_BYTES = 64 << 20
MAX_IMAGE_PIXELS = 50_000_000
# RunConfig's image_size limit: larger images need --image-size.
MAX_IMAGE_SIDE = 1024


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


def _check_distinct_files(paths, root):
    """Refuses two entries that are one file (a link, or a hard link): the
    image would count twice, perhaps under two labels."""
    seen = {}
    for path in paths:
        try:
            info = os.stat(path)  # Follows a link: the file it names.
        except OSError as error:
            raise DataSourceError(
                path, f"cannot read the image ({error.strerror or error})"
            ) from None
        first = seen.setdefault((info.st_dev, info.st_ino), path)
        if first != path:
            raise DataSourceError(
                root,
                f"'{clip(first.relative_to(root))}' and '{clip(path.relative_to(root))}' are the "
                "same file (a link or hard link), so the image would count twice; keep one",
            )


def _image_header(path, image_size):
    """`(width, height)` of an image from its header (nothing is decoded);
    refuses what would be too large to decode or to train on."""
    from PIL import Image, UnidentifiedImageError

    regular_size(path, MAX_IMAGE_BYTES, "image")
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
    _check_distinct_files([path for _, path in files], root)
    counts = np.bincount([label for label, _ in files], minlength=len(folders))
    empty = [found[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataSourceError(
            root, f"class folder(s) {short_list(empty)} hold no images; add images or remove them"
        )
    # Every header first: sizes are refused before anything is decoded.
    sides = [_image_header(path, image_size) for _, path in files]
    needed = sum(3 * (image_size**2 if image_size else w * h) for w, h in sides)
    too_big(root, needed, f"{len(files):,} images", "pass a smaller --image-size")
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
        check_class_names(names, train_dir)
        check_per_class(y_train, names, train_dir, 2, "for training and validation")
        return (x_train, y_train), (x_test, y_test), names
    images, labels, names = _read_class_folders(root, image_size)
    check_class_names(names, root)
    check_per_class(labels, names, root, 3, "(one each for training, validation, test)")
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
