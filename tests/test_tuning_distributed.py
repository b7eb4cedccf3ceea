"""A distributed search (Keras Tuner's chief and workers, `--workers 2`) on
localhost: it completes with trials from both workers, survives a killed
worker, and a killed chief is continued by `--resume` with no trial lost or
run twice.

Tiny generated data (3 classes of 20x20 images), tiny models. Each test
starts TensorFlow subprocesses: marked slow."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest

from tests.test_tuning_data import three_class_npz

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def argv(tmp_path):
    data = three_class_npz(tmp_path / "three.npz")
    teacher = tmp_path / "t.keras"
    keras.Sequential(
        [keras.Input((20, 20, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)]
    ).save(teacher)
    return [
        *("--teacher", str(teacher), "--data", str(data), "--out", str(tmp_path / "search")),
        *("--preset", "smoke", "--val-size", "30", "--train-per-class", "20"),
        *("--val-per-class", "10", "--student-depth", "8", "--student-width", "4"),
        *("--batch-size", "30", "--trials", "4", "--epochs", "2", "--quiet", "--workers", "2"),
    ]


def start(argv, tmp_path, name):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for key in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        env.pop(key, None)
    log = open(tmp_path / f"{name}.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "tuning", *argv],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def children(pid):
    """Pids of the live processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def wait_for(condition, seconds=600):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    raise AssertionError("timed out")


def trials(folder):
    with open(folder / "trials.csv", newline="") as file:
        return list(csv.DictReader(file))


def workers_of(folder):
    path = folder / "search.json"
    return json.loads(path.read_text()).get("workers", {}) if path.is_file() else {}


def test_chief_and_two_workers_complete_the_search(argv, tmp_path):
    process = start(argv, tmp_path, "search")
    assert process.wait(timeout=900) == 0, (tmp_path / "search.log").read_text()[-3000:]
    folder = tmp_path / "search"
    rows = trials(folder)
    assert sorted(r["trial_id"] for r in rows) == ["0", "1", "2", "3"]
    assert all(r["status"] == "COMPLETED" for r in rows)
    workers = workers_of(folder)
    assert sorted(workers) == ["0", "1", "2", "3"]
    assert set(workers.values()) == {"worker1", "worker2"}
    assert json.loads((folder / "best.json").read_text())["completed_trials"] == 4
    # The chief ran the teacher once per epoch, for both workers to read.
    assert sorted(p.name for p in (folder / "teacher_logits").iterdir()) == [
        "epoch_0.npz",
        "epoch_1.npz",
    ]


def test_a_killed_worker_does_not_stop_the_search(argv, tmp_path):
    process = start(argv, tmp_path, "search")
    folder = tmp_path / "search"
    # Mid-trial: a trial folder exists and both workers run.
    wait_for(lambda: list(folder.glob("trial_*")) and len(children(process.pid)) == 2)
    time.sleep(2)
    os.kill(children(process.pid)[0], signal.SIGKILL)
    assert process.wait(timeout=900) == 0, (tmp_path / "search.log").read_text()[-3000:]
    assert "died (exit -9); starting it again" in (tmp_path / "search.log").read_text()
    rows = trials(folder)
    assert sorted(r["trial_id"] for r in rows) == ["0", "1", "2", "3"]
    assert all(r["status"] == "COMPLETED" for r in rows)


def test_a_killed_chief_is_resumed_with_no_trial_lost_or_run_twice(argv, tmp_path):
    process = start(argv, tmp_path, "first")
    folder = tmp_path / "search"
    wait_for(lambda: len(workers_of(folder)) >= 1)
    workers = children(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # Its workers see their chief gone and end.
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 60)
    done_before = dict(workers_of(folder))
    resumed = start(argv + ["--resume"], tmp_path, "second")
    assert resumed.wait(timeout=900) == 0, (tmp_path / "second.log").read_text()[-3000:]
    rows = trials(folder)
    assert sorted(r["trial_id"] for r in rows) == ["0", "1", "2", "3"]
    assert all(r["status"] == "COMPLETED" for r in rows)
    after = workers_of(folder)
    assert sorted(after) == ["0", "1", "2", "3"]
    # The trials finished before the kill were not run again.
    log = (tmp_path / "second.log").read_text()
    for trial_id in done_before:
        assert after[trial_id] == done_before[trial_id]
        assert f"trial {trial_id} [" not in log
