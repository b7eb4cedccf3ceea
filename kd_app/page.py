"""The page of the Streamlit app: the sidebar and the four tabs.

A thin UI over the library. It imports no Keras or TensorFlow and trains
nothing itself: a run is a separate `python -m kd_keras run ...` process (a
T/alpha search a `python -m kd_keras tune ...` process) started in its own
session, so it survives page reloads; the app polls the run folder's
`progress.json` and reads its results files. Each tab is a module of
`tabs/`. The page scripts Streamlit runs call `main()`: `app.py` in a
checkout, `streamlit_script.py` in an installed kd-keras (`kd-keras app`).

The operator fixes the runs root (`-- --runs DIR`, else `KD_KERAS_RUNS_DIR`,
else `runs`) and where data may come from (`-- --data-root DIR` /
`KD_KERAS_DATA_DIR`, the runs root, `KD_KERAS_CIFAR10`); the page cannot
change them (`confine`).
"""

import streamlit as st

from .tabs.common import TABS, guarded, listens_everywhere
from .tabs.launch import launch_tab
from .tabs.results import results_tab
from .tabs.sidebar import sidebar
from .tabs.tuning import tuning_tab
from .tabs.watch import watch_tab


def main():
    st.set_page_config(page_title="kd-keras", layout="wide")
    st.title("Knowledge distillation")
    if listens_everywhere():
        st.error(
            "This app was started with no server address, so it listens on every "
            "network interface with no login; it does nothing until restarted with "
            "`kd-keras app` or from the checkout (its .streamlit/config.toml sets localhost) "
            "or with `--server.address localhost` (docs/app.md says how to expose it on purpose)."
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
