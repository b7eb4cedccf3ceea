"""The report plot's comparison of each student with the baseline."""

import pytest

from kd_keras.report.results import plot_report, validation_gap, validation_loss_gap
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


def test_report_has_a_baseline_gap_panel(tmp_path):
    history = tmp_path / "history"
    rows = lambda accs: [  # noqa: E731
        {"epoch": e + 1, "loss": 1.0, "accuracy": a, "val_loss": 1.0, "val_accuracy": a}
        for e, a in enumerate(accs)
    ]
    write_history(history / "teacher.csv", rows([0.6, 0.7]))
    write_history(history / "student_baseline.csv", rows([0.4, 0.5]))
    write_history(
        history / "student_distilled.csv",
        [{**row, "student_loss": 1.0, "val_student_loss": 1.0} for row in rows([0.45, 0.52])],
    )
    plot_report(tmp_path, tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 10_000


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
