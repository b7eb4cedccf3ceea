"""The Watch tab: a run's progress, time left, curves and log; Stop, Resume."""

import time
from pathlib import Path

import streamlit as st

from .. import launching, results
from .. import run_state as runs
from .common import (
    attempt,
    curves_chart,
    live_part,
    log_tail,
    on_stop,
    show,
    show_message,
    status_line,
)

STOP_GRACE_S = 20  # A run asked to stop that is still running after this is flagged.


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
