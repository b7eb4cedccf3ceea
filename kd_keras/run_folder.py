"""The layout of a run folder and of a search folder, and their readers.

Keras-free: the CLI, the pipeline, the search and the app all name a run's
files through `RunFolder` and a search's through `SearchFolder`, so the
layout lives here once:

```
<run>/config.json      the resolved RunConfig (kd_keras.config)
<run>/progress.json    status, stage, epoch, batch, metrics (PROGRESS_FIELDS)
<run>/classes.json     class names in label order
<run>/run.lock         held (flock) by the process writing the folder
<run>/stages/<stage>.json     a completed stage's result row (TABLE_COLUMNS)
<run>/history/<stage>.csv     its per-epoch metrics
<run>/models/<stage>.keras    its final model
<run>/checkpoints/<stage>/    resumable training state (not worth keeping)
<run>/export/<stage>/...      exported models (kd_keras.export.spec)
<run>/results.csv  results.json  test_accuracy_bar.png  report.png

<search>/search.json  trials.csv  best.json  trial_<id>/  run.lock
```

Reading never needs Keras: `RunFolder.config()` is a validated `RunConfig`,
`progress()` a dict, `stage_rows()` the completed stages' rows,
`history(stage)` the epoch rows. A file that exists but cannot be parsed
raises `DamagedFileError` naming the file and the fix (`damaged_file_fix`).
"""

import csv
import dataclasses
import io
import shlex
from pathlib import Path

from kd_keras import atomic
from kd_keras.errors import ConfigError, DamagedFileError
from kd_keras.stages import STAGES

CONFIG_FILE = "config.json"
PROGRESS_FILE = "progress.json"
CLASSES_FILE = "classes.json"
LOCK_FILE = atomic.LOCK_FILE
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
BAR_PLOT = "test_accuracy_bar.png"
REPORT_PLOT = "report.png"
STAGES_DIR = "stages"
HISTORY_DIR = "history"
MODELS_DIR = "models"
CHECKPOINTS_DIR = "checkpoints"
EXPORT_DIR = "export"
STUDENT_INIT_FILE = "student_init.weights.h5"
MODEL_SUFFIX = ".keras"

# `progress.json`: `status` is one of STATUSES while a process owns the run.
STATUSES = ("running", "finished", "failed", "stopped")
PROGRESS_FIELDS = (
    "status",
    "pid",
    "stage",
    "stage_index",
    "stages",
    "epoch",
    "epochs",
    "batch",
    "batches",
    "metrics",
    "completed_stages",
    "started_at",
    "updated_at",
    "elapsed_s",
    "error",
)

# The columns of `results.csv` (a stage's row in `stages/<stage>.json` has
# these keys); exported models add `kd_keras.export.spec.EXPORT_COLUMNS`.
TABLE_COLUMNS = (
    "stage",
    "model",
    "depth",
    "params",
    "flops",
    "size_mb",
    "test_accuracy",
    "test_loss",
    "val_accuracy",
    "val_loss",
    "latency_ms",
    "train_seconds",
    "best_epoch",
    "epochs",
    "distiller_val_loss",
    "temperature",
    "alpha",
)

# A folder is a run folder once it holds one of these.
RUN_MARKERS = (CONFIG_FILE, PROGRESS_FILE, STAGES_DIR)


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """The files of one run folder (which need not exist yet).

    Example:

    >>> run = RunFolder("runs/quick")
    >>> run.model_file("student_distilled")
    PosixPath('runs/quick/models/student_distilled.keras')
    >>> run.config().temperature
    4.0
    """

    path: Path

    def __init__(self, path):
        object.__setattr__(self, "path", Path(path))

    # --- Paths ---------------------------------------------------------------
    @property
    def config_file(self):
        return self.path / CONFIG_FILE

    @property
    def progress_file(self):
        return self.path / PROGRESS_FILE

    @property
    def classes_file(self):
        return self.path / CLASSES_FILE

    @property
    def lock_file(self):
        return self.path / LOCK_FILE

    @property
    def results_csv(self):
        return self.path / RESULTS_CSV

    @property
    def results_json(self):
        return self.path / RESULTS_JSON

    @property
    def bar_plot(self):
        return self.path / BAR_PLOT

    @property
    def report_plot(self):
        return self.path / REPORT_PLOT

    @property
    def stages_dir(self):
        return self.path / STAGES_DIR

    @property
    def history_dir(self):
        return self.path / HISTORY_DIR

    @property
    def models_dir(self):
        return self.path / MODELS_DIR

    @property
    def checkpoints_dir(self):
        return self.path / CHECKPOINTS_DIR

    @property
    def export_dir(self):
        return self.path / EXPORT_DIR

    @property
    def student_init_file(self):
        """The students' shared initial weights."""
        return self.checkpoints_dir / STUDENT_INIT_FILE

    def stage_file(self, stage):
        """`stages/<stage>.json`: exists once the stage is complete."""
        return self.stages_dir / f"{stage}.json"

    def history_file(self, stage):
        return self.history_dir / f"{stage}.csv"

    def model_file(self, stage):
        return self.models_dir / f"{stage}{MODEL_SUFFIX}"

    def checkpoint_dir(self, stage):
        return self.checkpoints_dir / stage

    def resume_argv(self, data=None):
        """The arguments of `python -m kd_keras` that continue this run."""
        return ["run", "--resume", "--out", str(self.path)] + (
            ["--data", str(data)] if data else []
        )

    def resume_command(self, data=None):
        """The command that continues this run, as a shell line."""
        return shlex.join(["python", "-m", "kd_keras", *self.resume_argv(data)])

    # --- State ---------------------------------------------------------------
    def is_run(self):
        """True if the folder holds (the start of) a run."""
        return any((self.path / name).exists() for name in RUN_MARKERS)

    def is_complete(self, stage):
        return self.stage_file(stage).is_file()

    def completed_stages(self):
        """Completed stages: the pipeline's, in order, then added ones
        (e.g. a tuned distillation), sorted."""
        found = {p.stem for p in self.stages_dir.glob("*.json")}
        extra = sorted(found - set(STAGES))
        return [s for s in STAGES if s in found] + extra

    def has_teacher(self):
        """True if the teacher stage is complete and its model saved."""
        return self.is_complete("teacher") and self.model_file("teacher").is_file()

    # --- Readers -------------------------------------------------------------
    def config(self):
        """The run's `RunConfig`, or `None` if there is no `config.json`.

        Raises:
            DamagedFileError: the file is not JSON, not an object, or not a
                config kd_keras can run (an unknown field, a bad value).
        """
        from kd_keras.config import RunConfig

        values = atomic.read_json_object(self.config_file)
        if values is None:
            return None
        try:
            return RunConfig.from_dict(values)
        except (ConfigError, TypeError) as error:
            raise DamagedFileError(self.config_file, f"not a valid run config: {error}") from None

    def config_dict(self, default=None):
        """The raw `config.json` as a dict, or `default`."""
        return atomic.read_json_object(self.config_file, default)

    def progress(self):
        """`progress.json` as a dict (empty if absent)."""
        return atomic.read_json_object(self.progress_file, {}) or {}

    def stage_row(self, stage):
        """The result row of a completed stage, or `None`."""
        return atomic.read_json_object(self.stage_file(stage), None)

    def stage_rows(self):
        """The result rows of the completed stages, in `completed_stages` order."""
        rows = (self.stage_row(stage) for stage in self.completed_stages())
        return [row for row in rows if row is not None]

    def history(self, stage):
        """The per-epoch rows of `history/<stage>.csv` (see `read_history`)."""
        return read_history(self.history_file(stage))

    def results(self):
        """`results.csv` as a list of dicts (numbers parsed), or `[]`."""
        if not self.results_csv.is_file():
            return []
        return read_results_csv(self.results_csv)


# --- Search folders (python -m tuning --out) -----------------------------------
SEARCH_FILE = "search.json"
TRIALS_FILE = "trials.csv"
BEST_FILE = "best.json"
SEARCH_PLOT = "search.png"
TRIAL_FILE = "kd_trial.json"  # Per trial folder: wall time and epochs.
TUNERS = ("random", "bayesian", "hyperband")  # `--tuner`; the first is the default.
MAX_TRIALS = 1000  # `--trials`: each trial keeps a folder and a checkpoint.
OBJECTIVE = "val_accuracy"
# The columns of `trials.csv`.
TRIAL_COLUMNS = (
    "trial_id",
    "temperature",
    "alpha",
    "val_accuracy",
    "val_loss",
    "epochs",
    "seconds",
    "best_epoch",
    "distiller_val_loss",
    "status",
)
TRIAL_COMPLETED = "COMPLETED"  # A finished trial's `status` (keras-tuner's).


@dataclasses.dataclass(frozen=True)
class SearchFolder:
    """The files of one T/alpha search folder (`python -m tuning --out`)."""

    path: Path

    def __init__(self, path):
        object.__setattr__(self, "path", Path(path))

    @property
    def settings_file(self):
        return self.path / SEARCH_FILE

    @property
    def trials_file(self):
        return self.path / TRIALS_FILE

    @property
    def best_file(self):
        return self.path / BEST_FILE

    @property
    def plot_file(self):
        return self.path / SEARCH_PLOT

    @property
    def lock_file(self):
        """Beside the folder, not in it (`atomic.sibling_lock_path`): keras-tuner
        owns the folder's contents and `--overwrite` deletes it whole."""
        return atomic.sibling_lock_path(self.path)

    def is_search(self):
        return self.settings_file.is_file()

    def settings(self):
        """`search.json` as a dict (empty if absent)."""
        return atomic.read_json_object(self.settings_file, {}) or {}

    def best(self):
        """`best.json` as a dict, or `None`."""
        return atomic.read_json_object(self.best_file, None)

    def trials(self):
        """`trials.csv` as a list of dicts (numbers parsed), or `[]`."""
        if not self.trials_file.is_file():
            return []
        return read_results_csv(self.trials_file)


def read_history(path):
    """Reads a history CSV into a list of dicts of floats (empty if absent).

    Raises:
        DamagedFileError: the file exists but is not a history CSV (a row
            with missing or extra cells, a value that is not a number, no
            `epoch` column), naming the file and the fix.
    """
    try:
        with open(path, newline="") as file:
            text = file.read()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as error:
        raise DamagedFileError(path, f"unreadable: {error}") from None
    rows = []
    try:
        reader = csv.DictReader(io.StringIO(text))
        for line, raw in enumerate(reader, start=2):
            if None in raw or None in raw.values():
                raise ValueError(f"line {line} has {len(raw)} cells, not {len(reader.fieldnames)}")
            row = {k: float(v) for k, v in raw.items() if v != ""}
            row["epoch"] = int(row["epoch"])
            rows.append(row)
    except (ValueError, KeyError, csv.Error) as error:
        problem = f"no {error} column" if isinstance(error, KeyError) else str(error)
        raise DamagedFileError(path, problem) from None
    return rows


def read_results_csv(path):
    """Reads `results.csv` into a list of dicts (numbers parsed)."""
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        for key, value in row.items():
            try:
                row[key] = float(value) if value not in ("", None) else None
            except ValueError:
                pass
    return rows


def damaged_file_fix(path):
    """What to do about a damaged file of a run folder, by its place in it."""
    path = Path(path)
    in_stage_folder = path.parent.name in (STAGES_DIR, HISTORY_DIR)
    in_checkpoint = path.parent.parent.name == CHECKPOINTS_DIR
    if in_checkpoint:
        run_dir = path.parent.parent.parent
    elif in_stage_folder:
        run_dir = path.parent.parent
    else:
        run_dir = path.parent
    resume = RunFolder(run_dir).resume_command()
    if path.name == CONFIG_FILE:
        return (
            "it holds the run's settings and cannot be rebuilt: restore it from a "
            "copy, or start the run again in a new --out folder"
        )
    if path.name == PROGRESS_FILE:
        return f"delete it; '{resume}' rebuilds it"
    if in_stage_folder:
        return (
            f"'{resume}' rebuilds it from the stage's checkpoint (a stage added by "
            "tuning needs 'python -m tuning ... --apply-to' again)"
        )
    if in_checkpoint:
        return (
            f"the stage's checkpoint cannot be used: delete the folder '{path.parent}' "
            f"and run '{resume}'; stage '{path.parent.name}' then trains again from "
            "its first epoch (finished stages are kept)"
        )
    return "restore it from a copy, or delete it"
