"""A run's results as the app shows them: the results table, the curves,
the exported models and their downloads, the teacher/student ratios.

The columns are kd_keras's (`kd_keras.run_folder.TABLE_COLUMNS`,
`kd_keras.export.spec.EXPORT_COLUMNS`); this module picks and formats them.

Only files that resolve inside the run folder are read or offered
(`kd_app.confine`): an export row whose `file` is absolute, holds `..` or
leads out through a symlink is left out, and so is a symlink in a
SavedModel folder that is zipped for download.
"""

import io
import zipfile
from pathlib import Path

import pandas as pd

from kd_keras import atomic
from kd_keras.errors import LaunchError
from kd_keras.export.plan import run_stages
from kd_keras.export.spec import ROW_SEPARATOR, read_export_rows
from kd_keras.run_folder import TABLE_COLUMNS, RunFolder
from kd_keras.stages import STAGES

from . import confine
from .files import number, read_csv, read_or

# results.csv's columns the page leaves to the downloaded file.
DETAIL_COLUMNS = (
    "flops",
    "train_seconds",
    "best_epoch",
    "epochs",
    "distiller_val_loss",
    "temperature",
    "alpha",
)
# The columns of the app's results table, in results.csv's order.
SHOWN_COLUMNS = tuple(c for c in TABLE_COLUMNS if c not in DETAIL_COLUMNS)
# The columns of the app's table of exported models (rows `<stage>@<variant>`),
# of TABLE_COLUMNS and kd_keras.export.spec.EXPORT_COLUMNS: each measurement
# of the exported file beside the Keras model's.
EXPORT_TABLE_COLUMNS = (
    "stage",
    "io",
    "size_mb",
    "size_ratio",
    "test_accuracy",
    "keras_test_accuracy",
    "accuracy_delta_points",
    "agreement",
    "latency_ms",
    "keras_latency_ms",
    "speedup",
    "test_images",
)
# How each column is shown (pandas Styler formats); missing values show "-".
COLUMN_FORMATS = {
    "depth": "{:.0f}",
    "params": "{:,.0f}",
    "size_mb": "{:.3f}",
    "test_accuracy": "{:.4f}",
    "test_loss": "{:.4f}",
    "val_accuracy": "{:.4f}",
    "val_loss": "{:.4f}",
    "latency_ms": "{:.3f}",
    "size_ratio": lambda v: f"{100 * v:.1f}%",
    "keras_test_accuracy": "{:.4f}",
    "accuracy_delta_points": "{:+.2f}",
    "agreement": lambda v: f"{100 * v:.2f}%",
    "keras_latency_ms": "{:.3f}",
    "speedup": "{:.2f}x",
    "test_images": "{:.0f}",
}
# The columns of `ratios_table` and their formats.
RATIO_FORMATS = {
    "teacher / student size": "{:.2f}x",
    "teacher / student latency": "{:.2f}x",
    "student - teacher accuracy (points)": "{:+.2f}",
}


def styled(frame, formats=None):
    """`frame` as a pandas Styler: columns formatted by `COLUMN_FORMATS`
    updated with `formats`, missing values as '-'."""
    formats = {**COLUMN_FORMATS, **(formats or {})}
    return frame.style.format({k: v for k, v in formats.items() if k in frame.columns}, na_rep="-")


def read_history(folder, stage):
    """`history/<stage>.csv` as a DataFrame, or None."""
    run = RunFolder(folder)
    if not confine.own_file(run.path, run.history_file(stage)):
        return None
    rows = read_or(lambda: run.history(stage), [])
    return pd.DataFrame(rows) if rows else None


def last_value(folder, stage, column):
    """The last epoch's `column` in `history/<stage>.csv`, or None."""
    history = read_history(folder, stage) if stage else None
    if history is None or column not in history or not len(history):
        return None
    return number(history[column].iloc[-1])


def curves_frame(folder):
    """Per-epoch cross-entropy and accuracy of every stage, long format.

    Columns: `stage`, `epoch`, `split` ("train" / "val"), `metric`
    ("cross-entropy" / "accuracy"), `value`. As in kd_keras's report plot,
    the distilled stage's cross-entropy is its `student_loss` (its `loss`
    is the blended distillation loss), so the three stages share one scale.
    """
    parts = []
    for stage in STAGES:
        history = read_history(folder, stage)
        if history is None or "epoch" not in history:
            continue
        distilled = "student_loss" in history.columns
        columns = {
            ("train", "cross-entropy"): "student_loss" if distilled else "loss",
            ("val", "cross-entropy"): "val_student_loss" if distilled else "val_loss",
            ("train", "accuracy"): "accuracy",
            ("val", "accuracy"): "val_accuracy",
        }
        for (split, metric), column in columns.items():
            if column in history:
                parts.append(
                    pd.DataFrame(
                        {
                            "stage": stage,
                            "epoch": history["epoch"],
                            "split": split,
                            "metric": metric,
                            "value": pd.to_numeric(history[column], errors="coerce"),
                        }
                    )
                )
    if not parts:
        return pd.DataFrame(columns=["stage", "epoch", "split", "metric", "value"])
    return pd.concat(parts, ignore_index=True)


def results_table(folder):
    """The run's results as a DataFrame: `results.csv` when the run wrote it,
    else the rows of its completed stages (`stages/*.json`); None if none."""
    run = RunFolder(folder)
    table = read_csv(run.results_csv) if confine.own_file(run.path, run.results_csv) else None
    if table is not None and len(table):
        return table
    rows = read_or(run.stage_rows, []) if confine.own_file(run.path, run.stages_dir) else []
    return pd.DataFrame(rows) if rows else None


def shown_table(table):
    """The columns of a results table the page shows (`SHOWN_COLUMNS`)."""
    return table[[c for c in SHOWN_COLUMNS if c in table.columns]]


def has_export_rows(table):
    """True if a results table holds exported models' rows (`<stage>@<variant>`)."""
    return bool(table["stage"].astype(str).str.contains(ROW_SEPARATOR, regex=False).any())


def exported_models(folder):
    """The run's current exported models: the rows of
    `export/<stage>/<variant>.json` whose file exists and whose source model
    is unchanged, in stage then variant order, each with `path`, the
    exported file's (or SavedModel folder's) absolute path. A row whose
    `file` is not a relative name inside the run folder is left out."""
    folder = Path(folder)
    try:
        rows = read_export_rows(folder, run_stages(folder))
    except (OSError, ValueError, TypeError):  # A damaged row: nothing to offer.
        rows = []
    kept = []
    for row in rows:
        try:
            path = confine.within(folder, row.get("file"), "exported file")
        except (LaunchError, AttributeError):
            continue
        kept.append({**row, "path": path})
    return kept


def exported_table(rows):
    """`exported_models` rows as a DataFrame of `EXPORT_TABLE_COLUMNS`."""
    frame = pd.DataFrame(rows)
    return frame[[c for c in EXPORT_TABLE_COLUMNS if c in frame.columns]]


def download_name(path):
    """`(file name, mime type)` of an exported model's download: a
    SavedModel folder is zipped."""
    path = Path(path)
    if path.is_dir():
        return f"{path.name}.zip", "application/zip"
    return path.name, "application/octet-stream"


def download_bytes(folder, path):
    """The bytes of a run's file for a download button, or None if it is
    missing, leads out of the run folder `folder` (a symlink) or is a hard
    link (a file with another name, maybe outside)."""
    if not confine.own_file(folder, path) or not Path(path).is_file():
        return None
    try:
        return confine.read_own_file(path)
    except LaunchError:  # A hard link, or unreadable.
        return None


def export_download(path, folder=None):
    """`(bytes, file name, mime type)` of an exported model: a `.tflite` file
    as it is, a SavedModel folder as a zip of the folder's regular files
    (symlinks left out).

    Raises:
        LaunchError: `path` leads out of the run folder `folder` (default:
            the run folder two levels up, `export/<stage>/<file>`), or a
            file to send is a hard link (it may be a file outside).
    """
    path = Path(path)
    folder = Path(folder) if folder is not None else path.parent.parent.parent
    if not confine.own_file(folder, path):
        raise LaunchError(f"'{path}' leads out of the run folder '{folder}'; not offered.")
    if path.is_dir():
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for child in sorted(path.rglob("*")):
                if not child.is_symlink() and child.is_file() and confine.own_file(path, child):
                    name = str(Path(path.name) / child.relative_to(path))
                    archive.writestr(name, confine.read_own_file(child))
        return buffer.getvalue(), *download_name(path)
    return confine.read_own_file(path), *download_name(path)


def _saved_results(folder):
    """`results.json` as a dict (empty if absent or damaged)."""
    path = RunFolder(folder).results_json
    if not confine.own_file(folder, path):
        return {}
    return read_or(lambda: atomic.read_json_object(path, {}), {}) or {}


def teacher_vs_student(folder):
    """The teacher/distilled-student size and latency ratios of
    `results.json` (`kd_keras.report.gains.shipping_ratios`), or []."""
    ratios = _saved_results(folder).get("teacher_vs_student")
    return [r for r in ratios if isinstance(r, dict)] if isinstance(ratios, list) else []


def ratios_table(ratios):
    """`teacher_vs_student` ratios as a DataFrame: the variant, how many
    times larger and slower the teacher is, and the student's test-accuracy
    points minus the teacher's."""
    size, latency, points = RATIO_FORMATS
    return pd.DataFrame(
        {
            "as": [r.get("variant") for r in ratios],
            size: [r.get("size_ratio") for r in ratios],
            latency: [r.get("latency_ratio") for r in ratios],
            points: [r.get("accuracy_points") for r in ratios],
        }
    )


def distillation_gain(folder, table=None):
    """Test-accuracy points of the distilled student over its baseline."""
    gain = _saved_results(folder).get("distillation_gain_points")
    if isinstance(gain, (int, float)):
        return float(gain)
    table = results_table(folder) if table is None else table
    if table is None or "stage" not in table or "test_accuracy" not in table:
        return None
    by_stage = table.set_index("stage")["test_accuracy"]
    if {"student_baseline", "student_distilled"} <= set(by_stage.index):
        return 100 * float(by_stage["student_distilled"] - by_stage["student_baseline"])
    return None
