"""Results table and results files of a run folder (the plots:
`kd_keras.report.plots`; the gains and ratios: `kd_keras.report.gains`).

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
from kd_keras.export.spec import EXPORT_COLUMNS, is_export_row, read_export_rows
from kd_keras.report.gains import distillation_gain, gains_over_baseline, shipping_ratios
from kd_keras.report.plots import plot_report, plot_test_accuracy
from kd_keras.run_folder import TABLE_COLUMNS, RunFolder


def load_stage_rows(run_dir):
    """The result rows of a run folder: its completed stages (the three
    pipeline stages in order, then any added stage, e.g. by `tuning`), then
    the rows of its current exports (`<stage>@<variant>`, in stage order)."""
    rows = RunFolder(run_dir).stage_rows()
    return rows + read_export_rows(run_dir, [r["stage"] for r in rows])


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
            f"teacher vs distilled student ({what}): the teacher's file is {size} "
            f"the size and {latency} the latency of the student's{accuracy}"
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
