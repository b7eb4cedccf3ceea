"""What a run's data was: a fingerprint recorded in its config.json.

A run folder names its data by path, and a path stops being true when the
data moves or the folder travels to another machine. The fingerprint says
what the data was, so that `--data NEW` (on `--resume`, `evaluate --run`,
`export`) is accepted when it names the same data and refused otherwise:

```
{"name": "cifar-10-python.tar.gz", "classes": [...], "image_shape": [32, 32, 3],
 "counts": {"train": 50000, "test": 10000},
 "labels_sha256": "...", "pixels": "all", "pixels_sha256": "...",
 "file": {"bytes": ..., "mtime": ...}}
```

The labels and every pixel are hashed (sha256, about 1 GB/s). A fingerprint
without `"pixels": "all"` was recorded by an older kd_keras from an evenly
spaced sample of `SAMPLE` images of each split; such a run's data is still
checked like with like (`pixels_method`: the sample is hashed again). `file` (a regular
file's size and mtime) is informative: the same data in another form (an
extracted folder, a copy) has other file facts and the same fingerprint.

Keras-free (NumPy only).
"""

import hashlib
import os
from pathlib import Path

import numpy as np

from kd_keras.errors import DataSourceError
from kd_keras.text import short_list

SAMPLE = 64  # Images per split in an older, sampled fingerprint.
ALL_PIXELS = "all"  # The `pixels` value of a fingerprint over every pixel.
# The keys compared; `name` and `file` only describe where it was.
COMPARED = ("classes", "image_shape", "counts", "labels_sha256", "pixels_sha256")


def _sample(images):
    if not len(images):
        return images
    index = np.unique(np.linspace(0, len(images) - 1, min(len(images), SAMPLE)).astype(int))
    return images[index]


def pixels_method(recorded):
    """How to hash the pixels to compare with the fingerprint `recorded`
    (`None`: a new one): `ALL_PIXELS`, or `"sample"` for an older one."""
    return ALL_PIXELS if not recorded or recorded.get("pixels") == ALL_PIXELS else "sample"


def data_fingerprint(source, train, test, classes, pixels=ALL_PIXELS):
    """The fingerprint of loaded data.

    Args:
        source: the path it was read from (`None`: CIFAR-10's default lookup).
        train, test: `(images, labels)` as `kd_keras.data.sources.load_source`
            returns them (before the validation split).
        classes: the class names.
        pixels: `ALL_PIXELS`, or `"sample"` (only to compare with an older
            fingerprint, `pixels_method`).

    Returns:
        A JSON-ready dict (see the module docstring).
    """
    labels, pixels_hash = hashlib.sha256(), hashlib.sha256()
    for images, y in (train, test):
        labels.update(np.ascontiguousarray(y, dtype="<i8").tobytes())
        if pixels == ALL_PIXELS:
            # A flat view, not a copy: CIFAR-10's 150 MB are hashed in place.
            pixels_hash.update(np.ascontiguousarray(images).reshape(-1).view(np.uint8))
        else:
            pixels_hash.update(np.ascontiguousarray(_sample(images)).tobytes())
    fingerprint = {
        "name": None if source is None else Path(str(source)).expanduser().name,
        "classes": [str(name) for name in classes],
        "image_shape": [int(d) for d in train[0].shape[1:]],
        "counts": {"train": int(len(train[1])), "test": int(len(test[1]))},
        "labels_sha256": labels.hexdigest(),
        "pixels_sha256": pixels_hash.hexdigest(),
    }
    if pixels == ALL_PIXELS:
        fingerprint["pixels"] = ALL_PIXELS
    if source is not None:
        try:
            info = os.stat(Path(str(source)).expanduser())
            if not os.path.isdir(Path(str(source)).expanduser()):
                fingerprint["file"] = {"bytes": info.st_size, "mtime": int(info.st_mtime)}
        except OSError:
            pass
    return fingerprint


def fingerprint_differences(recorded, found):
    """What differs between two fingerprints, as short phrases (empty: the
    same data). Keys the recorded one lacks are not compared."""
    differences = []
    for key in COMPARED:
        if key not in recorded or recorded[key] == found.get(key):
            continue
        mine, theirs = recorded[key], found.get(key)
        if key == "classes":
            differences.append(
                f"classes (recorded {len(mine)}: {short_list(mine, 3)}; "
                f"found {len(theirs or [])}: {short_list(theirs or [], 3)})"
            )
        elif key == "image_shape":
            differences.append(
                f"image shape (recorded {'x'.join(map(str, mine))}, "
                f"found {'x'.join(map(str, theirs or []))})"
            )
        elif key == "counts":
            theirs = theirs or {}
            differences.append(
                f"image counts (recorded {mine.get('train')} training and {mine.get('test')} "
                f"test, found {theirs.get('train')} and {theirs.get('test')})"
            )
        else:
            differences.append(key.split("_")[0])
    return differences


def check_fingerprint(recorded, found, source):
    """Raises `DataSourceError` (one line) unless `found` is the data that
    `recorded` describes.

    Args:
        recorded: the run's recorded fingerprint.
        found: the fingerprint of the data read now.
        source: where it was read from.
    """
    differences = fingerprint_differences(recorded, found)
    if not differences:
        return
    raise DataSourceError(
        source if source is not None else "CIFAR-10 (default lookup)",
        f"not the data the run was made with (its {', '.join(differences)} differ); "
        "name the run's own data with --data PATH, or start a new run folder for this data",
    )
