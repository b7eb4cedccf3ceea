"""Reading a `.npz` data file (`numpy.savez`), one of the `--data` sources.

Keras-free. The keys are `x_train` (uint8 images, `(N, H, W, 3)` or grey
`(N, H, W)` / `(N, H, W, 1)`, 0..255), `y_train` (int class ids, `(N,)` or
`(N, 1)`), and optionally `x_test`, `y_test` and `class_names` (see
`kd_keras.data.sources`). The members' sizes are read from their npy headers
before any array is decompressed; labels are checked (type, sign, range)
before any class name is made from them.
"""

import zipfile
from pathlib import Path

import numpy as np

from kd_keras.data.source_checks import (
    MAX_CLASSES,
    check_class_names,
    check_per_class,
    regular_size,
    too_big,
)
from kd_keras.errors import DataSourceError

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test", "class_names")
MAX_NPZ_BYTES = 16 << 30


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


def _class_names(arrays, labels, path):
    """`class_names` as strings, else `"0"`, `"1"`, ... up to the highest
    label (checked: 2 to `MAX_CLASSES` names, none repeated)."""
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
    check_class_names(names, path)
    return names


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
    regular_size(path, MAX_NPZ_BYTES, ".npz file")
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
        too_big(path, total, "its arrays", "store fewer or smaller images")
        try:
            arrays = {k: npz[k] for k in keys}
        except ValueError as error:  # An object array needs pickle: refused.
            raise DataSourceError(path, f"unreadable array ({error})") from None
    x_train = _as_rgb_uint8(arrays["x_train"], path, "x_train")
    labels = {k: _label_values(arrays[k], path, k) for k in ("y_train", "y_test") if k in arrays}
    names = _class_names(arrays, labels, path)
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
        check_per_class(y_train, names, path, 2, "in y_train (for training and validation)")
    return (x_train, y_train), test, names
