"""Starting, resuming and stopping runs, and their command lines.

A run is `python -m kd_keras run --preset P --out <runs>/<name> ...`,
started by `kd_app.processes.spawn`; the form's fields become flags
through `kd_keras.options` (the CLI's own table of run options). One run
at a time per runs root: the machine has no room for two, and the check
and the start hold the root's launch lock (`processes.launch_lock`), so two
pages cannot both pass it. Every path of a launch (run name, data,
teacher, model files) resolves inside the operator's roots
(`kd_app.confine`); the app deletes nothing itself (`--overwrite` is the
CLI's, and the app asks for it only on a run folder whose config.json
kd_keras parses).
"""

import dataclasses
import sys
from datetime import datetime
from pathlib import Path

from kd_keras import atomic
from kd_keras.errors import LaunchError
from kd_keras.options import command_line_flags, option_for
from kd_keras.presets import DEFAULT_PRESET
from kd_keras.run_folder import RunFolder
from kd_keras.validation import METHODS

from . import checks, confine
from .processes import launch_lock, start, terminate
from .run_state import alive_runs, run_state
from .settings import TEACHERS_SUBDIR, TUNING_SUBDIR, presets

IF_EXISTS = ("refuse", "resume", "overwrite")
# The launch form's number fields and their labels (the messages use them).
NUMBER_LABELS = {
    "epochs": "Epochs (every stage)",
    "temperature": "Temperature T",
    "alpha": "alpha",
    "seed": "Seed",
    "teacher_depth": "Teacher depth",
    "student_depth": "Student depth",
}
# The data size fields: a whole number, "all", or empty (the default that
# follows the data); each is passed as its `kd_keras run` flag.
SIZE_LABELS = {
    "val_size": "Validation images",
    "train_per_class": "Train images per class",
    "val_per_class": "Validation images per class",
    "test_per_class": "Test images per class",
}
IMAGE_SIZE_LABEL = "Image size"
# What a teacher outputs (`--teacher-outputs`): "auto" detects it at load.
TEACHER_OUTPUTS = ("auto", "logits", "probabilities")
DEPTH_FIELDS = ("teacher_depth", "student_depth")
# The distillation method (`--method`) and, per method, the hyperparameters
# the form offers: field -> (label, the methods it applies to). A field is
# passed only with a method it applies to; empty = the method's default.
METHOD_FIELDS = {
    "method": ("Method", METHODS),
    "logit_standardization": ("Logit standardization", ("hinton", "dkd")),
    "dkd_beta": ("DKD beta", ("dkd",)),
    "hint_layer": ("Hint layer", ("fitnets",)),
    "at_beta": ("AT beta", ("at",)),
}
BUDGET_LABEL = "Time budget"
# RunConfig fields the form sets, by their label in messages.
_CONFIG_LABELS = {
    **{k: v for k, v in NUMBER_LABELS.items() if k != "epochs"},
    **SIZE_LABELS,
    "image_size": IMAGE_SIZE_LABEL,
    "teacher_epochs": NUMBER_LABELS["epochs"],
    "student_epochs": NUMBER_LABELS["epochs"],
    **{field: label for field, (label, _) in METHOD_FIELDS.items()},
    "budget": BUDGET_LABEL,
}


@dataclasses.dataclass
class LaunchOptions:
    """The launch form. `None` means "the preset's value"."""

    preset: str = DEFAULT_PRESET
    name: str = ""
    data: str = ""
    epochs: int = None
    temperature: float = None
    alpha: float = None
    teacher_depth: int = None
    student_depth: int = None
    train_per_class: object = None  # An int, "all", or None (follows the data).
    val_size: object = None
    val_per_class: object = None
    test_per_class: object = None
    image_size: int = None  # None: the data's own size.
    teacher_outputs: str = "auto"  # One of TEACHER_OUTPUTS.
    seed: int = None
    teacher: str = ""
    teacher_model: str = ""  # "" = resnet<depth>; see kd_keras/models/specs.py.
    student_model: str = ""
    # Devices (kd_keras.train.distribute): "" = one device; "mirrored" = the
    # GPUs (or `devices`) of this machine. Several machines need TF_CONFIG
    # per process: the command line's `--strategy multi_worker`.
    strategy: str = ""
    devices: str = ""  # Comma-separated, e.g. "/gpu:0,/gpu:1"; "" = every GPU.
    sync_batch_norm: bool = False
    method: str = "hinton"  # One of METHODS; see METHOD_FIELDS.
    logit_standardization: bool = False
    dkd_beta: float = None
    hint_layer: str = ""
    at_beta: float = None
    # "" = the preset's epochs; e.g. "10m": `--budget`, which sizes the run
    # to the machine (the epochs field must then be empty).
    budget: str = ""
    if_exists: str = "refuse"  # One of IF_EXISTS.


def _teacher_outputs_flag():
    """`--teacher-outputs`, from the run options table when RunConfig has
    the field."""
    try:
        return option_for("teacher_outputs").flag
    except ValueError:
        return "--teacher-outputs"


def default_run_name(preset):
    return f"{preset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _text(value):
    return str(value or "").strip() or None


def resolved_options(options, runs_dir):
    """`options` with its data, teacher and model files (a `.keras` spec, an
    application's `weights=`) as absolute paths inside the operator's roots (a path that is not stays as typed, for
    the checks to refuse)."""
    changes = {}
    data, _ = checks.resolve_data(options.data, runs_dir) if _text(options.data) else (None, [])
    if data:
        changes["data"] = str(data)
    if _text(options.teacher):
        teacher, _ = checks.resolve_keras_file(options.teacher, runs_dir, "teacher")
        changes["teacher"] = str(teacher) if teacher else options.teacher
    for role in ("teacher_model", "student_model"):
        value = _text(getattr(options, role))
        if value:
            spec, _ = checks.resolve_model(value, runs_dir, role.partition("_")[0])
            if spec:
                changes[role] = spec
    return dataclasses.replace(options, **changes)


def config_overrides(options):
    """The `RunConfig` fields a launch sets, `{field: value}` (the form's
    empty fields left out): what `RunConfig.from_preset` and the command
    line take."""
    epochs = checks.whole(options.epochs)
    values = {
        "data": _text(options.data),
        "seed": checks.whole(options.seed),
        **{field: checks.size_value(getattr(options, field)) for field in SIZE_LABELS},
        "image_size": checks.whole(options.image_size),
        "teacher_outputs": (
            options.teacher_outputs if options.teacher_outputs not in (None, "", "auto") else None
        ),
        "teacher_depth": checks.whole(options.teacher_depth),
        "student_depth": checks.whole(options.student_depth),
        "teacher": _text(options.teacher),
        "teacher_model": str(options.teacher_model or "").strip() or None,
        "student_model": str(options.student_model or "").strip() or None,
        "teacher_epochs": epochs,
        "student_epochs": epochs,
        "temperature": options.temperature,
        "alpha": options.alpha,
        "strategy": str(options.strategy or "").strip() or None,
        "devices": [d.strip() for d in str(options.devices or "").split(",") if d.strip()] or None,
        "sync_batch_norm": True if options.sync_batch_norm else None,
        **method_overrides(options),
        "budget": _text(options.budget),
    }
    return {k: v for k, v in values.items() if v is not None}


def method_overrides(options):
    """The method's fields of a launch: `method` unless it is the default
    (hinton), and the hyperparameters that apply to it (others are left
    out, so a value typed for another method never reaches the run)."""
    method = _text(options.method) or "hinton"
    values = {
        "method": None if method == "hinton" else method,
        "logit_standardization": True if options.logit_standardization else None,
        "dkd_beta": options.dkd_beta,
        "hint_layer": _text(options.hint_layer),
        "at_beta": options.at_beta,
    }
    return {
        field: value
        for field, value in values.items()
        if field == "method" or method in METHOD_FIELDS[field][1]
    }


def placeholders(preset, kind="cifar10"):
    """`{field: text}`: what each empty box of the form stands for (`kind`:
    the data source's, from `kd_keras.config.data_kind`; the preset's sizes
    are CIFAR-10's, other data gets sizes that follow it)."""
    values = presets()[preset]
    texts = {
        field: f"{preset}: {values[field]}" if values.get(field) is not None else "preset default"
        for field in (*NUMBER_LABELS, *SIZE_LABELS)
    }
    texts["epochs"] = f"{preset}: {values['teacher_epochs']} / {values['student_epochs']}"
    for field in SIZE_LABELS:
        if kind != "cifar10":
            texts[field] = "follows the data"
        elif values.get(field) is None:
            texts[field] = "all"
    texts["image_size"] = "the data's"
    return texts


def form_errors(options, runs_dir):
    """The problems shown while the form is filled in (before Start): the
    data path, and unless resuming, T, alpha and the depths."""
    if options.if_exists == "resume":
        return checks.check_data_path(options.data, runs_dir) if options.data else []
    return (
        checks.check_hyperparameters(options.temperature, options.alpha)
        + checks.check_depths({f: getattr(options, f) for f in DEPTH_FIELDS}, NUMBER_LABELS)
        + checks.check_sizes({f: getattr(options, f) for f in SIZE_LABELS}, SIZE_LABELS)
        + checks.check_data_path(options.data, runs_dir)
    )


def _folder_errors(options, runs_dir):
    """Problems with the run folder of a launch: inside the root, not
    running, and existing only if asked to resume or overwrite a run whose
    config.json kd_keras parses (the app never empties anything else)."""
    try:
        folder = confine.within(runs_dir, options.name, "run name")
    except LaunchError as error:
        return [str(error)]
    state = run_state(folder)
    if state.alive:
        return [
            f"Run '{options.name}' is already running (process {state.pid}); "
            "wait for it or stop it first."
        ]
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        return [f"'{folder}' is not a run folder (a symlink or a file); choose another run name."]
    if not folder.exists() or not any(c.name != atomic.LOCK_FILE for c in folder.iterdir()):
        return []
    if options.if_exists == "refuse":
        return [
            f"The run folder '{folder}' already exists. Choose another run "
            "name, or 'resume' to continue it or 'overwrite' to replace it."
        ]
    run = RunFolder(folder)
    if not run.config_file.is_file():
        return [
            f"'{folder}' is not a kd_keras run folder (no config.json); choose another run name."
        ]
    try:
        run.config()
    except (ValueError, TypeError, OSError) as error:  # ConfigError, DamagedFileError, ...
        return [
            f"'{folder}' is not a kd_keras run this app can replace: its config.json "
            f"does not parse ({str(error).splitlines()[0][:200]}); choose another run name."
        ]
    return []


def validate_launch(options, runs_dir):
    """Every problem with a launch, as readable messages (empty = fine)."""
    errors = []
    all_presets = presets()
    if options.preset not in all_presets:
        errors.append(f"Unknown preset '{options.preset}'; choose one of {', '.join(all_presets)}.")
    errors += checks.check_name(options.name, "Run", reserved=(TUNING_SUBDIR, TEACHERS_SUBDIR))
    errors += checks.check_data_path(options.data, runs_dir)
    errors += checks.check_hyperparameters(options.temperature, options.alpha)
    errors += checks.check_depths({f: getattr(options, f) for f in DEPTH_FIELDS}, NUMBER_LABELS)
    errors += checks.check_teacher(options.teacher, runs_dir)
    errors += checks.check_models(options.teacher_model, options.student_model, runs_dir)
    errors += checks.check_sizes({f: getattr(options, f) for f in SIZE_LABELS}, SIZE_LABELS)
    if not errors:  # The source's layout, as far as its headers tell.
        errors += checks.describe_data(options.data, runs_dir)[1]
    if options.teacher_outputs not in (None, "", *TEACHER_OUTPUTS):
        errors.append(
            f"Unknown teacher output '{options.teacher_outputs}'; choose one of "
            f"{', '.join(TEACHER_OUTPUTS)}."
        )
    if (_text(options.method) or "hinton") not in METHODS:
        errors.append(f"Unknown method '{options.method}'; choose one of {', '.join(METHODS)}.")
    if _text(options.budget) and options.epochs is not None:
        errors.append(
            f"{BUDGET_LABEL} chooses the epochs; empty '{NUMBER_LABELS['epochs']}' "
            f"or '{BUDGET_LABEL}'."
        )
    if options.if_exists not in IF_EXISTS:
        errors.append(
            f"Unknown choice '{options.if_exists}' for an existing folder; "
            f"choose one of {', '.join(IF_EXISTS)}."
        )
    if not errors:  # The rest of kd_keras's rules (epochs, seed, data sizes, ...).
        overrides = config_overrides(resolved_options(options, runs_dir))
        errors += checks.check_settings(options.preset, overrides, _CONFIG_LABELS)
    if options.name and not errors:
        errors += _folder_errors(options, runs_dir)
    return errors


def run_command(options, out):
    """The `python -m kd_keras run ...` command line of a launch."""
    argv = [
        sys.executable,
        "-m",
        "kd_keras",
        "run",
        "--preset",
        options.preset,
        "--out",
        str(out),
        "--quiet",
    ]
    overrides = config_overrides(options)
    extra = []
    for field in SIZE_LABELS:  # "all" is a word the flag takes, not a RunConfig int.
        if overrides.get(field) == checks.ALL:
            extra += [option_for(field).flag, overrides.pop(field)]
    if "teacher_outputs" in overrides:
        extra += [_teacher_outputs_flag(), overrides.pop("teacher_outputs")]
    argv += command_line_flags(overrides) + extra
    if options.if_exists == "overwrite":
        argv.append("--overwrite")
    return argv


def resume_command(folder, data=None):
    """`python -m kd_keras run --resume --out FOLDER`: the command line takes
    the run's saved `config.json` as it is."""
    run = RunFolder(folder)
    if not run.config_file.is_file():
        raise LaunchError(f"Nothing to resume: '{run.path}' holds no config.json.")
    data = _text(data)
    return [
        sys.executable,
        "-m",
        "kd_keras",
        *run.resume_argv(),
        "--quiet",
        *(["--data", data] if data else []),
    ]


def _refuse_if_busy(runs_dir):
    busy = alive_runs(runs_dir)
    if busy:
        names = ", ".join(f"'{s.name}' (process {s.pid})" for s in busy)
        raise LaunchError(
            f"A run is already going: {names}. Only one run at a time: wait for "
            "it to finish or stop it first."
        )


def start_run(options, runs_dir):
    """Validates and starts `python -m kd_keras run` in the background.

    With `options.if_exists == "resume"` the run continues with the settings
    saved in its `config.json` (see `resume_run`); the form's are ignored.

    Args:
        options: the form (`LaunchOptions`); its paths as typed.
        runs_dir: the operator's runs root.

    Returns:
        `(folder, pid)`.

    Raises:
        LaunchError: with every problem found, or when another run is alive.
    """
    runs_dir = Path(runs_dir).expanduser().resolve()
    if options.if_exists == "resume":
        if not options.name:
            raise LaunchError("Give the name of the run to resume.")
        return resume_run(
            confine.within(runs_dir, options.name, "run name"), runs_dir, options.data
        )
    if not options.name:
        options = dataclasses.replace(options, name=default_run_name(options.preset))
    errors = validate_launch(options, runs_dir)
    if errors:  # Refused before anything is written, even the lock.
        raise LaunchError("\n".join(errors))
    with launch_lock(runs_dir):
        errors = _folder_errors(options, runs_dir)  # Again, now under the lock.
        if errors:
            raise LaunchError("\n".join(errors))
        _refuse_if_busy(runs_dir)
        folder = runs_dir / options.name
        argv = run_command(resolved_options(options, runs_dir), folder)
        return folder, start(argv, folder, kind="run", what="start the run")


def resume_run(folder, runs_dir, data=None):
    """Continues a stopped, failed or interrupted run with its saved settings.

    Returns:
        `(folder, pid)`. Raises `LaunchError`.
    """
    runs_dir = Path(runs_dir).expanduser().resolve()
    folder = Path(folder)
    if folder.parent != runs_dir:
        raise LaunchError(f"Run '{folder}' is not in the runs folder '{runs_dir}'.")
    folder = confine.within(runs_dir, folder.name, "run name")
    path, errors = checks.resolve_data(data, runs_dir) if _text(data) else (None, [])
    if errors:
        raise LaunchError("\n".join(errors))
    with launch_lock(runs_dir):
        state = run_state(folder)
        if state.alive:
            errors.append(f"Run '{folder.name}' is already running (process {state.pid}).")
        elif state.status == "finished":
            errors.append(f"Run '{folder.name}' has finished: there is nothing to resume.")
        if errors:
            raise LaunchError("\n".join(errors))
        argv = resume_command(folder, path)
        _refuse_if_busy(runs_dir)
        return folder, start(argv, folder, kind="run", what="resume the run")


def stop_run(folder):
    """SIGTERMs the process writing `folder`; returns a message."""
    state = run_state(folder)
    if not state.alive:
        raise LaunchError(f"Run '{state.name}' is not running ({state.status}).")
    return terminate(state.pid, "kd_keras")


def stop_overdue(state, request, grace_s, now):
    """True if a stop asked at `request` = `(time, pid)` more than `grace_s`
    ago has not stopped the run (a SIGTERM that lands while kd_keras loads
    the data can be lost)."""
    asked, asked_pid = request or (None, None)
    return bool(
        state.status == "running" and asked and asked_pid == state.pid and now - asked > grace_s
    )
