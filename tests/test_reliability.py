"""Kill a real training process and resume it; hostile run folders."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kd_keras import RunConfig, run_pipeline
from kd_keras.atomic import DiskWriteError, RunLock, RunLockedError, atomic_path, write_json

REPO = Path(__file__).parents[1]
# Resumed runs replay the same batches from the same weights and optimizer
# state. On this CPU the resumed smoke runs matched the uninterrupted one
# exactly; floating-point summation order may differ elsewhere (other
# thread counts, oneDNN kernels), so we allow two of the 200 test images.
ACCURACY_TOLERANCE = 0.01


def start_run(out, archive, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "kd_keras", "run", "--preset", "smoke", "--data",
         str(archive), "--out", str(out), "--quiet", *extra],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def read_progress_until(out, process, predicate, timeout=240):
    """Polls progress.json like the app does; every read must parse."""
    deadline = time.time() + timeout
    reads = 0
    while time.time() < deadline:
        path = out / "progress.json"
        if path.exists():
            progress = json.loads(path.read_text())  # Never a torn file.
            reads += 1
            for history in (out / "history").glob("[!.]*.csv"):  # Not writers' temp files.
                rows = list(csv.DictReader(history.open()))
                assert all(len(row) == len(rows[0]) for row in rows)
            if predicate(progress):
                return progress, reads
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting in {out}")


@pytest.mark.parametrize(
    "stage, epoch",
    [("teacher", 2), ("student_distilled", 1)],
)
def test_sigkill_mid_stage_then_resume_equals_uninterrupted_run(
    smoke_run, cifar10_archive, tmp_path, stage, epoch
):
    reference_dir, reference = smoke_run
    out = tmp_path / "run"
    process = start_run(out, cifar10_archive)
    try:
        _, reads = read_progress_until(
            out,
            process,
            lambda p: p.get("stage") == stage and p.get("epoch") == epoch and p.get("batch", 0) > 0,
        )
    finally:
        process.kill()
        process.wait()
    assert reads > 3
    killed = json.loads((out / "progress.json").read_text())
    assert killed["status"] == "running"  # SIGKILL leaves no chance to say more.

    # The stale lock of the dead process does not block the resume.
    config = RunConfig.load(out / "config.json")
    config.verbose = 0
    rows = run_pipeline(config, out, resume=True)
    assert json.loads((out / "progress.json").read_text())["status"] == "finished"
    assert list(out.rglob(".*.tmp*")) == []  # Leftovers of the kill are swept.
    for resumed, uninterrupted in zip(rows, reference):
        assert resumed["stage"] == uninterrupted["stage"]
        assert resumed["test_accuracy"] == pytest.approx(
            uninterrupted["test_accuracy"], abs=ACCURACY_TOLERANCE
        )
    # One history row per epoch, none duplicated by the resume.
    for name in ("teacher", "student_baseline", "student_distilled"):
        epochs = [row["epoch"] for row in csv.DictReader((out / "history" / f"{name}.csv").open())]
        assert epochs == ["1", "2", "3", "4"]


def test_sigterm_stops_cleanly_and_marks_the_run_stopped(cifar10_archive, tmp_path):
    out = tmp_path / "run"
    process = start_run(out, cifar10_archive)
    read_progress_until(out, process, lambda p: p.get("stage") == "teacher" and p.get("epoch", 0) >= 1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 130
    progress = json.loads((out / "progress.json").read_text())
    assert progress["status"] == "stopped"
    assert "SIGTERM" in progress["error"]
    assert not (out / "run.lock").exists()


def test_second_run_on_a_live_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        out.mkdir()
        (out / "run.lock").write_text(str(sleeper.pid))
        with pytest.raises(RunLockedError, match=f"in use by process {sleeper.pid}"):
            RunLock(out).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    # Once its owner is gone, the lock is stale and is taken over.
    with RunLock(out) as lock:
        assert lock.owner() == os.getpid()


def test_full_disk_during_a_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_json(path, {"accuracy": 0.9})
    real_replace = os.replace

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(DiskWriteError, match="disk is full"):
        write_json(path, {"accuracy": 0.1})
    monkeypatch.setattr(os, "replace", real_replace)
    assert json.loads(path.read_text()) == {"accuracy": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_crash_inside_a_write_leaves_no_partial_file(tmp_path):
    path = tmp_path / "model.keras"
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half a mod")
            raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_folder_is_refused_early(cifar10_archive, tmp_path):
    if os.geteuid() == 0:
        # Root writes through permission bits; a path under a file is
        # unwritable for everyone.
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "run"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = locked / "run"
    from kd_keras.cli import main

    code = main(["run", "--preset", "smoke", "--data", str(cifar10_archive), "--out", str(out)])
    assert code == 2
