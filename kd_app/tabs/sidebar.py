"""The sidebar: the runs root (shown, not editable), the data source, the run."""

import streamlit as st

from .. import run_state as runs
from .. import settings


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
