"""Streamlit launcher for kd-keras: `streamlit run app.py`.

A thin UI over the library. It never imports kd_keras, Keras or TensorFlow
and trains nothing itself: a run is a separate `python -m kd_keras run ...`
process (a T/alpha search a `python -m tuning ...` process) started in its own
session, so it survives page reloads; the app polls the run folder's
`progress.json` and reads its results files. All file and process handling
lives in `kd_app/runs.py`.

Environment: `KD_KERAS_RUNS_DIR` (default `runs`) and `KD_KERAS_CIFAR10`
(the CIFAR-10 archive) give the sidebar's defaults.
"""

import sys
import time
from functools import partial
from pathlib import Path

import altair as alt
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kd_app import runs as kr  # noqa: E402

TABS = ["Launch", "Watch", "Results", "Tuning"]
STOP_GRACE_S = 20  # A run asked to stop that is still running after this is flagged.
NEW_TEACHER = "Train a new teacher"
OTHER_TEACHER = "Another .keras file..."
# Material icons (bundled with Streamlit, so they render without emoji fonts).
STATUS_ICONS = {
    "starting": ":material/hourglass_top:",
    "running": ":material/directions_run:",
    "finished": ":material/check_circle:",
    "failed": ":material/error:",
    "stopped": ":material/stop_circle:",
    "died": ":material/cancel:",
    "exited": ":material/warning:",
    "empty": "",
}
PRESET_NOTES = {
    "smoke": "seconds; a few hundred images and tiny ResNets (for tests)",
    "quick": "6-10 min on a 2-core CPU with native bfloat16 (longer without); "
    "10,000 images, ResNet-20 -> ResNet-8",
    "full": "about 1 hour a stage on a 2-core CPU with native bfloat16; all images, "
    "teacher depth 30, student depth 15",
    "paper": "days on a CPU; the full setting with 160 epochs a stage (for a GPU)",
}


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


def show_message(key):
    """Shows (once) a message a button callback left in session state."""
    message = st.session_state.pop(key, None)
    if message:
        kind, text = message
        getattr(st, kind)(text)


def show_errors(errors):
    for error in errors:
        st.error(error)


def teacher_picker(runs_dir, key, *, allow_new):
    """A select box of trained teachers found under the runs folder (plus
    another path); returns the chosen .keras path, or '' for a new one."""
    found = [str(p) for p in kr.find_teachers(runs_dir)]
    options = ([NEW_TEACHER] if allow_new else []) + found + [OTHER_TEACHER]
    choice = st.selectbox(
        "Teacher",
        options,
        key=key,
        help="Reuse a trained teacher (.keras): its stage is skipped. Teachers "
        "of runs under the runs folder are listed.",
    )
    if choice == OTHER_TEACHER:
        return st.text_input("Teacher .keras path", key=f"{key}_path").strip()
    return "" if choice == NEW_TEACHER else choice


def curves_chart(folder):
    """Loss and accuracy per epoch (teacher red, baseline blue, distilled
    orange; dashed train, solid validation)."""
    frame = kr.curves_frame(folder)
    if frame.empty:
        st.caption("No epoch finished yet: curves appear after the first epoch.")
        return
    stages = list(kr.STAGE_COLORS)
    columns = st.columns(2)
    for column, metric in zip(columns, ("cross-entropy", "accuracy")):
        data = frame[frame["metric"] == metric]
        chart = (
            alt.Chart(data, title=f"{metric} (dashed: train, solid: validation)")
            .mark_line(point=alt.OverlayMarkDef(size=20))
            .encode(
                x=alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1)),
                y=alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False)),
                color=alt.Color(
                    "stage:N",
                    scale=alt.Scale(domain=stages, range=[kr.STAGE_COLORS[s] for s in stages]),
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
    text = kr.tail(path, lines)
    with st.expander(f"{label}: {path}", expanded=expanded):
        st.code(text or "(empty)", language=None)


# --------------------------------------------------------------------------
# Sidebar
# --------------------------------------------------------------------------


def sidebar():
    st.sidebar.header("kd-keras")
    runs_dir = st.sidebar.text_input(
        "Runs folder",
        value=kr.default_runs_dir(),
        key="runs_dir",
        help=f"Where run folders live (default ${kr.RUNS_ENV_VAR} or 'runs').",
    ).strip() or kr.DEFAULT_RUNS_DIR
    data_path = st.sidebar.text_input(
        "CIFAR-10 archive",
        value=kr.default_data_path(),
        key="data_path",
        help=f"cifar-10-python.tar.gz or cifar-10-batches-py/ (default ${kr.DATA_ENV_VAR}).",
    ).strip()
    runs_path = Path(runs_dir).expanduser()
    names = [p.name for p in kr.list_runs(runs_path)]
    states = {name: kr.run_state(runs_path / name) for name in names}
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


def launch_options(runs_dir, data_path):
    """The launch form's values as `LaunchOptions` (from session state)."""
    s = st.session_state
    teacher = s.get("teacher_choice", NEW_TEACHER)
    if teacher == OTHER_TEACHER:
        teacher = s.get("teacher_choice_path", "").strip()
    elif teacher == NEW_TEACHER:
        teacher = ""
    return kr.LaunchOptions(
        preset=s.get("preset", "quick"),
        name=(s.get("run_name") or "").strip(),
        data=data_path,
        epochs=s.get("epochs"),
        temperature=s.get("temperature"),
        alpha=s.get("alpha"),
        teacher_depth=s.get("teacher_depth"),
        student_depth=s.get("student_depth"),
        train_per_class=s.get("train_per_class"),
        seed=s.get("seed"),
        teacher=teacher,
        teacher_model=(s.get("teacher_model") or "").strip(),
        student_model=(s.get("student_model") or "").strip(),
        if_exists=s.get("if_exists", "refuse"),
    )


def on_start(runs_dir, data_path):
    options = launch_options(runs_dir, data_path)
    try:
        folder, pid = kr.start_run(options, runs_dir)
    except kr.LaunchError as error:
        st.session_state["launch_msg"] = ("error", f"Not started. {error}")
        return
    st.session_state["run"] = folder.name
    st.session_state["launch_msg"] = (
        "success",
        f"Started run '{folder.name}' (process {pid}) in {folder}. "
        "Follow it in the Watch tab; it keeps going if you close this page.",
    )


def on_resume(folder, runs_dir, data_path):
    try:
        folder, pid = kr.resume_run(folder, runs_dir, data_path)
    except kr.LaunchError as error:
        st.session_state["watch_msg"] = ("error", f"Not resumed. {error}")
        return
    st.session_state["watch_msg"] = (
        "success", f"Resumed run '{folder.name}' (process {pid}) from its last completed epoch.")


def on_stop(folder, message_key):
    pid = kr.run_state(folder).pid
    try:
        text = kr.stop_run(folder)
    except kr.LaunchError as error:
        st.session_state[message_key] = ("error", str(error))
        return
    st.session_state.setdefault("stop_requests", {})[str(folder)] = (time.time(), pid)
    st.session_state[message_key] = ("info", text)


def launch_tab(runs_dir, data_path):
    st.subheader("Start a run")
    st.caption(
        "Trains a teacher, a student baseline and a distilled student as a "
        "separate `python -m kd_keras run` process; leave a field empty to "
        "use the preset's value."
    )
    all_presets = kr.presets()
    names = list(all_presets)
    preset = st.selectbox(
        "Preset",
        names,
        index=names.index("quick") if "quick" in names else 0,
        key="preset",
        format_func=lambda n: f"{n}: {PRESET_NOTES[n]}" if n in PRESET_NOTES else n,
    )
    p = all_presets[preset]

    def hint(field, fallback="preset default"):
        value = p.get(field)
        return f"{preset}: {value}" if value is not None else fallback

    c1, c2, c3, c4 = st.columns(4)
    c1.number_input("Epochs (every stage)", value=None, step=1, key="epochs",
                    placeholder=f"{preset}: {p.get('teacher_epochs')} / {p.get('student_epochs')}")
    c2.number_input("Temperature T", value=None, step=0.5, format="%.2f", key="temperature",
                    placeholder=hint("temperature"),
                    help="Softmax temperature of the soft targets; must be > 0.")
    c3.number_input("alpha", value=None, step=0.05, format="%.2f", key="alpha",
                    placeholder=hint("alpha"),
                    help="Weight of the hard-label loss, in [0, 1]; 1 - alpha weights "
                    "the teacher's soft targets.")
    c4.number_input("Seed", value=None, step=1, key="seed", placeholder=hint("seed"))
    c1, c2, c3, c4 = st.columns(4)
    c1.number_input("Teacher depth", value=None, step=1, key="teacher_depth",
                    placeholder=hint("teacher_depth"))
    c2.number_input("Student depth", value=None, step=1, key="student_depth",
                    placeholder=hint("student_depth"))
    c3.number_input("Train images per class", value=None, step=1, key="train_per_class",
                    placeholder=hint("train_per_class", "all (4500)"))
    c4.text_input("Run name", key="run_name", placeholder=f"auto: {preset}-<date>-<time>")
    teacher_picker(runs_dir, "teacher_choice", allow_new=True)
    m1, m2 = st.columns(2)
    model_help = ("Empty: a ResNet of the depth above. Or resnet<depth>, a "
                  "keras.applications name (mobilenetv3small, mobilenetv3large, "
                  "efficientnetb0-b7, efficientnetv2b0-b3, efficientnetv2s; options "
                  "after a colon, e.g. mobilenetv3small:alpha=0.35), or a .keras file.")
    m1.text_input("Teacher model", key="teacher_model", placeholder="resnet (depth above)",
                  help=model_help)
    m2.text_input("Student model", key="student_model", placeholder="resnet (depth above)",
                  help=model_help)
    st.radio(
        "If the run folder exists",
        ["refuse", "resume", "overwrite"],
        key="if_exists",
        horizontal=True,
        help="resume continues an interrupted run from its last epoch; "
        "overwrite replaces it.",
    )

    options = launch_options(runs_dir, data_path)
    resume = options.if_exists == "resume"
    if resume:
        st.info("Resume continues the run named in 'Run name' with the settings "
                "saved in its config.json; the other fields are ignored.")
        live_errors = kr.check_data_path(options.data) if options.data else []
    else:
        live_errors = kr.check_hyperparameters(options.temperature, options.alpha)
        live_errors += kr.check_data_path(options.data)
    show_errors(live_errors)
    st.button("Start", type="primary", key="start", on_click=on_start,
              args=(runs_dir, data_path))
    show_message("launch_msg")

    busy = kr.alive_runs(runs_dir)
    for state in busy:
        c1, c2 = st.columns([4, 1])
        c1.info(f"Run '{state.name}' is {state.status} (process {state.pid}).")
        c2.button("Stop", key=f"stop_launch_{state.name}", on_click=on_stop,
                  args=(state.path, "launch_msg"))
    with st.expander("Command line of this launch"):
        out = Path(runs_dir) / (options.name or f"{preset}-<date>-<time>")
        try:
            argv = kr.resume_command(out, options.data) if resume else kr.run_command(options, out)
        except kr.LaunchError as error:
            argv = [str(error)]
        st.code(" ".join(argv), language="bash")


# --------------------------------------------------------------------------
# Watch tab
# --------------------------------------------------------------------------


def watch_body(folder, was_alive, runs_dir, data_path):
    state = kr.run_state(folder)
    if was_alive and not state.alive:
        st.rerun()  # The run just ended: refresh the whole page once.
    summary = kr.progress_summary(state)
    st.markdown(f"**{state.name}**: {STATUS_ICONS.get(state.status, '')} {state.status}"
                + (f" (process {state.pid})" if state.pid else ""))
    if state.status == "starting":
        st.info("Starting: the process is loading TensorFlow and the data.")
    elif state.status == "failed":
        st.error(f"The run failed: {state.error or 'no error message'}. "
                 "Fix the cause, then Resume it (or start it again with 'overwrite').")
    elif state.status == "died":
        st.error(
            f"The run's process ({state.progress.get('pid')}) is gone but it never "
            "finished (killed, or the machine restarted). Resume continues it from "
            "its last completed epoch."
        )
    elif state.status == "stopped":
        st.warning(f"The run was stopped ({state.error or 'stopped'}). Resume continues "
                   "it from its last completed epoch.")
    elif state.status == "exited":
        code = f" with exit code {state.exit_code}" if state.exit_code is not None else ""
        st.error(f"The process ended{code} before the run could start; the log "
                 "below says why.")
    elif state.status == "finished":
        st.success("Finished: see the Results tab.")

    stage = summary["stage"]
    if stage:
        st.progress(
            summary["overall_fraction"],
            text=f"Overall: {int(summary['done_epochs'])} of {summary['total_epochs']} "
            "epochs done",
        )
        epoch, epochs = summary["epoch"], summary["epochs"]
        if state.alive and epoch < epochs:
            where = f"epoch {epoch + 1}/{epochs}"
            if summary["batches"]:
                where += f", batch {summary['batch']}/{summary['batches']}"
        else:
            where = f"{epoch}/{epochs} epochs done"
        st.progress(
            summary["stage_fraction"],
            text=f"Stage {summary['stage_index'] + 1}/{summary['stages']} {stage}: {where}",
        )
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Elapsed", kr.format_duration(summary["elapsed_s"]))
        c2.metric("Time left (estimate)",
                  kr.format_duration(summary["eta_s"]) if state.alive else "-")
        val_accuracy = (state.progress.get("metrics") or {}).get("val_accuracy")
        if val_accuracy is None:  # A new stage: its first epoch is not done yet.
            val_accuracy = kr.last_value(folder, stage, "val_accuracy")
        c3.metric("Last val accuracy", "-" if val_accuracy is None else f"{val_accuracy:.4f}")
        c4.metric("Completed stages", f"{len(summary['completed_stages'])}/{summary['stages']}")
        if state.alive and summary["eta_s"] is not None:
            st.caption("Time left = elapsed time per completed epoch x epochs to go.")
    asked, asked_pid = st.session_state.get("stop_requests", {}).get(str(folder), (None, None))
    if (state.status == "running" and asked and asked_pid == state.pid
            and time.time() - asked > STOP_GRACE_S):
        st.warning(
            f"Stop was asked {kr.format_duration(time.time() - asked)} ago but the "
            "run is still going: a stop signal that arrives while kd_keras loads "
            "the data can be lost. Press Stop again."
        )
    if state.alive:
        st.button("Stop", key="stop_watch", on_click=on_stop, args=(state.path, "watch_msg"),
                  help="SIGTERM: the run stops cleanly after the current batch "
                  "(status 'stopped'); resume it later.")
    elif state.status in ("stopped", "failed", "died", "exited") and state.config:
        st.button("Resume", key="resume_watch", on_click=on_resume,
                  args=(state.path, runs_dir, data_path),
                  help="python -m kd_keras run --resume with the run's saved settings.")
    show_message("watch_msg")
    curves_chart(folder)
    log_tail(state.log_path, expanded=state.status in ("failed", "exited", "died"))


def watch_tab(runs_dir, run_name, data_path):
    if not run_name:
        st.info("No run yet: start one in the Launch tab.")
        return
    folder = Path(runs_dir) / run_name
    alive = kr.run_state(folder).alive
    st.fragment(watch_fragment, run_every=2.0 if alive else None)(
        folder, alive, runs_dir, data_path
    )


def watch_fragment(*args):
    guarded(watch_body, *args)


# --------------------------------------------------------------------------
# Results tab
# --------------------------------------------------------------------------


def shipped_models(folder, run_name):
    """The run's exported models (`python -m kd_keras export`): their
    measurements against the Keras models, the teacher/student ratios as
    shipped, and a download button per exported file."""
    rows = kr.exported_models(folder)
    if not rows:
        st.caption(
            "No exported models yet. `python -m kd_keras export "
            f"{folder} --format saved_model litert --quantize none int8` ships "
            "the distilled student as a SavedModel and LiteRT files, measured "
            "on the test set; they then appear here."
        )
        return
    st.markdown("**Shipped models** (`export/`, by `python -m kd_keras export`)")
    table = kr.exported_table(rows)
    formats = {
        "size_mb": "{:.4f}",
        "size_ratio": lambda v: f"{100 * v:.1f}%",
        "test_accuracy": "{:.4f}",
        "keras_test_accuracy": "{:.4f}",
        "accuracy_delta_points": "{:+.2f}",
        "agreement": lambda v: f"{100 * v:.2f}%",
        "latency_ms": "{:.3f}",
        "keras_latency_ms": "{:.3f}",
        "speedup": "{:.2f}x",
        "test_images": "{:.0f}",
    }
    styled = table.style.format(
        {k: v for k, v in formats.items() if k in table.columns}, na_rep="-"
    )
    st.table(styled, hide_index=True)
    st.caption(
        "size_ratio: the file's size as a share of the stage's .keras file. "
        "keras_test_accuracy, keras_latency_ms: the stage's Keras model on the "
        "same test images, timed the same way (median one-image latency, warm) "
        "in the same process. agreement: share of test images where the "
        "exported model's top-1 class equals the Keras model's. io int8: the "
        "file takes int8 pixels and returns int8 logits (see its row in "
        "results.json for the scale and zero point)."
    )
    ratios = kr.teacher_vs_student(folder)
    if ratios:
        st.markdown("**Teacher vs distilled student**, as Keras models and as shipped")
        frame = kr.ratios_table(ratios)
        st.table(frame.style.format({c: "{:.2f}x" for c in frame.columns[1:3]}
                                    | {frame.columns[3]: "{:+.2f}"}, na_rep="-"),
                 hide_index=True)
    columns = st.columns(3)
    for index, row in enumerate(rows):
        name = Path(row["file"]).name + (".zip" if row["path"].is_dir() else "")
        columns[index % 3].download_button(
            f"Download {row['stage']} ({name})",
            partial(lambda path: kr.export_download(path)[0], row["path"]),
            file_name=f"{run_name}-{row['source_stage']}-{name}",
            mime="application/zip" if row["path"].is_dir() else "application/octet-stream",
            key=f"download_export_{row['stage']}",
        )


def results_tab(runs_dir, run_name):
    if not run_name:
        st.info(f"No runs in '{runs_dir}' yet: start one in the Launch tab, or "
                "point 'Runs folder' in the sidebar at a folder of runs.")
        return
    folder = Path(runs_dir) / run_name
    state = kr.run_state(folder)
    st.subheader(f"Results of {run_name}")
    table = kr.results_table(folder)
    if table is None:
        st.info(f"Run '{run_name}' has no completed stage yet ({state.status}).")
    else:
        if not (folder / "results.csv").is_file():
            st.caption("Partial results: the completed stages so far.")
        shown = table[[c for c in kr.TABLE_COLUMNS if c in table.columns]]
        formats = {
            "depth": "{:.0f}",
            "params": "{:,.0f}",
            "size_mb": "{:.3f}",
            "test_accuracy": "{:.4f}",
            "test_loss": "{:.4f}",
            "val_accuracy": "{:.4f}",
            "val_loss": "{:.4f}",
            "latency_ms": "{:.3f}",
        }
        styled = shown.style.format(
            {k: v for k, v in formats.items() if k in shown.columns}, na_rep="-"
        )
        st.table(styled, hide_index=True)
        exported = table["stage"].astype(str).str.contains("@").any()
        st.caption("size in MB, latency in ms per image (batch 1, CPU); "
                   "accuracy as a fraction, loss as cross-entropy."
                   + (" Rows <stage>@<variant> are exported models (below)."
                      if exported else ""))
        gain = kr.distillation_gain(folder, table)
        if gain is not None:
            st.metric(
                "Distilled student vs its baseline (test accuracy)",
                f"{gain:+.2f} points",
            )
            st.caption(
                "student_distilled minus student_baseline test accuracy, in "
                "percentage points: same student, same initial weights and data "
                "order; only the loss differs."
            )
        shipped_models(folder, run_name)
    c1, c2 = st.columns(2)
    bar = folder / "test_accuracy_bar.png"
    if bar.is_file():
        c1.image(str(bar), caption="Test accuracy", width="stretch")
    report = folder / "report.png"
    if report.is_file():
        c2.image(str(report), caption="Training curves (kd_keras report.png)", width="stretch")
    st.markdown("**Curves** (teacher red, baseline blue, distilled orange)")
    curves_chart(folder)
    c1, c2 = st.columns(2)
    csv_path = folder / "results.csv"
    if csv_path.is_file():
        c1.download_button("Download results.csv", csv_path.read_bytes(),
                           file_name=f"{run_name}-results.csv", mime="text/csv",
                           key="download_csv")
    model_path = folder / "models" / "student_distilled.keras"
    if model_path.is_file():
        c2.download_button("Download the distilled student (.keras)", model_path.read_bytes(),
                           file_name=f"{run_name}-student_distilled.keras",
                           mime="application/octet-stream", key="download_model")
    if state.config:
        with st.expander("Config (config.json)"):
            st.json(state.config)
    if state.status in ("failed", "died", "exited"):
        st.error(f"This run did not finish ({state.status}): "
                 f"{state.error or 'see the Watch tab and the log'}.")


# --------------------------------------------------------------------------
# Tuning tab
# --------------------------------------------------------------------------


def on_start_search(runs_dir, data_path):
    s = st.session_state
    teacher = s.get("tune_teacher", "")
    if teacher == OTHER_TEACHER:
        teacher = s.get("tune_teacher_path", "").strip()
    options = kr.TuneOptions(
        name=(s.get("search_name") or "").strip(),
        teacher=teacher,
        data=data_path,
        preset=s.get("tune_preset", "quick"),
        tuner=s.get("tuner", "bayesian"),
        trials=s.get("trials"),
        epochs=s.get("trial_epochs"),
    )
    try:
        folder, pid = kr.start_search(options, runs_dir)
    except kr.LaunchError as error:
        s["tune_msg"] = ("error", f"Search not started. {error}")
        return
    s["search"] = folder.name
    s["tune_msg"] = ("success", f"Started search '{folder.name}' (process {pid}).")


def on_stop_search(folder):
    try:
        st.session_state["tune_msg"] = ("info", kr.stop_search(folder))
    except kr.LaunchError as error:
        st.session_state["tune_msg"] = ("error", str(error))


def on_run_best(runs_dir, data_path, teacher, temperature, alpha):
    s = st.session_state
    options = kr.LaunchOptions(
        preset=s.get("best_preset", "quick"),
        name=(s.get("best_run_name") or "").strip(),
        data=data_path,
        temperature=temperature,
        alpha=alpha,
        teacher=teacher or "",
    )
    if not options.teacher:
        s["tune_msg"] = ("error", "This search names no teacher; start the run from "
                                  "the Launch tab with its T and alpha.")
        return
    try:
        folder, pid = kr.start_run(options, runs_dir)
    except kr.LaunchError as error:
        s["tune_msg"] = ("error", f"Run not started. {error}")
        return
    s["run"] = folder.name
    s["tune_msg"] = ("success", f"Started run '{folder.name}' (process {pid}) with "
                                f"T={temperature:g}, alpha={alpha:g}: see the Watch tab.")


def search_body(folder, was_alive, runs_dir, data_path):
    state = kr.search_state(folder)
    if was_alive and not state.alive:
        st.rerun()
    st.markdown(f"**{state.name}**: {STATUS_ICONS.get(state.status, '')} {state.status}"
                + (f" (process {state.pid})" if state.pid else "")
                + (f", preset {state.preset}" if state.preset else "")
                + (f", teacher `{state.teacher}`" if state.teacher else ""))
    if state.planned:
        st.progress(min(1.0, state.completed / state.planned),
                    text=f"{state.completed} of {state.planned} trials completed")
    if state.status == "exited":
        code = f" (exit code {state.exit_code})" if state.exit_code is not None else ""
        st.error(f"The search ended before any trial completed{code}; the log "
                 "below says why.")
    elif state.status == "incomplete":
        st.warning("The search ended before all its trials (stopped, or a trial "
                   "failed: see the log). Running `python -m tuning` again with the "
                   "same settings resumes it; its best so far is below.")
    if state.alive:
        st.button("Stop search", key="stop_search", on_click=on_stop_search, args=(folder,))
    if state.trials is not None:
        st.dataframe(state.trials, hide_index=True, width="stretch", key="trials_table")
    elif state.status != "exited":
        st.caption("No trial finished yet (trials.csv appears after the first).")
    best = state.best
    if best and best.get("temperature") is not None and best.get("alpha") is not None:
        c1, c2, c3 = st.columns(3)
        c1.metric("Best T", f"{best['temperature']:g}")
        c2.metric("Best alpha", f"{best['alpha']:g}")
        c3.metric("Score", "-" if best.get("score") is None else f"{best['score']:.4f}")
        st.caption(f"From {best['source']}" + (" (search still running)" if state.alive else ""))
        errors = kr.check_hyperparameters(best["temperature"], best["alpha"])
        show_errors(errors)
        c1, c2 = st.columns(2)
        names = list(kr.presets())
        default = state.preset if state.preset in names else "quick"
        c1.selectbox("Preset of the run", names, key="best_preset",
                     index=names.index(default) if default in names else 0,
                     help="The search's own preset gives the same data and recipe.")
        c2.text_input("Run name", key="best_run_name", placeholder="auto")
        st.button(
            f"Start a distillation run with T={best['temperature']:g}, alpha={best['alpha']:g}",
            key="run_best",
            disabled=bool(errors),
            on_click=on_run_best,
            args=(runs_dir, data_path, state.teacher, best["temperature"], best["alpha"]),
        )
    image = folder / "search.png"
    if image.is_file():
        st.image(str(image), caption="search.png", width="stretch")
    log_tail(state.log_path, expanded=state.status == "exited")


def tuning_tab(runs_dir, data_path):
    st.subheader("Search T and alpha")
    st.caption(
        "Runs `python -m tuning` as a separate process: distillation trials "
        "against one trained teacher, each with another temperature T and "
        "alpha; the trials arrive in trials.csv and the best in best.json."
    )
    if not kr.tuning_available():
        st.warning("The tuning package is not in this checkout (no tuning/ folder "
                   "next to app.py): existing searches can be shown, new ones "
                   "cannot be started.")
    teacher_picker(runs_dir, "tune_teacher", allow_new=False)
    c1, c2, c3, c4, c5 = st.columns(5)
    names = list(kr.presets())
    c1.selectbox("Preset", names, key="tune_preset",
                 index=names.index("quick") if "quick" in names else 0,
                 help="The kd_keras preset giving the data subset and recipe of each trial.")
    c2.selectbox("Tuner", list(kr.TUNERS), key="tuner",
                 help="bayesian: Gaussian-process Bayesian optimisation; random; hyperband.")
    c3.number_input("Trials", min_value=1, value=10, step=1, key="trials")
    c4.number_input("Epochs per trial", min_value=1, value=3, step=1, key="trial_epochs")
    c5.text_input("Search name", key="search_name", placeholder="auto: search-<date>-<time>")
    st.button("Start search", key="start_search", on_click=on_start_search,
              args=(runs_dir, data_path))
    show_message("tune_msg")

    searches = [p.name for p in kr.list_searches(runs_dir)]
    if not searches:
        st.info(f"No searches in '{kr.searches_dir(runs_dir)}' yet.")
        return
    if st.session_state.get("search") not in searches:
        st.session_state["search"] = searches[0]
    name = st.selectbox("Search", searches, key="search")
    folder = kr.searches_dir(runs_dir) / name
    alive = kr.search_state(folder).alive
    st.fragment(search_fragment, run_every=2.0 if alive else None)(
        folder, alive, runs_dir, data_path
    )


def search_fragment(*args):
    guarded(search_body, *args)


# --------------------------------------------------------------------------
# Page
# --------------------------------------------------------------------------


def main():
    st.set_page_config(page_title="kd-keras", layout="wide")
    st.title("Knowledge distillation on CIFAR-10")
    try:
        runs_dir, data_path, run_name = sidebar()
    except Exception as error:  # noqa: BLE001 - shown, not thrown.
        st.error(f"The runs folder cannot be read: {type(error).__name__}: {error}. "
                 "Set 'Runs folder' in the sidebar to a readable folder.")
        return
    # `?tab=results&run=<name>` opens that tab on that run (a link to share).
    wanted = str(st.query_params.get("tab", "")).capitalize()
    launch, watch, results, tuning = st.tabs(
        TABS, default=wanted if wanted in TABS else None, key="tab"
    )
    with launch:
        guarded(launch_tab, runs_dir, data_path)
    with watch:
        guarded(watch_tab, runs_dir, run_name, data_path)
    with results:
        guarded(results_tab, runs_dir, run_name)
    with tuning:
        guarded(tuning_tab, runs_dir, data_path)


main()
