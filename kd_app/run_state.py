"""What a run folder says: its status, its progress and the time left.

A run folder's files are named by `kd_keras.run_folder.RunFolder`; this
module adds what only the app needs: whether the process writing the
folder is still alive (a run killed with SIGKILL leaves `progress.json`
saying "running"), and the numbers of the Watch tab.
"""

import dataclasses
import time
from datetime import datetime
from pathlib import Path

from kd_keras import atomic
from kd_keras.run_folder import STATUSES, RunFolder
from kd_keras.stages import STAGES
from kd_keras.text import plural

from . import confine
from .files import read_or
from .processes import (
    ProcessState,
    exit_code,
    launch_files,
    launched_folders,
    newest_first,
    read_launch,
    runs_module_on,
)
from .settings import TEACHERS_SUBDIR, TUNING_SUBDIR


@dataclasses.dataclass
class RunState(ProcessState):
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


def live_pid(folder, progress=None, launch=None, module="kd_keras"):
    """The pid of the live process writing `folder`, or None."""
    run = RunFolder(folder)
    holder = atomic.lock_holder(path=run.lock_file)
    if holder and holder.get("pid"):
        return holder["pid"]  # As kd_keras itself decides: the holder of the lock.
    # Before it takes the lock (it checks its inputs first), a run is known
    # by its progress or launch record, if that pid still runs on this folder.
    progress = read_or(run.progress, {}) if progress is None else progress
    if progress.get("status") == "running" and runs_module_on(
        progress.get("pid"), module, run.path
    ):
        return progress["pid"]
    launch = read_launch(run.path) if launch is None else launch
    if launch and runs_module_on(launch.get("pid"), module, run.path):
        return launch["pid"]
    return None


def _own(run, path, reader, default):
    """`reader()` if `path` resolves inside the run folder, else `default`
    (a symlink out of the folder reads as missing)."""
    return read_or(reader, default) if confine.own_file(run.path, path) else default


def run_state(folder):
    """The `RunState` of a run folder (it may not exist yet)."""
    run = RunFolder(folder)
    progress = _own(run, run.progress_file, run.progress, {})
    config = _own(run, run.config_file, run.config_dict, {}) or {}
    log_path = launch_files(run.path)[0]
    launch = read_launch(run.path)
    pid = live_pid(run.path, progress, launch)
    status = progress.get("status")
    code = exit_code(launch["pid"]) if launch and launch.get("pid") else None
    if pid:
        status = "running" if status == "running" else "starting"
    elif status == "running":
        status = "died"
    elif status not in STATUSES:
        status = "exited" if launch else "empty"
    if (
        launch
        and progress.get("started_at")
        and launch.get("started_at", "") > progress.get("updated_at", "")
        and not pid
    ):
        # The last launch ended without touching progress.json (a bad
        # option, a locked folder): what happened is in the log.
        status = "exited"
    return RunState(
        path=run.path,
        status=status,
        pid=pid,
        progress=progress,
        config=config,
        launch=launch,
        exit_code=code,
        log_path=log_path
        if log_path.exists() and confine.own_file(run.path.parent, log_path)
        else None,
    )


def list_runs(runs_dir):
    """Run folders under `runs_dir` (and launches that made none), newest
    first; a folder that leads out of `runs_dir` through a symlink is not
    one."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found = {
        child.name: child
        for child in runs_dir.iterdir()
        if not child.name.startswith(".")
        and child.name not in (TUNING_SUBDIR, TEACHERS_SUBDIR)
        and child.is_dir()
        and confine.is_inside(child, runs_dir)
        and RunFolder(child).is_run()
    }
    for name, folder in launched_folders(runs_dir, "run").items():
        if confine.is_inside(folder, runs_dir):
            found.setdefault(name, folder)
    return newest_first(found.values(), lambda f: RunFolder(f).progress_file)


def alive_runs(runs_dir):
    """States of the runs under `runs_dir` whose process is alive."""
    return [s for s in map(run_state, list_runs(runs_dir)) if s.alive]


def find_teachers(runs_dir):
    """Trained teachers (`models/teacher.keras` of a run whose teacher stage
    is complete) under `runs_dir`, newest run first."""
    runs = (RunFolder(folder) for folder in list_runs(runs_dir))
    return [
        run.model_file("teacher")
        for run in runs
        if run.has_teacher() and confine.own_file(run.path, run.model_file("teacher"))
    ]


# --------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------


def _parse_time(text):
    try:
        return datetime.fromisoformat(text).timestamp()
    except (TypeError, ValueError):
        return None


def stage_epochs(config, stage):
    """The planned epochs of a stage (0 for a reused teacher or baseline)."""
    if stage == "teacher":
        return 0 if config.get("teacher") else int(config.get("teacher_epochs") or 0)
    if stage == "student_baseline" and config.get("baseline"):
        return 0
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


def progress_texts(summary, alive):
    """The captions of the Watch tab's two progress bars: `(overall, stage)`."""
    overall = (
        f"Overall: {int(summary['done_epochs'])} of {plural(summary['total_epochs'], 'epoch')} done"
    )
    epoch, epochs = summary["epoch"], summary["epochs"]
    if alive and epoch < epochs:
        where = f"epoch {epoch + 1}/{epochs}"
        if summary["batches"]:
            where += f", batch {summary['batch']}/{summary['batches']}"
    else:
        where = f"{epoch}/{plural(epochs, 'epoch')} done"
    stage = f"Stage {summary['stage_index'] + 1}/{summary['stages']} {summary['stage']}: {where}"
    return overall, stage


def status_message(state):
    """What the Watch tab says about a run's status: `(kind, text)` with
    kind an `st` function name ("info", "error", ...), or None."""
    if state.status == "starting":
        return "info", "Starting: the process is loading TensorFlow and the data."
    if state.status == "failed":
        return "error", (
            f"The run failed: {state.error or 'no error message'}. "
            "Fix the cause, then Resume it (or start it again with 'overwrite')."
        )
    if state.status == "died":
        return "error", (
            f"The run's process ({state.progress.get('pid')}) is gone but it never "
            "finished (killed, or the machine restarted). Resume continues it from "
            "its last completed epoch."
        )
    if state.status == "stopped":
        return "warning", (
            f"The run was stopped ({state.error or 'stopped'}). Resume "
            "continues it from its last completed epoch."
        )
    if state.status == "exited":
        code = f" with exit code {state.exit_code}" if state.exit_code is not None else ""
        return "error", (
            f"The process ended{code} before the run could start; the log below says why."
        )
    if state.status == "finished":
        return "success", "Finished: see the Results tab."
    return None


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
