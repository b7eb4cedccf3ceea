"""Results table and plots of a run folder.

A run's rows are its stages' (`stages/<stage>.json`: the pipeline's three,
then any added stage such as a tuned distillation), then its exported
models' (`export/<stage>/<variant>.json`, rows named `<stage>@<variant>`,
see `kd_keras.export.spec`).
"""

import csv
import io
import os

from kd_keras import atomic
from kd_keras.errors import DiskWriteError
from kd_keras.export.spec import (
    EXPORT_COLUMNS,
    VARIANTS,
    is_export_row,
    read_export_rows,
    split_row_name,
)
from kd_keras.run_folder import TABLE_COLUMNS, RunFolder
from kd_keras.stages import EXTRA_STAGE_COLOR, STAGE_COLORS
from kd_keras.stages import STAGES as STAGE_ORDER


def stage_color(stage):
    """The plot colour of a stage; stages added later (e.g. a tuned
    distillation) are green. An exported model (`<stage>@<variant>`) has
    its stage's colour."""
    return STAGE_COLORS.get(split_row_name(stage)[0], EXTRA_STAGE_COLOR)


def load_stage_rows(run_dir):
    """The result rows of a run folder: its completed stages (the three
    pipeline stages in order, then any added stage, e.g. by `tuning`), then
    the rows of its current exports (`<stage>@<variant>`, in stage order)."""
    rows = RunFolder(run_dir).stage_rows()
    return rows + read_export_rows(run_dir, [r["stage"] for r in rows])


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


def _format_cells(rows, columns, formats):
    cells = [list(columns)]
    for row in rows:
        line = []
        for column in columns:
            value = row.get(column)
            if column in formats and value is not None:
                value = formats[column](value)
            elif isinstance(value, float):
                value = f"{value:.4f}" if "accuracy" in column or "loss" in column else f"{value:g}"
            line.append("" if value is None else str(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _ratio_lines(rows):
    lines = []
    for r in shipping_ratios(rows):
        what = "Keras models" if r["variant"] == "keras" else r["variant"]
        size = "-" if r["size_ratio"] is None else f"{r['size_ratio']:.2f}x"
        latency = "-" if r["latency_ratio"] is None else f"{r['latency_ratio']:.2f}x"
        accuracy = (
            ""
            if r["accuracy_points"] is None
            else (f"; student minus teacher test accuracy: {r['accuracy_points']:+.2f} points")
        )
        lines.append(
            f"teacher vs distilled student ({what}): the teacher is {size} "
            f"the size and {latency} the latency{accuracy}"
        )
    return lines


def format_table(rows):
    """A fixed-width text table of the headline columns (exported models'
    rows included), the distillation gain and the teacher/student ratios."""
    columns = (
        "stage",
        "depth",
        "params",
        "size_mb",
        "test_accuracy",
        "test_loss",
        "val_accuracy",
        "val_loss",
        "latency_ms",
    )
    lines = _format_cells(rows, columns, {})
    gain = distillation_gain(rows)
    if gain is not None:
        lines.append(f"distilled student vs baseline: {gain:+.2f} points of test accuracy")
    if any(map(is_export_row, rows)):
        lines += _ratio_lines(rows)
    return "\n".join(lines)


def format_export_table(rows, all_rows=None):
    """A fixed-width text table of exported models' rows: size (KB and
    share of the `.keras` file), test accuracy against the Keras model's on
    the same images, top-1 agreement, and one-image latency against the
    Keras model's measured the same way; then the teacher/student ratios
    of `all_rows` (default `rows`: pass the run's rows to compare with
    exports made earlier)."""
    exported = [r for r in rows if is_export_row(r)]
    columns = (
        "stage",
        "io",
        "size_kb",
        "of_keras",
        "test_accuracy",
        "keras_accuracy",
        "delta_points",
        "agreement",
        "latency_ms",
        "keras_ms",
        "speedup",
    )
    shown = [
        {
            **r,
            "size_kb": r.get("size_bytes", 0) / 1024 if r.get("size_bytes") is not None else None,
            "of_keras": r.get("size_ratio"),
            "keras_accuracy": r.get("keras_test_accuracy"),
            "delta_points": r.get("accuracy_delta_points"),
            "keras_ms": r.get("keras_latency_ms"),
        }
        for r in exported
    ]
    formats = {
        "size_kb": lambda v: f"{v:.1f}",
        "of_keras": lambda v: f"{100 * v:.1f}%",
        "delta_points": lambda v: f"{v:+.2f}",
        "agreement": lambda v: f"{100 * v:.2f}%",
        "latency_ms": lambda v: f"{v:.3f}",
        "keras_ms": lambda v: f"{v:.3f}",
        "speedup": lambda v: f"{v:.2f}x",
    }
    lines = _format_cells(shown, columns, formats)
    if exported:
        lines.append(
            f"test images: {exported[0].get('test_images')}; latency: median of "
            f"{exported[0].get('latency_repeats')} warm one-image calls, the Keras "
            "model's measured the same way in the same process"
        )
    return "\n".join(lines + _ratio_lines(rows if all_rows is None else all_rows))


def write_results(run_dir, rows, **summary):
    """Writes `results.csv`, `results.json` and both plots into `run_dir`.

    Args:
        run_dir: the run folder.
        rows: result rows, one per stage.
        **summary: extra top-level fields of `results.json`.
    """
    run = RunFolder(run_dir)
    buffer = io.StringIO()
    # Exported models' columns only in runs that have exports.
    columns = TABLE_COLUMNS + (EXPORT_COLUMNS if any(map(is_export_row, rows)) else ())
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(run.results_csv, buffer.getvalue())
    exported = any(map(is_export_row, rows))
    atomic.write_json(
        run.results_json,
        {
            "rows": rows,
            "distillation_gain_points": distillation_gain(rows),
            "gain_over_baseline_points": gains_over_baseline(rows),
            **({"teacher_vs_student": shipping_ratios(rows)} if exported else {}),
            **summary,
        },
    )
    plot_test_accuracy(rows, run.bar_plot)
    plot_report(run.path, run.report_plot)


def write_results_or_reason(run_dir, rows, **summary):
    """`write_results`, unless the run folder cannot be written (a read-only
    folder or file system, a full disk): then nothing is written and the
    reason is returned, one line, for a reader that only prints the table.

    Returns:
        None once written, else why not.
    """
    run_dir = RunFolder(run_dir).path
    if not os.access(run_dir, os.W_OK):
        return (
            f"'{run_dir}' is read-only: the table is printed, its results files "
            "and plots are not rewritten"
        )
    try:
        write_results(run_dir, rows, **summary)
    except DiskWriteError as error:
        return f"{error.strerror}; the table is printed, its results files are not rewritten"
    return None


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(figure, path):
    with atomic.atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, bbox_inches="tight", format="png")


def bar_entries(rows):
    """What the test-accuracy bar chart draws, one dict per row: `label`,
    `value` (percent), `color`, `hatch` (exported models are hatched in
    their stage's colour) and `note` (T and alpha of a distillation; size
    and latency of an exported model)."""
    entries = []
    for row in rows:
        exported = is_export_row(row)
        note = ""
        if exported:
            size = row.get("size_bytes")
            parts = [
                f"{size / 1024:.0f} KB" if size is not None else None,
                f"{row['latency_ms']:.3f} ms" if row.get("latency_ms") is not None else None,
            ]
            parts = [p for p in parts if p]
            note = f"  ({', '.join(parts)})" if parts else ""
        elif row.get("temperature") is not None:
            note = f"  (T={row['temperature']:.3g}, alpha={row['alpha']:.3g})"
        entries.append(
            {
                "label": row["stage"] if exported else f"{row['stage']} ({row['model']})",
                "value": 100 * row["test_accuracy"],
                "color": stage_color(row["stage"]),
                "hatch": "//" if exported else None,
                "note": note,
            }
        )
    return entries


def plot_test_accuracy(rows, path):
    """Horizontal bars of each row's test accuracy (exported models hatched)."""
    plt = _figure()
    figure, axis = plt.subplots(figsize=(7, 0.6 * len(rows) + 1.2))
    entries = bar_entries(rows)
    values = [e["value"] for e in entries]
    bars = axis.barh([e["label"] for e in entries], values, color=[e["color"] for e in entries])
    for bar, entry in zip(bars, entries):
        if entry["hatch"]:
            bar.set_hatch(entry["hatch"])
            bar.set_edgecolor("white")
        axis.text(
            entry["value"],
            bar.get_y() + bar.get_height() / 2,
            f" {entry['value']:.2f}%{entry['note']}",
            va="center",
            fontsize=8,
        )
    axis.invert_yaxis()
    axis.set_xlim(0, 100)
    axis.set_xlabel("test accuracy (%)")
    gain = distillation_gain(rows)
    title = "CIFAR-10 test accuracy"
    if gain is not None:
        title += f" (distillation gain {gain:+.2f} points)"
    axis.set_title(title)
    _save_figure(figure, path)
    plt.close(figure)


def history_curves(history):
    """Cross-entropy and accuracy curves of a stage's history rows.

    The distilled stage's `loss` is the blended distillation loss; its
    cross-entropy is `student_loss`, which is what gets plotted so the three
    stages share one scale.
    """

    def column(name):
        return [row.get(name) for row in history]

    distilled = bool(history) and "student_loss" in history[0]
    return {
        "epoch": column("epoch"),
        "train_loss": column("student_loss" if distilled else "loss"),
        "val_loss": column("val_student_loss" if distilled else "val_loss"),
        "train_accuracy": column("accuracy"),
        "val_accuracy": column("val_accuracy"),
    }


def validation_gap(baseline, other):
    """Per-epoch validation accuracy of `other` minus `baseline`, in points.

    Args:
        baseline, other: history rows (`read_history`) of two stages.

    Returns:
        `(epochs, points)`: the epochs both stages have, and
        `100 * (other val_accuracy - baseline val_accuracy)` at each.
    """
    base = {row.get("epoch"): row.get("val_accuracy") for row in baseline}
    epochs, points = [], []
    for row in other:
        epoch, value = row.get("epoch"), row.get("val_accuracy")
        if epoch in base and value is not None and base[epoch] is not None:
            epochs.append(epoch)
            points.append(100.0 * (value - base[epoch]))
    return epochs, points


def validation_loss_gap(teacher, other):
    """Per-epoch validation cross-entropy of `other` minus the teacher's.

    Args:
        teacher: the teacher's history rows (`read_history`), compared epoch
            by epoch, or one number (the trained teacher's validation
            cross-entropy), compared with every epoch.
        other: a student stage's history rows. A distilled stage's
            cross-entropy is its `val_student_loss` (its `val_loss` is the
            blended distillation loss).

    Returns:
        `(epochs, differences)`: the epochs compared, and the student's
        validation cross-entropy minus the teacher's at each (closer to 0:
        closer to the teacher).
    """
    if isinstance(teacher, (int, float)):
        base = None
    else:
        reference = history_curves(teacher)
        base = dict(zip(reference["epoch"], reference["val_loss"]))
    curves = history_curves(other)
    epochs, differences = [], []
    for epoch, value in zip(curves["epoch"], curves["val_loss"]):
        if base is None and value is not None:
            epochs.append(epoch)
            differences.append(value - teacher)
        elif base is not None and base.get(epoch) is not None and value is not None:
            epochs.append(epoch)
            differences.append(value - base[epoch])
    return epochs, differences


def plot_report(run_dir, path):
    """Four panels, epoch by epoch: training and validation cross-entropy and
    accuracy of every stage; each student's validation accuracy minus the
    baseline's (above zero early on: the distilled student learns faster);
    and each student's validation cross-entropy minus the teacher's (closer
    to zero: the student's loss is closer to its teacher's): epoch by epoch
    when the teacher was trained in the run for as many epochs as the
    students, else minus the trained teacher's final value."""
    plt = _figure()
    figure, grid = plt.subplots(2, 2, figsize=(14, 8.5))
    axes = grid.ravel()
    run = RunFolder(run_dir)
    extra = sorted(p.stem for p in run.history_dir.glob("*.csv") if p.stem not in STAGE_ORDER)
    baseline = run.history("student_baseline")
    teacher = run.history("teacher")
    student_epochs = len(baseline or run.history("student_distilled") or [])
    loss_title = "validation cross-entropy minus the teacher's (same epoch)"
    if not teacher or len(teacher) != student_epochs:
        # A reused teacher, or a teacher schedule of another length: compare
        # with the teacher the students learned from.
        row = run.stage_row("teacher") or {}
        teacher = row.get("val_loss")
        loss_title = "validation cross-entropy minus the trained teacher's"
    for stage in (*STAGE_ORDER, *extra):
        history = run.history(stage)
        if not history:
            continue
        curves = history_curves(history)
        color = stage_color(stage)
        axes[0].plot(
            curves["epoch"], curves["train_loss"], color=color, ls="--", label=f"{stage} train"
        )
        axes[0].plot(curves["epoch"], curves["val_loss"], color=color, label=f"{stage} val")
        axes[1].plot(
            curves["epoch"], curves["train_accuracy"], color=color, ls="--", label=f"{stage} train"
        )
        axes[1].plot(curves["epoch"], curves["val_accuracy"], color=color, label=f"{stage} val")
        if baseline and stage not in ("teacher", "student_baseline"):
            epochs, points = validation_gap(baseline, history)
            axes[2].plot(epochs, points, color=color, marker=".", label=stage)
        if teacher is not None and stage != "teacher":
            epochs, differences = validation_loss_gap(teacher, history)
            axes[3].plot(epochs, differences, color=color, marker=".", label=stage)
    axes[2].axhline(0.0, color="#888888", lw=1)
    axes[3].axhline(0.0, color="#888888", lw=1)
    axes[0].set_title("cross-entropy (dashed: train, solid: validation)")
    axes[1].set_title("accuracy (dashed: train, solid: validation)")
    axes[2].set_title("validation accuracy minus the baseline's (points)")
    axes[3].set_title(loss_title)
    for axis in axes:
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=7, loc="lower right")
    for axis in axes[2:]:
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    _save_figure(figure, path)
    plt.close(figure)
