"""What every tab of the page shares: messages, guarded parts, live
fragments, the teacher picker, the curves chart, the log tail, Stop."""

import time

import altair as alt
import streamlit as st

from kd_keras.errors import LaunchError
from kd_keras.presets import DEFAULT_PRESET
from kd_keras.stages import STAGE_COLORS

from .. import launching, results, settings, teachers
from .. import run_state as runs
from ..files import tail

TABS = ["Launch", "Watch", "Results", "Tuning"]
POLL_S = 2.0  # A live run's or search's part of the page refreshes this often.
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


def listens_everywhere():
    """True if the server was started with no `server.address` (Streamlit
    then listens on every interface): the shipped `.streamlit/config.toml`
    was not read (started from another folder) and none was given."""
    return not st.get_option("server.address")


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
    """A select box of the presets, on `default` (else `DEFAULT_PRESET`) until changed."""
    names = list(settings.presets())
    default = next((n for n in (default, DEFAULT_PRESET) if n in names), names[0])
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


def on_upload(runs_dir, key):
    """Saves a teacher uploaded with `teacher_picker` into the runs root and
    names it in the picker's path field."""
    upload = st.session_state.get(f"{key}_upload")
    if upload is None:
        return
    stored = attempt(
        f"{key}_msg", "Not uploaded. ", teachers.store_teacher, runs_dir, upload.name, upload
    )
    if stored:
        st.session_state[f"{key}_path"] = stored
        st.session_state[f"{key}_msg"] = ("success", f"Saved as '{stored}' in the runs folder.")


def teacher_picker(runs_dir, key, *, allow_new):
    """A select box of trained teachers found under the runs folder (plus
    another file inside it, or one uploaded into it); `chosen_teacher(key)`
    reads the choice."""
    found = [str(p) for p in runs.find_teachers(runs_dir) + teachers.uploaded_teachers(runs_dir)]
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
        st.file_uploader(
            "... or upload a teacher .keras (saved as teachers/<name>.keras in the runs folder)",
            type=["keras"],
            key=f"{key}_upload",
            on_change=on_upload,
            args=(runs_dir, key),
        )
        show_message(f"{key}_msg")


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


def on_stop(folder, message_key):
    pid = runs.run_state(folder).pid
    text = attempt(message_key, "", launching.stop_run, folder)
    if text:
        st.session_state.setdefault("stop_requests", {})[str(folder)] = (time.time(), pid)
        st.session_state[message_key] = ("info", text)
