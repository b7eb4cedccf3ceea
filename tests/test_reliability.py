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
from conftest import tiny_config

from kd_keras import RunConfig, run_pipeline
from kd_keras.atomic import RunLock, atomic_path, lock_holder, write_json
from kd_keras.errors import DiskWriteError, RunLockedError

REPO = Path(__file__).parents[1]
# Resumed runs replay the same batches from the same weights and optimizer
# state. On this CPU the resumed smoke runs matched the uninterrupted one
# exactly; floating-point summation order may differ elsewhere (other
# thread counts, oneDNN kernels), so we allow two of the 200 test images.
ACCURACY_TOLERANCE = 0.01


def start_run(out, archive, *extra):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kd_keras",
            "run",
            "--preset",
            "smoke",
            "--data",
            str(archive),
            "--out",
            str(out),
            "--quiet",
            *extra,
        ],
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
@pytest.mark.slow
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
            # Within epoch `epoch` (0-based) of the stage: progress says
            # batch 0 from the epoch's start until its 10th batch, a window
            # a fast machine does not close between two polls.
            lambda p: p.get("stage") == stage and p.get("epoch") == epoch,
        )
    finally:
        process.kill()
        process.wait()
    assert reads > 3
    killed = json.loads((out / "progress.json").read_text())
    assert killed["status"] == "running"  # SIGKILL leaves no chance to say more.
    meta = json.loads((out / "checkpoints" / stage / "meta.json").read_text())
    assert [dict(row)["epoch"] for row in meta["history"]] == list(range(1, meta["epoch"] + 1))

    # The stale lock of the dead process does not block the resume.
    config = RunConfig.load(out / "config.json")
    config.verbose = 0
    rows = run_pipeline(config, out, resume=True)
    assert json.loads((out / "progress.json").read_text())["status"] == "finished"
    assert list(out.rglob(".*.tmp*")) == []  # Leftovers of the kill are swept.
    by_stage = {row["stage"]: row for row in rows}
    # The killed process's completed epochs count towards the stage's time.
    assert by_stage[stage]["train_seconds"] > meta["train_seconds"] > 0
    for resumed, uninterrupted in zip(rows, reference):
        assert resumed["stage"] == uninterrupted["stage"]
        assert resumed["test_accuracy"] == pytest.approx(
            uninterrupted["test_accuracy"], abs=ACCURACY_TOLERANCE
        )
    # One history row per epoch, none duplicated by the resume.
    for name in ("teacher", "student_baseline", "student_distilled"):
        epochs = [row["epoch"] for row in csv.DictReader((out / "history" / f"{name}.csv").open())]
        assert epochs == ["1", "2", "3", "4"]


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_marks_the_run_stopped(cifar10_archive, tmp_path):
    out = tmp_path / "run"
    process = start_run(out, cifar10_archive)
    read_progress_until(
        out, process, lambda p: p.get("stage") == "teacher" and p.get("epoch", 0) >= 1
    )
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 130
    progress = json.loads((out / "progress.json").read_text())
    assert progress["status"] == "stopped"
    assert "SIGTERM" in progress["error"]
    assert not (out / "run.lock").exists()


def hold_lock(folder, *, search=False):
    """A process that holds the folder's lock (the run's or a search's)
    until it is killed."""
    path = "sibling_lock_path(sys.argv[1])" if search else "None"  # As tuning.search_lock.
    take = (
        "from kd_keras.atomic import RunLock, sibling_lock_path; "
        f"RunLock(sys.argv[1], path={path}).acquire()"
    )
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys, time; {take}; print('locked', flush=True); time.sleep(120)",
            str(folder),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert holder.stdout.readline().strip() == b"locked"
    return holder


def test_second_run_on_a_live_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    holder = hold_lock(out)
    try:
        with pytest.raises(RunLockedError, match=f"in use by process {holder.pid}"):
            RunLock(out).acquire()
        assert lock_holder(out)["pid"] == holder.pid
    finally:
        holder.kill()  # SIGKILL: no chance to clean up; the kernel drops the lock.
        holder.wait()
    assert (out / "run.lock").exists() and lock_holder(out) is None
    # Once its owner is gone, the lock is taken over.
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


def test_unwritable_output_folder_is_refused_early(cifar10_archive, tmp_path, capsys, monkeypatch):
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
    from kd_keras.train import pipeline

    def no_training(self):
        raise AssertionError("the data was loaded for training: not refused early")

    monkeypatch.setattr(pipeline.Pipeline, "load_data", no_training)
    code = main(["run", "--preset", "smoke", "--data", str(cifar10_archive), "--out", str(out)])
    assert code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("kd_keras: error: ") and str(out) in line
    assert not out.exists()


# --- The folder lock: ownership by the kernel, not by a pid in a file. ---


@pytest.mark.parametrize(
    "content",
    [
        "1",  # The bare-pid format of kd_keras 0.1, naming a live stranger (init).
        json.dumps({"pid": 1, "command": "python -m kd_keras run --out run"}),
        "",  # A lock file emptied by a crash of an older version.
        "not a pid",
    ],
)
def test_lock_file_naming_a_live_stranger_does_not_block(tmp_path, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.lock").write_text(content)
    assert lock_holder(out) is None  # Nobody holds it, whatever it says.
    with RunLock(out) as lock:
        assert lock.owner() == os.getpid()
        record = json.loads((out / "run.lock").read_text())
        assert record["pid"] == os.getpid() and record["folder"] == str(out.resolve())
        assert record["command"] and record["started_at"] and len(record["token"]) == 32
    assert not (out / "run.lock").exists()


def test_app_sees_no_run_behind_a_stale_lock_and_progress(tmp_path, monkeypatch):
    from kd_app import launching, processes
    from kd_app import run_state as runs

    folder = tmp_path / "runs" / "old"
    folder.mkdir(parents=True)
    (folder / "run.lock").write_text("1")
    write_json(folder / "progress.json", {"status": "running", "pid": 1})
    write_json(folder / "config.json", {"preset": "smoke"})
    state = runs.run_state(folder)
    assert state.status == "died" and not state.alive and state.pid is None
    launching._refuse_if_busy(tmp_path / "runs")  # "A run is already going" would raise.
    # A live kd_keras process is not enough either: it must run on this folder.
    monkeypatch.setattr(processes, "runs_module", lambda pid, module: True)
    monkeypatch.setattr(
        processes,
        "process_args",
        lambda pid: ["python", "-m", "kd_keras", "run", "--out", "/elsewhere"],
    )
    assert runs.live_pid(folder) is None
    monkeypatch.setattr(
        processes,
        "process_args",
        lambda pid: ["python", "-m", "kd_keras", "run", "--out", str(folder)],
    )
    assert runs.live_pid(folder) == 1


def test_app_sees_the_process_that_holds_the_lock(tmp_path):
    from kd_app import run_state as runs

    folder = tmp_path / "runs" / "live"
    holder = hold_lock(folder)
    try:
        assert lock_holder(folder)["pid"] == holder.pid
        assert runs.live_pid(folder) == holder.pid
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(folder) is None and runs.live_pid(folder) is None


def _race(folder, barrier, results, done):
    lock = RunLock(folder)
    barrier.wait()  # Both processes leave this line together.
    try:
        lock.acquire()
        results.put("won")
    except RunLockedError:
        results.put("lost")
    done.wait()
    lock.release()


def test_two_processes_acquiring_at_the_same_instant_never_both_win(tmp_path, monkeypatch):
    import multiprocessing

    from kd_keras import atomic

    monkeypatch.setattr(atomic, "_ACQUIRE_GRACE_S", 0.0)  # Refuse at once (forked too).
    context = multiprocessing.get_context("fork")
    outcomes = []
    for trial in range(30):
        barrier, results, done = context.Barrier(2), context.Queue(), context.Event()
        workers = [
            context.Process(target=_race, args=(tmp_path / f"run{trial}", barrier, results, done))
            for _ in range(2)
        ]
        for worker in workers:
            worker.start()
        outcomes.append(sorted(results.get(timeout=30) for _ in workers))
        done.set()
        for worker in workers:
            worker.join(timeout=30)
    assert outcomes == [["lost", "won"]] * 30


def test_a_reader_polling_the_lock_never_makes_a_start_fail(tmp_path):
    import threading

    folder = tmp_path / "run"
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            lock_holder(folder)  # What the app does every second, here nonstop.

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        for _ in range(50):
            RunLock(folder).acquire().release()
    finally:
        stop.set()
        poller.join()


def test_second_search_on_the_same_folder_is_refused(tmp_path):
    from tuning.search import run_search

    folder = tmp_path / "search"
    holder = hold_lock(folder, search=True)
    try:
        with pytest.raises(RunLockedError, match=f"in use by process {holder.pid}"):
            run_search(tmp_path / "teacher.keras", None, folder, max_trials=1, epochs=1)
    finally:
        holder.kill()
        holder.wait()
    assert not folder.exists()  # Refused before anything was made.
    assert (tmp_path / ".search.lock").exists()  # Beside it: --overwrite deletes the folder.


# --- A kill between the checkpoint's write and the history's. ---


class _KillAtEpoch(BaseException):
    """Stands in for SIGKILL: nothing after it runs (not an Exception)."""


def _tiny_fit(folder, epochs, *, kill_history_at=None, clock=None, on_epoch=None):
    import keras
    import numpy as np

    from kd_keras.train.callbacks import HistoryWriter, TrainingCheckpoint

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    checkpoint = TrainingCheckpoint(folder / "checkpoint")
    history = HistoryWriter(folder / "history.csv", checkpoint)
    if kill_history_at is not None:
        write_row = history.on_epoch_end

        def on_epoch_end(epoch, logs=None):
            if epoch + 1 == kill_history_at:
                raise _KillAtEpoch()  # The checkpoint has committed this epoch.
            write_row(epoch, logs)

        history.on_epoch_end = on_epoch_end
    callbacks = [on_epoch] if on_epoch else []
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.arange(32) % 3
    model.fit(
        x,
        y,
        validation_data=(x, y),
        epochs=epochs,
        batch_size=8,
        verbose=0,
        shuffle=False,
        callbacks=callbacks + [checkpoint, history],
    )
    return checkpoint


def test_kill_between_checkpoint_and_history_loses_no_row(tmp_path):
    from kd_keras.run_folder import read_history

    with pytest.raises(_KillAtEpoch):
        _tiny_fit(tmp_path, 4, kill_history_at=2)
    assert [r["epoch"] for r in read_history(tmp_path / "history.csv")] == [1]
    recorded = json.loads((tmp_path / "checkpoint" / "meta.json").read_text())
    assert recorded["epoch"] == 2
    _tiny_fit(tmp_path, 4)  # The resume.
    rows = read_history(tmp_path / "history.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[1]["val_loss"] == pytest.approx(dict(recorded["history"][1])["val_loss"])
    assert rows[1]["learning_rate"] == pytest.approx(0.1)


def test_history_of_a_stage_killed_after_its_last_epoch_is_completed(tmp_path):
    from kd_keras.run_folder import read_history
    from kd_keras.train.callbacks import TrainingCheckpoint, repair_history

    with pytest.raises(_KillAtEpoch):
        _tiny_fit(tmp_path, 3, kill_history_at=3)
    checkpoint = TrainingCheckpoint(tmp_path / "checkpoint")
    assert checkpoint.completed_epochs() == 3  # Complete: fit will not run again.
    repair_history(tmp_path / "history.csv", checkpoint, 3)  # What Pipeline.fit does then.
    assert [r["epoch"] for r in read_history(tmp_path / "history.csv")] == [1, 2, 3]


def test_train_seconds_add_up_over_the_processes_of_a_stage(tmp_path, monkeypatch):
    import keras

    from kd_keras.train import callbacks

    now = [1000.0]
    monkeypatch.setattr(callbacks.time, "time", lambda: now[0])

    class Tick(keras.callbacks.Callback):  # Each epoch takes 10 s.
        def on_epoch_end(self, epoch, logs=None):
            now[0] += 10.0

    with pytest.raises(_KillAtEpoch):
        _tiny_fit(tmp_path, 4, kill_history_at=3, on_epoch=Tick())
    # The killed process trained 3 epochs; then 500 s pass before the resume.
    assert json.loads((tmp_path / "checkpoint" / "meta.json").read_text())["train_seconds"] == 30.0
    now[0] += 500.0
    checkpoint = _tiny_fit(tmp_path, 4, on_epoch=Tick())
    assert checkpoint.train_seconds() == pytest.approx(40.0)  # Not 10: the first 30 count.


# --- Damaged files of a run folder: one line naming the file and the fix,
# or rebuilt where they can be derived. ---


@pytest.fixture
def run_copy(smoke_run, tmp_path):
    import shutil

    out, rows = smoke_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    return copy, rows


def _cli(argv, capsys):
    from kd_keras.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def _one_line_error(err):
    assert err.startswith("kd_keras: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_truncated_config_json_on_resume_is_one_line(run_copy, capsys):
    out, _ = run_copy
    text = (out / "config.json").read_text()
    (out / "config.json").write_text(text[: len(text) // 2])
    code, err = _cli(["run", "--resume", "--out", str(out), "--quiet"], capsys)
    assert code == 2
    assert f"'{out / 'config.json'}' is damaged" in _one_line_error(err)
    assert "cannot be rebuilt: restore it from a copy" in err
    config = RunConfig.from_dict(json.loads(text))
    from kd_keras.errors import DamagedFileError

    with pytest.raises(DamagedFileError, match="config.json"):
        run_pipeline(config, out, resume=True)


def test_empty_checkpoint_meta_on_resume_names_it_and_the_fix(run_copy, capsys):
    out, _ = run_copy
    meta = out / "checkpoints" / "student_baseline" / "meta.json"
    meta.write_text("")
    # A finished stage does not need its checkpoint: reported, and the run goes on.
    code, err = _cli(["run", "--resume", "--out", str(out), "--quiet"], capsys)
    assert code == 0 and f"'{meta}' is damaged (empty)" in err
    # An unfinished one does: one line, the file, the fix.
    (out / "stages" / "student_baseline.json").unlink()
    code, err = _cli(["run", "--resume", "--out", str(out), "--quiet"], capsys)
    assert code == 2
    _one_line_error(err)
    assert f"'{meta}' is damaged (empty)" in err
    assert f"delete the folder '{meta.parent}'" in err
    meta.write_text("[]")  # Valid JSON, wrong shape: the same.
    code, err = _cli(["run", "--resume", "--out", str(out), "--quiet"], capsys)
    assert code == 2 and f"'{meta}' is damaged (a JSON list" in _one_line_error(err)


def test_damaged_history_is_one_line_in_report_and_rebuilt_on_resume(run_copy, capsys):
    out, _ = run_copy
    history = out / "history" / "teacher.csv"
    good = history.read_text()
    history.write_text(good.replace("\n2,", "\n2,garbage,", 1))
    code, err = _cli(["report", str(out)], capsys)
    assert code == 2
    assert f"'{history}' is damaged" in _one_line_error(err)
    assert "--resume" in err
    history.write_text(good.splitlines()[0] + "\n1,0.5\n")  # A torn copy: cells missing.
    assert _cli(["run", "--resume", "--out", str(out), "--quiet"], capsys)[0] == 0
    assert history.read_text() == good


def test_damaged_progress_stage_row_and_derivable_files_are_rebuilt(run_copy, capsys):
    out, rows = run_copy
    (out / "progress.json").write_text('{"status": "runn')
    (out / "stages" / "student_distilled.json").write_text("")
    (out / "models" / "teacher.keras").write_bytes(b"PK\x03\x04 torn")
    (out / "checkpoints" / "student_init.npz").write_bytes(b"PK\x03\x04 torn")
    code, err = _cli(["run", "--resume", "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    for name in (
        "progress.json",
        "student_distilled.json",
        "teacher.keras",
        "student_init.npz",
    ):
        assert name in err  # Each rebuild is reported.
    assert json.loads((out / "progress.json").read_text())["status"] == "finished"
    rebuilt = json.loads((out / "results.json").read_text())["rows"]
    # Finished again from their checkpoints: no epoch retrained, same numbers.
    for new, old in zip(rebuilt, rows):
        assert new["stage"] == old["stage"]
        assert new["test_accuracy"] == pytest.approx(old["test_accuracy"])
        assert new["best_epoch"] == old["best_epoch"]
    import keras

    keras.saving.load_model(out / "models" / "teacher.keras")


def test_report_with_a_damaged_stage_row_is_one_line(run_copy, capsys):
    out, _ = run_copy
    (out / "stages" / "teacher.json").write_text('{"stage": "teacher", "test_acc')
    code, err = _cli(["report", str(out)], capsys)
    assert code == 2
    assert f"'{out / 'stages' / 'teacher.json'}' is damaged" in _one_line_error(err)
    assert f"python -m kd_keras run --resume --out {out}" in err


# --- Destruction only of what is ours: --overwrite, links, the lock. ---


def _fake_run(folder):
    """A run folder as kd_keras leaves it (file contents are placeholders)."""
    from kd_keras.run_folder import RunFolder

    run = RunFolder(folder)
    (folder / "stages").mkdir(parents=True)
    run.config_file.write_text(RunConfig.from_preset("smoke", verbose=0).to_json())
    run.progress_file.write_text('{"status": "finished"}')
    for name in ("classes.json", "results.csv", "results.json", "report.png"):
        (folder / name).write_text("x")
    run.stage_file("teacher").write_text("{}")
    run.history_file("teacher").parent.mkdir()
    run.history_file("teacher").write_text("epoch\n1\n")
    run.model_file("teacher").parent.mkdir()
    run.model_file("teacher").write_bytes(b"PK model")
    run.checkpoint_dir("teacher").mkdir(parents=True)
    (run.checkpoint_dir("teacher") / "meta.json").write_text("{}")
    (run.checkpoint_dir("teacher") / "latest.npz").write_bytes(b"npz")
    run.student_init_file.write_bytes(b"h5")
    export = folder / "export" / "student_distilled"
    (export / "saved_model" / "variables").mkdir(parents=True)
    (export / "saved_model" / "saved_model.pb").write_bytes(b"pb")
    (export / "saved_model" / "variables" / "variables.index").write_bytes(b"i")
    (export / "int8.tflite").write_bytes(b"tfl")
    (export / "int8.json").write_text("{}")
    (export / ".saved_model.partial-ab12cd_4" / "saved_model").mkdir(parents=True)
    (folder / "models" / ".teacher.x1y2z3w4.tmp.keras").write_bytes(b"half")
    return run


def _snapshot(folder):
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def test_overwrite_refuses_a_foreign_config_json_and_keeps_everything(tmp_path):
    folder = tmp_path / "webapp"
    folder.mkdir()
    (folder / "config.json").write_text('{"compilerOptions": {}}')
    (folder / "src.ts").write_text("code")
    before = _snapshot(folder)
    from kd_keras.errors import RunFolderError

    with pytest.raises(RunFolderError) as raised:
        run_pipeline(RunConfig.from_preset("smoke", verbose=0), folder, overwrite=True)
    message = str(raised.value)
    assert "not a kd_keras run config" in message and "compilerOptions" in message
    assert "\n" not in message and len(message) < 400
    assert _snapshot(folder) == before


@pytest.mark.parametrize("made", [False, True], ids=["new_folder", "empty_folder"])
def test_overwrite_of_a_new_or_empty_folder_starts_the_run(tmp_path, made):
    # --overwrite in a script that always passes it: the first run's folder
    # does not exist yet (the lock is all it holds when checked).
    from kd_keras.train.run_setup import lock_run_folder

    folder = tmp_path / "run"
    if made:
        folder.mkdir()
    lock, created, fresh = lock_run_folder(
        folder, RunConfig.from_preset("smoke", verbose=0), resume=False, overwrite=True
    )
    lock.release()
    assert (created, fresh) == (not made, True)
    assert folder.is_dir()


def test_overwrite_removes_only_kd_keras_files_and_keeps_the_users(tmp_path):
    from kd_keras.train.run_setup import prepare_run_folder

    folder = tmp_path / "run"
    _fake_run(folder)
    (folder / "notes.txt").write_text("mine")
    (folder / "models" / "my_model.h5").write_bytes(b"mine too")
    (folder / "checkpoints" / "teacher" / "diary.md").write_text("mine three")
    prepare_run_folder(folder, RunConfig.from_preset("smoke", verbose=0), overwrite=True)
    assert _snapshot(folder) == {
        "checkpoints/teacher/diary.md": b"mine three",
        "models/my_model.h5": b"mine too",
        "notes.txt": b"mine",
    }
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoints", "models", "notes.txt"]


def test_overwrite_keeps_user_files_that_merely_look_like_kd_keras_names(tmp_path, capsys):
    from kd_keras.train.run_setup import prepare_run_folder

    folder = tmp_path / "run"
    _fake_run(folder)
    mine = {
        "models/my_finetuned.keras": b"1",
        "history/my_notes.csv": b"2",
        "checkpoints/my_experiment/best.npz": b"3",
        ".draft.tmp_keep": b"4",
        ".thesis.old-v1/chapter1.tex": b"5",
    }
    for name, data in mine.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    prepare_run_folder(folder, RunConfig.from_preset("smoke", verbose=1), overwrite=True)
    assert _snapshot(folder) == mine
    note = capsys.readouterr().out.strip()
    assert note.startswith("kd_keras: kept 5 entries") and "\n" not in note
    assert "'.draft.tmp_keep', '.thesis.old-v1', 'checkpoints/my_experiment'" in note


def test_resume_of_a_finished_run_names_its_missing_models(tmp_path):
    from kd_keras.errors import RunFolderError

    folder = tmp_path / "run"
    run = _fake_run(folder)
    for stage in ("student_baseline", "student_distilled", "student_distilled_tuned"):
        run.stage_file(stage).write_text("{}")
        run.model_file(stage).write_bytes(b"PK model")
    run.check_finished_models()  # Every model there: resumes.
    run.model_file("teacher").unlink()
    run.model_file("student_distilled_tuned").unlink()
    before = _snapshot(folder)
    with pytest.raises(RunFolderError) as raised:
        run_pipeline(RunConfig.from_preset("smoke", verbose=0), folder, resume=True)
    assert str(raised.value) == (
        f"run '{folder}': 'models/teacher.keras', 'models/student_distilled_tuned.keras' of "
        "finished stages are missing; restore them from a copy, or delete 'stages/teacher.json', "
        "'stages/student_distilled_tuned.json' so the stage trains again (from its checkpoint), "
        "then resume"
    )
    assert _snapshot(folder) == before
    # While a student stage is still to train, a resume rebuilds the teacher's model.
    run.stage_file("student_distilled").unlink()
    run.model_file("student_distilled_tuned").write_bytes(b"PK model")
    run.check_finished_models()


def test_overwrite_refuses_unknown_files_in_a_folder_removed_whole(tmp_path):
    from kd_keras.errors import RunFolderError
    from kd_keras.train.run_setup import prepare_run_folder

    folder = tmp_path / "run"
    _fake_run(folder)
    stray = folder / "export" / "student_distilled" / "saved_model" / "thesis.tex"
    stray.write_text("years")
    before = _snapshot(folder)
    with pytest.raises(RunFolderError, match="thesis.tex' were not written by kd_keras"):
        prepare_run_folder(folder, RunConfig.from_preset("smoke", verbose=0), overwrite=True)
    assert _snapshot(folder) == before


def test_links_inside_a_run_are_unlinked_never_followed(tmp_path):
    from kd_keras.errors import RunFolderError
    from kd_keras.train.run_setup import prepare_run_folder

    outside = tmp_path / "outside"
    (outside / "models").mkdir(parents=True)
    (outside / "models" / "teacher.keras").write_bytes(b"someone's model")
    (outside / "history.csv").write_text("someone's table")
    (outside / "stages").mkdir()
    (outside / "stages" / "x.json").write_text("{}")
    before = _snapshot(outside)
    folder = tmp_path / "run"
    run = _fake_run(folder)
    for name in ("models", "stages"):
        sub = folder / name
        for child in sub.iterdir():
            child.unlink()
        sub.rmdir()
        sub.symlink_to(outside / name)
    run.history_file("teacher").unlink()
    run.history_file("teacher").symlink_to(outside / "history.csv")
    config = RunConfig.from_preset("smoke", verbose=0)
    # Resuming would write through the links: refused, naming them.
    with pytest.raises(RunFolderError, match="'models', 'stages' in .* are symbolic links"):
        prepare_run_folder(folder, config, resume=True)
    prepare_run_folder(folder, config, overwrite=True)
    assert _snapshot(outside) == before
    assert not any(p.is_symlink() for p in folder.rglob("*"))
    assert not (folder / "models").exists() and not (folder / "stages").exists()


def test_a_symlinked_lock_is_refused_and_its_target_untouched(tmp_path):
    from kd_keras.errors import RunFolderError
    from kd_keras.search_folder import SearchFolder

    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.lock").symlink_to(victim)
    with pytest.raises(RunFolderError, match="is a symbolic link") as raised:
        RunLock(folder).acquire()
    assert "\n" not in str(raised.value)
    assert lock_holder(folder) is None
    # The search's lock, beside its folder, the same.
    search = tmp_path / "search"
    SearchFolder(search).lock_file.symlink_to(victim)
    with pytest.raises(RunFolderError, match="is a symbolic link"):
        RunLock(search, path=SearchFolder(search).lock_file).acquire()
    # A hard link would be overwritten as surely.
    os.link(victim, tmp_path / "hard.lock")
    with pytest.raises(RunFolderError, match="is a hard link"):
        RunLock(tmp_path, path=tmp_path / "hard.lock").acquire()
    assert victim.read_bytes() == b"precious\n"


def test_an_atomic_write_replaces_a_link_at_the_final_name_not_its_target(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "run").mkdir()
    progress = tmp_path / "run" / "progress.json"
    progress.symlink_to(victim)
    write_json(progress, {"status": "running"})
    assert victim.read_text() == "precious"
    assert not progress.is_symlink() and json.loads(progress.read_text()) == {"status": "running"}


def _fake_search(folder):
    folder.mkdir(parents=True)
    _fake_search_settings(folder)
    for name in ("trials.csv", "best.json", "search.png", "oracle.json", "tuner0.json"):
        (folder / name).write_text("x")
    for name in ("trial.json", "build_config.json", "checkpoint.weights.h5", "kd_trial.json"):
        (folder / "trial_0").mkdir(exist_ok=True)
        (folder / "trial_0" / name).write_text("x")
    (folder / "teacher_logits").mkdir()
    (folder / "teacher_logits" / "epoch_0.npz").write_text("x")


def test_search_overwrite_needs_kd_keras_settings_and_keeps_the_users_files(tmp_path):
    from kd_keras.errors import SearchError
    from kd_keras.owned_files import remove_planned
    from kd_keras.search_folder import SearchFolder
    from tuning.search import check_search_folder

    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "oracle.json").write_text("{}")
    with pytest.raises(SearchError, match="did not start"):
        check_search_folder(foreign, overwrite=True)
    (foreign / "search.json").write_text('{"compilerOptions": {}}')
    with pytest.raises(SearchError, match="search.json is not a kd_keras search"):
        check_search_folder(foreign, overwrite=True)
    assert sorted(p.name for p in foreign.iterdir()) == ["oracle.json", "search.json"]

    folder = tmp_path / "search"
    _fake_search(folder)
    (folder / "notes.txt").write_text("mine")
    (folder / "trial_0" / "plot.png").write_bytes(b"mine too")
    assert check_search_folder(folder, overwrite=True) is None
    remove_planned(SearchFolder(folder).removal_plan())
    assert _snapshot(folder) == {"notes.txt": b"mine", "trial_0/plot.png": b"mine too"}


def test_keras_tuner_state_survives_a_kill_mid_write_and_damage_is_named(tmp_path, monkeypatch):
    import keras
    import keras_tuner

    from kd_keras.errors import DamagedFileError
    from tuning.search import check_search_folder
    from tuning.tuners import build_tuner

    class Tiny(keras_tuner.HyperModel):
        def build(self, hp):
            hp.Float("temperature", 1.0, 8.0)
            return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])

    folder = tmp_path / "search"
    tuner = build_tuner("random", Tiny(), folder, max_trials=3, epochs=1)
    _fake_search_settings(folder)
    tuner.save()
    saved = json.loads((folder / "oracle.json").read_text())
    assert saved["tried_so_far"] == [] and check_search_folder(folder) is not None

    # Killed between writing the new state and renaming it into place.
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    tuner.oracle._tried_so_far.add("a-trial-hash")
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        tuner.save()
    monkeypatch.undo()
    assert json.loads((folder / "oracle.json").read_text()) == saved
    assert sorted(p.name for p in folder.iterdir()) == ["oracle.json", "search.json", "tuner0.json"]
    tuner.save()
    assert json.loads((folder / "oracle.json").read_text())["tried_so_far"] == ["a-trial-hash"]

    # A state file damaged some other way is named before keras-tuner reads it.
    (folder / "trial_0").mkdir()
    (folder / "trial_0" / "trial.json").write_text('{"trial_id": "0", "hyperpar')
    with pytest.raises(DamagedFileError, match=r"trial_0/trial\.json' is damaged .*--overwrite"):
        check_search_folder(folder)
    (folder / "trial_0" / "trial.json").unlink()
    (folder / "oracle.json").write_text("")
    with pytest.raises(DamagedFileError, match=r"oracle\.json' is damaged \(empty\)"):
        check_search_folder(folder)
    assert check_search_folder(folder, overwrite=True) is None


def _fake_search_settings(folder):
    settings = {
        "tuner": "random",
        "objective": "val_accuracy",
        "epochs": 1,
        "max_trials": 2,
        "space": {},
        "config": {},
        "teacher_sha256": "0",
    }
    (folder / "search.json").write_text(json.dumps(settings))


# --- Ordinary file modes: what open() would give, under the user's umask. ---

_MODES_SCRIPT = """
import os, stat, sys
os.umask(int(sys.argv[2], 8))
from pathlib import Path
from kd_keras import atomic
from kd_keras.report.results import write_results
run = Path(sys.argv[1])
atomic.write_json(run / "stages" / "teacher.json", {"stage": "teacher"})
rows = [
    {"stage": s, "model": "m", "test_accuracy": a, "params": 10, "size_mb": 0.1, "latency_ms": 1.0}
    for s, a in (("teacher", 0.9), ("student_baseline", 0.8), ("student_distilled", 0.85))
]
write_results(run, rows)
with atomic.RunLock(run):
    lock = (run / "run.lock").stat().st_mode
for p in sorted(run.rglob("*")):
    if p.is_file():
        print(p.relative_to(run), oct(stat.S_IMODE(p.stat().st_mode)))
print("run.lock", oct(stat.S_IMODE(lock)))
"""


@pytest.mark.parametrize("umask, mode", [("022", "0o644"), ("077", "0o600"), ("002", "0o664")])
def test_files_get_the_mode_open_would_give_under_the_umask(tmp_path, umask, mode):
    out = subprocess.run(
        [sys.executable, "-c", _MODES_SCRIPT, str(tmp_path), umask],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"},
    )
    assert out.returncode == 0, out.stderr
    modes = dict(line.split() for line in out.stdout.splitlines())
    assert sorted(modes) == [
        "report.png",
        "results.csv",
        "results.json",
        "run.lock",
        "stages/teacher.json",
        "test_accuracy_bar.png",
    ]  # Atomic as before: no temporary file is left.
    assert set(modes.values()) == {mode}, modes


def test_a_saved_model_file_gets_the_umask_mode(tmp_path):
    import keras

    from kd_keras.atomic import file_mode
    from kd_keras.train.measure import save_model

    inputs = keras.Input((4,))
    save_model(keras.Model(inputs, keras.layers.Dense(3)(inputs)), tmp_path / "m.keras")
    current = os.umask(0o022)
    os.umask(current)
    assert file_mode() == 0o666 & ~current
    assert (tmp_path / "m.keras").stat().st_mode & 0o777 == 0o666 & ~current
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"]


# --- Out of memory, a full disk, a read-only folder. ---


def _tiny_npz(path):
    import numpy as np

    rng = np.random.default_rng(0)
    labels = np.arange(80) % 4
    images = rng.integers(0, 256, size=(80, 16, 16, 3), dtype=np.uint8)
    np.savez(path, x_train=images[:60], y_train=labels[:60], x_test=images[60:], y_test=labels[60:])
    return path


def _tiny_config(data):
    return tiny_config(data=str(data), val_size=8, teacher_width=8, batch_size=16)


class ResourceExhaustedError(Exception):
    """Named as TensorFlow's (kd_keras.errors checks the name, not the class)."""


@pytest.mark.parametrize(
    "error, line",
    [
        (MemoryError(), "out of memory; use smaller models or batches"),
        (ResourceExhaustedError("OOM when allocating tensor"), "out of memory in TensorFlow"),
        (
            ResourceExhaustedError("saving: No space left on device"),
            "the disk is full: free some space; then continue with 'python -m kd_keras run",
        ),
    ],
)
def test_out_of_memory_or_disk_in_training_is_one_line_and_marks_the_run_failed(
    tmp_path, monkeypatch, capsys, error, line
):
    from kd_keras.errors import run_command
    from kd_keras.train import pipeline

    def exhausted(self):
        raise error

    monkeypatch.setattr(pipeline.Pipeline, "run", exhausted)
    out = tmp_path / "run"
    config = _tiny_config(_tiny_npz(tmp_path / "d.npz"))
    assert run_command("kd_keras", lambda: pipeline.run_pipeline(config, out)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"kd_keras: error: {line}"), err
    progress = json.loads((out / "progress.json").read_text())
    assert progress["status"] == "failed"
    assert progress["error"].startswith(type(error).__name__)


def test_a_disk_full_while_training_names_the_resume_command(tmp_path, monkeypatch, capsys):
    import errno

    from kd_keras.errors import run_command
    from kd_keras.train import pipeline

    def full(self):
        with pipeline.atomic.atomic_path(self.folder.student_init_file) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    monkeypatch.setattr(pipeline.Pipeline, "run", full)
    out = tmp_path / "run"
    config = _tiny_config(_tiny_npz(tmp_path / "d.npz"))
    assert run_command("kd_keras", lambda: pipeline.run_pipeline(config, out)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the disk is full: free some space" in err
    assert f"then continue with 'python -m kd_keras run --resume --out {out}'" in err
    assert json.loads((out / "progress.json").read_text())["status"] == "failed"
    assert not list((out / "checkpoints").glob(".*"))  # No temporary left.


_FULL_DISK_SCRIPT = """
import json, sys
from pathlib import Path
from kd_keras import RunConfig
from kd_keras.errors import run_command
from kd_keras.train import pipeline

disk, config, phase = Path(sys.argv[1]), RunConfig.from_dict(json.loads(sys.argv[2])), sys.argv[3]
out = disk / "run"
initial = pipeline.Pipeline.student_initial_weights


def fill_disk_first(self):
    try:
        with open(disk / "filler", "wb", buffering=0) as file:
            while True:
                file.write(bytes(4096))
    except OSError:
        pass
    return initial(self)


if phase == "fill":
    pipeline.Pipeline.student_initial_weights = fill_disk_first
else:
    (disk / "filler").unlink()
code = run_command(
    "kd_keras", lambda: pipeline.run_pipeline(config, out, resume=phase != "fill") and 0
)
print(json.dumps({"code": code, "status": json.loads((out / "progress.json").read_text())["status"]}))
sys.exit(0)
"""


@pytest.mark.slow
def test_a_real_full_disk_at_the_initial_weights_is_one_line_and_resumable(tmp_path):
    """On a small tmpfs filled just before the students' initial weights are
    written: one line, exit 1, the run marked failed, no crash (HDF5 used to
    segfault at exit, status 139); freed, `--resume` finishes the run."""
    import shutil

    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to mount a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    config = _tiny_config(_tiny_npz(tmp_path / "d.npz")).to_json()
    script = tmp_path / "full_disk.py"
    script.write_text(_FULL_DISK_SCRIPT)
    python = f"{sys.executable} {script} {disk} '{config}'"
    shell = (
        f"mount -t tmpfs -o size=16m tmpfs {disk} || exit 77; "
        f"{python} fill; echo exit=$?; {python} resume; echo exit=$?"
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", shell],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if done.returncode == 77:
        pytest.skip("cannot mount a tmpfs here")
    lines = [line for line in done.stdout.splitlines() if line.startswith(("{", "exit="))]
    assert lines == [
        '{"code": 1, "status": "failed"}',
        "exit=0",
        '{"code": 0, "status": "finished"}',
        "exit=0",
    ], done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("kd_keras: error:")]
    assert len(errors) == 1 and "the disk is full" in errors[0] and "--resume" in errors[0]
    assert "Traceback" not in done.stderr


def _finished_fake_run(folder):
    run = _fake_run(folder)
    rows = {
        "teacher": 0.90,
        "student_baseline": 0.80,
        "student_distilled": 0.84,
    }
    for stage, accuracy in rows.items():
        row = {"stage": stage, "model": "resnet", "depth": 8, "params": 1000, "flops": 10}
        row.update(test_accuracy=accuracy, test_loss=0.5, val_accuracy=accuracy, val_loss=0.5)
        row.update(size_mb=0.1, latency_ms=1.0, epochs=1, best_epoch=1, train_seconds=1.0)
        run.stage_file(stage).write_text(json.dumps(row))
    for name in ("results.csv", "results.json", "report.png"):
        (folder / name).unlink()
    return run


def test_report_on_a_folder_it_cannot_write_prints_and_writes_nothing(
    tmp_path, monkeypatch, capsys
):
    from kd_keras.cli import main

    folder = tmp_path / "run"
    _finished_fake_run(folder)
    before = _snapshot(folder)
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **k: False if Path(p) == folder else real_access(p, mode)
    )
    assert main(["report", str(folder)]) == 0
    out, err = capsys.readouterr()
    assert "student_distilled" in out and "+4.00 points" in out
    assert err == (
        f"kd_keras: note: '{folder}' is read-only: the table is printed, its results "
        "files and plots are not rewritten\n"
    )
    assert _snapshot(folder) == before


_READ_ONLY_SHELL = """
mount --bind {run} {run} && mount -o remount,bind,ro {run} || exit 77
touch {run}/probe 2>/dev/null && exit 78
for args in "report {run}" "report {run} --reference" "export {run}"; do
    {python} -m kd_keras $args > /dev/null 2> {err}
    echo "exit=$? $(cat {err} | tr '\\n' '|')"
done
"""


def test_report_and_export_on_a_read_only_run_folder(tmp_path):
    """A real read-only bind mount (root writes through permission bits):
    report and report --reference print, export says how to export a copy;
    one line each, no traceback, nothing written."""
    import shutil

    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for a read-only bind mount")
    folder = tmp_path / "run"
    _finished_fake_run(folder)
    before = _snapshot(folder)
    shell = _READ_ONLY_SHELL.format(run=folder, python=sys.executable, err=tmp_path / "err")
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", shell],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if done.returncode in (77, 78):
        pytest.skip("cannot make a read-only bind mount here")
    report, reference, export = done.stdout.splitlines()
    note = f"kd_keras: note: '{folder}' is read-only: the table is printed"
    assert report.startswith(f"exit=0 {note}") and report.count("|") == 1, report
    assert reference.startswith(f"exit=0 {note}") and reference.count("|") == 1, reference
    assert export.startswith(f"exit=2 kd_keras: error: '{folder}' is read-only"), export
    assert f"cp -r '{folder}' COPY && python -m kd_keras export COPY" in export
    assert export.count("|") == 1 and "Traceback" not in done.stdout
    assert _snapshot(folder) == before
