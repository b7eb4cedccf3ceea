"""Checks of single run settings, each naming the bad value and its flag.

The accepted values of the choice options and the default distillation
temperature and alpha live here too, so that `RunConfig`, the `Distiller`,
the search and the app share one home for them. This module imports neither
Keras nor TensorFlow.
"""

import re

from kd_keras.errors import ConfigError
from kd_keras.models.specs import MIN_APPLICATION_SIZE, parse_model_spec

DEFAULT_ALPHA = 0.3
DEFAULT_TEMPERATURE = 4.0
# "auto" picks from the machine (kd_keras/hardware.py) when a run starts;
# a run folder's config.json always holds the resolved value.
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
TEACHER_PRECISIONS = ("auto", "float32", "bfloat16", "float16")
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
# Ranges (low, high) of the integer fields: upper limits keep every accepted
# value runnable (the input pipeline is built per epoch, widths allocate
# width**2 weights, seeds feed NumPy's 32-bit seeding and the student uses
# seed + 1).
# The most epochs a stage (or a search trial) may train: the input pipeline
# is built per epoch.
MAX_EPOCHS = 1000
_MAX_WIDTH = 256
COUNT_RANGES = {
    "teacher_width": (1, _MAX_WIDTH),
    "student_width": (1, _MAX_WIDTH),
    "batch_size": (1, MAX_BATCH_SIZE),
    "student_epochs": (1, MAX_EPOCHS),
    "teacher_epochs": (0, MAX_EPOCHS),
    "warmup_epochs": (0, MAX_EPOCHS),
    "seed": (0, 2**31 - 2),
}
# Distillation methods of `--method` (kd_keras/distill/losses, docs/methods.md).
METHODS = ("hinton", "dkd", "fitnets", "at")
# The methods that read the teacher's layers (its logits alone do not do):
# the teacher runs on every batch, so its logits are never cached for them.
FEATURE_METHODS = ("fitnets", "at")
# Several teachers (`--teacher` given again): the target is the mean of
# their softened distributions, or one Hinton loss per teacher
# (kd_keras/distill/losses/multi_teacher.py).
TEACHERS_MODES = ("mean", "weighted")
MAX_TEACHERS = 8
# The RunConfig fields of the method and its hyperparameters (one `--flag`
# each), in the order front ends show them.
METHOD_FIELDS = (
    "method",
    "logit_standardization",
    "dkd_alpha",
    "dkd_beta",
    "dkd_warmup_epochs",
    "hint_layer",
    "hint_weight",
    "at_beta",
)


def validation_reuses_teacher_logits(config):
    """True if the distilled stage computes the teacher's validation logits
    once and replays them each epoch: every method but those that read the
    teacher's layers (`FEATURE_METHODS`), on one device (strategy
    "default"). The pipeline runs by it and the `--dry-run` and `--budget`
    estimates count by it. `config` is a `RunConfig` (or anything with its
    `method` and `strategy`)."""
    return config.method not in FEATURE_METHODS and config.strategy == "default"


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
    1e300 overflow T**2. Hinton et al. use 1-20; kd_keras's default is `DEFAULT_TEMPERATURE`.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if not temperature > 0 or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    low, high = 0.01, 100.0
    if not low <= temperature <= high:
        raise ValueError(
            f"temperature must be in [{low:g}, {high:g}] (1-20 is usual; the "
            f"default is {DEFAULT_TEMPERATURE:g}), got {temperature:g}"
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


def validate_teacher_options(accept_weak_teacher, teacher_outputs):
    """Raises `ConfigError` for a non-bool `accept_weak_teacher` or an
    unknown `teacher_outputs`."""
    if not isinstance(accept_weak_teacher, bool):
        raise ConfigError(f"accept_weak_teacher must be true or false, got {accept_weak_teacher!r}")
    if teacher_outputs not in TEACHER_OUTPUTS:
        raise ConfigError(
            f"teacher_outputs must be one of {', '.join(TEACHER_OUTPUTS)}, got "
            f"{teacher_outputs!r}; pass --teacher-outputs auto to detect it"
        )


def validate_teachers(teacher, other_teachers, teachers_mode, method, logit_standardization):
    """Raises `ValueError`, naming the bad value and the flag, for several
    teachers that cannot be distilled from: `other_teachers` (the files of
    `--teacher` given again) without a first `--teacher`, more than
    `MAX_TEACHERS` files, a file given twice, or with a method other than
    Hinton KD (the ensemble is distilled with its loss)."""
    if teachers_mode not in TEACHERS_MODES:
        raise ValueError(
            f"teachers_mode must be one of {', '.join(TEACHERS_MODES)}, got "
            f"{teachers_mode!r} (--teachers-mode)"
        )
    if other_teachers is None:
        return
    if not isinstance(other_teachers, (list, tuple)) or not all(
        isinstance(path, str) and path.strip() for path in other_teachers
    ):
        raise ValueError(
            f"other_teachers must be a list of .keras file paths, got {other_teachers!r}"
        )
    if not other_teachers:
        return
    if not teacher:
        raise ValueError(
            "other_teachers needs a first --teacher file: give --teacher once per trained teacher"
        )
    paths = [teacher, *other_teachers]
    if len(paths) > MAX_TEACHERS:
        raise ValueError(
            f"at most {MAX_TEACHERS} --teacher files can be distilled from at once, got {len(paths)}"
        )
    for index, path in enumerate(paths):
        if path in paths[:index]:
            raise ValueError(f"--teacher {path!r} is given twice; give each teacher once")
    if method != "hinton" or logit_standardization:
        used = "--logit-standardization" if method == "hinton" else f"--method {method}"
        raise ValueError(
            f"several --teacher files are distilled with Hinton KD's loss, not with {used}; "
            "drop the extra --teacher files or that flag"
        )


# What a student baseline's training depends on: a `--baseline` file from a
# run whose config.json differs from the reusing run's in any of these (all
# resolved, as saved) is refused, for its gain would compare two recipes.
BASELINE_FIELDS = (
    "seed",
    "data_fingerprint",
    "train_per_class",
    "val_size",
    "val_per_class",
    "image_size",
    "student_model",
    "student_depth",
    "student_width",
    "student_epochs",
    "batch_size",
    "learning_rate",
    "momentum",
    "weight_decay",
    "warmup_epochs",
    "precision",
    "sync_batch_norm",
)


def check_budget_strategy(budget, strategy):
    """Raises `ValueError` for a new `--budget` run under `--strategy
    multi_worker`: every process would time its own machine and could plan
    other epochs than the others, and the processes must train the same."""
    if budget is not None and strategy == "multi_worker":
        raise ValueError(
            f"--budget {budget} plans from this machine's timings, and each process of "
            "--strategy multi_worker would plan its own epochs: give every process the same "
            "--teacher-epochs and --student-epochs instead (--budget with --dry-run, "
            "without --strategy, prints a plan for one machine)"
        )


def validate_baseline(baseline, budget):
    """Raises `ValueError` for a `--baseline` that is no path, or one given
    with `--budget` (the budget would change the students' epochs, which
    the reused baseline's training fixed)."""
    if baseline is None:
        return
    if not isinstance(baseline, str) or not baseline.strip():
        raise ValueError(f"baseline must be a .keras file path, got {baseline!r} (--baseline)")
    if budget is not None:
        raise ValueError(
            f"--baseline {baseline} reuses a student trained for a fixed number of epochs, "
            f"which --budget {budget} would change for the distilled student: drop one of them"
        )


def baseline_mismatch(saved, config):
    """The `BASELINE_FIELDS` where the config.json `saved` of the run that
    trained a `--baseline` differs from the reusing run's `config` (a dict),
    as `[(field, theirs, ours)]`; fields either side lacks are skipped."""
    return [
        (field, saved[field], config[field])
        for field in BASELINE_FIELDS
        if field in saved and field in config and saved[field] != config[field]
    ]


def validate_counts(values, flags):
    """Raises `ConfigError` unless each of `values` (`{field: value}` of
    `COUNT_RANGES`' fields, checked in that order) is an int in its range;
    `flags` names each field's flag for the fix."""
    for name, (low, high) in COUNT_RANGES.items():
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
        if value > high:
            raise ConfigError(f"{name} must be at most {high}, got {value}; lower {flags[name]}")


def validate_models(teacher_model, student_model, image_size):
    """Raises `ConfigError` for a bad model name or image size (names and
    numbers only; the models are built when the run starts)."""
    try:
        validate_image_size(image_size)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    for role, value in (("teacher", teacher_model), ("student", student_model)):
        if value is None:
            continue
        try:
            spec = parse_model_spec(value, role=role)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        size = image_size
        if spec["kind"] == "application" and size is not None and size < MIN_APPLICATION_SIZE:
            raise ConfigError(
                f"{role} model {value!r} needs images of at least "
                f"{MIN_APPLICATION_SIZE}x{MIN_APPLICATION_SIZE}; got image_size {size}"
            )


def validate_optimizer(learning_rate, momentum, weight_decay):
    """Raises `ConfigError` unless the SGD settings are finite numbers with
    `learning_rate` > 0, `momentum` in [0, 1) and `weight_decay` >= 0."""
    numbers = {"learning_rate": learning_rate, "momentum": momentum, "weight_decay": weight_decay}
    for name, value in numbers.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (value != value or value in (float("inf"), float("-inf")))
        ):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if not learning_rate > 0:
        raise ConfigError(f"learning_rate must be > 0, got {learning_rate}")
    if not 0 <= momentum < 1:
        raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
    if not weight_decay >= 0:
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}")
