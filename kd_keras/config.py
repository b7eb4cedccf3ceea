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

from kd_keras.depth import stage_blocks
from kd_keras.model_specs import MIN_APPLICATION_SIZE, parse_model_spec

DEFAULT_ALPHA = 0.3
DEFAULT_TEMPERATURE = 4.0
# "auto" picks from the machine (kd_keras/hardware.py) when a run starts;
# a run folder's config.json always holds the resolved value.
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
TEACHER_PRECISIONS = ("auto", "float32", "bfloat16", "float16")
# Fields where "auto" is resolved per machine.
AUTO_FIELDS = ("precision", "teacher_precision")
# tf.distribute strategies (see kd_keras/distribute.py).
STRATEGIES = ("default", "mirrored", "multi_worker")


def validate_alpha(alpha):
    """Raises `ValueError` unless `alpha` is a number in [0, 1]."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(
            f"alpha must be in [0, 1] (it weights the hard-label loss), got {alpha}"
        )
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
        raise ValueError(
            f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
        )
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
        raise ValueError(
            f"steps_per_execution must be an int >= 1, got {steps_per_execution!r}"
        )
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(f"threads must be an int >= 1 or None, got {threads!r}")


def validate_devices(strategy, devices, sync_batch_norm):
    """Raises `ConfigError`, naming the bad value, for an invalid strategy,
    device list or `sync_batch_norm`."""
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}"
        )
    if devices is not None:
        if not isinstance(devices, (list, tuple)) or not devices or not all(
            isinstance(d, str) and d.strip() for d in devices
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
    # test set; 50 epochs a stage with a short warm-up and cosine decay.
    # Weight decay 5e-3 in Keras's decoupled form (w -= lr * wd * w) is what
    # PyTorch's SGD(weight_decay=5e-4, momentum=0.9) applies in effect
    # (its L2 gradient goes through the momentum: / (1 - 0.9)); with 5e-4
    # decoupled the depth-30 teacher overfit (train 0.96, test 0.863 after
    # 40 epochs). About 1 hour a stage on a 2-core CPU with native bfloat16.
    "full": {
        "teacher_depth": 30,
        "student_depth": 15,
        "teacher_epochs": 50,
        "student_epochs": 50,
        "batch_size": 128,
        "warmup_epochs": 2,
        "weight_decay": 5e-3,
    },
    # The same models and data with the long schedule (160 epochs a stage).
    # Days on a 2-core CPU; for a GPU.
    "paper": {
        "teacher_depth": 30,
        "student_depth": 15,
        "teacher_epochs": 160,
        "student_epochs": 160,
        "batch_size": 128,
        "warmup_epochs": 5,
    },
}

# Fields that do not change a run's results (where it is, how it is shown,
# how fast it runs).
# `strategy` and `devices` say where the same recipe runs (`batch_size` is the
# global batch, the learning rate is not scaled), so a run may resume on
# other devices; with per-replica batch norm the replica count still moves
# the batch statistics (see kd_keras/distribute.py). `sync_batch_norm`
# changes the models' layers and is a result field.
NON_RESULT_FIELDS = (
    "data", "verbose", "steps_per_execution", "threads", "strategy", "devices",
)


def data_kind(source):
    """What a `--data` value names, from the path alone (nothing is read;
    see `kd_keras.data_sources`).

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


class ConfigError(ValueError):
    """Raised for a run configuration that cannot be run."""


@dataclasses.dataclass
class RunConfig:
    """One run of the three-stage pipeline (teacher, student baseline,
    distilled student).

    Build one with `RunConfig.from_preset("quick", epochs=...)` or directly;
    `validate()` is called by both.
    """

    preset: str = "custom"
    data: Optional[str] = None
    seed: int = 0
    # --- Data ---
    val_size: int = 5000
    train_per_class: Optional[int] = None
    val_per_class: Optional[int] = None
    test_per_class: Optional[int] = None
    # --- Models ---
    teacher_depth: int = 30
    teacher_width: int = 16
    student_depth: int = 15
    student_width: int = 16
    teacher: Optional[str] = None  # A trained teacher .keras file to reuse.
    # Architectures (kd_keras/model_specs.py): None = resnet<depth> with the
    # depth and width above; a keras.applications name; a .keras file.
    teacher_model: Optional[str] = None
    student_model: Optional[str] = None
    image_size: Optional[int] = None  # Square side to resize to; None = the data's.
    # --- Training recipe (SGD + momentum, warm-up + cosine) ---
    teacher_epochs: int = 160
    student_epochs: int = 160
    batch_size: int = 128
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 5
    # --- Distillation ---
    temperature: float = 4.0
    alpha: float = 0.3
    # --- Speed (see kd_keras/speed.py and kd_keras/hardware.py) ---
    # "auto": bfloat16 where the machine has native bfloat16, else float32
    # (float16 on older GPUs); resolved when a run starts.
    precision: str = "auto"  # Or float32, mixed_bfloat16, mixed_float16.
    teacher_precision: str = "auto"  # Or float32, bfloat16, float16.
    steps_per_execution: int = 1
    threads: Optional[int] = None  # Intra-op threads (inter-op 1); None = TF's.
    # --- Devices (see kd_keras/distribute.py) ---
    strategy: str = "default"  # Or "mirrored", "multi_worker".
    devices: Optional[list] = None  # Mirrored devices, e.g. ["/gpu:0", "/gpu:1"].
    sync_batch_norm: bool = False  # Batch-norm statistics over the global batch.
    # --- Display ---
    verbose: int = 1

    @classmethod
    def from_preset(cls, name, **overrides):
        """A config from a named preset plus field overrides (None = keep)."""
        if name not in PRESETS:
            raise ConfigError(
                f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}"
            )
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
        if isinstance(self.devices, tuple):
            self.devices = list(self.devices)
        for name in ("preset", "data", "teacher"):
            value = getattr(self, name)
            if not (isinstance(value, str) or (value is None and name != "preset")):
                raise ConfigError(f"{name} must be a string, got {value!r}")
        # Upper limits keep every accepted value runnable: the input
        # pipeline is built per epoch, widths allocate width**2 weights,
        # and seeds feed NumPy's 32-bit seeding (the student uses seed + 1).
        max_epochs, max_width, max_seed = 1000, 256, 2**31 - 2
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
            raise ConfigError(
                "teacher_epochs is 0 but no --teacher file was given to reuse"
            )
        self._validate_models()
        # An image folder's or .npz file's counts are checked when it loads.
        cifar = data_kind(self.data) == "cifar10"
        if not 0 < self.val_size < (50000 if cifar else float("inf")):
            raise ConfigError(f"val_size must be in [1, 49999], got {self.val_size}")
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
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                value != value or value in (float("inf"), float("-inf"))
            ):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        return self
