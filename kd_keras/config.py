"""`RunConfig`: everything that determines a run's results, as data.

This module imports neither Keras nor TensorFlow, so front ends (the app)
can validate settings cheaply.

A run folder holds its `config.json`, so every number in it traces back to
the settings that produced it. The presets are in `kd_keras.presets`, the
checks of single values in `kd_keras.validation` and the data sizes in
`kd_keras.data.sizes`.
"""

import dataclasses
import json
from pathlib import Path
from typing import Optional

from kd_keras.data.sizes import (
    CIFAR10_COUNTS,
    SIZE_FIELDS,
    SIZE_WORDS,
    resolve_sizes,
    validate_size,
)
from kd_keras.errors import ConfigError
from kd_keras.models.depth import stage_blocks
from kd_keras.models.specs import application_names_help
from kd_keras.presets import PRESETS
from kd_keras.validation import (
    COUNT_RANGES,
    DEFAULT_ALPHA,
    DEFAULT_TEMPERATURE,
    METHODS,
    PRECISIONS,
    STRATEGIES,
    TEACHER_OUTPUTS,
    TEACHER_PRECISIONS,
    TEACHERS_MODES,
    parse_budget,
    validate_alpha,
    validate_baseline,
    validate_counts,
    validate_devices,
    validate_method,
    validate_models,
    validate_optimizer,
    validate_speed_options,
    validate_teacher_options,
    validate_teachers,
    validate_temperature,
    validate_warmup,
)

# Fields where "auto" is resolved per machine.
AUTO_FIELDS = ("precision", "teacher_precision")


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


def _option(default, flag, help, choices=None, words=None, more=None):
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
        more: a list field (without a flag of its own) that takes the
            values of this flag given again (`--teacher a --teacher b`).
    """
    metadata = {"flag": flag, "help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if words is not None:
        metadata["words"] = tuple(words)
    if more is not None:
        metadata["more"] = more
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
    teacher: Optional[str] = _option(
        None,
        "--teacher",
        "reuse this trained teacher .keras file; give it again to distil from several "
        "teachers (the first is the run's teacher; see --teachers-mode)",
        more="other_teachers",
    )
    # The files of `--teacher` given again: the student distils from all of
    # them and `teacher` (MultiTeacherKD, Hinton KD's loss); None = one.
    other_teachers: Optional[list] = None
    teachers_mode: str = _option(
        "mean",
        "--teachers-mode",
        "with several --teacher files: mean (default: the mean of their softened "
        "distributions is the target) or weighted (one Hinton loss per teacher, equal weights)",
        choices=TEACHERS_MODES,
    )
    # A trained student baseline .keras file to reuse (another run's
    # models/student_baseline.keras): the stage is evaluated, not trained.
    baseline: Optional[str] = _option(
        None,
        "--baseline",
        "reuse this trained student baseline .keras file (another run's "
        "models/student_baseline.keras with the same student, seed, data and epochs) "
        "instead of training one: compares distillation methods for the cost of the "
        "distilled student alone",
    )
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
        f"keras.applications name ({application_names_help()}; options after a colon, e.g. "
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
    temperature: float = _option(
        DEFAULT_TEMPERATURE,
        "--temperature",
        f"distillation temperature T > 0 (default {DEFAULT_TEMPERATURE:g})",
    )
    alpha: float = _option(
        DEFAULT_ALPHA,
        "--alpha",
        f"weight of the hard-label loss, in [0, 1] (default {DEFAULT_ALPHA:g})",
    )
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
        preset = dict(PRESETS[name].overrides)
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
        self._validate_values()
        validate_devices(self.strategy, self.devices, self.sync_batch_norm)
        if isinstance(self.devices, tuple):
            self.devices = list(self.devices)
        validate_teacher_options(self.accept_weak_teacher, self.teacher_outputs)
        for name in ("preset", "data", "teacher", "baseline"):
            value = getattr(self, name)
            if not (isinstance(value, str) or (value is None and name != "preset")):
                raise ConfigError(f"{name} must be a string, got {value!r}")
        validate_counts(
            {name: getattr(self, name) for name in COUNT_RANGES},
            {name: _flag(name) for name in COUNT_RANGES},
        )
        if self.teacher_epochs == 0 and not self.teacher:
            raise ConfigError("teacher_epochs is 0 but no --teacher file was given to reuse")
        validate_models(self.teacher_model, self.student_model, self.image_size)
        self._validate_sizes()
        validate_optimizer(self.learning_rate, self.momentum, self.weight_decay)
        return self

    def _validate_values(self):
        """The distillation, depth, speed and budget settings
        (`kd_keras.validation`'s checks)."""
        try:
            validate_alpha(self.alpha)
            validate_temperature(self.temperature)
            validate_teachers(
                self.teacher,
                self.other_teachers,
                self.teachers_mode,
                self.method,
                self.logit_standardization,
            )
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
            validate_baseline(self.baseline, self.budget)
        except ValueError as error:
            raise ConfigError(str(error)) from None
