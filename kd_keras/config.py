"""`RunConfig`: everything that determines a run's results, as data.

This module imports neither Keras nor TensorFlow, so front ends (the app)
can read presets and validate settings cheaply.

A run folder holds its `config.json`, so every number in it traces back to
the settings that produced it. Presets are plain dicts of field overrides.
"""

import dataclasses
import json
import re
from pathlib import Path
from typing import Optional

from kd_keras.errors import ConfigError
from kd_keras.models.depth import stage_blocks
from kd_keras.models.specs import MIN_APPLICATION_SIZE, parse_model_spec

# Environment variables: where CIFAR-10 is, and where its decoded cache goes.
DATA_ENV_VAR = "KD_KERAS_CIFAR10"
CACHE_ENV_VAR = "KD_KERAS_CACHE"

DEFAULT_ALPHA = 0.3
DEFAULT_TEMPERATURE = 4.0
# "auto" picks from the machine (kd_keras/hardware.py) when a run starts;
# a run folder's config.json always holds the resolved value.
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
TEACHER_PRECISIONS = ("auto", "float32", "bfloat16", "float16")
# Fields where "auto" is resolved per machine.
AUTO_FIELDS = ("precision", "teacher_precision")
# tf.distribute strategies (see kd_keras/train/distribute.py).
STRATEGIES = ("default", "mirrored", "multi_worker")
# Static caps that keep every accepted value runnable on any machine: more
# intra-op threads than this only make TensorFlow slow to start and stop
# (100,000 ignored SIGTERM for minutes), and a batch above this cannot fit
# (1e9 hung in its first step); the data's own size caps the batch further.
MAX_THREADS = 256
MAX_BATCH_SIZE = 65536
# What a --teacher file outputs: "auto" is detected when the run starts (a
# softmax last layer, or rows >= 0 summing to 1) and saved resolved.
TEACHER_OUTPUTS = ("auto", "logits", "probabilities")
# Distillation methods of `--method` (kd_keras/distill/losses, docs/methods.md).
METHODS = ("hinton", "dkd", "fitnets", "at")


def validate_alpha(alpha):
    """Raises `ValueError` unless `alpha` is a number in [0, 1]."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (it weights the hard-label loss), got {alpha}")
    return float(alpha)


def validate_temperature(temperature):
    """Raises `ValueError` unless `temperature` is a number in [0.01, 100].

    T divides the logits and T**2 scales the distillation term: below 0.01
    the softened targets are one-hot for any logits (and tiny values reach
    float32's underflow), above 100 they are uniform, and values such as
    1e300 overflow T**2. Hinton et al. use 1-20; kd_keras's default is 4.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if not temperature > 0 or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    low, high = 0.01, 100.0
    if not low <= temperature <= high:
        raise ValueError(
            f"temperature must be in [{low:g}, {high:g}] (1-20 is usual; the "
            f"default is 4), got {temperature:g}"
        )
    return float(temperature)


def validate_method(
    method,
    logit_standardization,
    dkd_alpha,
    dkd_beta,
    dkd_warmup_epochs,
    hint_layer,
    hint_weight,
    at_beta,
):
    """Raises `ValueError`, naming the bad value and its flag, for an
    invalid distillation method or method hyperparameter."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r} (--method)")
    if not isinstance(logit_standardization, bool):
        raise ValueError(
            f"logit_standardization must be true or false, got {logit_standardization!r}"
        )
    if logit_standardization and method not in ("hinton", "dkd"):
        raise ValueError(
            f"--logit-standardization applies to --method hinton or dkd, not {method!r}; "
            "drop the flag or change the method"
        )
    for name, value in (
        ("dkd_alpha", dkd_alpha),
        ("dkd_beta", dkd_beta),
        ("hint_weight", hint_weight),
        ("at_beta", at_beta),
    ):
        flag = "--" + name.replace("_", "-")
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not 0 <= value < float("inf")
        ):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r} ({flag})")
    if (
        isinstance(dkd_warmup_epochs, bool)
        or not isinstance(dkd_warmup_epochs, int)
        or not 0 <= dkd_warmup_epochs <= 1000
    ):
        raise ValueError(
            f"dkd_warmup_epochs must be an int in [0, 1000], got {dkd_warmup_epochs!r} "
            "(--dkd-warmup-epochs)"
        )
    if not isinstance(hint_layer, str) or not hint_layer.strip():
        raise ValueError(
            f"hint_layer must be a layer name or stage1..stage3, got {hint_layer!r} (--hint-layer)"
        )


def validate_speed_options(precision, teacher_precision, steps_per_execution, threads):
    """Raises `ValueError`, naming the bad value, for an invalid speed option."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if teacher_precision not in TEACHER_PRECISIONS:
        raise ValueError(
            "teacher_precision must be one of "
            f"{', '.join(TEACHER_PRECISIONS)}, got {teacher_precision!r}"
        )
    if (
        isinstance(steps_per_execution, bool)
        or not isinstance(steps_per_execution, int)
        or steps_per_execution < 1
    ):
        raise ValueError(f"steps_per_execution must be an int >= 1, got {steps_per_execution!r}")
    validate_threads(threads)


def validate_threads(threads):
    """Raises `ValueError` unless `threads` is `None` or an int in
    [1, `MAX_THREADS`]."""
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(f"threads must be an int >= 1 or None, got {threads!r}")
    if threads is not None and threads > MAX_THREADS:
        raise ValueError(
            f"threads must be at most {MAX_THREADS} (more threads than cores only slow "
            f"TensorFlow down), got {threads}; set --threads to the machine's core count"
        )
    return threads


def validate_image_size(size, flag="--image-size"):
    """Raises `ValueError`, naming `flag`, unless `size` is `None` or an int
    in [8, 1024] (the square side images are resized to)."""
    if size is not None and (
        isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 1024
    ):
        raise ValueError(
            f"image_size must be an int in [8, 1024] or None, got {size!r}; "
            f"give {flag} a side length such as 32, or leave it out for the data's own size"
        )
    return size


def validate_warmup(warmup_epochs, stage_epochs):
    """Raises `ConfigError` unless the warm-up is shorter than every stage
    it warms up (a warm-up as long as the stage leaves no cosine decay).

    Args:
        warmup_epochs: the warm-up epochs (0 = none).
        stage_epochs: `{flag: epochs}` of the stages that train, e.g.
            `{"--teacher-epochs": 20, "--student-epochs": 20}`.
    """
    if not warmup_epochs or not stage_epochs:
        return
    shortest = min(stage_epochs.values())
    if warmup_epochs >= shortest:
        stages = ", ".join(f"{flag} {epochs}" for flag, epochs in stage_epochs.items())
        raise ConfigError(
            f"--warmup-epochs {warmup_epochs} must be below the epochs of every stage it "
            f"warms up ({stages}); use --warmup-epochs {max(shortest - 1, 0)} or less "
            "(0 for none), or more epochs"
        )


# --budget: "90s", "10m", "1h", "1h30m"; sized by kd_keras/train/estimate.py.
BUDGET_PATTERN = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
MIN_BUDGET_SECONDS, MAX_BUDGET_SECONDS = 30, 7 * 24 * 3600


def parse_budget(text):
    """Seconds of a time budget such as "90s", "10m", "1h" or "1h30m";
    raises `ValueError` naming the flag and the accepted forms."""
    form = "a duration such as 90s, 10m, 1h or 1h30m"
    match = BUDGET_PATTERN.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if not match or not any(match.groups()):
        raise ValueError(f"--budget must be {form}, got {text!r}")
    hours, minutes, seconds = (float(group or 0) for group in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if not MIN_BUDGET_SECONDS <= total <= MAX_BUDGET_SECONDS:
        raise ValueError(f"--budget {text} is outside 30s..7 days; give {form}")
    return total


def validate_devices(strategy, devices, sync_batch_norm):
    """Raises `ConfigError`, naming the bad value, for an invalid strategy,
    device list or `sync_batch_norm`."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if devices is not None:
        if (
            not isinstance(devices, (list, tuple))
            or not devices
            or not all(isinstance(d, str) and d.strip() for d in devices)
        ):
            raise ConfigError(
                "devices must be a non-empty list of device names such as "
                f"['/gpu:0', '/gpu:1'], got {devices!r}"
            )
        if strategy != "mirrored":
            raise ConfigError(
                f"devices {list(devices)!r} apply to --strategy mirrored only, not "
                f"{strategy!r}; drop --devices or use --strategy mirrored"
            )
        if len(set(devices)) != len(devices):
            raise ConfigError(f"devices lists a device twice: {list(devices)!r}")
    if not isinstance(sync_batch_norm, bool):
        raise ConfigError(f"sync_batch_norm must be true or false, got {sync_batch_norm!r}")


# --- Data sizes -----------------------------------------------------------------
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


def short_list(items, limit=5, *, quote=True):
    """`'a', 'b', 'c' and 7 more`: a list that keeps a message one short line."""
    items = [f"'{item}'" if quote else str(item) for item in items]
    if len(items) <= limit:
        return ", ".join(items)
    return f"{', '.join(items[:limit])} and {len(items) - limit} more"


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
    small = names[train_counts.index(smallest)]
    if smallest < 1:
        empty = [name for name, n in zip(names, train_counts) if n < 1]
        raise ConfigError(
            f"class(es) {short_list(empty)} have no training images; add images of them "
            "or remove them from the data"
        )
    most_val = count * (smallest - 1)  # Every class keeps a training image.
    default_val = min(max(count, round(VAL_FRACTION * total)), most_val)
    conflicts = []
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


def cifar10_sizes(fields):
    """The sizes of `fields` (a config dict) resolved on CIFAR-10's counts,
    so that `None`, `"all"` and the recorded numbers compare equal."""
    from kd_keras.data.cifar10 import CLASS_NAMES  # Keras-free.

    choices = {field: fields.get(field) for field in SIZE_FIELDS}
    return resolve_sizes(choices, CIFAR10_COUNTS["train"], CIFAR10_COUNTS["test"], CLASS_NAMES)


# The most epochs a stage (or a search trial) may train: the input pipeline
# is built per epoch.
MAX_EPOCHS = 1000

# Presets are named overrides of `RunConfig`'s defaults.
PRESETS = {
    # Seconds: a few hundred images and the smallest ResNets. For tests; in
    # float32, so it runs and gives the same numbers on any CPU.
    "smoke": {
        "precision": "float32",
        "teacher_precision": "float32",
        "train_per_class": 50,
        "val_size": 5000,
        "val_per_class": 20,
        "test_per_class": 20,
        "teacher_depth": 8,
        "teacher_width": 8,
        "student_depth": 8,
        "student_width": 4,
        "teacher_epochs": 4,
        "student_epochs": 4,
        "batch_size": 50,
        "learning_rate": 0.05,
        "warmup_epochs": 0,
    },
    # Real CIFAR-10 at reduced scale: 10,000 training images, a ResNet-20
    # teacher and a ResNet-8 student; shows the distillation gain in 6-10
    # minutes on a 2-core CPU with native bfloat16 (longer in float32).
    "quick": {
        "train_per_class": 1000,
        "val_size": 5000,
        "val_per_class": 200,
        "teacher_depth": 20,
        "student_depth": 8,
        "teacher_epochs": 20,
        "student_epochs": 20,
        "batch_size": 128,
        "warmup_epochs": 1,
    },
    # The reference setting at CPU scale: teacher depth 30, student depth 15,
    # all 45,000 training images (5,000 held out for validation), the full
    # test set; 100 epochs a stage with a short warm-up and cosine decay
    # (50 epochs: teacher 0.8777, distilled 0.8776; 100 epochs: teacher
    # 0.8853, distilled 0.8796; results/full-seed0 and results/full100-seed0;
    # a second seed: 0.8847, distilled 0.8822, results/full100-seed1).
    # Weight decay 5e-3 in Keras's decoupled form (w -= lr * wd * w) is what
    # PyTorch's SGD(weight_decay=5e-4, momentum=0.9) applies in effect
    # (its L2 gradient goes through the momentum: / (1 - 0.9)); with 5e-4
    # decoupled the depth-30 teacher overfit (train 0.96, test 0.863 after
    # 40 epochs). About 4 h 50 min of training on a 2-core CPU with native
    # bfloat16 (teacher 2 h 10 min, students 1 h 3 min and 1 h 40 min).
    "full": {
        "teacher_depth": 30,
        "student_depth": 15,
        "teacher_epochs": 100,
        "student_epochs": 100,
        "batch_size": 128,
        "warmup_epochs": 2,
        "weight_decay": 5e-3,
    },
    # The same models, data and recipe with the long schedule (160 epochs a
    # stage; weight decay as in `full`). Days on a 2-core CPU; for a GPU.
    "paper": {
        "teacher_depth": 30,
        "student_depth": 15,
        "teacher_epochs": 160,
        "student_epochs": 160,
        "batch_size": 128,
        "warmup_epochs": 5,
        "weight_decay": 5e-3,
    },
}

# Fields that do not change a run's results (where it is, how it is shown,
# how fast it runs).
# `strategy` and `devices` say where the same recipe runs (`batch_size` is the
# global batch, the learning rate is not scaled), so a run may resume on
# other devices; with per-replica batch norm the replica count still moves
# the batch statistics (see kd_keras/train/distribute.py). `sync_batch_norm`
# changes the models' layers and is a result field.
NON_RESULT_FIELDS = (
    "data",
    "data_fingerprint",
    "verbose",
    "steps_per_execution",
    "threads",
    "strategy",
    "devices",
    "accept_weak_teacher",
    "budget",  # The epochs and images it chose are saved and are result fields.
)


def data_kind(source):
    """What a `--data` value names, from the path alone (nothing is read;
    see `kd_keras.data.sources`).

    Returns:
        `"npz"` for a path ending in `.npz`, `"folder"` for a folder that is
        not a CIFAR-10 batches folder, else `"cifar10"` (also for `None`).
    """
    if source is None or not str(source).strip():
        return "cifar10"
    path = Path(str(source).strip()).expanduser()
    if path.suffix.lower() == ".npz":
        return "npz"
    if path.is_dir() and not (
        (path / "cifar-10-batches-py").is_dir() or (path / "data_batch_1").exists()
    ):
        return "folder"
    return "cifar10"


def _flag(name):
    """The command-line flag of the `RunConfig` field `name`."""
    return RunConfig.__dataclass_fields__[name].metadata.get("flag", name)


def _option(default, flag, help, choices=None, words=None):
    """A `RunConfig` field that is a run option: set by the command-line
    flag `flag` (see `kd_keras.options`).

    Args:
        default: the field's default.
        flag: the flag, e.g. `"--seed"`.
        help: the flag's help text.
        choices: the accepted values, for front ends that offer a list
            (checked by `RunConfig.validate`, not by the parser).
        words: words the flag takes besides a value of the field's type
            (e.g. `("all",)` for a size).
    """
    metadata = {"flag": flag, "help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if words is not None:
        metadata["words"] = tuple(words)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class RunConfig:
    """One run of the three-stage pipeline (teacher, student baseline,
    distilled student).

    Build one with `RunConfig.from_preset("quick", epochs=...)` or directly;
    `validate()` is called by both.
    """

    # Fields with a flag are run options: `python -m kd_keras run` takes them
    # as flags, the app and `python -m tuning` through kd_keras/options.py.
    preset: str = "custom"  # Set by --preset: the base, not an override.
    data: Optional[str] = _option(
        None,
        "--data",
        "cifar-10-python.tar.gz or cifar-10-batches-py/ "
        "(default: $KD_KERAS_CIFAR10, the Keras cache, then download), "
        "an image folder with one subfolder per class (or train/ and "
        "test/ with class subfolders), or a .npz file with x_train, "
        "y_train[, x_test, y_test, class_names]",
    )
    # What the data was (kd_keras.data.fingerprint), recorded by the run: a
    # moved dataset named again by --data is checked against it.
    data_fingerprint: Optional[dict] = None
    seed: int = _option(0, "--seed", "random seed of data split, init and order")
    # --- Data ---
    # Sizes (see `resolve_sizes`): None follows the data, "all" takes every
    # image, an int is a number; a run's config.json holds the resolved ints.
    val_size: Optional[int] = _option(
        None,
        "--val-size",
        "training images held out for validation: a number, or all (every image "
        "--train-per-class leaves); default: a tenth of the training images",
        words=SIZE_WORDS,
    )
    train_per_class: Optional[int] = _option(
        None,
        "--train-per-class",
        "training images per class (at most): a number or all (default: all)",
        words=SIZE_WORDS,
    )
    val_per_class: Optional[int] = _option(
        None,
        "--val-per-class",
        "validation images per class (at most): a number or all (default: all)",
        words=SIZE_WORDS,
    )
    test_per_class: Optional[int] = _option(
        None,
        "--test-per-class",
        "test images per class (at most): a number or all (default: all)",
        words=SIZE_WORDS,
    )
    # --- Models ---
    teacher_depth: int = _option(
        30, "--teacher-depth", "teacher ResNet depth (6n+2 or any int >= 8)"
    )
    teacher_width: int = _option(16, "--teacher-width", "teacher first-stage filters (16 = paper)")
    student_depth: int = _option(15, "--student-depth", "student ResNet depth")
    student_width: int = _option(16, "--student-width", "student first-stage filters")
    # A trained teacher .keras file to reuse.
    teacher: Optional[str] = _option(None, "--teacher", "reuse this trained teacher .keras file")
    # A brought teacher near chance on the validation split is refused
    # (wrong preprocessing, class order or data); this distils from it anyway.
    accept_weak_teacher: bool = _option(
        False,
        "--accept-weak-teacher",
        "distil from a --teacher even if it is near chance on the validation "
        "split (refused by default: wrong preprocessing, class order or data)",
    )
    teacher_outputs: str = _option(
        "auto",
        "--teacher-outputs",
        "what the --teacher file outputs: auto (default: detected from its last "
        "layer or outputs; a softmax's probabilities are distilled from log p), "
        "logits or probabilities",
        choices=TEACHER_OUTPUTS,
    )
    # Architectures (kd_keras/models/specs.py): None = resnet<depth> with the
    # depth and width above; a keras.applications name; a .keras file.
    teacher_model: Optional[str] = _option(
        None,
        "--teacher-model",
        "teacher architecture: resnet<depth> (default, with --teacher-depth), a "
        "keras.applications name (mobilenetv3small, mobilenetv3large, efficientnetb0-b7, "
        "efficientnetv2b0-b3, efficientnetv2s; options after a colon, e.g. "
        "mobilenetv3small:alpha=0.35,minimalistic=true or efficientnetb0:weights=FILE.weights.h5) "
        "or a .keras file to train from",
    )
    student_model: Optional[str] = _option(
        None, "--student-model", "student architecture (as --teacher-model)"
    )
    # Square side to resize to; None = the data's.
    image_size: Optional[int] = _option(
        None,
        "--image-size",
        "resize every image to this square size (default: the data's own size)",
    )
    # --- Training recipe (SGD + momentum, warm-up + cosine) ---
    teacher_epochs: int = _option(160, "--teacher-epochs", "teacher epochs")
    student_epochs: int = _option(160, "--student-epochs", "epochs of each student stage")
    batch_size: int = _option(128, "--batch-size", "batch size")
    learning_rate: float = _option(0.1, "--learning-rate", "peak SGD learning rate")
    momentum: float = _option(0.9, "--momentum", "SGD momentum (Nesterov)")
    weight_decay: float = _option(5e-4, "--weight-decay", "decoupled weight decay")
    warmup_epochs: int = _option(5, "--warmup-epochs", "linear warm-up epochs before cosine decay")
    # --- Distillation ---
    temperature: float = _option(4.0, "--temperature", "distillation temperature T > 0 (default 4)")
    alpha: float = _option(0.3, "--alpha", "weight of the hard-label loss, in [0, 1] (default 0.3)")
    # Method and its hyperparameters (docs/methods.md); --temperature is
    # Hinton KD's and DKD's T.
    method: str = _option(
        "hinton",
        "--method",
        "distillation method: hinton (KD, default), dkd (decoupled KD), fitnets "
        "(hint regression through an adapter) or at (attention transfer)",
        choices=METHODS,
    )
    logit_standardization: bool = _option(
        False,
        "--logit-standardization",
        "z-score both logits before softening (Sun et al. 2024), with --method hinton or dkd",
    )
    dkd_alpha: float = _option(1.0, "--dkd-alpha", "DKD: weight of target-class KD (default 1)")
    dkd_beta: float = _option(8.0, "--dkd-beta", "DKD: weight of non-target KD (default 8)")
    dkd_warmup_epochs: int = _option(
        20, "--dkd-warmup-epochs", "DKD: epochs of linear warm-up of its loss (default 20)"
    )
    hint_layer: str = _option(
        "stage2",
        "--hint-layer",
        "FitNets: teacher and student layer name, or stage1..stage3 (default stage2)",
    )
    hint_weight: float = _option(
        100.0, "--hint-weight", "FitNets: weight of the hint loss (default 100)"
    )
    at_beta: float = _option(1000.0, "--at-beta", "attention transfer: beta (default 1000)")
    # --- Speed (see kd_keras/train/speed.py and kd_keras/hardware.py) ---
    # "auto": bfloat16 where the machine has native bfloat16, else float32
    # (float16 on older GPUs); resolved when a run starts.
    precision: str = _option(
        "auto",
        "--precision",
        "training precision of the models: auto (default: bfloat16 where the "
        "CPU/GPU has it natively, float16 on older GPUs, else float32), float32, "
        "mixed_bfloat16 or mixed_float16",
        choices=PRECISIONS,
    )
    teacher_precision: str = _option(
        "auto",
        "--teacher-precision",
        "teacher inference precision while distilling: auto (default), float32, "
        "bfloat16 or float16",
        choices=TEACHER_PRECISIONS,
    )
    steps_per_execution: int = _option(
        1,
        "--steps-per-execution",
        "training steps per graph call (default 1; lowered to a divisor of the steps per epoch)",
    )
    # Intra-op threads (inter-op 1); None = TF's.
    threads: Optional[int] = _option(
        None,
        "--threads",
        "TensorFlow intra-op threads, inter-op 1 (default: TensorFlow's choice)",
    )
    # Sizes a new run to a time budget: the epochs and, below a floor, the
    # training images are chosen from a calibration (kd_keras/train/estimate.py)
    # and saved resolved; this keeps the budget asked for.
    budget: Optional[str] = _option(
        None,
        "--budget",
        "fit all three stages, evaluation included, into this time, e.g. 90s, 10m, "
        "1h: sets the epochs (teacher and students in the preset's ratio) and, "
        "below a floor of epochs, the training images, from a few measured steps",
    )
    # --- Devices (see kd_keras/train/distribute.py) ---
    strategy: str = _option(
        "default",
        "--strategy",
        "tf.distribute strategy: default (one device), mirrored (several devices "
        "of this machine) or multi_worker (one process per machine, each with "
        "its TF_CONFIG); --batch-size stays the global batch",
        choices=STRATEGIES,
    )
    # Mirrored devices, e.g. ["/gpu:0", "/gpu:1"].
    devices: Optional[list] = _option(
        None,
        "--devices",
        "with --strategy mirrored: comma-separated devices, e.g. "
        "/gpu:0,/gpu:1 (default: every GPU)",
    )
    # Batch-norm statistics over the global batch.
    sync_batch_norm: bool = _option(
        False,
        "--sync-batch-norm",
        "batch-norm statistics over the global batch, not each "
        "replica's part (changes results; kept on --resume)",
    )
    # --- Display ---
    verbose: int = 1  # Set by --quiet (2: one line an epoch).

    @classmethod
    def from_preset(cls, name, **overrides):
        """A config from a named preset plus field overrides (None = keep)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
        preset = dict(PRESETS[name])
        if data_kind(overrides.get("data")) != "cifar10":
            # The presets' sizes are CIFAR-10's; other data's follow the data.
            for field in SIZE_FIELDS:
                preset.pop(field, None)
        fields = {"preset": name, **preset}
        given = {k: v for k, v in overrides.items() if v is not None}
        fields.update(given)
        config = cls(**fields).validate()
        if "warmup_epochs" not in given:
            # The preset's warm-up shortens to fit fewer epochs (--epochs 1:
            # none); a warm-up asked for explicitly is checked instead.
            shortest = min(config.trained_stage_epochs().values())
            config.warmup_epochs = min(config.warmup_epochs, shortest - 1)
        return config.check_schedule()

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config fields: {', '.join(unknown)}")
        return cls(**values).validate()

    @classmethod
    def load(cls, path):
        with open(path) as file:
            return cls.from_dict(json.load(file))

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def result_differences(self, other):
        """Fields that differ between two configs and change results.

        A precision asked as "auto" matches whatever `self` resolved it to:
        a resumed run keeps the precision it started with. So does
        `teacher_outputs` "auto", on either side. The sizes (`SIZE_FIELDS`)
        are left out: they are compared resolved on the data.
        """
        mine, theirs = self.to_dict(), other.to_dict()
        return sorted(
            k
            for k in mine
            if k not in NON_RESULT_FIELDS
            and mine[k] != theirs[k]
            and not (k in AUTO_FIELDS and theirs[k] == "auto")
            # Resolved when a run starts; a folder from before the field says "auto".
            and not (k == "teacher_outputs" and "auto" in (mine[k], theirs[k]))
            # Sizes are compared resolved, once the data is read
            # (kd_keras.train.run_setup.check_resumed_data), by flag.
            and k not in SIZE_FIELDS
        )

    def trained_stage_epochs(self):
        """`{flag: epochs}` of the stages that train (the teacher only when
        no `--teacher` file is reused)."""
        stages = {}
        if not self.teacher and self.teacher_epochs:
            stages["--teacher-epochs"] = self.teacher_epochs
        stages["--student-epochs"] = self.student_epochs
        return stages

    def check_schedule(self):
        """Raises `ConfigError` if the warm-up is not shorter than every
        stage that trains; returns self. Checked for every config a front
        end builds from flags (`from_preset`), not by `validate`, so a run
        folder saved before this check still loads."""
        validate_warmup(self.warmup_epochs, self.trained_stage_epochs())
        return self

    def is_resolved(self):
        """True once no field says "auto"."""
        return all(getattr(self, k) != "auto" for k in AUTO_FIELDS)

    def _validate_models(self):
        """Checks `teacher_model`, `student_model` and `image_size` (names
        and numbers only; the models are built when the run starts)."""
        try:
            validate_image_size(self.image_size)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        for role in ("teacher", "student"):
            value = getattr(self, f"{role}_model")
            if value is None:
                continue
            try:
                spec = parse_model_spec(value, role=role)
            except ValueError as error:
                raise ConfigError(str(error)) from None
            size = self.image_size
            if spec["kind"] == "application" and size is not None and size < MIN_APPLICATION_SIZE:
                raise ConfigError(
                    f"{role} model {value!r} needs images of at least "
                    f"{MIN_APPLICATION_SIZE}x{MIN_APPLICATION_SIZE}; got image_size {size}"
                )

    def _validate_sizes(self):
        """Checks the size options and the data fingerprint; for CIFAR-10,
        whose counts are known, also against the data (every conflict in
        one line). Other data's sizes are resolved when it loads."""
        for field in SIZE_FIELDS:
            setattr(self, field, validate_size(field, getattr(self, field)))
        if self.data_fingerprint is not None and not isinstance(self.data_fingerprint, dict):
            raise ConfigError(f"data_fingerprint must be an object, got {self.data_fingerprint!r}")
        data = None if self.data is None else Path(self.data.strip()).expanduser()
        if data_kind(self.data) == "cifar10" and (data is None or data.exists()):
            from kd_keras.data.cifar10 import CLASS_NAMES  # Keras-free.

            resolve_sizes(
                {field: getattr(self, field) for field in SIZE_FIELDS},
                CIFAR10_COUNTS["train"],
                CIFAR10_COUNTS["test"],
                CLASS_NAMES,
                batch_size=self.batch_size,
            )

    def validate(self):
        """Checks every field; returns self or raises `ConfigError`."""
        try:
            validate_alpha(self.alpha)
            validate_temperature(self.temperature)
            validate_method(
                self.method,
                self.logit_standardization,
                self.dkd_alpha,
                self.dkd_beta,
                self.dkd_warmup_epochs,
                self.hint_layer,
                self.hint_weight,
                self.at_beta,
            )
            stage_blocks(self.teacher_depth)
            stage_blocks(self.student_depth)
            validate_speed_options(
                self.precision,
                self.teacher_precision,
                self.steps_per_execution,
                self.threads,
            )
            if self.budget is not None:
                parse_budget(self.budget)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        validate_devices(self.strategy, self.devices, self.sync_batch_norm)
        if not isinstance(self.accept_weak_teacher, bool):
            raise ConfigError(
                f"accept_weak_teacher must be true or false, got {self.accept_weak_teacher!r}"
            )
        if self.teacher_outputs not in TEACHER_OUTPUTS:
            raise ConfigError(
                f"teacher_outputs must be one of {', '.join(TEACHER_OUTPUTS)}, got "
                f"{self.teacher_outputs!r}; pass --teacher-outputs auto to detect it"
            )
        if isinstance(self.devices, tuple):
            self.devices = list(self.devices)
        for name in ("preset", "data", "teacher"):
            value = getattr(self, name)
            if not (isinstance(value, str) or (value is None and name != "preset")):
                raise ConfigError(f"{name} must be a string, got {value!r}")
        # Upper limits keep every accepted value runnable: the input
        # pipeline is built per epoch, widths allocate width**2 weights,
        # and seeds feed NumPy's 32-bit seeding (the student uses seed + 1).
        max_epochs, max_width, max_seed = MAX_EPOCHS, 256, 2**31 - 2
        positive = {
            "teacher_width": (self.teacher_width, max_width),
            "student_width": (self.student_width, max_width),
            "batch_size": (self.batch_size, MAX_BATCH_SIZE),
            "student_epochs": (self.student_epochs, max_epochs),
        }
        for name, (value, high) in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
            if high is not None and value > high:
                raise ConfigError(
                    f"{name} must be at most {high}, got {value}; lower {_flag(name)}"
                )
        non_negative = {
            "teacher_epochs": (self.teacher_epochs, max_epochs),
            "warmup_epochs": (self.warmup_epochs, max_epochs),
            "seed": (self.seed, max_seed),
        }
        for name, (value, high) in non_negative.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an int >= 0, got {value!r}")
            if high is not None and value > high:
                raise ConfigError(
                    f"{name} must be at most {high}, got {value}; lower {_flag(name)}"
                )
        if self.teacher_epochs == 0 and not self.teacher:
            raise ConfigError("teacher_epochs is 0 but no --teacher file was given to reuse")
        self._validate_models()
        self._validate_sizes()
        numbers = {
            "learning_rate": self.learning_rate,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
        }
        for name, value in numbers.items():
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or (value != value or value in (float("inf"), float("-inf")))
            ):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        return self
