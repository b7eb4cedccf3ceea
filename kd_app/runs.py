"""Run folders, processes and launches for the Streamlit app, as plain files.

Nothing here imports Keras or TensorFlow (that would make every page load
slow and tie the app's process to training): only kd_keras's Keras-free
modules, `kd_keras.config` (presets, defaults), `kd_keras.stages` and
`kd_keras.atomic`. The
app instead

* reads a run folder's files (`progress.json`, `config.json`,
  `results.csv`, `results.json`, `history/<stage>.csv`, `stages/*.json`,
  `run.lock`) directly;
* starts training as a separate process, `python -m kd_keras run ...`
  (or a T/alpha search, `python -m tuning ...`), in its own session, so it
  survives page reloads and even a restart of the app;
* stops one with SIGTERM, which kd_keras turns into a clean stop
  (`progress.json` status "stopped");
* lists a run's exported models (`export/`, written by
  `python -m kd_keras export`) and offers them for download.

Each process started by the app leaves two files beside its folder:
`<folder>.log` (its stdout and stderr) and `<folder>.launch.json` (pid,
command, start time). They sit beside the folder, not in it, because
kd_keras refuses to start in a non-empty folder and `--overwrite` empties it.
"""

import dataclasses
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

# Only Keras-free modules of kd_keras (its package imports TensorFlow lazily).
from kd_keras import atomic
from kd_keras.config import PRESETS, RunConfig, validate_temperature
from kd_keras.model_specs import parse_model_spec
from kd_keras.export_spec import read_export_rows, run_stages
from kd_keras.stages import STAGE_COLORS, STAGES  # noqa: F401 (used by app.py)

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS_ENV_VAR = "KD_KERAS_RUNS_DIR"
DATA_ENV_VAR = "KD_KERAS_CIFAR10"
DEFAULT_RUNS_DIR = "runs"
TUNING_SUBDIR = "tuning"

# The columns of the app's results table, in order (all are in results.csv).
TABLE_COLUMNS = (
    "stage",
    "model",
    "depth",
    "params",
    "size_mb",
    "test_accuracy",
    "test_loss",
    "val_accuracy",
    "val_loss",
    "latency_ms",
)
# The columns of the app's table of exported models (rows `<stage>@<variant>`).
EXPORT_TABLE_COLUMNS = (
    "stage",
    "io",
    "size_mb",
    "size_ratio",
    "test_accuracy",
    "keras_test_accuracy",
    "accuracy_delta_points",
    "agreement",
    "latency_ms",
    "keras_latency_ms",
    "speedup",
    "test_images",
)
# Launch-form fields: (RunConfig field, CLI flag).
RUN_FLAGS = (
    ("epochs", "--epochs"),
    ("temperature", "--temperature"),
    ("alpha", "--alpha"),
    ("teacher_depth", "--teacher-depth"),
    ("student_depth", "--student-depth"),
    ("train_per_class", "--train-per-class"),
    ("seed", "--seed"),
)
MIN_DEPTH = 8
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
TUNERS = ("bayesian", "random", "hyperband")  # As `python -m tuning --tuner`.


class LaunchError(ValueError):
    """A launch or stop that cannot be done; the message says what to do."""


# --------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------


def default_runs_dir():
    """`$KD_KERAS_RUNS_DIR`, else `runs`."""
    return os.environ.get(RUNS_ENV_VAR) or DEFAULT_RUNS_DIR


def default_data_path():
    """`$KD_KERAS_CIFAR10`, else an empty string."""
    return os.environ.get(DATA_ENV_VAR, "")


def presets():
    """`{preset name: {field: value}}` with every `RunConfig` default filled in."""
    defaults = RunConfig().to_dict()
    return {name: {**defaults, "preset": name, **fields} for name, fields in PRESETS.items()}


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def read_json(path, default=None):
    """JSON from `path`, or `default` if it is missing or unreadable."""
    try:
        with open(path) as file:
            return json.load(file)
    except (OSError, ValueError):
        return default


def read_csv(path):
    """A CSV file as a DataFrame, or None if it is missing, empty or torn."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    return frame if len(frame.columns) else None


def tail(path, lines=40, max_bytes=65536):
    """The last `lines` lines of a text file ('' if it does not exist)."""
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - max_bytes))
            data = file.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace").replace("\r", "\n")
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------

_CHILDREN = {}  # pid -> Popen of processes this app process started.
_EXIT_CODES = {}  # pid -> return code of reaped children.


def reap():
    """Collects exited children (no zombies); remembers their exit codes."""
    for pid, process in list(_CHILDREN.items()):
        code = process.poll()
        if code is not None:
            _EXIT_CODES[pid] = code
            del _CHILDREN[pid]


def exit_code(pid):
    """The exit code of a child this app started and that has ended."""
    reap()
    return _EXIT_CODES.get(pid)


def pid_alive(pid):
    """True if a process with this pid exists and is not a zombie."""
    reap()
    return atomic.pid_alive(pid) and not isinstance(pid, bool)


def process_args(pid):
    """A process's command line as a list, or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            raw = file.read()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def runs_module(pid, module):
    """True if `pid` is alive and is `python -m <module> ...`."""
    if not pid_alive(pid):
        return False
    args = process_args(pid)
    if args is None:  # No /proc (not Linux): trust the pid.
        return True
    return any(a == "-m" and b == module for a, b in zip(args, args[1:]))


def launch_files(folder):
    """`(<folder>.log, <folder>.launch.json)`: beside the folder."""
    folder = Path(folder)
    return folder.parent / f"{folder.name}.log", folder.parent / f"{folder.name}.launch.json"


def spawn(argv, folder, *, kind, append=False):
    """Starts `argv` as a detached process logging to `<folder>.log`.

    The process gets its own session (`start_new_session=True`), so a page
    reload, a closed browser tab or a restart of the app leaves it running.

    Returns:
        The new process's pid.
    """
    folder = Path(folder)
    log_path, record_path = launch_files(folder)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    with open(log_path, "ab" if append else "wb") as log:
        stamp = datetime.now().isoformat(timespec="seconds")
        log.write(f"[kd-app {stamp}] $ {' '.join(map(str, argv))}\n".encode())
        log.flush()
        process = subprocess.Popen(
            [str(a) for a in argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
            env=env,
            start_new_session=True,
        )
    _CHILDREN[process.pid] = process
    atomic.write_json(record_path, {
        "pid": process.pid,
        "kind": kind,
        "argv": [str(a) for a in argv],
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "log": str(log_path),
    })
    return process.pid


def terminate(pid, module):
    """Sends SIGTERM to `pid` if it is `python -m <module>`; returns a message."""
    if not pid_alive(pid):
        raise LaunchError(f"process {pid} is not running any more")
    if not runs_module(pid, module):
        raise LaunchError(
            f"process {pid} is not a `python -m {module}` process; not stopping it"
        )
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError as error:
        raise LaunchError(f"could not stop process {pid}: {error.strerror or error}") from None
    return f"Sent SIGTERM to process {pid}; it stops after the current batch."


# --------------------------------------------------------------------------
# Run folders
# --------------------------------------------------------------------------


class _ProcessState:
    """What run and search states share: a folder and a process status."""

    @property
    def name(self):
        return self.path.name

    @property
    def alive(self):
        return self.status in ("starting", "running")


@dataclasses.dataclass
class RunState(_ProcessState):
    """What the app knows about one run folder.

    `status` is one of: "starting" (process alive, no progress yet),
    "running", "finished", "failed", "stopped", "died" (progress says
    running but its process is gone, e.g. killed), "exited" (the process
    ended before writing progress: see the log), "empty".
    """

    path: Path
    status: str
    pid: int = None
    progress: dict = dataclasses.field(default_factory=dict)
    config: dict = dataclasses.field(default_factory=dict)
    launch: dict = None
    exit_code: int = None
    log_path: Path = None

    @property
    def error(self):
        return self.progress.get("error")


def lock_owner(folder, *, lock_path=None):
    """The pid of the process holding `folder`'s lock, or None.

    Decided by `kd_keras.atomic.lock_holder`, as kd_keras decides it: the
    kernel's lock on the file, not the pid written in it (which a stranger
    may have reused after the owner died).
    """
    holder = atomic.lock_holder(folder, path=lock_path)
    return None if holder is None else holder.get("pid")


def runs_module_on(pid, module, folder):
    """True if `pid` is alive, is `python -m <module> ...`, and its `--out`
    is `folder`: a reused pid, even of another kd_keras process, is not."""
    if not runs_module(pid, module):
        return False
    args = process_args(pid)
    if args is None:  # No /proc (not Linux): trust the pid.
        return True
    out = next((b for a, b in zip(args, args[1:]) if a == "--out"), None)
    if out is None:
        return False
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        cwd = Path.cwd()
    return (cwd / out).resolve() == Path(folder).resolve()


def live_pid(folder, progress=None, launch=None, module="kd_keras"):
    """The pid of the live process writing `folder`, or None."""
    folder = Path(folder)
    owner = lock_owner(folder)
    if owner:
        return owner  # As kd_keras itself decides: the holder of the lock.
    # Before it takes the lock (it checks its inputs first), a run is known
    # by its progress or launch record, if that pid still runs on this folder.
    progress = read_json(folder / "progress.json", {}) if progress is None else progress
    if progress.get("status") == "running" and runs_module_on(
        progress.get("pid"), module, folder
    ):
        return progress["pid"]
    launch = read_json(launch_files(folder)[1]) if launch is None else launch
    if launch and runs_module_on(launch.get("pid"), module, folder):
        return launch["pid"]
    return None


def run_state(folder):
    """The `RunState` of a run folder (it may not exist yet)."""
    folder = Path(folder)
    progress = read_json(folder / "progress.json", {}) or {}
    config = read_json(folder / "config.json", {}) or {}
    log_path, record_path = launch_files(folder)
    launch = read_json(record_path)
    pid = live_pid(folder, progress, launch)
    status = progress.get("status")
    code = exit_code(launch["pid"]) if launch and launch.get("pid") else None
    if pid:
        status = "running" if status == "running" else "starting"
    elif status == "running":
        status = "died"
    elif status not in ("finished", "failed", "stopped"):
        status = "exited" if launch else "empty"
    if launch and progress.get("started_at") and launch.get("started_at", "") > progress.get(
        "updated_at", ""
    ) and not pid:
        # The last launch ended without touching progress.json (a bad
        # option, a locked folder): what happened is in the log.
        status = "exited"
    return RunState(
        path=folder,
        status=status,
        pid=pid,
        progress=progress,
        config=config,
        launch=launch,
        exit_code=code,
        log_path=log_path if log_path.exists() else None,
    )


def list_runs(runs_dir):
    """Run folders under `runs_dir` (and launches that made none), newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found = {}
    for child in runs_dir.iterdir():
        if child.name.startswith(".") or child.name == TUNING_SUBDIR:
            continue
        if child.is_dir() and any(
            (child / name).exists() for name in ("config.json", "progress.json", "stages")
        ):
            found[child.name] = child
        elif child.name.endswith(".launch.json"):
            record = read_json(child, {}) or {}
            if record.get("kind") == "run":
                name = child.name[: -len(".launch.json")]
                found.setdefault(name, runs_dir / name)

    return _newest_first(found.values(), "progress.json")


def find_teachers(runs_dir):
    """Trained teachers (`models/teacher.keras` of a run whose teacher stage
    is complete) under `runs_dir`, newest run first."""
    teachers = []
    for folder in list_runs(runs_dir):
        path = folder / "models" / "teacher.keras"
        if path.is_file() and (folder / "stages" / "teacher.json").is_file():
            teachers.append(path)
    return teachers


# --------------------------------------------------------------------------
# Launching a run
# --------------------------------------------------------------------------


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
    teacher_model: str = ""  # "" = resnet<depth>; see kd_keras/model_specs.py.
    student_model: str = ""
    if_exists: str = "refuse"  # "refuse", "resume" or "overwrite".


def default_run_name(preset):
    return f"{preset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool) or (
        isinstance(value, float) and value.is_integer()
    )


def check_data_path(data):
    """Errors about the dataset path (a list of readable messages)."""
    if not str(data or "").strip():
        return [
            "No CIFAR-10 dataset path. Set 'CIFAR-10 archive' in the sidebar "
            f"(or the environment variable {DATA_ENV_VAR}) to "
            "cifar-10-python.tar.gz or a cifar-10-batches-py/ folder."
        ]
    path = Path(str(data).strip()).expanduser()
    if not path.exists():
        return [
            f"The CIFAR-10 dataset path '{path}' does not exist. Point "
            "'CIFAR-10 archive' in the sidebar at cifar-10-python.tar.gz or a "
            "cifar-10-batches-py/ folder (or your own image folder with one "
            "subfolder per class, or a .npz file)."
        ]
    return []


def check_models(teacher_model, student_model):
    """Errors about the teacher and student model names (Keras-free: the
    names and options of `kd_keras.model_specs`; a .keras file must exist)."""
    errors = []
    for role, value in (("teacher", teacher_model), ("student", student_model)):
        value = str(value or "").strip()
        if not value:
            continue
        try:
            spec = parse_model_spec(value, role=role)
        except ValueError as error:
            errors.append(f"{str(error)[0].upper()}{str(error)[1:]}.")
            continue
        if spec["kind"] == "file" and not Path(value).expanduser().is_file():
            errors.append(f"The {role} model file '{value}' does not exist.")
    return errors


def check_hyperparameters(temperature, alpha):
    """Errors about T and alpha (the same rules as kd_keras's)."""
    errors = []
    if temperature is not None and not (
        isinstance(temperature, (int, float)) and 0 < temperature < math.inf
    ):
        errors.append(
            f"Temperature T must be a number > 0 (got {temperature}); 1 means "
            "plain softmax, Hinton et al. use 2-20 (kd_keras default 4)."
        )
    elif temperature is not None:
        try:
            validate_temperature(temperature)  # kd_keras's own range.
        except ValueError as error:
            errors.append(f"Temperature T: {error}.")
    if alpha is not None and not (isinstance(alpha, (int, float)) and 0 <= alpha <= 1):
        errors.append(
            f"alpha must be in [0, 1] (got {alpha}): it weights the hard-label "
            "loss; 1 - alpha weights the teacher's soft targets (default 0.3)."
        )
    return errors


def check_teacher(teacher):
    if not teacher:
        return []
    path = Path(teacher).expanduser()
    if path.suffix != ".keras":
        return [f"The teacher '{path}' must be a Keras '.keras' file."]
    if not path.is_file():
        return [f"The teacher file '{path}' does not exist; pick a trained teacher."]
    return []


def validate_launch(options, runs_dir):
    """Every problem with a launch, as readable messages (empty = fine)."""
    errors = []
    all_presets = presets()
    if options.preset not in all_presets:
        errors.append(f"Unknown preset '{options.preset}'; choose one of {', '.join(all_presets)}.")
    if options.name and not NAME_PATTERN.match(options.name) or options.name == TUNING_SUBDIR:
        errors.append(
            f"Run name '{options.name}' is not usable: use letters, digits, '.', '_' "
            f"or '-' (not '{TUNING_SUBDIR}'), at most 100 characters."
        )
    errors += check_data_path(options.data)
    errors += check_hyperparameters(options.temperature, options.alpha)
    for field, label in (("teacher_depth", "Teacher depth"), ("student_depth", "Student depth")):
        value = getattr(options, field)
        if value is not None and (not _is_int(value) or value < MIN_DEPTH):
            errors.append(
                f"{label} must be a whole number >= {MIN_DEPTH} (6n+2 gives "
                f"ResNet-20/32/56; 15 and 30 work too), got {value}."
            )
    for field, label, low in (("epochs", "Epochs", 1), ("train_per_class", "Train images per class", 1),
                              ("seed", "Seed", 0)):
        value = getattr(options, field)
        if value is not None and (not _is_int(value) or value < low):
            errors.append(f"{label} must be a whole number >= {low}, got {value}.")
    if options.train_per_class is not None and _is_int(options.train_per_class) and (
        options.train_per_class > 5000
    ):
        errors.append("Train images per class must be at most 5000 (CIFAR-10 has 5000 per class).")
    errors += check_teacher(options.teacher)
    errors += check_models(options.teacher_model, options.student_model)
    if options.if_exists not in ("refuse", "resume", "overwrite"):
        errors.append(f"Unknown choice '{options.if_exists}' for an existing folder.")
    if options.name and not errors:
        folder = Path(runs_dir) / options.name
        state = run_state(folder)
        if state.alive:
            errors.append(
                f"Run '{options.name}' is already running (process {state.pid}); "
                "wait for it or stop it first."
            )
        elif folder.exists() and any(c.name != "run.lock" for c in folder.iterdir()):
            if options.if_exists == "refuse":
                errors.append(
                    f"The run folder '{folder}' already exists. Choose another run "
                    "name, or 'resume' to continue it or 'overwrite' to replace it."
                )
            elif not (folder / "config.json").is_file():
                errors.append(
                    f"'{folder}' is not a kd_keras run folder (no config.json); "
                    "choose another run name."
                )
    return errors


def run_command(options, out):
    """The `python -m kd_keras run ...` command line of a launch."""
    argv = [sys.executable, "-m", "kd_keras", "run", "--preset", options.preset,
            "--out", str(out), "--quiet"]
    if options.data:
        argv += ["--data", str(Path(options.data).expanduser().resolve())]
    for field, flag in RUN_FLAGS:
        value = getattr(options, field)
        if value is not None:
            if field in ("temperature", "alpha"):
                argv += [flag, repr(float(value))]
            else:
                argv += [flag, str(int(value))]
    if options.teacher:
        argv += ["--teacher", str(Path(options.teacher).expanduser().resolve())]
    for flag, value in (("--teacher-model", options.teacher_model),
                        ("--student-model", options.student_model)):
        value = str(value or "").strip()
        if value.endswith(".keras"):
            value = str(Path(value).expanduser().resolve())
        if value:
            argv += [flag, value]
    if options.if_exists == "overwrite":
        argv.append("--overwrite")
    return argv


def alive_runs(runs_dir):
    """States of the runs under `runs_dir` whose process is alive."""
    return [s for s in map(run_state, list_runs(runs_dir)) if s.alive]


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
    try:
        pid = spawn(run_command(options, folder), folder, kind="run")
    except OSError as error:
        raise LaunchError(f"could not start the run: {error.strerror or error}") from None
    return folder, pid


def resume_command(folder, data=None):
    """`python -m kd_keras run --resume --out FOLDER`: the command line takes
    the run's saved `config.json` as it is."""
    folder = Path(folder)
    if not isinstance(read_json(folder / "config.json"), dict):
        raise LaunchError(f"Nothing to resume: '{folder}' holds no config.json.")
    argv = [sys.executable, "-m", "kd_keras", "run", "--resume",
            "--out", str(folder), "--quiet"]
    if data:
        argv += ["--data", str(Path(data).expanduser().resolve())]
    return argv


def resume_run(folder, runs_dir, data=None):
    """Continues a stopped, failed or interrupted run with its saved settings.

    Returns:
        `(folder, pid)`. Raises `LaunchError`.
    """
    folder = Path(folder)
    errors = check_data_path(data) if data else []
    state = run_state(folder)
    if state.alive:
        errors.append(f"Run '{folder.name}' is already running (process {state.pid}).")
    elif state.status == "finished":
        errors.append(f"Run '{folder.name}' has finished: there is nothing to resume.")
    if errors:
        raise LaunchError("\n".join(errors))
    argv = resume_command(folder, data)
    _refuse_if_busy(runs_dir)
    try:
        pid = spawn(argv, folder, kind="run", append=True)
    except OSError as error:
        raise LaunchError(f"could not resume the run: {error.strerror or error}") from None
    return folder, pid


def stop_run(folder):
    """SIGTERMs the process writing `folder`; returns a message."""
    state = run_state(folder)
    if not state.alive:
        raise LaunchError(f"Run '{state.name}' is not running ({state.status}).")
    return terminate(state.pid, "kd_keras")


# --------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------


def _parse_time(text):
    try:
        return datetime.fromisoformat(text).timestamp()
    except (TypeError, ValueError):
        return None


def stage_epochs(config, stage):
    """The planned epochs of a stage (0 for a reused teacher)."""
    if stage == "teacher":
        return 0 if config.get("teacher") else int(config.get("teacher_epochs") or 0)
    return int(config.get("student_epochs") or 0)


def progress_summary(state, now=None):
    """Numbers for the Watch view of a `RunState`.

    Returns:
        A dict with `stage`, `stage_index`, `epoch`, `epochs`, `batch`,
        `batches`, `stage_fraction`, `overall_fraction`, `done_epochs`,
        `total_epochs`, `elapsed_s`, `eta_s` (None until one epoch is done,
        and once the run is over).
    """
    p, config = state.progress, state.config
    now = time.time() if now is None else now
    stage = p.get("stage")
    stage_index = p.get("stage_index", STAGES.index(stage) if stage in STAGES else 0)
    epochs = int(p.get("epochs") or (stage_epochs(config, stage) if stage else 0) or 0)
    epoch = int(p.get("epoch") or 0)
    batch, batches = int(p.get("batch") or 0), int(p.get("batches") or 0)
    completed = list(p.get("completed_stages") or [])
    in_epoch = batch / batches if batches and epoch < epochs else 0.0
    stage_fraction = min(1.0, (epoch + in_epoch) / epochs) if epochs else 0.0
    if stage in completed:
        stage_fraction = 1.0
    total = sum(stage_epochs(config, s) for s in STAGES) if config else 0
    done = sum(stage_epochs(config, s) for s in completed)
    if stage and stage not in completed:
        done += epoch + in_epoch
    if state.status == "finished":
        done = total
    overall = min(1.0, done / total) if total else 0.0
    elapsed = float(p.get("elapsed_s") or 0.0)
    updated = _parse_time(p.get("updated_at"))
    if state.status == "running" and updated:
        elapsed += max(0.0, now - updated)
    eta = None
    if state.alive and done >= 1 and total:
        eta = elapsed / done * max(0.0, total - done)
    return {
        "stage": stage,
        "stage_index": stage_index,
        "stages": len(p.get("stages") or STAGES),
        "epoch": epoch,
        "epochs": epochs,
        "batch": batch,
        "batches": batches,
        "stage_fraction": stage_fraction,
        "overall_fraction": overall,
        "done_epochs": done,
        "total_epochs": total,
        "elapsed_s": elapsed,
        "eta_s": eta,
        "completed_stages": completed,
    }


def format_duration(seconds):
    """`3 s`, `4 min 05 s`, `2 h 07 min`; '-' for None."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


def read_history(folder, stage):
    """`history/<stage>.csv` as a DataFrame, or None."""
    return read_csv(Path(folder) / "history" / f"{stage}.csv")


def last_value(folder, stage, column):
    """The last epoch's `column` in `history/<stage>.csv`, or None."""
    history = read_history(folder, stage) if stage else None
    if history is None or column not in history or not len(history):
        return None
    return _number(history[column].iloc[-1])


def curves_frame(folder):
    """Per-epoch cross-entropy and accuracy of every stage, long format.

    Columns: `stage`, `epoch`, `split` ("train" / "val"), `metric`
    ("cross-entropy" / "accuracy"), `value`. As in kd_keras's report plot,
    the distilled stage's cross-entropy is its `student_loss` (its `loss`
    is the blended distillation loss), so the three stages share one scale.
    """
    parts = []
    for stage in STAGES:
        history = read_history(folder, stage)
        if history is None or "epoch" not in history:
            continue
        distilled = "student_loss" in history.columns
        columns = {
            ("train", "cross-entropy"): "student_loss" if distilled else "loss",
            ("val", "cross-entropy"): "val_student_loss" if distilled else "val_loss",
            ("train", "accuracy"): "accuracy",
            ("val", "accuracy"): "val_accuracy",
        }
        for (split, metric), column in columns.items():
            if column in history:
                parts.append(pd.DataFrame({
                    "stage": stage,
                    "epoch": history["epoch"],
                    "split": split,
                    "metric": metric,
                    "value": pd.to_numeric(history[column], errors="coerce"),
                }))
    if not parts:
        return pd.DataFrame(columns=["stage", "epoch", "split", "metric", "value"])
    return pd.concat(parts, ignore_index=True)


def results_table(folder):
    """The run's results as a DataFrame: `results.csv` when the run wrote it,
    else the rows of its completed stages (`stages/*.json`); None if none."""
    folder = Path(folder)
    table = read_csv(folder / "results.csv")
    if table is not None and len(table):
        return table
    rows = [read_json(folder / "stages" / f"{s}.json") for s in STAGES]
    rows = [r for r in rows if isinstance(r, dict)]
    return pd.DataFrame(rows) if rows else None


def exported_models(folder):
    """The run's current exported models: the rows of
    `export/<stage>/<variant>.json` whose file exists and whose source model
    is unchanged, in stage then variant order, each with `path`, the
    exported file's (or SavedModel folder's) absolute path."""
    folder = Path(folder)
    rows = read_export_rows(folder, run_stages(folder))
    return [{**row, "path": folder / row["file"]} for row in rows]


def exported_table(rows):
    """`exported_models` rows as a DataFrame of `EXPORT_TABLE_COLUMNS`."""
    frame = pd.DataFrame(rows)
    return frame[[c for c in EXPORT_TABLE_COLUMNS if c in frame.columns]]


def export_download(path):
    """`(bytes, file name, mime type)` of an exported model: a `.tflite` file
    as it is, a SavedModel folder as a zip of the folder."""
    path = Path(path)
    if path.is_dir():
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for child in sorted(path.rglob("*")):
                if child.is_file():
                    archive.write(child, Path(path.name) / child.relative_to(path))
        return buffer.getvalue(), f"{path.name}.zip", "application/zip"
    return path.read_bytes(), path.name, "application/octet-stream"


def teacher_vs_student(folder):
    """The teacher/distilled-student size and latency ratios of
    `results.json` (`kd_keras.results.shipping_ratios`), or []."""
    saved = read_json(Path(folder) / "results.json", {}) or {}
    ratios = saved.get("teacher_vs_student")
    return [r for r in ratios if isinstance(r, dict)] if isinstance(ratios, list) else []


def ratios_table(ratios):
    """`teacher_vs_student` ratios as a DataFrame: the variant, how many
    times larger and slower the teacher is, and the student's test-accuracy
    points minus the teacher's."""
    return pd.DataFrame({
        "as": [r.get("variant") for r in ratios],
        "teacher / student size": [r.get("size_ratio") for r in ratios],
        "teacher / student latency": [r.get("latency_ratio") for r in ratios],
        "student - teacher accuracy (points)": [r.get("accuracy_points") for r in ratios],
    })


def distillation_gain(folder, table=None):
    """Test-accuracy points of the distilled student over its baseline."""
    saved = read_json(Path(folder) / "results.json", {}) or {}
    gain = saved.get("distillation_gain_points")
    if isinstance(gain, (int, float)):
        return float(gain)
    table = results_table(folder) if table is None else table
    if table is None or "stage" not in table or "test_accuracy" not in table:
        return None
    by_stage = table.set_index("stage")["test_accuracy"]
    if {"student_baseline", "student_distilled"} <= set(by_stage.index):
        return 100 * float(by_stage["student_distilled"] - by_stage["student_baseline"])
    return None


# --------------------------------------------------------------------------
# Tuning (python -m tuning)
# --------------------------------------------------------------------------


def tuning_available():
    """True if the `tuning` package is in the repository."""
    return (REPO_ROOT / "tuning" / "__main__.py").is_file() or (
        REPO_ROOT / "tuning" / "__init__.py"
    ).is_file()


@dataclasses.dataclass
class TuneOptions:
    """The search form: `python -m tuning --teacher --data --out --preset
    --tuner --trials --epochs --quiet`."""

    name: str = ""
    teacher: str = ""
    data: str = ""
    preset: str = "quick"
    tuner: str = "bayesian"
    trials: int = 10
    epochs: int = 3


@dataclasses.dataclass
class SearchState(_ProcessState):
    """What the app knows about one search folder.

    `status`: "starting" (process alive, no trial yet), "running",
    "finished" (all planned trials done), "incomplete" (the process ended
    with some trials done: stopped, or failed; running the same search
    again resumes it), "exited" (ended with no trial done: see the log),
    "empty".
    """

    path: Path
    status: str
    pid: int = None
    launch: dict = None
    trials: object = None  # DataFrame or None
    best: dict = None  # {"temperature", "alpha", "score", ...} or None
    teacher: str = None
    preset: str = None
    planned: int = None
    completed: int = 0
    exit_code: int = None
    log_path: Path = None



def searches_dir(runs_dir):
    return Path(runs_dir) / TUNING_SUBDIR


def list_searches(runs_dir):
    """T/alpha search folders under `<runs_dir>/tuning`, newest first."""
    base = searches_dir(runs_dir)
    if not base.is_dir():
        return []
    found = {}
    for child in base.iterdir():
        if child.name.startswith("."):
            continue
        if child.is_dir():
            found[child.name] = child
        elif child.name.endswith(".launch.json"):
            name = child.name[: -len(".launch.json")]
            found.setdefault(name, base / name)

    return _newest_first(found.values(), "trials.csv")


def _newest_first(folders, activity_file):
    """Folders sorted by their latest sign of life: `activity_file` inside,
    the folder itself, or its launch record."""

    def newest(path):
        times = [0.0]
        for candidate in (path / activity_file, path, launch_files(path)[1]):
            try:
                times.append(candidate.stat().st_mtime)
            except OSError:
                pass
        return max(times)

    return sorted(folders, key=newest, reverse=True)


_TEMPERATURE_KEYS = ("temperature", "T", "t", "temp")
_ALPHA_KEYS = ("alpha", "a")
_SCORE_KEYS = ("val_accuracy", "score", "objective", "best_val_accuracy",
               "val_student_accuracy", "accuracy")


def _find_key(value, keys, depth=0):
    """The first value under one of `keys` in nested dicts (breadth first)."""
    if not isinstance(value, dict) or depth > 4:
        return None
    for key in keys:
        if key in value and isinstance(value[key], (int, float, str)):
            return value[key]
    for child in value.values():
        found = _find_key(child, keys, depth + 1)
        if found is not None:
            return found
    return None


def _number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_trials(folder):
    """`trials.csv` of a search, or None."""
    return read_csv(Path(folder) / "trials.csv")


def _column(frame, keys):
    lower = {str(c).lower(): c for c in frame.columns}
    for key in keys:
        if key.lower() in lower:
            return lower[key.lower()]
    return None


def best_params(folder, trials=None):
    """The best T and alpha of a search: from `best.json`, else the best
    row of `trials.csv`. A dict with `temperature`, `alpha`, `score`
    (any may be None) and `source`, or None."""
    best = read_json(Path(folder) / "best.json")
    if isinstance(best, dict):
        temperature = _number(_find_key(best, _TEMPERATURE_KEYS))
        alpha = _number(_find_key(best, _ALPHA_KEYS))
        if temperature is not None or alpha is not None:
            return {
                "temperature": temperature,
                "alpha": alpha,
                "score": _number(_find_key(best, _SCORE_KEYS)),
                "teacher": best.get("teacher") if isinstance(best.get("teacher"), str) else None,
                "source": "best.json",
                "raw": best,
            }
    trials = read_trials(folder) if trials is None else trials
    if trials is None or not len(trials):
        return None
    t_col, a_col = _column(trials, _TEMPERATURE_KEYS), _column(trials, _ALPHA_KEYS)
    s_col = _column(trials, _SCORE_KEYS)
    if t_col is None or a_col is None:
        return None
    rows = trials
    if s_col is not None:
        scores = pd.to_numeric(trials[s_col], errors="coerce")
        if scores.notna().any():
            rows = trials.loc[[scores.idxmax()]]
    row = rows.iloc[0]
    return {
        "temperature": _number(row[t_col]),
        "alpha": _number(row[a_col]),
        "score": _number(row[s_col]) if s_col is not None else None,
        "teacher": None,
        "source": "trials.csv",
        "raw": None,
    }


def _flag_value(argv, flag):
    argv = list(argv or [])
    for i, arg in enumerate(argv[:-1]):
        if arg == flag:
            return argv[i + 1]
    return None


def search_state(folder):
    """The `SearchState` of a search folder (it may not exist yet)."""
    folder = Path(folder)
    log_path, record_path = launch_files(folder)
    launch = read_json(record_path)
    argv = (launch or {}).get("argv")
    settings = read_json(folder / "search.json", {}) or {}
    launch_pid = launch.get("pid") if launch else None
    # The search's lock decides, as `python -m tuning` itself does; before
    # the lock is taken, the launched process if it still runs this search.
    pid = lock_owner(folder, lock_path=atomic.sibling_lock_path(folder)) or (
        launch_pid if launch_pid and runs_module_on(launch_pid, "tuning", folder) else None
    )
    alive = bool(pid)
    trials = read_trials(folder)
    best = best_params(folder, trials)
    completed = 0
    if trials is not None and len(trials):
        status_col = _column(trials, ("status",))
        completed = int((trials[status_col] == "COMPLETED").sum()) if status_col else len(trials)
    planned = _number(_flag_value(argv, "--trials") or settings.get("max_trials"))
    planned = int(planned) if planned else None
    if alive:
        status = "running" if trials is not None else "starting"
    elif completed and (planned is None or completed >= planned):
        status = "finished"
    elif completed or best:
        status = "incomplete"
    elif launch:
        status = "exited"
    else:
        status = "empty"
    teacher = (best or {}).get("teacher") or _flag_value(argv, "--teacher")
    return SearchState(
        path=folder,
        status=status,
        pid=pid if alive else None,
        launch=launch,
        trials=trials,
        best=best,
        teacher=teacher,
        preset=_flag_value(argv, "--preset"),
        planned=planned,
        completed=completed,
        exit_code=exit_code(launch_pid) if launch_pid else None,
        log_path=log_path if log_path.exists() else None,
    )


def validate_search(options, runs_dir):
    errors = []
    if not tuning_available():
        errors.append(
            "The tuning package is not in this checkout (no tuning/ folder next "
            "to app.py), so a search cannot be started."
        )
    if options.name and (not NAME_PATTERN.match(options.name)):
        errors.append(
            f"Search name '{options.name}' is not usable: use letters, digits, "
            "'.', '_' or '-', at most 100 characters."
        )
    if not options.teacher:
        errors.append("Pick a trained teacher (.keras) to tune against.")
    errors += check_teacher(options.teacher)
    errors += check_data_path(options.data)
    if options.preset not in presets():
        errors.append(f"Unknown preset '{options.preset}'; choose one of {', '.join(presets())}.")
    if options.tuner not in TUNERS:
        errors.append(f"Unknown tuner '{options.tuner}'; choose one of {', '.join(TUNERS)}.")
    for field, label in (("trials", "Trials"), ("epochs", "Epochs per trial")):
        value = getattr(options, field)
        if not _is_int(value) or value < 1:
            errors.append(f"{label} must be a whole number >= 1, got {value}.")
    if options.name:
        folder = searches_dir(runs_dir) / options.name
        if search_state(folder).alive:
            errors.append(f"Search '{options.name}' is already running; stop it first.")
        elif folder.exists() and any(folder.iterdir()):
            errors.append(
                f"The search folder '{folder}' already exists; choose another search "
                "name (running `python -m tuning` with its settings again resumes it)."
            )
    return errors


def search_command(options, out):
    return [
        sys.executable, "-m", "tuning",
        "--teacher", str(Path(options.teacher).expanduser().resolve()),
        "--data", str(Path(options.data).expanduser().resolve()),
        "--out", str(out),
        "--preset", options.preset,
        "--tuner", options.tuner,
        "--trials", str(int(options.trials)),
        "--epochs", str(int(options.epochs)),
        "--quiet",
    ]


def start_search(options, runs_dir):
    """Validates and starts `python -m tuning` in the background.

    Returns:
        `(folder, pid)`. Raises `LaunchError`.
    """
    runs_dir = Path(runs_dir).expanduser().resolve()
    if not options.name:
        options = dataclasses.replace(
            options, name=f"search-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        )
    errors = validate_search(options, runs_dir)
    if errors:
        raise LaunchError("\n".join(errors))
    busy = [s for s in map(search_state, list_searches(runs_dir)) if s.alive]
    if busy:
        raise LaunchError(
            f"A search is already going: '{busy[0].name}' (process {busy[0].pid}). "
            "Only one at a time: wait for it or stop it first."
        )
    folder = searches_dir(runs_dir) / options.name
    try:
        pid = spawn(search_command(options, folder), folder, kind="search")
    except OSError as error:
        raise LaunchError(f"could not start the search: {error.strerror or error}") from None
    return folder, pid


def stop_search(folder):
    """SIGTERMs a running search (it ends at once; running it again with
    the same settings resumes it from its finished trials)."""
    state = search_state(folder)
    if not state.alive:
        raise LaunchError(f"Search '{state.name}' is not running ({state.status}).")
    return terminate(state.pid, "tuning").replace(
        "it stops after the current batch", "finished trials are kept"
    )
