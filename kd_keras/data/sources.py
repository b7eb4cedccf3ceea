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

The readers live in `kd_keras.data.image_folders` and `kd_keras.data.npz`,
the limits and checks they share in `kd_keras.data.source_checks`.
Reads are bounded before they happen: a regular file of at most
`MAX_IMAGE_BYTES` per image and `MAX_IMAGE_PIXELS` pixels (checked from the
header, before decoding), at most `MAX_IMAGE_SIDE` pixels a side without
`--image-size`, at most `MAX_IMAGES` images, and decoded images within
`memory_budget()` (a quarter of the available memory, at most
`MAX_ARRAY_BYTES`), from the image headers or the `.npz` members' npy
headers. Labels are checked (type, sign, range) before any class name is
made from them.
"""

from kd_keras.config import data_kind
from kd_keras.data.image_folders import load_image_folder, resize_images
from kd_keras.data.npz import load_npz
from kd_keras.data.source_checks import carve_test_split, check_per_class


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
            check_per_class(y_train, names, source, 3, "(one each for training, validation, test)")
            test, rest = carve_test_split(y_train, seed=seed)
            x_test, y_test = x_train[test], y_train[test]
            x_train, y_train = x_train[rest], y_train[rest]
    if image_size is not None:
        x_train, x_test = resize_images(x_train, image_size), resize_images(x_test, image_size)
    return (x_train, y_train), (x_test, y_test), names
