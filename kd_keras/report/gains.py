"""What a run's result rows say, as numbers: the distillation gain, every
student's gain over the baseline, and the teacher against the distilled
student as trained and as shipped. Keras-free; used by the results files
(`kd_keras.report.results`) and the plots (`kd_keras.report.plots`).
"""

from kd_keras.export.spec import VARIANTS, is_export_row


def distillation_gain(rows):
    """Test-accuracy points the distilled student gains over its baseline,
    or `None` if either row is missing."""
    by_stage = {r["stage"]: r for r in rows}
    if "student_baseline" in by_stage and "student_distilled" in by_stage:
        return 100 * (
            by_stage["student_distilled"]["test_accuracy"]
            - by_stage["student_baseline"]["test_accuracy"]
        )
    return None


def gains_over_baseline(rows):
    """Test-accuracy points of every other student stage over the baseline."""
    by_stage = {r["stage"]: r for r in rows}
    baseline = by_stage.get("student_baseline")
    if baseline is None:
        return {}
    return {
        r["stage"]: 100 * (r["test_accuracy"] - baseline["test_accuracy"])
        for r in rows
        if r["stage"] not in ("teacher", "student_baseline") and not is_export_row(r)
    }


def _ratio(numerator, denominator, *columns):
    """`numerator[c] / denominator[c]` for the first column `c` both rows
    have (rounded), or None."""
    for column in columns:
        a, b = numerator.get(column), denominator.get(column)
        if a is not None and b:
            return round(a / b, 3)
    return None


def shipping_ratios(rows, large="teacher", small="student_distilled"):
    """The teacher against the distilled student, as trained and as shipped.

    For the Keras models (`variant` "keras") and every export variant both
    stages have: how many times larger and slower the teacher is, and the
    student's test-accuracy points over the teacher's.

    Returns:
        A list of dicts: `variant`, `teacher`, `student` (row names),
        `size_ratio`, `latency_ratio`, `accuracy_points` (None where a
        number is missing).
    """
    by_stage = {r["stage"]: r for r in rows}
    ratios = []
    for variant in ("keras", *VARIANTS):
        names = (
            (large, small) if variant == "keras" else (f"{large}@{variant}", f"{small}@{variant}")
        )
        if not all(name in by_stage for name in names):
            continue
        teacher, student = (by_stage[name] for name in names)
        accuracy = None
        if teacher.get("test_accuracy") is not None and student.get("test_accuracy") is not None:
            accuracy = round(100 * (student["test_accuracy"] - teacher["test_accuracy"]), 3)
        ratios.append(
            {
                "variant": variant,
                "teacher": names[0],
                "student": names[1],
                "size_ratio": _ratio(teacher, student, "size_bytes", "size_mb"),
                "latency_ratio": _ratio(teacher, student, "latency_ms"),
                "accuracy_points": accuracy,
            }
        )
    return ratios
