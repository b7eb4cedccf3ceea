"""The plots of a run folder: the test-accuracy bars and the four-panel
report. Keras-free; matplotlib is imported when a plot is drawn.
"""

from kd_keras import atomic
from kd_keras.export.spec import is_export_row, split_row_name
from kd_keras.report.gains import distillation_gain
from kd_keras.run_folder import RunFolder
from kd_keras.stages import EXTRA_STAGE_COLOR, STAGE_COLORS
from kd_keras.stages import STAGES as STAGE_ORDER


def stage_color(stage):
    """The plot colour of a stage; stages added later (e.g. a tuned
    distillation) are green. An exported model (`<stage>@<variant>`) has
    its stage's colour."""
    return STAGE_COLORS.get(split_row_name(stage)[0], EXTRA_STAGE_COLOR)


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
