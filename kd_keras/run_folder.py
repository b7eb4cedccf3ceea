"""The layout of a run folder, and its readers.

Keras-free: the CLI, the pipeline, the search and the app all name a run's
files through `RunFolder`, so the layout lives here once (the file names in
`kd_keras.layout`; a search folder's in `kd_keras.search_folder`):

```
<run>/config.json      the resolved RunConfig (kd_keras.config)
<run>/progress.json    status, stage, epoch, batch, metrics (PROGRESS_FIELDS)
<run>/classes.json     class names in label order
<run>/budget.json      a --budget run's plan and re-plan (kd_keras.train.budget)
<run>/run.lock         held (flock) by the process writing the folder
<run>/stages/<stage>.json     a completed stage's result row (TABLE_COLUMNS)
<run>/history/<stage>.csv     its per-epoch metrics
<run>/models/<stage>.keras    its final model
<run>/checkpoints/<stage>/    resumable training state (not worth keeping)
<run>/checkpoints/student_init.npz    the students' shared initial weights
<run>/export/<stage>/...      exported models (kd_keras.export.spec)
<run>/results.csv  results.json  test_accuracy_bar.png  report.png
```

What kd_keras writes is listed once, as patterns: `RUN_LAYOUT`.
`--overwrite` removes only those entries (`kd_keras.owned_files`).

Reading never needs Keras: `RunFolder.config()` is a validated `RunConfig`,
`progress()` a dict, `stage_rows()` the completed stages' rows,
`history(stage)` the epoch rows. A file that exists but cannot be parsed
raises `DamagedFileError` naming the file and the fix
(`kd_keras.layout.damaged_file_fix`).
"""

import csv
import dataclasses
import io
from pathlib import Path

from kd_keras import atomic
from kd_keras.errors import ConfigError, DamagedFileError, RunFolderError
from kd_keras.layout import (
    BAR_PLOT,
    BUDGET_FILE,
    CHECKPOINTS_DIR,
    CLASSES_FILE,
    CONFIG_FILE,
    EXPORT_DIR,
    HISTORY_DIR,
    LEGACY_STUDENT_INIT_FILE,
    MODEL_SUFFIX,
    MODELS_DIR,
    PROGRESS_FILE,
    REPORT_PLOT,
    RESULTS_CSV,
    RESULTS_JSON,
    STAGES_DIR,
    STUDENT_INIT_FILE,
    WRITE_PROBE,
    resume_argv,
    resume_command,
)
from kd_keras.owned_files import ANYTHING, Layout, describe_paths, plan_removal, symlinked_folders
from kd_keras.stages import OWNED_STAGES, STAGES

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
_SAVED_MODEL = Layout(
    files=("saved_model.pb", "fingerprint.pb", "keras_metadata.pb"),
    dirs=(
        (
            "variables",
            Layout(
                files=("variables.index", "variables.data-*"), dirs=(("*", ANYTHING),), whole=True
            ),
        ),
        ("assets", ANYTHING),
    ),
    whole=True,
)
_CHECKPOINT = Layout(files=("latest.npz", "best.npz", "meta.json", "params.json"))
RUN_LAYOUT = Layout(
    files=(
        CONFIG_FILE,
        PROGRESS_FILE,
        CLASSES_FILE,
        BUDGET_FILE,
        RESULTS_CSV,
        RESULTS_JSON,
        BAR_PLOT,
        REPORT_PLOT,
        WRITE_PROBE,
    ),
    dirs=(
        # Only the stages kd_keras trains: `models/my_finetuned.keras` is a user's.
        (STAGES_DIR, Layout(files=tuple(f"{s}.json" for s in OWNED_STAGES))),
        (HISTORY_DIR, Layout(files=tuple(f"{s}.csv" for s in OWNED_STAGES))),
        (MODELS_DIR, Layout(files=tuple(f"{s}{MODEL_SUFFIX}" for s in OWNED_STAGES))),
        (
            CHECKPOINTS_DIR,
            Layout(
                files=(STUDENT_INIT_FILE, LEGACY_STUDENT_INIT_FILE),
                dirs=tuple((s, _CHECKPOINT) for s in OWNED_STAGES),
            ),
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
    def budget_file(self):
        return self.path / BUDGET_FILE

    @property
    def lock_file(self):
        return self.path / atomic.LOCK_FILE

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
        return resume_argv(self.path, data)

    def resume_command(self, data=None):
        """The command that continues this run, as a shell line."""
        return resume_command(self.path, data)

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
        return plan_removal(self.path, RUN_LAYOUT, keep=(atomic.LOCK_FILE,))

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

    def check_finished_models(self):
        """Raises `RunFolderError` if a finished stage's model file is
        missing and resuming would not rebuild it (a resume rebuilds the
        teacher's only while a student stage is still to train)."""
        rebuilds_teacher = not all(self.is_complete(s) for s in STAGES[1:])
        missing = [
            stage
            for stage in self.completed_stages()
            if not self.model_file(stage).exists() and not (stage == "teacher" and rebuilds_teacher)
        ]
        if missing:
            files = [self.model_file(s) for s in missing]
            records = [self.stage_file(s) for s in missing]
            raise RunFolderError(
                f"run '{self.path}': {describe_paths(files, self.path)} of finished "
                f"stage{'s' if len(files) > 1 else ''} {'is' if len(files) == 1 else 'are'} "
                f"missing; restore "
                f"{'it' if len(files) == 1 else 'them'} from a copy, or delete "
                f"{describe_paths(records, self.path)} so the stage trains again "
                "(from its checkpoint), then resume"
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

    def budget(self):
        """`budget.json` (a `--budget` run's plan, with its `replan` once the
        teacher's stage has run) as a dict, or `None`."""
        return atomic.read_json_object(self.budget_file, None)

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
