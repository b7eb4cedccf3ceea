"""Results table and plots of a run folder."""

import csv
import io
from pathlib import Path

from kd_keras import atomic
from kd_keras.callbacks import read_history
from kd_keras.stages import EXTRA_STAGE_COLOR, STAGE_COLORS
from kd_keras.stages import STAGES as STAGE_ORDER

TABLE_COLUMNS = (
    "stage",
    "model",
    "depth",
    "params",
    "flops",
    "size_mb",
    "test_accuracy",
    "test_loss",
    "val_accuracy",
    "val_loss",
    "latency_ms",
    "train_seconds",
    "best_epoch",
    "epochs",
    "distiller_val_loss",
    "temperature",
    "alpha",
)


def stage_color(stage):
    """The plot colour of a stage; stages added later (e.g. a tuned
    distillation) are green."""
    return STAGE_COLORS.get(stage, EXTRA_STAGE_COLOR)


def load_stage_rows(run_dir):
    """The result rows of a run folder's completed stages: the three
    pipeline stages in order, then any added stage (e.g. by `tuning`)."""
    folder = Path(run_dir) / "stages"
    extra = sorted(p.stem for p in folder.glob("*.json") if p.stem not in STAGE_ORDER)
    rows = []
    for stage in (*STAGE_ORDER, *extra):
        row = atomic.read_json(folder / f"{stage}.json")
        if row is not None:
            rows.append(row)
    return rows


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
        if r["stage"] not in ("teacher", "student_baseline")
    }


def format_table(rows):
    """A fixed-width text table of the headline columns."""
    columns = ("stage", "depth", "params", "size_mb", "test_accuracy", "test_loss",
               "val_accuracy", "val_loss", "latency_ms")
    cells = [list(columns)]
    for row in rows:
        line = []
        for column in columns:
            value = row.get(column)
            if isinstance(value, float):
                value = f"{value:.4f}" if "accuracy" in column or "loss" in column else f"{value:g}"
            line.append("" if value is None else str(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    gain = distillation_gain(rows)
    if gain is not None:
        lines.append(f"distilled student vs baseline: {gain:+.2f} points of test accuracy")
    return "\n".join(lines)


def write_results(run_dir, rows, **summary):
    """Writes `results.csv`, `results.json` and both plots into `run_dir`.

    Args:
        run_dir: the run folder.
        rows: result rows, one per stage.
        **summary: extra top-level fields of `results.json`.
    """
    run_dir = Path(run_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TABLE_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(run_dir / "results.csv", buffer.getvalue())
    atomic.write_json(
        run_dir / "results.json",
        {
            "rows": rows,
            "distillation_gain_points": distillation_gain(rows),
            "gain_over_baseline_points": gains_over_baseline(rows),
            **summary,
        },
    )
    plot_test_accuracy(rows, run_dir / "test_accuracy_bar.png")
    plot_report(run_dir, run_dir / "report.png")


def read_results_csv(path):
    """Reads `results.csv` into a list of dicts (numbers parsed)."""
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        for key, value in row.items():
            try:
                row[key] = float(value) if value not in ("", None) else None
            except ValueError:
                pass
    return rows


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(figure, path):
    with atomic.atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, bbox_inches="tight", format="png")


def plot_test_accuracy(rows, path):
    """Horizontal bars of each stage's test accuracy."""
    plt = _figure()
    figure, axis = plt.subplots(figsize=(7, 0.6 * len(rows) + 1.2))
    labels = [f"{r['stage']} ({r['model']})" for r in rows]
    values = [100 * r["test_accuracy"] for r in rows]
    bars = axis.barh(labels, values, color=[stage_color(r["stage"]) for r in rows])
    for bar, value, row in zip(bars, values, rows):
        note = ""
        if row.get("temperature") is not None:
            note = f"  (T={row['temperature']:.3g}, alpha={row['alpha']:.3g})"
        axis.text(value, bar.get_y() + bar.get_height() / 2, f" {value:.2f}%{note}",
                  va="center", fontsize=8)
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


def plot_report(run_dir, path):
    """Training and validation cross-entropy and accuracy of every stage."""
    plt = _figure()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    history_dir = Path(run_dir) / "history"
    extra = sorted(p.stem for p in history_dir.glob("*.csv") if p.stem not in STAGE_ORDER)
    for stage in (*STAGE_ORDER, *extra):
        history = read_history(history_dir / f"{stage}.csv")
        if not history:
            continue
        curves = history_curves(history)
        color = stage_color(stage)
        axes[0].plot(curves["epoch"], curves["train_loss"], color=color, ls="--",
                     label=f"{stage} train")
        axes[0].plot(curves["epoch"], curves["val_loss"], color=color, label=f"{stage} val")
        axes[1].plot(curves["epoch"], curves["train_accuracy"], color=color, ls="--",
                     label=f"{stage} train")
        axes[1].plot(curves["epoch"], curves["val_accuracy"], color=color,
                     label=f"{stage} val")
    axes[0].set_title("cross-entropy (dashed: train, solid: validation)")
    axes[1].set_title("accuracy (dashed: train, solid: validation)")
    for axis in axes:
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    _save_figure(figure, path)
    plt.close(figure)
