"""The Results tab: a run's table, gain, reference, plots, exports, downloads."""

from pathlib import Path

import streamlit as st

from kd_keras.errors import DamagedFileError
from kd_keras.report.reference import reference_table_of
from kd_keras.run_folder import RunFolder

from .. import confine, results
from .. import run_state as runs
from .common import curves_chart, show_table


def shipped_models(folder, run_name):
    """The run's exported models (`python -m kd_keras export`): their
    measurements against the Keras models, the teacher/student ratios as
    shipped, and a download button per exported file."""
    rows = results.exported_models(folder)
    if not rows:
        st.caption(
            "No exported models yet. `python -m kd_keras export "
            f"{folder} --format saved_model litert --quantize none int8` ships "
            "the distilled student as a SavedModel and LiteRT files, measured "
            "on the test set; they then appear here."
        )
        return
    st.markdown("**Shipped models** (`export/`, by `python -m kd_keras export`)")
    show_table(results.exported_table(rows), {"size_mb": "{:.4f}"})
    st.caption(
        "size_ratio: the file's size as a share of the stage's .keras file. "
        "keras_test_accuracy, keras_latency_ms: the stage's Keras model on the "
        "same test images, timed the same way (median one-image latency, warm) "
        "in the same process. agreement: share of test images where the "
        "exported model's top-1 class equals the Keras model's. io int8: the "
        "file takes int8 pixels and returns int8 logits (see its row in "
        "results.json for the scale and zero point)."
    )
    ratios = results.teacher_vs_student(folder)
    if ratios:
        st.markdown("**Teacher vs distilled student**, as Keras models and as shipped")
        show_table(results.ratios_table(ratios), results.RATIO_FORMATS)
    columns = st.columns(3)
    for index, row in enumerate(rows):
        name, mime = results.download_name(row["path"])
        columns[index % 3].download_button(
            f"Download {row['stage']} ({name})",
            lambda path=row["path"]: results.export_download(path, folder)[0],
            file_name=f"{run_name}-{row['source_stage']}-{name}",
            mime=mime,
            key=f"download_export_{row['stage']}",
        )


def results_tab(runs_dir, run_name):
    if not run_name:
        st.info(f"No runs in '{runs_dir}' yet: start one in the Launch tab.")
        return
    run = RunFolder(Path(runs_dir) / run_name)
    state = runs.run_state(run.path)
    st.subheader(f"Results of {run_name}")
    table = results.results_table(run.path)
    if table is None:
        st.info(f"Run '{run_name}' has no completed stage yet ({state.status}).")
    else:
        if not run.results_csv.is_file():
            st.caption("Partial results: the completed stages so far.")
        show_table(results.shown_table(table))
        st.caption(
            "size in MB, latency in ms per image (batch 1, CPU); "
            "accuracy as a fraction, loss as cross-entropy."
            + (
                " Rows <stage>@<variant> are exported models (below)."
                if results.has_export_rows(table)
                else ""
            )
        )
        gain = results.distillation_gain(run.path, table)
        if gain is not None:
            st.metric("Distilled student vs its baseline (test accuracy)", f"{gain:+.2f} points")
            st.caption(
                "student_distilled minus student_baseline test accuracy, in "
                "percentage points: same student, same initial weights and data "
                "order; only the loss differs."
            )
        try:
            own = all(confine.own_file(run.path, f) for f in (run.config_file, run.results_csv))
            reference = reference_table_of(run.path) if own else None
        except DamagedFileError:
            reference = None  # The config's damage is reported with the run.
        if reference is not None:
            with st.expander("Next to the reference table (kd_keras report --reference)"):
                st.markdown(reference)
        shipped_models(run.path, run_name)
    images = (
        (run.bar_plot, "Test accuracy"),
        (run.report_plot, "Training curves (kd_keras report.png)"),
    )
    for column, (image, caption) in zip(st.columns(2), images):
        if image.is_file() and confine.own_file(run.path, image):
            column.image(str(image), caption=caption, width="stretch")
    st.markdown("**Curves** (teacher red, baseline blue, distilled orange)")
    curves_chart(run.path)
    downloads = (
        (run.results_csv, "Download results.csv", "results.csv", "text/csv", "download_csv"),
        (
            run.model_file("student_distilled"),
            "Download the distilled student (.keras)",
            "student_distilled.keras",
            "application/octet-stream",
            "download_model",
        ),
    )
    for column, (path, label, name, mime, key) in zip(st.columns(2), downloads):
        data = results.download_bytes(run.path, path)
        if data is not None:
            column.download_button(label, data, file_name=f"{run_name}-{name}", mime=mime, key=key)
    if state.config:
        with st.expander("Config (config.json)"):
            st.json(state.config)
    if state.status in ("failed", "died", "exited"):
        st.error(
            f"This run did not finish ({state.status}): "
            f"{state.error or 'see the Watch tab and the log'}."
        )
