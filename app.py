"""Streamlit launcher for kd-keras: `streamlit run app.py [-- --runs DIR]`.

A thin UI over the library. It imports no Keras or TensorFlow and trains
nothing itself: a run is a separate `python -m kd_keras run ...` process (a
T/alpha search a `python -m tuning ...` process) started in its own
session, so it survives page reloads; the app polls the run folder's
`progress.json` and reads its results files. This file puts the page
together; each tab is a module of `kd_app/tabs/`, the rest is `kd_app/`.

The operator fixes the runs root (`-- --runs DIR`, else `KD_KERAS_RUNS_DIR`,
else `runs`) and where data may come from (`-- --data-root DIR` /
`KD_KERAS_DATA_DIR`, the runs root, `KD_KERAS_CIFAR10`); the page cannot
change them (`kd_app.confine`).
"""

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kd_app.tabs.common import TABS, guarded, listens_everywhere  # noqa: E402
from kd_app.tabs.launch import launch_tab  # noqa: E402
from kd_app.tabs.results import results_tab  # noqa: E402
from kd_app.tabs.sidebar import sidebar  # noqa: E402
from kd_app.tabs.tuning import tuning_tab  # noqa: E402
from kd_app.tabs.watch import watch_tab  # noqa: E402


def main():
    st.set_page_config(page_title="kd-keras", layout="wide")
    st.title("Knowledge distillation")
    if listens_everywhere():
        st.error(
            "This app was started with no server address, so it listens on every "
            "network interface with no login; it does nothing until restarted from "
            "the checkout (its .streamlit/config.toml sets localhost) or with "
            "`--server.address localhost` (docs/app.md says how to expose it on purpose)."
        )
        return
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
