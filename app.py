"""Streamlit launcher for kd-keras: `streamlit run app.py`.

A thin UI over the library. It imports no Keras or TensorFlow and trains
nothing itself: a run is a separate `python -m kd_keras run ...` process (a
T/alpha search a `python -m tuning ...` process) started in its own
session, so it survives page reloads; the app polls the run folder's
`progress.json` and reads its results files. This file holds the page's
widgets; everything else lives in `kd_app/` (see its `__init__.py`).

The operator fixes the runs root (`streamlit run app.py -- --runs DIR`, else
`KD_KERAS_RUNS_DIR`, else `runs`) and where data may come from
(`--data-root DIR` / `KD_KERAS_DATA_DIR`, the runs root, `KD_KERAS_CIFAR10`);
the page cannot change them (`kd_app.confine`).
"""

import sys
import time
from pathlib import Path

import altair as alt
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kd_app import checks, confine, launching, results, searches, settings  # noqa: E402
from kd_app import run_state as runs  # noqa: E402
from kd_app.files import tail  # noqa: E402
from kd_keras.errors import DamagedFileError, LaunchError  # noqa: E402
from kd_keras.models.depth import MAX_DEPTH, MIN_DEPTH  # noqa: E402
from kd_keras.report.reference import reference_table_of  # noqa: E402
from kd_keras.run_folder import TUNERS, RunFolder, SearchFolder  # noqa: E402
from kd_keras.stages import STAGE_COLORS  # noqa: E402

TABS = ["Launch", "Watch", "Results", "Tuning"]
POLL_S = 2.0  # A live run's or search's part of the page refreshes this often.
STOP_GRACE_S = 20  # A run asked to stop that is still running after this is flagged.
NEW_TEACHER = "Train a new teacher"
OTHER_TEACHER = "Another .keras file in the runs folder..."
# Material icons (bundled with Streamlit, so they render without emoji fonts).
STATUS_ICONS = {
    "starting": ":material/hourglass_top:",
    "running": ":material/directions_run:",
    "finished": ":material/check_circle:",
    "failed": ":material/error:",
    "stopped": ":material/stop_circle:",
    "died": ":material/cancel:",
    "exited": ":material/warning:",
}
# The launch form's number boxes, in form order: field -> (step, format, help).
NUMBER_INPUTS = {
    "epochs": (1, None, None),
    "temperature": (0.5, "%.2f", "Softmax temperature of the soft targets; must be > 0."),
    "alpha": (
        0.05,
        "%.2f",
        "Weight of the hard-label loss, in [0, 1]; 1 - alpha weights the teacher's soft targets.",
    ),
    "seed": (1, None, None),
    "teacher_depth": (
        1,
        None,
        f"ResNet depth, {MIN_DEPTH} to {MAX_DEPTH}; 6n+2 gives ResNet-20/32/56.",
    ),
    "student_depth": (1, None, f"ResNet depth, {MIN_DEPTH} to {MAX_DEPTH}."),
    "train_per_class": (1, None, None),
}
MODEL_HELP = (
    "Empty: a ResNet of the depth above. Or resnet<depth>, a keras.applications "
    "name (mobilenetv3small, mobilenetv3large, efficientnetb0-b7, "
    "efficientnetv2b0-b3, efficientnetv2s; options after a colon, e.g. "
    "mobilenetv3small:alpha=0.35), or a .keras file."
)


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def guarded(render, *args):
    """Runs one part of the page; an unexpected error becomes an st.error
    in that part instead of a traceback page."""
    try:
        render(*args)
    except Exception as error:  # noqa: BLE001 - shown, not thrown.
        st.error(
            f"This part of the page could not be shown: {type(error).__name__}: "
            f"{error}. Check the run folder's files; the rest of the app still works."
        )


def live_part(body, folder, was_alive, *args):
    """`body(folder, was_alive, *args)` as a fragment that redraws itself
    every POLL_S seconds while its run or search is alive."""
    st.fragment(guarded, run_every=POLL_S if was_alive else None)(body, folder, was_alive, *args)


def attempt(message_key, prefix, action, *args):
    """`action(*args)`; on a `LaunchError`, None, with the error left for
    `show_message(message_key)` after `prefix`."""
    try:
        return action(*args)
    except LaunchError as error:
        st.session_state[message_key] = ("error", f"{prefix}{error}")
        return None


def preset_box(column, label, key, default=None, **kwargs):
    """A select box of the presets, on `default` (else "quick") until changed."""
    names = list(settings.presets())
    default = next((n for n in (default, "quick") if n in names), names[0])
    return column.selectbox(label, names, key=key, index=names.index(default), **kwargs)


def show(message):
    """Shows a `(kind, text)` message (kind: st.info, st.error, ...), if any."""
    if message:
        kind, text = message
        getattr(st, kind)(text)


def show_message(key):
    """Shows (once) a message a button callback left in session state."""
    show(st.session_state.pop(key, None))


def show_errors(errors):
    for error in errors:
        st.error(error)


def show_table(frame, formats=None):
    st.table(results.styled(frame, formats), hide_index=True)


def status_line(state, *extras):
    """`**name**: icon status (process pid)` and any extra details."""
    return (
        f"**{state.name}**: {STATUS_ICONS.get(state.status, '')} {state.status}"
        + (f" (process {state.pid})" if state.pid else "")
        + "".join(extras)
    )


def teacher_picker(runs_dir, key, *, allow_new):
    """A select box of trained teachers found under the runs folder (plus
    another path); `chosen_teacher(key)` reads the choice."""
    found = [str(p) for p in runs.find_teachers(runs_dir)]
    options = ([NEW_TEACHER] if allow_new else []) + found + [OTHER_TEACHER]
    choice = st.selectbox(
        "Teacher",
        options,
        key=key,
        help="Reuse a trained teacher (.keras): its stage is skipped. Teachers "
        "of runs under the runs folder are listed; another one must be copied "
        "into the runs folder first.",
    )
    if choice == OTHER_TEACHER:
        st.text_input(
            "Teacher .keras path",
            key=f"{key}_path",
            placeholder="teachers/my_teacher.keras",
            help=f"Relative to the runs folder '{runs_dir}' (only files inside it).",
        )


def chosen_teacher(key):
    """The .keras path a `teacher_picker` holds, or '' for a new teacher."""
    choice = st.session_state.get(key, NEW_TEACHER)
    if choice == OTHER_TEACHER:
        return st.session_state.get(f"{key}_path", "").strip()
    return "" if choice == NEW_TEACHER else choice


def curves_chart(folder):
    """Loss and accuracy per epoch (teacher red, baseline blue, distilled
    orange; dashed train, solid validation)."""
    frame = results.curves_frame(folder)
    if frame.empty:
        st.caption("No epoch finished yet: curves appear after the first epoch.")
        return
    stages = list(STAGE_COLORS)
    for column, metric in zip(st.columns(2), ("cross-entropy", "accuracy")):
        chart = (
            alt.Chart(
                frame[frame["metric"] == metric],
                title=f"{metric} (dashed: train, solid: validation)",
            )
            .mark_line(point=alt.OverlayMarkDef(size=20))
            .encode(
                x=alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1)),
                y=alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False)),
                color=alt.Color(
                    "stage:N",
                    scale=alt.Scale(domain=stages, range=[STAGE_COLORS[s] for s in stages]),
                    legend=alt.Legend(orient="bottom"),
                ),
                strokeDash=alt.StrokeDash(
                    "split:N",
                    scale=alt.Scale(domain=["train", "val"], range=[[5, 3], [1, 0]]),
                    legend=None,  # The title says it: dashed train, solid val.
                ),
                detail="split:N",
                tooltip=["stage", "split", "epoch", alt.Tooltip("value:Q", format=".4f")],
            )
        )
        column.altair_chart(chart, width="stretch")


def log_tail(path, lines=30, expanded=False, label="Log (last lines)"):
    if path is None:
        return
    with st.expander(f"{label}: {path}", expanded=expanded):
        st.code(tail(path, lines) or "(empty)", language=None)


# --------------------------------------------------------------------------
# Sidebar
# --------------------------------------------------------------------------


def sidebar():
    st.sidebar.header("kd-keras")
    runs_path = settings.runs_root()
    st.sidebar.caption(
        f"Runs folder: `{runs_path}` (set by whoever started the app: "
        f"`-- --runs DIR` or ${settings.RUNS_ENV_VAR})."
    )
    data_path = st.sidebar.text_input(
        "Data source",
        value=settings.default_data_path(),
        key="data_path",
        help="A CIFAR-10 archive or cifar-10-batches-py/ folder, an image folder "
        "(one subfolder per class) or a .npz file, inside the data folder "
        f"(${settings.DATA_ROOT_ENV_VAR}) or the runs folder; relative paths are "
        f"taken from the first of these. Default ${settings.DATA_ENV_VAR}.",
    ).strip()
    names = [p.name for p in runs.list_runs(runs_path)]
    states = {name: runs.run_state(runs_path / name) for name in names}
    wanted = st.query_params.get("run")
    if wanted in names and not st.session_state.get("_run_from_url"):
        st.session_state["_run_from_url"] = True  # Only on the first load.
        st.session_state["run"] = wanted
    if names:
        if st.session_state.get("run") not in names:
            st.session_state["run"] = names[0]
        st.sidebar.selectbox(
            "Run",
            names,
            key="run",
            format_func=lambda n: f"{n} ({states[n].status})",
            help="The run the Watch and Results tabs show.",
        )
    else:
        st.session_state.pop("run", None)
        st.sidebar.caption(f"No runs in '{runs_path}' yet.")
    st.sidebar.button("Refresh", key="refresh")
    return runs_path, data_path, st.session_state.get("run")


# --------------------------------------------------------------------------
# Launch tab
# --------------------------------------------------------------------------


def launch_options(data_path):
    """The launch form's values as `LaunchOptions` (from session state)."""
    s = st.session_state
    return launching.LaunchOptions(
        preset=s.get("preset", "quick"),
        name=(s.get("run_name") or "").strip(),
        data=data_path,
        teacher=chosen_teacher("teacher_choice"),
        teacher_model=(s.get("teacher_model") or "").strip(),
        student_model=(s.get("student_model") or "").strip(),
        strategy="" if s.get("strategy", "default") == "default" else s["strategy"],
        devices=(s.get("devices") or "").strip(),
        sync_batch_norm=bool(s.get("sync_batch_norm")),
        if_exists=s.get("if_exists", "refuse"),
        **{field: s.get(field) for field in NUMBER_INPUTS},
    )


def on_start(runs_dir, data_path):
    started = attempt(
        "launch_msg", "Not started. ", launching.start_run, launch_options(data_path), runs_dir
    )
    if not started:
        return
    folder, pid = started
    st.session_state["run"] = folder.name
    st.session_state["launch_msg"] = (
        "success",
        f"Started run '{folder.name}' (process {pid}) in {folder}. "
        "Follow it in the Watch tab; it keeps going if you close this page.",
    )


def on_resume(folder, runs_dir, data_path):
    resumed = attempt(
        "watch_msg", "Not resumed. ", launching.resume_run, folder, runs_dir, data_path
    )
    if resumed:
        st.session_state["watch_msg"] = (
            "success",
            f"Resumed run '{resumed[0].name}' (process "
            f"{resumed[1]}) from its last completed epoch.",
        )


def on_stop(folder, message_key):
    pid = runs.run_state(folder).pid
    text = attempt(message_key, "", launching.stop_run, folder)
    if text:
        st.session_state.setdefault("stop_requests", {})[str(folder)] = (time.time(), pid)
        st.session_state[message_key] = ("info", text)


def launch_tab(runs_dir, data_path):
    st.subheader("Start a run")
    st.caption(
        "Trains a teacher, a student baseline and a distilled student as a "
        "separate `python -m kd_keras run` process; leave a field empty to "
        "use the preset's value."
    )
    preset = preset_box(st, "Preset", "preset", format_func=settings.describe_preset)
    placeholders = launching.placeholders(preset)
    columns = st.columns(4) + st.columns(4)
    for column, (field, (step, number_format, text)) in zip(columns, NUMBER_INPUTS.items()):
        column.number_input(
            launching.NUMBER_LABELS[field],
            value=None,
            step=step,
            format=number_format,
            key=field,
            placeholder=placeholders[field],
            help=text,
        )
    columns[-1].text_input("Run name", key="run_name", placeholder=f"auto: {preset}-<date>-<time>")
    teacher_picker(runs_dir, "teacher_choice", allow_new=True)
    m1, m2 = st.columns(2)
    m1.text_input(
        "Teacher model", key="teacher_model", placeholder="resnet (depth above)", help=MODEL_HELP
    )
    m2.text_input(
        "Student model", key="student_model", placeholder="resnet (depth above)", help=MODEL_HELP
    )
    with st.expander("Devices"):
        d1, d2, d3 = st.columns([1, 2, 1])
        d1.selectbox(
            "Strategy",
            ["default", "mirrored"],
            key="strategy",
            help="default: one device. mirrored: every GPU of this machine "
            "(or the devices listed), one global batch split over them. "
            "Several machines: `--strategy multi_worker` on the command line "
            "(docs/distribute.md).",
        )
        d2.text_input(
            "Devices (mirrored)",
            key="devices",
            placeholder="every GPU",
            help="comma-separated, e.g. /gpu:0,/gpu:1",
        )
        d3.checkbox(
            "Synchronised batch norm",
            key="sync_batch_norm",
            help="batch-norm statistics over the global batch (changes results)",
        )
    st.radio(
        "If the run folder exists",
        list(launching.IF_EXISTS),
        key="if_exists",
        horizontal=True,
        help="resume continues an interrupted run from its last epoch; overwrite replaces it.",
    )

    options = launch_options(data_path)
    resume = options.if_exists == "resume"
    if resume:
        st.info(
            "Resume continues the run named in 'Run name' with the settings "
            "saved in its config.json; the other fields are ignored."
        )
    show_errors(launching.form_errors(options, runs_dir))
    st.button("Start", type="primary", key="start", on_click=on_start, args=(runs_dir, data_path))
    show_message("launch_msg")

    for state in runs.alive_runs(runs_dir):
        c1, c2 = st.columns([4, 1])
        c1.info(f"Run '{state.name}' is {state.status} (process {state.pid}).")
        c2.button(
            "Stop",
            key=f"stop_launch_{state.name}",
            on_click=on_stop,
            args=(state.path, "launch_msg"),
        )
    with st.expander("Command line of this launch"):
        out = Path(runs_dir) / (options.name or f"{preset}-<date>-<time>")
        try:
            argv = (
                launching.resume_command(out, options.data)
                if resume
                else launching.run_command(launching.resolved_options(options, runs_dir), out)
            )
        except ValueError as error:  # LaunchError, or a value of the wrong type.
            argv = [str(error)]
        st.code(" ".join(argv), language="bash")


# --------------------------------------------------------------------------
# Watch tab
# --------------------------------------------------------------------------


def watch_body(folder, was_alive, runs_dir, data_path):
    state = runs.run_state(folder)
    if was_alive and not state.alive:
        st.rerun()  # The run just ended: refresh the whole page once.
    summary = runs.progress_summary(state)
    st.markdown(status_line(state))
    show(runs.status_message(state))
    stage = summary["stage"]
    if stage:
        overall, in_stage = runs.progress_texts(summary, state.alive)
        st.progress(summary["overall_fraction"], text=overall)
        st.progress(summary["stage_fraction"], text=in_stage)
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Elapsed", runs.format_duration(summary["elapsed_s"]))
        c2.metric(
            "Time left (estimate)", runs.format_duration(summary["eta_s"]) if state.alive else "-"
        )
        val_accuracy = (state.progress.get("metrics") or {}).get("val_accuracy")
        if val_accuracy is None:  # A new stage: its first epoch is not done yet.
            val_accuracy = results.last_value(folder, stage, "val_accuracy")
        c3.metric("Last val accuracy", "-" if val_accuracy is None else f"{val_accuracy:.4f}")
        c4.metric("Completed stages", f"{len(summary['completed_stages'])}/{summary['stages']}")
        if state.alive and summary["eta_s"] is not None:
            st.caption("Time left = elapsed time per completed epoch x epochs to go.")
    request = st.session_state.get("stop_requests", {}).get(str(folder))
    if launching.stop_overdue(state, request, STOP_GRACE_S, time.time()):
        st.warning(
            f"Stop was asked {runs.format_duration(time.time() - request[0])} ago but the "
            "run is still going: a stop signal that arrives while kd_keras loads "
            "the data can be lost. Press Stop again."
        )
    if state.alive:
        st.button(
            "Stop",
            key="stop_watch",
            on_click=on_stop,
            args=(state.path, "watch_msg"),
            help="SIGTERM: the run stops cleanly after the current batch "
            "(status 'stopped'); resume it later.",
        )
    elif state.status in ("stopped", "failed", "died", "exited") and state.config:
        st.button(
            "Resume",
            key="resume_watch",
            on_click=on_resume,
            args=(state.path, runs_dir, data_path),
            help="python -m kd_keras run --resume with the run's saved settings.",
        )
    show_message("watch_msg")
    curves_chart(folder)
    log_tail(state.log_path, expanded=state.status in ("failed", "exited", "died"))


def watch_tab(runs_dir, run_name, data_path):
    if not run_name:
        st.info("No run yet: start one in the Launch tab.")
        return
    folder = Path(runs_dir) / run_name
    live_part(watch_body, folder, runs.run_state(folder).alive, runs_dir, data_path)


# --------------------------------------------------------------------------
# Results tab
# --------------------------------------------------------------------------


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
            reference = reference_table_of(run.path)
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


# --------------------------------------------------------------------------
# Tuning tab
# --------------------------------------------------------------------------


def on_start_search(runs_dir, data_path):
    s = st.session_state
    options = searches.TuneOptions(
        name=(s.get("search_name") or "").strip(),
        teacher=chosen_teacher("tune_teacher"),
        data=data_path,
        preset=s.get("tune_preset", "quick"),
        tuner=s.get("tuner", searches.TuneOptions.tuner),
        trials=s.get("trials"),
        epochs=s.get("trial_epochs"),
    )
    started = attempt("tune_msg", "Search not started. ", searches.start_search, options, runs_dir)
    if not started:
        return
    folder, pid = started
    s["search"] = folder.name
    s["tune_msg"] = ("success", f"Started search '{folder.name}' (process {pid}).")


def on_stop_search(folder):
    text = attempt("tune_msg", "", searches.stop_search, folder)
    if text:
        st.session_state["tune_msg"] = ("info", text)


def on_run_best(runs_dir, data_path, teacher, temperature, alpha):
    s = st.session_state
    started = attempt(
        "tune_msg",
        "Run not started. ",
        searches.start_best_run,
        teacher,
        temperature,
        alpha,
        runs_dir,
        data_path,
        s.get("best_preset", "quick"),
        (s.get("best_run_name") or "").strip(),
    )
    if not started:
        return
    folder, pid = started
    s["run"] = folder.name
    s["tune_msg"] = (
        "success",
        f"Started run '{folder.name}' (process {pid}) with "
        f"T={temperature:g}, alpha={alpha:g}: see the Watch tab.",
    )


def best_run_form(state, runs_dir, data_path):
    """The search's best T and alpha, and a button that starts a run with them."""
    best = state.best
    c1, c2, c3 = st.columns(3)
    c1.metric("Best T", f"{best['temperature']:g}")
    c2.metric("Best alpha", f"{best['alpha']:g}")
    c3.metric("Score", "-" if best.get("score") is None else f"{best['score']:.4f}")
    st.caption(f"From {best['source']}" + (" (search still running)" if state.alive else ""))
    errors = checks.check_hyperparameters(best["temperature"], best["alpha"])
    show_errors(errors)
    c1, c2 = st.columns(2)
    preset_box(
        c1,
        "Preset of the run",
        "best_preset",
        default=state.preset,
        help="The search's own preset gives the same data and recipe.",
    )
    c2.text_input("Run name", key="best_run_name", placeholder="auto")
    st.button(
        f"Start a distillation run with T={best['temperature']:g}, alpha={best['alpha']:g}",
        key="run_best",
        disabled=bool(errors),
        on_click=on_run_best,
        args=(runs_dir, data_path, state.teacher, best["temperature"], best["alpha"]),
    )


def search_body(folder, was_alive, runs_dir, data_path):
    state = searches.search_state(folder)
    if was_alive and not state.alive:
        st.rerun()
    st.markdown(
        status_line(
            state,
            f", preset {state.preset}" if state.preset else "",
            f", teacher `{state.teacher}`" if state.teacher else "",
        )
    )
    if state.planned:
        st.progress(
            min(1.0, state.completed / state.planned),
            text=f"{state.completed} of {state.planned} trials completed",
        )
    show(searches.status_message(state))
    if state.alive:
        st.button("Stop search", key="stop_search", on_click=on_stop_search, args=(folder,))
    if state.trials is not None:
        st.dataframe(state.trials, hide_index=True, width="stretch", key="trials_table")
    elif state.status != "exited":
        st.caption("No trial finished yet (trials.csv appears after the first).")
    best = state.best
    if best and best.get("temperature") is not None and best.get("alpha") is not None:
        best_run_form(state, runs_dir, data_path)
    plot = SearchFolder(folder).plot_file
    if plot.is_file() and confine.own_file(folder, plot):
        st.image(str(plot), caption=plot.name, width="stretch")
    log_tail(state.log_path, expanded=state.status == "exited")


def tuning_tab(runs_dir, data_path):
    st.subheader("Search T and alpha")
    st.caption(
        "Runs `python -m tuning` as a separate process: distillation trials "
        "against one trained teacher, each with another temperature T and "
        "alpha; the trials arrive in trials.csv and the best in best.json."
    )
    if not settings.tuning_available():
        st.warning(
            "The tuning package is not in this checkout (no tuning/ folder "
            "next to app.py): existing searches can be shown, new ones "
            "cannot be started."
        )
    teacher_picker(runs_dir, "tune_teacher", allow_new=False)
    c1, c2, c3, c4, c5 = st.columns(5)
    preset_box(
        c1,
        "Preset",
        "tune_preset",
        help="The kd_keras preset giving the data subset and recipe of each trial.",
    )
    c2.selectbox(
        "Tuner",
        TUNERS,
        key="tuner",
        index=TUNERS.index(searches.TuneOptions.tuner),
        help="bayesian: Gaussian-process Bayesian optimisation; random; hyperband.",
    )
    c3.number_input("Trials", min_value=1, value=10, step=1, key="trials")
    c4.number_input("Epochs per trial", min_value=1, value=3, step=1, key="trial_epochs")
    c5.text_input("Search name", key="search_name", placeholder="auto: search-<date>-<time>")
    st.button(
        "Start search", key="start_search", on_click=on_start_search, args=(runs_dir, data_path)
    )
    show_message("tune_msg")

    found = [p.name for p in searches.list_searches(runs_dir)]
    if not found:
        st.info(f"No searches in '{searches.searches_dir(runs_dir)}' yet.")
        return
    if st.session_state.get("search") not in found:
        st.session_state["search"] = found[0]
    name = st.selectbox("Search", found, key="search")
    folder = searches.searches_dir(runs_dir) / name
    live_part(search_body, folder, searches.search_state(folder).alive, runs_dir, data_path)


# --------------------------------------------------------------------------
# Page
# --------------------------------------------------------------------------


def main():
    st.set_page_config(page_title="kd-keras", layout="wide")
    st.title("Knowledge distillation on CIFAR-10")
    try:
        runs_dir, data_path, run_name = sidebar()
    except Exception as error:  # noqa: BLE001 - shown, not thrown.
        st.error(
            f"The runs folder cannot be read: {type(error).__name__}: {error}. "
            "Start the app with a readable runs folder (`-- --runs DIR`)."
        )
        return
    # `?tab=results&run=<name>` opens that tab on that run (a link to share).
    wanted = str(st.query_params.get("tab", "")).capitalize()
    tabs = st.tabs(TABS, default=wanted if wanted in TABS else None, key="tab")
    parts = (
        (launch_tab, runs_dir, data_path),
        (watch_tab, runs_dir, run_name, data_path),
        (results_tab, runs_dir, run_name),
        (tuning_tab, runs_dir, data_path),
    )
    for tab, part in zip(tabs, parts):
        with tab:
            guarded(*part)


main()
