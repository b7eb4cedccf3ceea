"""A run folder's setup and end: the checks before a run may start in it,
its creation (under the folder's `RunLock`), `progress.json`, `classes.json`,
the resume checks on the data, and what a failed or stopped run records.

Keras-free: the front ends check a folder with it before TensorFlow starts.
"""

import errno
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from kd_keras import atomic
from kd_keras.config import data_kind
from kd_keras.data.cifar10 import NUM_CLASSES
from kd_keras.errors import (
    DamagedFileError,
    DiskWriteError,
    RunFolderError,
    RunStopped,
    is_disk_full,
)
from kd_keras.owned_files import RemovalPlan, describe_paths, is_temporary, remove_planned
from kd_keras.run_folder import RunFolder
from kd_keras.stages import STAGES
from kd_keras.text import clip


def now():
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def warn(message):
    """Prints a one-line warning on standard error."""
    print(f"kd_keras: warning: {message}", file=sys.stderr, flush=True)


class ProgressFile:
    """The run's machine-readable progress, `progress.json`, written atomically.

    Fields: `status` ("running", "finished", "failed", "stopped"), `pid`,
    `stage`, `stage_index`, `stages`, `epoch`, `epochs`, `batch`, `batches`,
    `metrics` (the last epoch's logs), `completed_stages`, `started_at`,
    `updated_at`, `elapsed_s`, `error`.
    """

    def __init__(self, folder):
        self.path = RunFolder(folder).progress_file
        try:
            self.state = atomic.read_json_object(self.path) or {}
        except DamagedFileError as error:
            # Only a report for other processes: rebuilt from here on.
            warn(f"'{self.path}' was damaged ({error.problem}); rebuilding it")
            self.state = {}
        elapsed = self.state.get("elapsed_s")
        if (
            isinstance(elapsed, bool)
            or not isinstance(elapsed, (int, float))
            or not (math.isfinite(elapsed))
        ):
            elapsed = 0.0
        self._started = time.time() - elapsed

    def update(self, **fields):
        self.state.update(fields)
        self.state["updated_at"] = now()
        self.state["elapsed_s"] = round(time.time() - self._started, 1)
        atomic.write_json(self.path, self.state)


def check_run_folder(out_dir, config, *, resume=False, overwrite=False):
    """Checks, without changing anything, that a run can start in `out_dir`.

    Args:
        out_dir: the run folder.
        config: the requested `RunConfig`.
        resume: continue the run saved in `out_dir` (its config must not
            differ in anything that changes results).
        overwrite: replace a previous kd_keras run in `out_dir`.

    Returns:
        The `RunConfig` to run: `config`, or with `resume` the saved one
        (with this call's data path, verbosity and speed options).

    Raises:
        RunFolderError: see `prepare_run_folder`.
        DamagedFileError: with `resume`, a `config.json` that cannot be read.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"'{out}' exists and is not a folder")
    existing = out.is_dir() and any(c.name != atomic.LOCK_FILE for c in out.iterdir())
    run = RunFolder(out)
    saved_path = run.config_file
    if resume:
        saved = run.config()
        if saved is None:
            raise RunFolderError(f"nothing to resume: '{saved_path}' does not exist")
        differences = saved.result_differences(config)
        if differences:
            details = ", ".join(
                f"{k} (saved {getattr(saved, k)!r}, asked {getattr(config, k)!r})"
                for k in differences
            )
            raise RunFolderError(
                f"cannot resume '{out}': the config differs in {details}. "
                "Resume with the saved settings, or start a new --out folder."
            )
        # Where the data lives and how chatty the run is may change on resume.
        saved.data = config.data or saved.data
        saved.verbose = config.verbose
        # So may the speed options that do not change results.
        saved.steps_per_execution = config.steps_per_execution
        saved.threads = config.threads
        # And the devices the same recipe runs on (kd_keras.train.distribute).
        saved.strategy = config.strategy
        saved.devices = config.devices
        return saved
    if existing:
        if not overwrite:
            raise RunFolderError(
                f"'{out}' is not empty; pass --resume to continue it, "
                "--overwrite to replace it, or choose another --out"
            )
        _check_overwrite(out, run)
        holder = atomic.lock_holder(out)
        if holder is not None and holder.get("pid") != os.getpid():
            raise RunFolderError(f"'{out}' is in use by process {holder.get('pid')}")
    return config


def _check_overwrite(out, run):
    """Refuses `--overwrite` of a folder that is not a kd_keras run (its
    `config.json` must be a `RunConfig`), or that holds unknown entries
    inside a folder only removed whole; returns the `RemovalPlan`."""
    if not run.config_file.is_file() or run.config_file.is_symlink():
        what = "is a symbolic link" if run.config_file.is_symlink() else "is missing"
        raise RunFolderError(
            f"refusing to overwrite '{out}': it is not a kd_keras run folder "
            f"(no config.json: it {what}); choose another --out"
        )
    try:
        run.config()
    except DamagedFileError as error:
        problem = clip(error.problem, 100)
        raise RunFolderError(
            f"refusing to overwrite '{out}': its config.json is not a kd_keras run config "
            f"({problem}); kd_keras replaces only its own runs: choose another --out"
        ) from None
    plan = run.removal_plan()
    if plan.refused:
        raise RunFolderError(
            f"refusing to overwrite '{out}': {describe_paths(plan.refused, out)} "
            "were not written by kd_keras; move them out of the folder, or choose another --out"
        )
    return plan


def prepare_run_folder(out_dir, config, *, resume=False, overwrite=False):
    """Checks and creates the run folder; returns the config to run.

    Call it holding the folder's `RunLock`: it removes a kill's temporary
    leftovers (`resume`) or the previous run (`overwrite`).

    Args:
        out_dir: the run folder.
        config: the requested `RunConfig`.
        resume: continue the run saved in `out_dir` (its config must not
            differ in anything that changes results).
        overwrite: replace a previous kd_keras run in `out_dir`.

    Returns:
        The `RunConfig` to run.

    Raises:
        RunFolderError: `out_dir` is a non-empty folder and neither flag was
            given, `--resume` with a differing config or nothing to resume,
            `--overwrite` on a folder that is not a kd_keras run, or the
            folder is not writable.
        DamagedFileError: with `resume`, a `config.json` that cannot be read.
    """
    out = Path(out_dir)
    config = check_run_folder(out, config, resume=resume, overwrite=overwrite)
    run = RunFolder(out)
    if resume:
        run.check_real_folders()
        # A kill during a write can leave a temporary file; never a final one.
        plan = run.removal_plan()
        remove_planned(RemovalPlan(files=[p for p in plan.files if is_temporary(p.name)]))
        return config
    if overwrite and out.is_dir() and any(c.name != atomic.LOCK_FILE for c in out.iterdir()):
        # Only what kd_keras wrote; links are unlinked, never followed. (A
        # new or empty folder holds only this run's lock: nothing to check.)
        plan = _check_overwrite(out, run)
        remove_planned(plan)
        if plan.kept and config.verbose:
            print(
                f"kd_keras: kept {len(plan.kept)} entr{'y' if len(plan.kept) == 1 else 'ies'} "
                f"kd_keras did not write: {describe_paths(plan.kept, out)}",
                flush=True,
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise RunFolderError(f"cannot write to '{out}': {error.strerror or error}") from None
    return config


def lock_run_folder(out, config, *, resume, overwrite):
    """Takes the folder's `RunLock` and prepares the folder under it
    (`prepare_run_folder`). A new run that fails here leaves nothing.

    Returns:
        `(lock, created, fresh)`: the held lock, whether this run made the
        folder, and whether the run is new in a new or empty folder (a
        failed start then removes what it wrote: `remove_failed_start`).
    """
    created = not out.exists()
    # A new run in a new or empty folder: a failed start leaves nothing.
    fresh = not resume and (created or not any(c.name != atomic.LOCK_FILE for c in out.iterdir()))
    lock = atomic.RunLock(out)
    try:
        lock.acquire()  # Before changing anything in the folder.
    except OSError as error:
        raise RunFolderError(f"cannot write to '{out}': {error.strerror or error}") from None
    try:
        # Checked again under the lock: another process may have started here.
        prepare_run_folder(out, config, resume=resume, overwrite=overwrite)
    except BaseException:
        remove_failed_start(out, lock, created, fresh=fresh)
        lock.release()
        raise
    return lock, created, fresh


def record_start(out, config, splits, progress):
    """Writes the resolved `config.json` and `classes.json`, and marks
    `progress.json` "running"."""
    atomic.write_text(RunFolder(out).config_file, config.to_json() + "\n")
    write_classes(out, config, splits)
    progress.update(
        status="running",
        pid=os.getpid(),
        stages=list(STAGES),
        started_at=progress.state.get("started_at") or now(),
        error=None,
    )


def _raise_stop(signum, frame):
    raise RunStopped(f"stopped by signal {signal.Signals(signum).name}")


def catch_stop_signals():
    """Turns SIGTERM into `RunStopped` (in the main thread only, where
    Python handles signals); returns the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, _raise_stop) for signum in (signal.SIGTERM,)}


def restore_signals(previous):
    """Puts back the handlers `catch_stop_signals` replaced."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def record_failure(progress, out, error):
    """Marks the run "failed" in `progress.json`. On a full disk, raises a
    `DiskWriteError` naming the fix and the resume command instead of
    returning (everything written so far is whole: the run continues from it).
    """
    # Out of memory included: the folder says failed, not running.
    mark_progress(progress, status="failed", error=f"{type(error).__name__}: {error}"[:1000])
    if isinstance(error, DiskWriteError) or is_disk_full(error):
        resume = RunFolder(out).resume_command()
        raise DiskWriteError(
            errno.ENOSPC if is_disk_full(error) else error.errno,
            f"{error.strerror if isinstance(error, DiskWriteError) else DISK_FULL_HINT}; "
            f"then continue with '{resume}'",
        ) from error


DISK_FULL_HINT = "the disk is full: free some space"


def mark_progress(progress, **fields):
    """Records the run's end in `progress.json`. On a full disk, where the
    atomic write has no room for its new file, the file is rewritten in
    place instead (its blocks exist already), so the folder does not say
    "running"; if that fails too, the error being raised says more."""
    try:
        progress.update(**fields)
    except MemoryError:
        pass
    except OSError as error:
        if not is_disk_full(error):
            return
        data = (json.dumps(progress.state, indent=2, sort_keys=True, default=str) + "\n").encode()
        try:
            fd = os.open(progress.path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        except OSError:
            pass
        finally:
            os.close(fd)


def check_resumed_data(out, requested, saved, splits):
    """Refuses a resume whose sizes, once resolved on the data, differ from
    the saved ones, or whose data differs from the run's (for a run
    recorded before fingerprints: its classes.json's classes, image shape
    and split sizes).

    Raises:
        RunFolderError: one line naming each differing flag or fact.
    """
    from kd_keras.data.sizes import SIZE_FIELDS, SIZE_FLAGS, resolve_sizes
    from kd_keras.text import short_list

    counts = splits["counts"]
    asked = resolve_sizes(
        {field: getattr(requested, field) for field in SIZE_FIELDS},
        counts["train"],
        counts["test"],
        splits["classes"],
    )
    differences = [
        f"{SIZE_FLAGS[field]} (saved {splits['sizes'][field]}, asked {asked[field]})"
        for field in SIZE_FIELDS
        if asked[field] != splits["sizes"][field]
    ]
    if saved.data_fingerprint is None:
        recorded = atomic.read_json_object(RunFolder(out).classes_file, None) or {}
        images, _ = splits["train"]
        found = {
            "classes": list(splits["classes"]),
            "image_shape": list(images.shape[1:]),
            "images": {k: int(len(splits[k][1])) for k in ("train", "val", "test")},
        }
        for key in found:
            if key in recorded and recorded[key] != found[key]:
                mine, theirs = recorded[key], found[key]
                if key == "classes":
                    mine = f"{len(mine)}: {short_list(mine, 3)}"
                    theirs = f"{len(theirs)}: {short_list(theirs, 3)}"
                differences.append(
                    f"the data's {key.replace('_', ' ')} (saved {mine}, found {theirs})"
                )
    if differences:
        shown = differences[:4] + (
            [f"and {len(differences) - 4} more"] if len(differences) > 4 else []
        )
        raise RunFolderError(
            f"cannot resume '{out}': {'; '.join(shown)}. Resume with the saved settings "
            "and data, or start a new --out folder."
        )


def write_classes(out, config, splits):
    """Writes the run's `classes.json`: class names in label order, the
    data's kind, image shape and split sizes."""
    images, _ = splits["train"]
    atomic.write_json(
        RunFolder(out).classes_file,
        {
            "classes": list(splits.get("classes") or range(NUM_CLASSES)),
            "data": config.data,
            "kind": data_kind(config.data),
            "image_shape": list(images.shape[1:]),
            "images": {k: int(len(splits[k][1])) for k in ("train", "val", "test")},
        },
    )


def remove_failed_start(out, lock, created, *, fresh):
    """Removes what a new run that failed before training created: the
    folder if this run made it, else (the folder was empty) the files it
    wrote. Called holding the lock; a folder that held anything before
    (a resumed or overwritten run, someone's files) is never touched."""
    if not fresh or not lock.held:
        return
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    remove_planned(RunFolder(out).removal_plan())  # Only kd_keras's names.
