"""The limits and checks every `--data` source shares (`kd_keras.data.sources`).

Keras-free. Reads are bounded before they happen: decoded images within
`memory_budget()` (a quarter of the available memory, at most
`MAX_ARRAY_BYTES`), at most `MAX_IMAGES` images and `MAX_CLASSES` classes;
a file is read only if it is a regular file within its size limit. Classes
are checked (count, repeats, images per class) before a run starts, and a
source without a test set has one carved (`carve_test_split`).
"""

import collections
import os
import resource
import stat

import numpy as np

from kd_keras.errors import DataSourceError
from kd_keras.text import clip, short_list

TEST_FRACTION = 0.2
MAX_IMAGES = 2_000_000
MAX_ARRAY_BYTES = 16 << 30
MAX_CLASSES = 10_000
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


def too_big(path, needed, what, fix):
    budget = memory_budget()
    if needed > budget:
        raise DataSourceError(
            path,
            f"{what} need {needed / 2**30:.1f} GiB decoded, more than the "
            f"{budget / 2**30:.1f} GiB allowed here (1/{MEMORY_SHARE} of the available "
            f"memory: images are copied on the way to training); {fix}",
        )


def regular_size(path, limit, what):
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


def check_class_names(names, path):
    if not 2 <= len(names) <= MAX_CLASSES:
        raise DataSourceError(
            path, f"found {len(names)} classes; a classifier needs 2 to {MAX_CLASSES}"
        )
    if len(set(names)) != len(names):
        repeated = sorted(n for n, count in collections.Counter(names).items() if count > 1)
        raise DataSourceError(path, f"class names repeat: {short_list(repeated)}")


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


def check_per_class(labels, names, path, minimum, where):
    counts = np.bincount(labels, minlength=len(names))
    empty = [names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataSourceError(
            path,
            f"class(es) {short_list(empty)} have no images {where}; add images of them "
            "or remove them from the class names",
        )
    few = [f"'{clip(names[i])}' ({counts[i]})" for i in np.flatnonzero(counts < minimum)]
    if few:
        raise DataSourceError(
            path,
            f"class(es) {short_list(few, quote=False)} have fewer than {minimum} images {where}; "
            "add images or remove the class",
        )
