"""The report plot's comparison of each student with the baseline."""

import pytest

from kd_keras.report.plots import plot_report, validation_gap, validation_loss_gap
from kd_keras.train.callbacks import write_history


def test_validation_gap_is_the_per_epoch_difference_in_points():
    baseline = [
        {"epoch": 1, "val_accuracy": 0.50},
        {"epoch": 2, "val_accuracy": 0.60},
        {"epoch": 3, "val_accuracy": 0.70},
    ]
    distilled = [
        {"epoch": 1, "val_accuracy": 0.55},
        {"epoch": 2, "val_accuracy": 0.59},
        {"epoch": 4, "val_accuracy": 0.80},
    ]  # Epoch 4: no baseline row.
    epochs, points = validation_gap(baseline, distilled)
    assert epochs == [1, 2]
    assert points == pytest.approx([5.0, -1.0])


def _history(accuracies, losses):
    return [
        {"epoch": e + 1, "loss": 1.0, "accuracy": a, "val_loss": v, "val_accuracy": a}
        for e, (a, v) in enumerate(zip(accuracies, losses))
    ]


def _captured_report(tmp_path, monkeypatch):
    from kd_keras.report import plots

    captured = {}
    monkeypatch.setattr(plots, "_save_figure", lambda figure, path: captured.update(f=figure))
    plot_report(tmp_path, tmp_path / "report.png")
    return captured["f"].axes


def _lines(axis):
    return {
        line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
        for line in axis.get_lines()
        if not line.get_label().startswith("_")
    }


def test_report_panels_hold_the_gaps(tmp_path, monkeypatch):
    history = tmp_path / "history"
    write_history(history / "teacher.csv", _history([0.6, 0.7], [1.0, 0.8]))
    write_history(history / "student_baseline.csv", _history([0.4, 0.5], [1.3, 1.0]))
    distilled = _history([0.45, 0.52], [9.0, 9.0])  # val_loss: the blended loss
    for row, own in zip(distilled, [1.2, 0.85]):
        row.update(student_loss=1.0, val_student_loss=own)
    write_history(history / "student_distilled.csv", distilled)
    axes = _captured_report(tmp_path, monkeypatch)
    assert len(axes) == 4
    gap = _lines(axes[2])
    assert list(gap) == ["student_distilled"]
    assert gap["student_distilled"][0] == [1, 2]
    assert gap["student_distilled"][1] == pytest.approx([5.0, 2.0])
    loss = _lines(axes[3])
    assert axes[3].get_title() == "validation cross-entropy minus the teacher's (same epoch)"
    assert loss["student_baseline"][1] == pytest.approx([0.3, 0.2])
    assert loss["student_distilled"][1] == pytest.approx([0.2, 0.05])


def test_a_reused_teacher_is_compared_by_its_final_loss(tmp_path, monkeypatch):
    import json

    history = tmp_path / "history"
    write_history(history / "student_baseline.csv", _history([0.4, 0.5], [1.3, 1.0]))
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "teacher.json").write_text(
        json.dumps({"stage": "teacher", "test_accuracy": 0.9, "val_loss": 0.75})
    )
    axes = _captured_report(tmp_path, monkeypatch)
    assert axes[3].get_title() == "validation cross-entropy minus the trained teacher's"
    assert _lines(axes[3])["student_baseline"][1] == pytest.approx([0.55, 0.25])


def test_validation_loss_gap_uses_each_students_own_cross_entropy():
    teacher = [
        {"epoch": 1, "val_loss": 1.0},
        {"epoch": 2, "val_loss": 0.5},
    ]
    # A distilled stage: val_loss is the blended loss, val_student_loss its CE.
    distilled = [
        {"epoch": 1, "val_loss": 9.0, "student_loss": 1.0, "val_student_loss": 1.25},
        {"epoch": 2, "val_loss": 9.0, "student_loss": 1.0, "val_student_loss": 0.6},
        {"epoch": 3, "val_loss": 9.0, "student_loss": 1.0, "val_student_loss": 0.1},
    ]  # Epoch 3: no teacher row.
    epochs, differences = validation_loss_gap(teacher, distilled)
    assert epochs == [1, 2]
    assert differences == pytest.approx([0.25, 0.1])
    baseline = [{"epoch": 2, "val_loss": 0.8}]
    assert validation_loss_gap(teacher, baseline) == ([2], [pytest.approx(0.3)])
    # One number: the trained teacher's, against every epoch.
    assert validation_loss_gap(0.5, distilled) == ([1, 2, 3], pytest.approx([0.75, 0.1, -0.4]))
