"""The data-size options (`--val-size`, `--train-per-class`,
`--val-per-class`, `--test-per-class`) and their resolution on given data.

This module imports neither Keras nor TensorFlow.
"""

from kd_keras.errors import ConfigError
from kd_keras.text import short_list

# The four size options: None follows the data, "all" takes every image, an
# int is a number. `resolve_sizes` turns them into ints for given data.
SIZE_WORDS = ("all",)
SIZE_FLAGS = {
    "val_size": "--val-size",
    "train_per_class": "--train-per-class",
    "val_per_class": "--val-per-class",
    "test_per_class": "--test-per-class",
}
SIZE_FIELDS = tuple(SIZE_FLAGS)
# The default validation split: this fraction of the training images (at
# least one a class, and each class keeps at least one training image).
VAL_FRACTION = 0.1
# CIFAR-10's images per class: 5,000 training (the validation split is
# carved from them) and 1,000 test.
CIFAR10_COUNTS = {"train": (5000,) * 10, "test": (1000,) * 10}


def validate_size(field, value):
    """A size option's value: `None`, `"all"` or an int >= 1; raises
    `ConfigError` naming the flag otherwise."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in SIZE_WORDS:
        return "all"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{SIZE_FLAGS[field]} must be a positive integer or 'all', got {value!r}; "
            "leave it out for the default that follows the data"
        )
    return value


def spread_split(size, classes):
    """Images per class of a stratified split of `size` (as
    `kd_keras.data.splits.stratified_split` takes them: earlier classes
    take the remainder)."""
    return [size // classes + (1 if i < size % classes else 0) for i in range(classes)]


def resolve_sizes(sizes, train_counts, test_counts, classes=None, *, batch_size=None):
    """The sizes of a run's splits, as ints, for data with these counts.

    Args:
        sizes: `{field: choice}` for `SIZE_FIELDS`: `None` (follow the data:
            `VAL_FRACTION` of the training images for validation, every
            image of the other splits), `"all"` (every image; for
            `val_size`, every image `train_per_class` leaves) or an int (at
            most that many; `val_size` 0 holds out nothing).
        train_counts: training images per class, before the validation split.
        test_counts: test images per class.
        classes: the class names (default `"0"`, `"1"`, ...), for messages.
        batch_size: if given, refused when larger than the training images.

    Returns:
        `{field: int}`; a per-class int at least the largest class's count
        keeps every image.

    Raises:
        ConfigError: every conflict between the sizes and the data, in one
            line, each naming its flag and the largest value that fits.
    """
    train_counts = [int(c) for c in train_counts]
    test_counts = [int(c) for c in test_counts]
    count = len(train_counts)
    names = list(classes) if classes is not None else [str(i) for i in range(count)]
    total, smallest = sum(train_counts), min(train_counts)
    if smallest < 1:
        empty = [name for name, n in zip(names, train_counts) if n < 1]
        raise ConfigError(
            f"class(es) {short_list(empty)} have no training images; add images of them "
            "or remove them from the data"
        )
    conflicts = []
    val = _resolve_val_size(sizes, train_counts, names, conflicts)
    taken = spread_split(max(val, 0), count)
    left = [c - t for c, t in zip(train_counts, taken)]
    resolved = {"val_size": val}
    for field, have, what in (
        ("train_per_class", left, "training images (after the validation split)"),
        ("val_per_class", taken, "validation images"),
        ("test_per_class", test_counts, "test images"),
    ):
        value, most = sizes.get(field), max(have)
        if value is None or value == "all":
            resolved[field] = most
        elif value > most:
            conflicts.append(
                f"{SIZE_FLAGS[field]} {value} > the {most} {what} of the largest class "
                f"(at most {most}, or all)"
            )
            resolved[field] = most
        else:
            resolved[field] = value
    if batch_size is not None:
        images = sum(min(n, resolved["train_per_class"]) for n in left)
        if batch_size > images:
            conflicts.append(
                f"--batch-size {batch_size} > the {images} training images (at most {images})"
            )
    if conflicts:
        raise ConfigError(
            f"the sizes do not fit the data ({count} classes, {total} training and "
            f"{sum(test_counts)} test images): {'; '.join(conflicts)}"
        )
    return resolved


def _resolve_val_size(sizes, train_counts, names, conflicts):
    """The validation split's size, as an int, for `resolve_sizes`; appends
    a conflict (and falls back to the default split) when it cannot fit."""
    count, total, smallest = len(train_counts), sum(train_counts), min(train_counts)
    small = names[train_counts.index(smallest)]
    most_val = count * (smallest - 1)  # Every class keeps a training image.
    default_val = min(max(count, round(VAL_FRACTION * total)), most_val)
    val, train = sizes.get("val_size"), sizes.get("train_per_class")
    if val is None:
        val = default_val
        if val < 1:
            conflicts.append(
                f"class '{small}' has {smallest} training image, none left for validation; "
                "add images to it"
            )
    elif val == "all":
        if not isinstance(train, int) or isinstance(train, bool):
            conflicts.append(
                "--val-size all (every image --train-per-class leaves) needs --train-per-class N"
            )
            val = default_val
        elif train >= smallest:
            conflicts.append(
                f"--val-size all with --train-per-class {train} leaves no validation image "
                f"in class '{small}' ({smallest} images); lower --train-per-class below {smallest}"
            )
            val = default_val
        else:
            val = count * (smallest - train)
    else:
        taken = spread_split(val, count)
        short = [names[i] for i in range(count) if taken[i] > train_counts[i] - 1]
        if short:
            conflicts.append(
                f"--val-size {val} leaves no training image in class {short_list(short)}; "
                f"at most {max(most_val, 0)} ({count} classes, the smallest, '{small}', "
                f"has {smallest} images)"
            )
            val = default_val
    return val


def cifar10_sizes(fields):
    """The sizes of `fields` (a config dict) resolved on CIFAR-10's counts,
    so that `None`, `"all"` and the recorded numbers compare equal."""
    from kd_keras.data.cifar10 import CLASS_NAMES  # Keras-free.

    choices = {field: fields.get(field) for field in SIZE_FIELDS}
    return resolve_sizes(choices, CIFAR10_COUNTS["train"], CIFAR10_COUNTS["test"], CLASS_NAMES)
