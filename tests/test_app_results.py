"""Tests of `kd_app.results`: the results table, curves and formats."""

import json

import pandas as pd
from app_smoke import REPO  # noqa: F401 (puts the repository on sys.path)

from kd_app import results
from kd_keras.export.spec import EXPORT_COLUMNS
from kd_keras.run_folder import TABLE_COLUMNS, RunFolder


def test_the_tables_columns_are_kd_kerass():
    assert results.SHOWN_COLUMNS == (
        "stage",
        "model",
        "depth",
        "params",
        "size_mb",
        "test_accuracy",
        "test_loss",
        "val_accuracy",
        "val_loss",
        "latency_ms",
    )
    assert set(results.SHOWN_COLUMNS) | set(results.DETAIL_COLUMNS) == set(TABLE_COLUMNS)
    assert set(results.DETAIL_COLUMNS) <= set(TABLE_COLUMNS)
    assert results.SHOWN_COLUMNS[:2] == ("stage", "model")
    assert set(results.EXPORT_TABLE_COLUMNS) <= set(TABLE_COLUMNS + EXPORT_COLUMNS)


def test_partial_results_are_the_completed_stages(tmp_path):
    run = RunFolder(tmp_path)
    run.stages_dir.mkdir()
    assert results.results_table(tmp_path) is None
    for stage, accuracy in (("student_baseline", 0.45), ("teacher", 0.6)):
        run.stage_file(stage).write_text(json.dumps({"stage": stage, "test_accuracy": accuracy}))
    table = results.results_table(tmp_path)
    assert list(table["stage"]) == ["teacher", "student_baseline"]  # Pipeline order.
    assert results.distillation_gain(tmp_path, table) is None
    run.stage_file("student_distilled").write_text(
        json.dumps({"stage": "student_distilled", "test_accuracy": 0.5})
    )
    assert round(results.distillation_gain(tmp_path), 6) == 5.0
    assert not results.has_export_rows(table)
    run.results_csv.write_text("stage,test_accuracy\nteacher,0.6\nteacher@int8,0.59\n")
    assert results.has_export_rows(results.results_table(tmp_path))
    run.results_json.write_text(json.dumps({"distillation_gain_points": 1.25}))
    assert results.distillation_gain(tmp_path) == 1.25


def test_curves_use_the_students_cross_entropy(tmp_path):
    run = RunFolder(tmp_path)
    run.history_dir.mkdir()
    run.history_file("teacher").write_text(
        "epoch,loss,val_loss,accuracy,val_accuracy\n0,2.0,2.1,0.3,0.28\n1,1.5,1.7,0.45,0.4\n"
    )
    run.history_file("student_distilled").write_text(
        "epoch,loss,student_loss,val_student_loss,accuracy,val_accuracy\n0,9.0,2.2,2.3,0.2,0.2\n"
    )
    frame = results.curves_frame(tmp_path)
    distilled = frame[
        (frame["stage"] == "student_distilled") & (frame["metric"] == "cross-entropy")
    ]
    assert sorted(distilled["value"]) == [2.2, 2.3]  # Not the blended loss 9.0.
    assert len(frame[frame["stage"] == "teacher"]) == 8
    assert results.last_value(tmp_path, "teacher", "val_accuracy") == 0.4


def test_formats_and_missing_values():
    frame = pd.DataFrame({"params": [12345.0], "size_ratio": [0.25], "test_accuracy": [None]})
    html = results.styled(frame).to_html()
    assert "12,345" in html and "25.0%" in html and ">-<" in html
    ratios = results.ratios_table(
        [{"variant": "int8", "size_ratio": 4.0, "latency_ratio": 2.5, "accuracy_points": -0.5}]
    )
    html = results.styled(ratios, results.RATIO_FORMATS).to_html()
    assert "4.00x" in html and "2.50x" in html and "-0.50" in html
