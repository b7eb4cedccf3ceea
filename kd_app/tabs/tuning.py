"""The Tuning tab: T/alpha searches (`python -m kd_keras tune`), their trials and
best values, and a run with the best."""

import streamlit as st

from kd_keras.presets import DEFAULT_PRESET
from kd_keras.search_folder import TUNERS, SearchFolder
from kd_keras.validation import METHODS

from .. import checks, confine, searches, settings
from .common import (
    attempt,
    chosen_teacher,
    live_part,
    log_tail,
    preset_box,
    show,
    show_errors,
    show_message,
    status_line,
    teacher_picker,
)


def on_start_search(runs_dir, data_path):
    s = st.session_state
    options = searches.TuneOptions(
        name=(s.get("search_name") or "").strip(),
        teacher=chosen_teacher("tune_teacher"),
        data=data_path,
        preset=s.get("tune_preset", DEFAULT_PRESET),
        tuner=s.get("tuner", searches.TuneOptions.tuner),
        trials=s.get("trials"),
        epochs=s.get("trial_epochs"),
        workers=s.get("search_workers", 1),
        trial_seeds=s.get("search_trial_seeds", 1),
        methods=tuple(s.get("search_methods") or ()),
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


def on_run_best(runs_dir, data_path, teacher, temperature, alpha, method=None, dkd_beta=None):
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
        s.get("best_preset", DEFAULT_PRESET),
        (s.get("best_run_name") or "").strip(),
        method,
        dkd_beta,
    )
    if not started:
        return
    folder, pid = started
    s["run"] = folder.name
    s["tune_msg"] = (
        "success",
        f"Started run '{folder.name}' (process {pid}) with "
        f"{_values_text(temperature, alpha, method, dkd_beta)}: see the Watch tab.",
    )


def _values_text(temperature, alpha, method=None, dkd_beta=None):
    text = f"T={temperature:g}, alpha={alpha:g}"
    if method and method != "hinton":
        text += f", method {method}" + (f" (beta {dkd_beta:g})" if dkd_beta is not None else "")
    return text


def best_run_form(state, runs_dir, data_path):
    """The search's best T and alpha, and a button that starts a run with them."""
    best = state.best
    c1, c2, c3 = st.columns(3)
    c1.metric("Best T", f"{best['temperature']:g}")
    c2.metric("Best alpha", f"{best['alpha']:g}")
    c3.metric("Score", "-" if best.get("score") is None else f"{best['score']:.4f}")
    method, dkd_beta = best.get("method"), best.get("dkd_beta")
    if method:
        st.caption(f"Best method: {method}" + (f", DKD beta {dkd_beta:g}" if dkd_beta else ""))
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
        "Start a distillation run with "
        + _values_text(best["temperature"], best["alpha"], method, dkd_beta),
        key="run_best",
        disabled=bool(errors),
        on_click=on_run_best,
        args=(
            runs_dir,
            data_path,
            state.teacher,
            best["temperature"],
            best["alpha"],
            method,
            dkd_beta,
        ),
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
        "Runs `python -m kd_keras tune` as a separate process: distillation trials "
        "against one trained teacher, each with another temperature T and "
        "alpha; the trials arrive in trials.csv and the best in best.json."
    )
    if not settings.tuning_available():
        st.warning(
            "The T/alpha search is not installed (neither kd_keras.tuning nor "
            "the checkout's tuning/): existing searches can be shown, new ones "
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
    d1, d2, d3 = st.columns([1, 1, 3])
    d1.number_input(
        "Workers",
        min_value=1,
        value=1,
        step=1,
        key="search_workers",
        help="Trials in this many worker processes under one chief (Keras Tuner's "
        "distributed mode); the cores are split between them. Small students train "
        "faster as several single-thread workers than as one multi-thread process.",
    )
    d2.number_input(
        "Seeds per trial",
        min_value=1,
        value=1,
        step=1,
        key="search_trial_seeds",
        help="Score each trial as the mean of this many students of different "
        "initial weights (that many times the training); the report's noise "
        "estimate shrinks with it.",
    )
    d3.multiselect(
        "Methods",
        list(METHODS),
        key="search_methods",
        placeholder="Hinton KD only",
        help="Also search the distillation method: each trial picks one of these "
        "(the first trial is Hinton KD at the default T and alpha).",
    )
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
