"""Tests of `kd_app.run_state`: what the app reads from a run folder."""

import json
from pathlib import Path

import pytest
from app_smoke import REPO  # noqa: F401 (puts the repository on sys.path)

from kd_app import run_state as runs
from kd_app.processes import launch_files
from kd_keras.run_folder import RunFolder


def make_run(folder, status="finished", teacher=True):
    run = RunFolder(folder)
    run.stages_dir.mkdir(parents=True)
    run.config_file.write_text(
        json.dumps({"preset": "smoke", "teacher_epochs": 4, "student_epochs": 4})
    )
    run.progress_file.write_text(json.dumps({"status": status, "pid": 999999}))
    if teacher:
        run.stage_file("teacher").write_text(json.dumps({"stage": "teacher"}))
        run.models_dir.mkdir()
        run.model_file("teacher").write_bytes(b"model")
    return run


def test_progress_summary_estimates_time_left():
    state = runs.RunState(
        path=Path("x"),
        status="running",
        progress={
            "status": "running",
            "stage": "student_baseline",
            "stage_index": 1,
            "epoch": 2,
            "epochs": 4,
            "batch": 0,
            "batches": 10,
            "completed_stages": ["teacher"],
            "elapsed_s": 60.0,
            "updated_at": "2000-01-01T00:00:00+00:00",
        },
        config={"teacher_epochs": 4, "student_epochs": 4},
    )
    summary = runs.progress_summary(state, now=946684800.0)  # = updated_at
    assert summary["done_epochs"] == 6 and summary["total_epochs"] == 12
    assert summary["stage_fraction"] == 0.5
    assert summary["eta_s"] == pytest.approx(60.0)  # 10 s per epoch, 6 to go.
    assert runs.format_duration(summary["eta_s"]) == "1 min 00 s"
    assert runs.progress_texts(summary, alive=True) == (
        "Overall: 6 of 12 epochs done",
        "Stage 2/3 student_baseline: epoch 3/4, batch 0/10",
    )
    assert (
        runs.progress_texts(summary, alive=False)[1]
        == "Stage 2/3 student_baseline: 2/4 epochs done"
    )


def test_reused_teacher_and_baseline_plan_no_epochs():
    config = {"teacher_epochs": 4, "student_epochs": 5}
    assert [runs.stage_epochs(config, s) for s in runs.STAGES] == [4, 5, 5]
    config.update(teacher="t.keras", baseline="runs/a/models/student_baseline.keras")
    assert [runs.stage_epochs(config, s) for s in runs.STAGES] == [0, 0, 5]


def test_runs_are_the_folders_run_folder_recognises(tmp_path):
    make_run(tmp_path / "done")
    make_run(tmp_path / "no-teacher", status="stopped", teacher=False)
    (tmp_path / "notes").mkdir()  # Not a run: no config, progress or stages.
    (tmp_path / "tuning" / "search-a").mkdir(parents=True)  # Searches, not runs.
    launch_files(tmp_path / "launched")[1].write_text(json.dumps({"pid": 999999, "kind": "run"}))
    launch_files(tmp_path / "a-search")[1].write_text(json.dumps({"pid": 1, "kind": "search"}))
    names = sorted(p.name for p in runs.list_runs(tmp_path))
    assert names == ["done", "launched", "no-teacher"]
    assert runs.find_teachers(tmp_path) == [tmp_path / "done" / "models" / "teacher.keras"]
    statuses = {p.name: runs.run_state(p).status for p in runs.list_runs(tmp_path)}
    assert statuses == {"done": "finished", "no-teacher": "stopped", "launched": "exited"}
    assert runs.alive_runs(tmp_path) == []


def test_a_damaged_progress_file_reads_as_missing(tmp_path):
    run = make_run(tmp_path / "torn")
    run.progress_file.write_text('{"status": "runn')
    state = runs.run_state(run.path)
    assert (state.status, state.progress, state.config["preset"]) == ("empty", {}, "smoke")


def test_status_messages_name_the_cause():
    def state(status, **fields):
        return runs.RunState(path=Path("r"), status=status, **fields)

    assert runs.status_message(state("running")) is None
    kind, text = runs.status_message(state("failed", progress={"error": "the loss is nan"}))
    assert kind == "error" and "the loss is nan" in text and "Resume" in text
    kind, text = runs.status_message(state("exited", exit_code=2))
    assert kind == "error" and "exit code 2" in text
    assert runs.status_message(state("died", progress={"pid": 4242}))[1].count("4242") == 1
