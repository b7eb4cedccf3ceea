"""Starting, resuming and stopping runs, and their command lines.

A run is `python -m kd_keras run --preset P --out <runs>/<name> ...`,
started by `kd_app.processes.spawn`; the form's fields become flags
through `kd_keras.options` (the CLI's own table of run options). One run
at a time: the machine has no room for two.
"""

import dataclasses
import sys
from datetime import datetime
from pathlib import Path

from kd_app import checks
from kd_app.processes import start, terminate
from kd_app.run_state import alive_runs, run_state
from kd_app.settings import TUNING_SUBDIR, presets
from kd_keras.errors import LaunchError
from kd_keras.options import command_line_flags
from kd_keras.run_folder import LOCK_FILE, RunFolder

IF_EXISTS = ("refuse", "resume", "overwrite")
# The launch form's number fields and their labels (the messages use them).
NUMBER_LABELS = {
    "epochs": "Epochs (every stage)",
    "temperature": "Temperature T",
    "alpha": "alpha",
    "seed": "Seed",
    "teacher_depth": "Teacher depth",
    "student_depth": "Student depth",
    "train_per_class": "Train images per class",
}
DEPTH_FIELDS = ("teacher_depth", "student_depth")
# RunConfig fields the form sets, by their label in messages.
_CONFIG_LABELS = {
    **{k: v for k, v in NUMBER_LABELS.items() if k != "epochs"},
    "teacher_epochs": NUMBER_LABELS["epochs"],
    "student_epochs": NUMBER_LABELS["epochs"],
}


@dataclasses.dataclass
class LaunchOptions:
    """The launch form. `None` means "the preset's value"."""

    preset: str = "quick"
    name: str = ""
    data: str = ""
    epochs: int = None
    temperature: float = None
    alpha: float = None
    teacher_depth: int = None
    student_depth: int = None
    train_per_class: int = None
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
    if_exists: str = "refuse"  # One of IF_EXISTS.


def default_run_name(preset):
    return f"{preset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _resolved(path):
    """A path given in the form, absolute (the process runs elsewhere)."""
    path = str(path or "").strip()
    return str(Path(path).expanduser().resolve()) if path else None


def config_overrides(options):
    """The `RunConfig` fields a launch sets, `{field: value}` (the form's
    empty fields left out): what `RunConfig.from_preset` and the command
    line take."""
    epochs = checks.whole(options.epochs)
    values = {
        "data": _resolved(options.data),
        "seed": checks.whole(options.seed),
        "train_per_class": checks.whole(options.train_per_class),
        "teacher_depth": checks.whole(options.teacher_depth),
        "student_depth": checks.whole(options.student_depth),
        "teacher": _resolved(options.teacher),
        "teacher_model": str(options.teacher_model or "").strip() or None,
        "student_model": str(options.student_model or "").strip() or None,
        "teacher_epochs": epochs,
        "student_epochs": epochs,
        "temperature": options.temperature,
        "alpha": options.alpha,
        "strategy": str(options.strategy or "").strip() or None,
        "devices": [d.strip() for d in str(options.devices or "").split(",") if d.strip()] or None,
        "sync_batch_norm": True if options.sync_batch_norm else None,
    }
    for role in ("teacher_model", "student_model"):
        if (values[role] or "").endswith(".keras"):
            values[role] = _resolved(values[role])
    return {k: v for k, v in values.items() if v is not None}


def placeholders(preset):
    """`{field: text}`: what each empty number box of the form stands for."""
    values = presets()[preset]
    texts = {
        field: f"{preset}: {values[field]}" if values.get(field) is not None else "preset default"
        for field in NUMBER_LABELS
    }
    texts["epochs"] = f"{preset}: {values['teacher_epochs']} / {values['student_epochs']}"
    if values.get("train_per_class") is None:
        texts["train_per_class"] = "all (4500)"
    return texts


def form_errors(options):
    """The problems shown while the form is filled in (before Start): the
    data path, and unless resuming, T, alpha and the depths."""
    if options.if_exists == "resume":
        return checks.check_data_path(options.data) if options.data else []
    return (
        checks.check_hyperparameters(options.temperature, options.alpha)
        + checks.check_depths({f: getattr(options, f) for f in DEPTH_FIELDS}, NUMBER_LABELS)
        + checks.check_data_path(options.data)
    )


def validate_launch(options, runs_dir):
    """Every problem with a launch, as readable messages (empty = fine)."""
    errors = []
    all_presets = presets()
    if options.preset not in all_presets:
        errors.append(f"Unknown preset '{options.preset}'; choose one of {', '.join(all_presets)}.")
    errors += checks.check_name(options.name, "Run", reserved=TUNING_SUBDIR)
    errors += checks.check_data_path(options.data)
    errors += checks.check_hyperparameters(options.temperature, options.alpha)
    errors += checks.check_depths({f: getattr(options, f) for f in DEPTH_FIELDS}, NUMBER_LABELS)
    errors += checks.check_teacher(options.teacher)
    errors += checks.check_models(options.teacher_model, options.student_model)
    if options.if_exists not in IF_EXISTS:
        errors.append(
            f"Unknown choice '{options.if_exists}' for an existing folder; "
            f"choose one of {', '.join(IF_EXISTS)}."
        )
    if not errors:  # The rest of kd_keras's rules (epochs, seed, data sizes, ...).
        errors += checks.check_settings(options.preset, config_overrides(options), _CONFIG_LABELS)
    if options.name and not errors:
        folder = Path(runs_dir) / options.name
        state = run_state(folder)
        if state.alive:
            errors.append(
                f"Run '{options.name}' is already running (process {state.pid}); "
                "wait for it or stop it first."
            )
        elif folder.exists() and any(c.name != LOCK_FILE for c in folder.iterdir()):
            if options.if_exists == "refuse":
                errors.append(
                    f"The run folder '{folder}' already exists. Choose another run "
                    "name, or 'resume' to continue it or 'overwrite' to replace it."
                )
            elif not RunFolder(folder).config_file.is_file():
                errors.append(
                    f"'{folder}' is not a kd_keras run folder (no config.json); "
                    "choose another run name."
                )
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
    argv += command_line_flags(config_overrides(options))
    if options.if_exists == "overwrite":
        argv.append("--overwrite")
    return argv


def resume_command(folder, data=None):
    """`python -m kd_keras run --resume --out FOLDER`: the command line takes
    the run's saved `config.json` as it is."""
    run = RunFolder(folder)
    if not run.config_file.is_file():
        raise LaunchError(f"Nothing to resume: '{run.path}' holds no config.json.")
    data = _resolved(data)
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

    Returns:
        `(folder, pid)`.

    Raises:
        LaunchError: with every problem found, or when another run is alive.
    """
    runs_dir = Path(runs_dir).expanduser().resolve()
    if options.if_exists == "resume":
        if not options.name:
            raise LaunchError("Give the name of the run to resume.")
        return resume_run(runs_dir / options.name, runs_dir, options.data)
    if not options.name:
        options = dataclasses.replace(options, name=default_run_name(options.preset))
    errors = validate_launch(options, runs_dir)
    if errors:
        raise LaunchError("\n".join(errors))
    _refuse_if_busy(runs_dir)
    folder = runs_dir / options.name
    return folder, start(run_command(options, folder), folder, kind="run", what="start the run")


def resume_run(folder, runs_dir, data=None):
    """Continues a stopped, failed or interrupted run with its saved settings.

    Returns:
        `(folder, pid)`. Raises `LaunchError`.
    """
    folder = Path(folder)
    errors = checks.check_data_path(data) if data else []
    state = run_state(folder)
    if state.alive:
        errors.append(f"Run '{folder.name}' is already running (process {state.pid}).")
    elif state.status == "finished":
        errors.append(f"Run '{folder.name}' has finished: there is nothing to resume.")
    if errors:
        raise LaunchError("\n".join(errors))
    argv = resume_command(folder, data)
    _refuse_if_busy(runs_dir)
    return folder, start(argv, folder, kind="run", what="resume the run", append=True)


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
