"""kd_keras.report.reference: a run next to the reference table."""

import json

import pytest

from kd_keras.cli import main
from kd_keras.config import RunConfig
from kd_keras.report.reference import (
    compare_with_reference,
    comparison_problem,
    format_reference_table,
    reference_table_of,
    setting_differences,
)
from kd_keras.run_folder import RunFolder


def _row(stage, depth, test, val, seconds=600.0, epochs=50):
    return {
        "stage": stage,
        "depth": depth,
        "epochs": epochs,
        "test_accuracy": test,
        "test_loss": 0.5,
        "val_accuracy": val,
        "val_loss": 0.5,
        "train_seconds": seconds,
    }


ROWS = [
    _row("teacher", 30, 0.9100, 0.9000, seconds=4485.6),
    _row("student_baseline", 15, 0.8800, 0.8700),
    _row("student_distilled", 15, 0.8950, 0.8760),
    _row("student_distilled@int8", 15, 0.5, 0.5),  # not in the reference: skipped
]


def test_differences_and_the_gain_are_in_points():
    compared = compare_with_reference(ROWS)
    assert [item["stage"] for item in compared] == [
        "teacher",
        "student_baseline",
        "student_distilled",
        "gain",
    ]
    teacher, _, _, gain = compared
    assert teacher["test_difference_points"] == pytest.approx(100 * (0.9100 - 0.9053))
    assert teacher["val_difference_points"] == pytest.approx(100 * (0.9000 - 0.894))
    # Ours: 0.8950 - 0.8800; the reference's: 0.9028 - 0.8907.
    assert gain["test_points"] == pytest.approx(1.50)
    assert gain["reference_test_points"] == pytest.approx(1.21)
    assert gain["test_difference_points"] == pytest.approx(0.29)
    assert gain["val_points"] == pytest.approx(0.60)
    assert gain["reference_val_points"] == pytest.approx(0.92)


def test_no_gain_row_without_both_students():
    compared = compare_with_reference(ROWS[:2])
    assert [item["stage"] for item in compared] == ["teacher", "student_baseline"]


def test_the_markdown_table():
    config = RunConfig.from_preset("full", seed=0)
    table = format_reference_table(ROWS, config)
    lines = table.splitlines()
    assert lines[2] == (
        "| teacher (depth 30) | 0.9100 | 0.9053 | +0.47 | 0.9000 | 0.8940 | +0.60 "
        "| 0.500 | 74 min 46 s |"
    )
    assert lines[5].startswith("| **gain of distillation** (points) | **+1.50** | +1.21 | +0.29 ")
    assert len(lines) == 6  # the full preset is the reference's setting: no note


def test_a_different_setting_is_named():
    config = RunConfig.from_preset("quick", seed=0)
    rows = [_row("teacher", 20, 0.74, 0.75)] + ROWS[1:3]
    table = format_reference_table(rows, config)
    assert "| teacher (depth 20) |" in table
    differences = setting_differences(config)
    assert "teacher_depth: 20 (reference 30)" in differences
    assert "student_depth: 8 (reference 15)" in differences
    assert "train_per_class: 1000 (reference None)" in differences
    assert table.splitlines()[-1].startswith("Settings that differ from the reference: ")
    assert setting_differences(RunConfig.from_preset("full")) == []


def test_a_reused_teacher_other_data_and_no_config_are_named(tmp_path):
    teacher = {**_row("teacher", None, 0.91, 0.90, seconds=0.0, epochs=0)}
    table = format_reference_table([teacher] + ROWS[1:3], None)
    assert "| teacher | 0.9100 |" in table and "| reused |" in table
    assert table.splitlines()[-1] == (
        "Settings: unknown (no config.json), not checked against the reference."
    )
    fields = RunConfig.from_preset("full").to_dict()
    fields.update(teacher="t.keras", data=str(tmp_path / "flowers"))
    (tmp_path / "flowers").mkdir()
    differences = setting_differences(fields)
    assert differences[0] == f"data: '{tmp_path / 'flowers'}' (reference CIFAR-10)"
    assert "teacher: 't.keras' (reference None)" in differences


def test_report_command_prints_the_reference_table(tmp_path, capsys):
    folder = RunFolder(tmp_path / "run")
    folder.stages_dir.mkdir(parents=True)
    (folder.path / "config.json").write_text(RunConfig.from_preset("full", seed=0).to_json())
    for row in ROWS[:3]:
        full = {**row, "model": row["stage"], "params": 1, "flops": 1, "size_mb": 0.1}
        full.update(val_loss=0.5, latency_ms=1.0, best_epoch=50)
        folder.stage_file(row["stage"]).write_text(json.dumps(full))
    assert main(["report", str(folder.path), "--reference"]) == 0
    out = capsys.readouterr().out
    assert "| student distilled (depth 15) | 0.8950 | 0.9028 | -0.78 |" in out


def _run_folder(path, config):
    folder = RunFolder(path)
    folder.stages_dir.mkdir(parents=True)
    (folder.path / "config.json").write_text(config.to_json())
    for row in ROWS[:3]:
        full = {**row, "model": row["stage"], "params": 1, "flops": 1, "size_mb": 0.1}
        full.update(val_loss=0.5, latency_ms=1.0, best_epoch=50)
        folder.stage_file(row["stage"]).write_text(json.dumps(full))
    return folder


def test_only_cifar10_runs_with_resnets_are_comparable(tmp_path):
    images = tmp_path / "my images"
    images.mkdir()
    assert comparison_problem(RunConfig.from_preset("full")) is None
    assert comparison_problem(RunConfig.from_preset("quick", student_model="resnet20")) is None
    assert "not CIFAR-10" in comparison_problem(RunConfig.from_preset("quick", data=str(images)))
    assert "not CIFAR-10" in comparison_problem({"data": str(tmp_path / "own.npz")})
    problem = comparison_problem(RunConfig.from_preset("quick", teacher_model="mobilenetv3small"))
    assert "teacher is 'mobilenetv3small', not a ResNet" in problem
    assert "no config.json" in comparison_problem(None)


def test_report_reference_refuses_an_own_data_run_in_one_line(tmp_path, capsys):
    images = tmp_path / "flowers"
    images.mkdir()
    folder = _run_folder(tmp_path / "run", RunConfig.from_preset("quick", data=str(images)))
    assert reference_table_of(folder.path) is None  # The app shows no table either.
    assert main(["report", str(folder.path), "--reference"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(
        "kd_keras: error: --reference compares CIFAR-10 runs with ResNet teacher and student only:"
    )
    assert f"data '{images}' is not CIFAR-10" in captured.err
    assert captured.err.rstrip().endswith("leave out --reference")
    assert not (folder.path / "results.csv").exists()  # Refused before writing anything.
    assert main(["report", str(folder.path)]) == 0  # The plain report still works.
