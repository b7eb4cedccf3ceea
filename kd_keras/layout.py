"""The names of a run folder's files, and what to do about a damaged one.

Keras-free and the bottom of the package: it imports nothing from kd_keras,
so `kd_keras.errors` (whose `DamagedFileError` states the fix) and
`kd_keras.run_folder` (which reads the files) both import it without a
cycle. The folder's layout is drawn in `kd_keras.run_folder`.
"""

import shlex
from pathlib import Path

CONFIG_FILE = "config.json"
PROGRESS_FILE = "progress.json"
CLASSES_FILE = "classes.json"
BUDGET_FILE = "budget.json"  # A --budget run's plan, and its re-plan.
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
WRITE_PROBE = ".write-probe"  # Written and removed to test that the folder is writable.


def resume_argv(run_dir, data=None):
    """The arguments of `python -m kd_keras` that continue the run in `run_dir`."""
    return ["run", "--resume", "--out", str(run_dir)] + (["--data", str(data)] if data else [])


def resume_command(run_dir, data=None):
    """The command that continues the run in `run_dir`, as a shell line."""
    return shlex.join(["python", "-m", "kd_keras", *resume_argv(run_dir, data)])


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
    resume = resume_command(run_dir)
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
