"""`RunConfig`: everything that determines a run's results, as data.

This module imports neither Keras nor TensorFlow, so front ends (the app)
can read presets and validate settings cheaply.

A run folder holds its `config.json`, so every number in it traces back to
the settings that produced it. Presets are plain dicts of field overrides.
"""

import dataclasses
import json
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
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(f"threads must be an int >= 1 or None, got {threads!r}")


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
    "verbose",
    "steps_per_execution",
    "threads",
    "strategy",
    "devices",
    "accept_weak_teacher",
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


def _option(default, flag, help, choices=None):
    """A `RunConfig` field that is a run option: set by the command-line
    flag `flag` (see `kd_keras.options`).

    Args:
        default: the field's default.
        flag: the flag, e.g. `"--seed"`.
        help: the flag's help text.
        choices: the accepted values, for front ends that offer a list
            (checked by `RunConfig.validate`, not by the parser).
    """
    metadata = {"flag": flag, "help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
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
    seed: int = _option(0, "--seed", "random seed of data split, init and order")
    # --- Data ---
    val_size: int = _option(5000, "--val-size", "training images held out for validation")
    train_per_class: Optional[int] = _option(
        None, "--train-per-class", "training images per class (subset)"
    )
    val_per_class: Optional[int] = _option(
        None, "--val-per-class", "validation images per class (subset)"
    )
    test_per_class: Optional[int] = _option(
        None, "--test-per-class", "test images per class (subset)"
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
        fields = {"preset": name, **PRESETS[name]}
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**fields).validate()

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
        a resumed run keeps the precision it started with.
        """
        mine, theirs = self.to_dict(), other.to_dict()
        return sorted(
            k
            for k in mine
            if k not in NON_RESULT_FIELDS
            and mine[k] != theirs[k]
            and not (k in AUTO_FIELDS and theirs[k] == "auto")
        )

    def is_resolved(self):
        """True once no field says "auto"."""
        return all(getattr(self, k) != "auto" for k in AUTO_FIELDS)

    def _validate_models(self):
        """Checks `teacher_model`, `student_model` and `image_size` (names
        and numbers only; the models are built when the run starts)."""
        size = self.image_size
        if size is not None and (
            isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 1024
        ):
            raise ConfigError(f"image_size must be an int in [8, 1024] or None, got {size!r}")
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

    def validate(self):
        """Checks every field; returns self or raises `ConfigError`."""
        try:
            validate_alpha(self.alpha)
            validate_temperature(self.temperature)
            stage_blocks(self.teacher_depth)
            stage_blocks(self.student_depth)
            validate_speed_options(
                self.precision,
                self.teacher_precision,
                self.steps_per_execution,
                self.threads,
            )
        except ValueError as error:
            raise ConfigError(str(error)) from None
        validate_devices(self.strategy, self.devices, self.sync_batch_norm)
        if not isinstance(self.accept_weak_teacher, bool):
            raise ConfigError(
                f"accept_weak_teacher must be true or false, got {self.accept_weak_teacher!r}"
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
            "batch_size": (self.batch_size, None),
            "student_epochs": (self.student_epochs, max_epochs),
        }
        for name, (value, high) in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
            if high is not None and value > high:
                raise ConfigError(f"{name} must be at most {high}, got {value}")
        non_negative = {
            "teacher_epochs": (self.teacher_epochs, max_epochs),
            "warmup_epochs": (self.warmup_epochs, max_epochs),
            "val_size": (self.val_size, None),
            "seed": (self.seed, max_seed),
        }
        for name, (value, high) in non_negative.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an int >= 0, got {value!r}")
            if high is not None and value > high:
                raise ConfigError(f"{name} must be at most {high}, got {value}")
        if self.teacher_epochs == 0 and not self.teacher:
            raise ConfigError("teacher_epochs is 0 but no --teacher file was given to reuse")
        self._validate_models()
        # An image folder's or .npz file's counts are checked when it loads.
        cifar = data_kind(self.data) == "cifar10"
        if not 0 < self.val_size < (50000 if cifar else float("inf")):
            limit = " and at most 49900 for CIFAR-10 (10 training images a class)" if cifar else ""
            raise ConfigError(f"val_size must be >= 1{limit}, got {self.val_size}")
        # CIFAR-10: 5,000 training images per class (the validation split is
        # carved from them, spread evenly; earlier classes take the
        # remainder) and 1,000 test images per class.
        train_left = 5000 - -(-self.val_size // 10) if cifar else float("inf")
        min_train = 10
        if train_left < min_train:
            raise ConfigError(
                f"val_size {self.val_size} leaves {max(train_left, 0)} training images "
                f"per class; at most {50000 - 10 * min_train} keeps {min_train} per class"
            )
        available = {
            "train_per_class": (train_left, "after the validation split"),
            "val_per_class": (self.val_size // 10, f"in a validation split of {self.val_size}"),
            "test_per_class": (1000, "in the test set"),
        }
        for name, (count, where) in available.items():
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigError(f"{name} must be an int >= 1 or None, got {value!r}")
            if value is not None and cifar and value > count:
                raise ConfigError(
                    f"{name} {value} > {count} images per class available {where}; "
                    f"ask for at most {count} (or leave it unset for all)"
                )
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
