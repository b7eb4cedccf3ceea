"""Validation splits and the `tf.data` input pipeline, for any image source.

`prepare_splits` loads a source (CIFAR-10 or the user's images, see
`kd_keras.data.sources`), holds out a seeded, class-balanced validation set
and optionally trims each split per class; `make_dataset` turns uint8 images
into shuffled, augmented batches whose order is a function of the seed and the
epoch alone.
"""

from pathlib import Path

import numpy as np

from kd_keras.config import data_kind
from kd_keras.data.cifar10 import CLASS_NAMES, IMAGE_SHAPE
from kd_keras.data.sizes import CIFAR10_COUNTS, SIZE_FIELDS, SIZE_FLAGS, resolve_sizes, spread_split
from kd_keras.errors import DatasetError, DataSourceError


def stratified_split(labels, size, *, seed):
    """Indices of a seeded, class-balanced split of `size` examples.

    Args:
        labels: int labels, shape `(N,)`.
        size: how many examples to take (spread evenly over the classes).
        seed: random seed; the same seed gives the same split.

    Returns:
        `(taken, rest)`: two sorted int arrays of indices into `labels`.
    """
    labels = np.asarray(labels)
    if size < 0 or size > len(labels):
        raise ValueError(f"split size must be in [0, {len(labels)}], got {size}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = np.full(len(classes), size // len(classes))
    per_class[: size % len(classes)] += 1
    taken = []
    for cls, count in zip(classes, per_class):
        members = np.flatnonzero(labels == cls)
        taken.append(rng.permutation(members)[:count])
    taken = np.sort(np.concatenate(taken)) if taken else np.array([], dtype=int)
    rest = np.setdiff1d(np.arange(len(labels)), taken)
    return taken, rest


def per_class_subset(labels, per_class, *, seed):
    """Indices of a seeded subset with at most `per_class` examples per class."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = [
        rng.permutation(np.flatnonzero(labels == cls))[:per_class] for cls in np.unique(labels)
    ]
    return np.sort(np.concatenate(chosen))


def prepare_splits(
    source=None,
    *,
    val_size=None,
    train_per_class=None,
    val_per_class=None,
    test_per_class=None,
    seed=0,
    cache_dir=None,
    image_size=None,
    batch_size=None,
    fingerprint=None,
):
    """Loads the data (CIFAR-10, an image folder or a `.npz` file; see
    `kd_keras.data.sources`) and carves train / validation / test splits.

    The validation split is stratified and seeded and comes out of the
    training set, never the test set. The sizes follow the data unless
    given (see `kd_keras.data.sizes.resolve_sizes`).

    Args:
        source: see `load_cifar10`.
        val_size: training images held out for validation: `None` (a tenth),
            `"all"` (every image `train_per_class` leaves) or an int (0: none).
        train_per_class: keep at most this many training images per class
            (after the validation split); `None` or `"all"`: all.
        val_per_class: likewise for the validation split.
        test_per_class: likewise for the test set (for fast smoke runs).
        seed: seed of the split and subsets.
        cache_dir: see `load_cifar10`.
        image_size: resize every image to this square size (`None`: the
            data's own size).
        batch_size: if given, refused when larger than the training split.
        fingerprint: a run's recorded `kd_keras.data.fingerprint` that the
            data must match (checked before the sizes), or `None`.

    Returns:
        A dict with keys `"train"`, `"val"`, `"test"`, each an
        `(images, labels)` tuple; `"classes"`, the class names; `"sizes"`,
        the four sizes resolved to ints; `"counts"`, the images per class
        of the data's training and test sets (`{"train": [...], "test":
        [...]}`); `"fingerprint"`, the data's (`kd_keras.data.fingerprint`).

    Raises:
        DatasetError: see `load_cifar10`.
        ConfigError: sizes that do not fit the data, every conflict in one
            line naming its flag.
    """
    from kd_keras.data.fingerprint import check_fingerprint, data_fingerprint, pixels_method
    from kd_keras.data.sources import load_source

    (x_train, y_train), (x_test, y_test), classes = load_source(
        source, image_size=image_size, seed=seed, cache_dir=cache_dir
    )
    # Like with like: an older run's sampled fingerprint is checked by its sample.
    found = data_fingerprint(
        source, (x_train, y_train), (x_test, y_test), classes, pixels=pixels_method(fingerprint)
    )
    if fingerprint:
        check_fingerprint(fingerprint, found, source)
    train_counts = np.bincount(y_train, minlength=len(classes))
    test_counts = np.bincount(y_test, minlength=len(classes))
    sizes = resolve_sizes(
        {
            "val_size": val_size,
            "train_per_class": train_per_class,
            "val_per_class": val_per_class,
            "test_per_class": test_per_class,
        },
        train_counts,
        test_counts,
        classes,
        batch_size=batch_size,
    )
    val_idx, train_idx = stratified_split(y_train, sizes["val_size"], seed=seed)
    splits = {
        "train": (x_train[train_idx], y_train[train_idx]),
        "val": (x_train[val_idx], y_train[val_idx]),
        "test": (x_test, y_test),
    }
    for name in ("train", "val", "test"):
        images, labels = splits[name]
        per_class = sizes[f"{name}_per_class"]
        if len(labels) and per_class < np.bincount(labels).max():
            keep = per_class_subset(labels, per_class, seed=seed)
            splits[name] = (images[keep], labels[keep])
    splits["classes"] = tuple(classes)
    splits["sizes"] = sizes
    splits["counts"] = {"train": train_counts.tolist(), "test": test_counts.tolist()}
    splits["fingerprint"] = found
    return splits


def describe_splits(splits):
    """One line saying the sizes chosen, e.g. `data: 4 classes, 32x32;
    training 130, validation 14, test 36 images (--val-size 14 ...)`."""
    height, width = splits["train"][0].shape[1:3]
    counts = ", ".join(
        f"{what} {len(splits[name][1])}"
        for name, what in (("train", "training"), ("val", "validation"), ("test", "test"))
    )
    flags = " ".join(f"{SIZE_FLAGS[field]} {value}" for field, value in splits["sizes"].items())
    return f"data: {len(splits['classes'])} classes, {width}x{height}; {counts} images ({flags})"


def run_source(config, data=None):
    """Where a run's data is read from: `data` (named again by `--data`),
    else the run's recorded `config.data`.

    A recorded CIFAR-10 path that is not there (a run folder from another
    machine; the committed results cite the archive by file name) falls back
    to `$KD_KERAS_CIFAR10` or the Keras cache, checked against the run's
    fingerprint (CIFAR-10's by its classes and counts).

    Raises:
        DataSourceError: the recorded data is not there; the message says
            to name it with `--data PATH`.
    """
    if data is not None and str(data).strip():
        return data
    source = config.data
    if source is None or not str(source).strip():
        return None
    if Path(source).expanduser().exists():
        return source
    recorded = config.data_fingerprint or {}
    if recorded.get("classes") == list(CLASS_NAMES) and recorded.get("counts") == {
        "train": sum(CIFAR10_COUNTS["train"]),
        "test": sum(CIFAR10_COUNTS["test"]),
    }:  # CIFAR-10, which has a default place.
        from kd_keras.data.cifar10 import resolve_source

        try:
            found = resolve_source(None)  # $KD_KERAS_CIFAR10, the Keras cache.
        except DatasetError:
            found = None
        if found is not None:
            return str(found)
    raise DataSourceError(
        source,
        "the run's data is not there (moved, or the run folder was made on another "
        "machine); pass --data PATH naming where it is now (checked against the "
        "run's fingerprint)",
    )


def splits_for(config, *, data=None, **overrides):
    """The splits a `RunConfig` describes: `prepare_splits` with the
    config's data, validation size, per-class subsets, seed and image size.

    The data is checked against the run's recorded fingerprint
    (`config.data_fingerprint`), if it has one and `image_size` is the run's.

    Args:
        config: a `kd_keras.RunConfig`.
        data: read this source instead of `config.data` (the same data
            elsewhere, e.g. on another machine).
        **overrides: `prepare_splits` arguments to replace, e.g.
            `test_per_class=1` where the test split is never used.

    Returns:
        `prepare_splits`'s dict, plus `"source"`: the path read (`None`:
        CIFAR-10's default lookup).
    """
    source = run_source(config, data)
    fields = dict(
        val_size=config.val_size,
        train_per_class=config.train_per_class,
        val_per_class=config.val_per_class,
        test_per_class=config.test_per_class,
        seed=config.seed,
        image_size=config.image_size,
    )
    fields.update(overrides)
    if fields["image_size"] == config.image_size:
        fields.setdefault("fingerprint", config.data_fingerprint)
    splits = prepare_splits(source, **fields)
    splits["source"] = None if source is None else str(source)
    return splits


def data_summary(config):
    """What the data of a `RunConfig` is, for a dry run: image counts per
    split, the image shape and the number of classes.

    CIFAR-10's are known and computed without reading it; an image folder
    or `.npz` file is read (`splits_for`), so its answer is exact.

    Returns:
        `{"kind", "train_images", "val_images", "test_images",
        "image_shape", "num_classes"}`.
    """
    kind = data_kind(config.data)
    if kind == "cifar10":
        size = config.image_size or IMAGE_SHAPE[0]
        sizes = resolve_sizes(
            {field: getattr(config, field) for field in SIZE_FIELDS},
            CIFAR10_COUNTS["train"],
            CIFAR10_COUNTS["test"],
            CLASS_NAMES,
        )
        val = sizes["val_size"]
        train, test = CIFAR10_COUNTS["train"], CIFAR10_COUNTS["test"]
        left = [n - k for n, k in zip(train, spread_split(val, len(train)))]
        return {
            "kind": kind,
            "train_images": sum(min(n, sizes["train_per_class"]) for n in left),
            "val_images": sum(
                min(n, sizes["val_per_class"]) for n in spread_split(val, len(train))
            ),
            "test_images": sum(min(n, sizes["test_per_class"]) for n in test),
            "image_shape": (size, size, 3),
            "num_classes": len(train),
        }
    splits = splits_for(config)
    return {
        "kind": kind,
        **{f"{name}_images": len(splits[name][1]) for name in ("train", "val", "test")},
        "image_shape": tuple(int(d) for d in splits["train"][0].shape[1:]),
        "num_classes": len(splits["classes"]),
    }


# Batches the input pipeline makes ahead of the training step. A batch takes
# about 1 ms to make (`batch_augmenter`), a step 100 ms or more.
PREFETCH_BATCHES = 2


def without_autotune(dataset):
    """`dataset` with tf.data's autotuning off.

    The pipeline's parallelism and prefetch are fixed and small (a batch is
    a few vectorised ops). Autotuning would add a background thread that
    models the pipeline, and destroying an iterator waits for it: on one
    core, 8-55 s at the end of every `fit` and `evaluate`
    (`RootDataset::Iterator::~Iterator` waiting in `UnboundedThreadPool`),
    measured with TensorFlow 2.21.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def batch_augmenter(shape):
    """The training augmentation of a batch, as a `tf.data` map function
    of `((images, labels), op_seed)`: every image of a uint8 batch
    `(B, height, width, channels)` is zero-padded by 1/8 of its side (4
    pixels at 32x32), cropped back to `shape` at a random offset, and
    flipped left-right with probability 1/2; returns float32 images in
    0..255 and the labels. The offsets and flips are a function of
    `op_seed` (a `(2,)` int64 tensor) alone.

    Two gathers with per-image row and column indices do the crop and the
    flip of the whole batch at once.
    """
    import tensorflow as tf

    height, width = int(shape[0]), int(shape[1])
    pad = max(1, height // 8)

    def augment(batch, op_seed):
        images, labels = batch
        count = tf.shape(images)[0]
        padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        offsets = tf.random.stateless_uniform(
            [count, 2], seed=op_seed, minval=0, maxval=2 * pad + 1, dtype=tf.int32
        )
        flips = tf.random.stateless_uniform([count, 1], seed=op_seed + 1) < 0.5
        rows = offsets[:, :1] + tf.range(height)[tf.newaxis]
        columns = offsets[:, 1:] + tf.range(width)[tf.newaxis]
        columns = tf.where(flips, tf.reverse(columns, axis=[1]), columns)
        cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
        cropped = tf.gather(cropped, columns, axis=2, batch_dims=1)
        return tf.cast(cropped, tf.float32), labels

    return augment


def make_dataset(images, labels, *, batch_size, training, seed=0, epochs=None, start_epoch=0):
    """A `tf.data` pipeline of `(float32 image in 0..255, int label)` batches.

    Normalisation lives inside the models (so a shipped model takes raw
    pixels); the pipeline only augments and batches. Training batches are
    shuffled and augmented with a 4-pixel zero pad, a random 32x32 crop and a
    random horizontal flip. In distillation the teacher and the student both
    see the one augmented batch the pipeline yields. The augmentation runs
    on whole batches (`batch_augmenter`): a few vectorised ops a batch
    rather than a few ops an image, so the input pipeline takes little of
    the cores the training steps use; it prefetches `PREFETCH_BATCHES`
    batches, with tf.data's autotuning off (`without_autotune`).

    With `epochs`, the shuffle order and the augmentation of epoch `e` are a
    function of `(seed, e)` alone: every stage with the same seed sees the
    same data order, and a run resumed at `start_epoch` sees exactly the
    batches the uninterrupted run would have seen.

    Args:
        images: uint8 array `(N, height, width, 3)`.
        labels: int array `(N,)`.
        batch_size: batch size.
        training: shuffle and augment if True; keep order otherwise.
        seed: seed of the shuffle and the augmentation.
        epochs: if given (training only), the dataset holds the batches of
            epochs `start_epoch .. epochs - 1` back to back; pass
            `steps_per_epoch=ceil(N / batch_size)` to `fit`. If `None`, each
            pass over the dataset is one freshly shuffled epoch.
        start_epoch: the first epoch the dataset yields (for resuming).

    Returns:
        A batched, prefetched `tf.data.Dataset`.
    """
    import tensorflow as tf

    base = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    if not training:
        return without_autotune(
            base.batch(batch_size)
            .map(lambda images, labels: (tf.cast(images, tf.float32), labels))
            .prefetch(PREFETCH_BATCHES)
        )

    augment = batch_augmenter(tuple(images.shape[1:]))

    def one_epoch(epoch_seed, reshuffle):
        shuffled = base.shuffle(len(images), seed=epoch_seed, reshuffle_each_iteration=reshuffle)
        # One seed pair per batch, drawn from a seeded stream.
        op_seeds = tf.data.Dataset.random(
            seed=epoch_seed, rerandomize_each_iteration=reshuffle
        ).batch(2)
        return tf.data.Dataset.zip((shuffled.batch(batch_size), op_seeds)).map(augment)

    if epochs is None:
        dataset = one_epoch(seed, reshuffle=True)
    else:
        # Python-int seeds per epoch (tensor seeds clash with a global seed).
        per_epoch = [
            one_epoch(seed * 1_000_003 + epoch, reshuffle=False)
            for epoch in range(start_epoch, epochs)
        ]
        dataset = per_epoch[0] if per_epoch else base.take(0).batch(batch_size)
        for more in per_epoch[1:]:
            dataset = dataset.concatenate(more)
    return without_autotune(dataset.prefetch(PREFETCH_BATCHES))
