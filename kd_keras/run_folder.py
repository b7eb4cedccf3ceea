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
<run>/checkpoints/student_init.npz    the students' shared initial weights
<run>/export/<stage>/...      exported models (kd_keras.export.spec)
<run>/results.csv  results.json  test_accuracy_bar.png  report.png

<search>/search.json  trials.csv  best.json  trial_<id>/  run.lock
```

What kd_keras writes is listed once, as patterns: `RUN_LAYOUT` and
`SEARCH_LAYOUT`. `--overwrite` removes only those entries (`plan_removal`,
`remove_planned`), unlinking links without following them; everything else
in the folder stays.

Reading never needs Keras: `RunFolder.config()` is a validated `RunConfig`,
`progress()` a dict, `stage_rows()` the completed stages' rows,
`history(stage)` the epoch rows. A file that exists but cannot be parsed
raises `DamagedFileError` naming the file and the fix (`damaged_file_fix`).
"""

import csv
import dataclasses
import fnmatch
import io
import os
import shlex
import shutil
from pathlib import Path

from kd_keras import atomic
from kd_keras.errors import ConfigError, DamagedFileError, RunFolderError
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
STUDENT_INIT_FILE = "student_init.npz"
LEGACY_STUDENT_INIT_FILE = "student_init.weights.h5"  # Read if found: older runs.
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

# --- What kd_keras writes, the one list `--overwrite` removes ------------------
# `atomic.atomic_path`'s temporaries, and the folders an export writes under a
# temporary name (`kd_keras.export.convert`), anywhere kd_keras writes.
TEMP_PATTERN = ".*.tmp*"
PARTIAL_PATTERNS = (".*.partial-*", ".*.old-*")
WRITE_PROBE = ".write-probe"


@dataclasses.dataclass(frozen=True)
class Layout:
    """The entries kd_keras writes in one folder, as `fnmatch` patterns.

    Args:
        files: names of files kd_keras writes here.
        dirs: `(pattern, Layout)` pairs: sub-folders and what kd_keras
            writes in them.
        whole: a folder another library writes (a SavedModel): removed as a
            whole, so every name in it must be one of `files` or `dirs`
            (anything else is refused, never deleted).
        anything: every entry inside is kd_keras's (a temporary folder of a
            unique name it made itself).
    """

    files: tuple = ()
    dirs: tuple = ()
    whole: bool = False
    anything: bool = False

    def file_match(self, name):
        patterns = (*self.files, TEMP_PATTERN)
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    def dir_layout(self, name):
        for pattern, layout in (*self.dirs, *((p, _ANYTHING) for p in PARTIAL_PATTERNS)):
            if fnmatch.fnmatchcase(name, pattern):
                return layout
        return None


_ANYTHING = Layout(anything=True)
_SAVED_MODEL = Layout(
    files=("saved_model.pb", "fingerprint.pb", "keras_metadata.pb"),
    dirs=(
        (
            "variables",
            Layout(
                files=("variables.index", "variables.data-*"), dirs=(("*", _ANYTHING),), whole=True
            ),
        ),
        ("assets", _ANYTHING),
    ),
    whole=True,
)
_CHECKPOINT = Layout(files=("latest.npz", "best.npz", "meta.json", "params.json"))
RUN_LAYOUT = Layout(
    files=(
        CONFIG_FILE,
        PROGRESS_FILE,
        CLASSES_FILE,
        RESULTS_CSV,
        RESULTS_JSON,
        BAR_PLOT,
        REPORT_PLOT,
        WRITE_PROBE,
    ),
    dirs=(
        (STAGES_DIR, Layout(files=("*.json",))),
        (HISTORY_DIR, Layout(files=("*.csv",))),
        (MODELS_DIR, Layout(files=(f"*{MODEL_SUFFIX}",))),
        (
            CHECKPOINTS_DIR,
            Layout(files=(STUDENT_INIT_FILE, LEGACY_STUDENT_INIT_FILE), dirs=(("*", _CHECKPOINT),)),
        ),
        (
            EXPORT_DIR,
            Layout(
                dirs=(
                    (
                        "*",
                        Layout(files=("*.tflite", "*.json"), dirs=(("saved_model", _SAVED_MODEL),)),
                    ),
                )
            ),
        ),
    ),
)


@dataclasses.dataclass
class RemovalPlan:
    """What removing kd_keras's files from a folder does (`plan_removal`).

    `files`: kd_keras's files and symbolic links (unlinked); `trees`: its
    temporary folders (deleted whole); `folders`: its folders, deepest first
    (removed once empty); `kept`: other entries, which stay; `refused`:
    unknown entries inside a folder that only goes as a whole.
    """

    files: list = dataclasses.field(default_factory=list)
    trees: list = dataclasses.field(default_factory=list)
    folders: list = dataclasses.field(default_factory=list)
    kept: list = dataclasses.field(default_factory=list)
    refused: list = dataclasses.field(default_factory=list)


def plan_removal(folder, layout, *, keep=()):
    """Which entries of `folder` are kd_keras's under `layout`, without
    changing anything. Symbolic links are never followed: a link with one
    of kd_keras's names is itself removed (unlinked), whatever it points to.

    Args:
        folder: the folder (a run or search folder).
        layout: its `Layout`.
        keep: top-level names never removed (the lock file).

    Returns:
        A `RemovalPlan`.
    """
    plan = RemovalPlan()

    def walk(path, layout, top):
        with os.scandir(path) as entries:
            children = sorted(entries, key=lambda e: e.name)
        for entry in children:
            child = Path(entry.path)
            if top and entry.name in keep:
                continue
            is_link = entry.is_symlink()
            is_dir = not is_link and entry.is_dir(follow_symlinks=False)
            sub = layout.dir_layout(entry.name)
            if is_link and (sub is not None or layout.file_match(entry.name)):
                plan.files.append(child)
            elif is_dir and sub is not None and sub.anything:
                plan.trees.append(child)
            elif is_dir and sub is not None:
                walk(child, sub, False)
                plan.folders.append(child)
            elif not is_dir and not is_link and layout.file_match(entry.name):
                plan.files.append(child)
            else:
                (plan.refused if layout.whole else plan.kept).append(child)

    folder = Path(folder)
    if folder.is_dir():
        walk(folder, layout, True)
    return plan


def remove_planned(plan):
    """Carries out a `RemovalPlan`: files and links are unlinked, temporary
    folders deleted whole (`shutil.rmtree`, which never follows a link),
    other folders removed only once empty (a user's file keeps its folder)."""
    for path in plan.files:
        path.unlink(missing_ok=True)
    for path in plan.trees:
        shutil.rmtree(path, ignore_errors=True)
    for path in plan.folders:
        try:
            path.rmdir()
        except OSError:
            pass  # Not empty: a user's file inside stays, and its folder.


def symlinked_folders(folder, layout):
    """The folders of `layout` under `folder` that are symbolic links."""
    found = []

    def walk(path, layout):
        with os.scandir(path) as entries:
            children = sorted(entries, key=lambda e: e.name)
        for entry in children:
            sub = layout.dir_layout(entry.name)
            if sub is None or sub.anything:
                continue
            if entry.is_symlink():
                found.append(Path(entry.path))
            elif entry.is_dir(follow_symlinks=False):
                walk(entry.path, sub)

    if Path(folder).is_dir():
        walk(Path(folder), layout)
    return found


def describe_paths(paths, folder, limit=3):
    """`'a', 'b', 'c' and 2 more`, relative to `folder`, for one-line messages."""
    names = []
    for path in paths[:limit]:
        try:
            name = str(Path(path).relative_to(folder))
        except ValueError:
            name = str(path)
        names.append(repr(name if len(name) <= 60 else name[:57] + "..."))
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(names) + more


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

    def removal_plan(self):
        """What `--overwrite` removes: the files kd_keras writes here
        (`RUN_LAYOUT`), never the lock, never a user's other files."""
        return plan_removal(self.path, RUN_LAYOUT, keep=(LOCK_FILE,))

    def symlinked_folders(self):
        """kd_keras's folders in this run that are symbolic links (kd_keras
        writes only inside its folder: these are refused, never followed)."""
        return symlinked_folders(self.path, RUN_LAYOUT)

    def check_real_folders(self):
        """Raises `RunFolderError` if one of kd_keras's folders here is a
        symbolic link."""
        links = self.symlinked_folders()
        if links:
            raise RunFolderError(
                f"{describe_paths(links, self.path)} in '{self.path}' "
                f"{'is a symbolic link' if len(links) == 1 else 'are symbolic links'}; "
                "kd_keras writes only inside its run folder: replace "
                f"{'it' if len(links) == 1 else 'them'} with a real folder (or copy the run)"
            )

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
# The entries `search.json` always has.
SEARCH_KEYS = ("tuner", "objective", "epochs", "max_trials", "space", "config")
# What a search writes in its folder: kd_keras's files, then Keras Tuner's.
SEARCH_LAYOUT = Layout(
    files=(SEARCH_FILE, TRIALS_FILE, BEST_FILE, SEARCH_PLOT, "oracle.json", "tuner*.json"),
    dirs=(
        (
            "trial_*",
            Layout(files=("trial.json", "build_config.json", "checkpoint*", TRIAL_FILE)),
        ),
    ),
)


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

    def removal_plan(self):
        """What `--overwrite` removes: kd_keras's and Keras Tuner's files
        (`SEARCH_LAYOUT`), never a user's other files."""
        return plan_removal(self.path, SEARCH_LAYOUT)

    def saved_settings(self):
        """`search.json` as a dict holding `SEARCH_KEYS`, or `None` if absent.

        Raises:
            DamagedFileError: the file is not such an object.
        """
        values = atomic.read_json_object(self.settings_file, None, keys=SEARCH_KEYS)
        if values is not None and not (
            values["tuner"] in TUNERS
            and all(isinstance(values[k], dict) for k in ("space", "config"))
        ):
            raise DamagedFileError(self.settings_file, "not the settings of a kd_keras search")
        return values

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
