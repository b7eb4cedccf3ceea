"""The Streamlit app's library (`page` puts the page together from `tabs/`,
one module per tab; this package is the rest).

Nothing here imports Keras or TensorFlow: the app reads run and search
folders through kd_keras's Keras-free modules (`kd_keras.run_folder`,
`kd_keras.config`, `kd_keras.atomic`, `kd_keras.export.spec`) and starts
training as separate processes (`python -m kd_keras run ...`,
`python -m kd_keras tune ...`).

| module | what it holds |
|---|---|
| `page` | the page: the sidebar and the tabs (run by `app.py`, or `kd-keras app`) |
| `confine` | the operator's roots; every path the page names resolved inside them; logs without following symlinks |
| `settings` | the runs root, the data roots, presets, environment variables |
| `files` | tolerant reads of files another process is writing |
| `processes` | spawning, reaping, pid checks, SIGTERM |
| `checks` | the launch and search forms' checks (kd_keras's own validators) |
| `run_state` | what a run folder says: status, progress, time left |
| `launching` | starting, resuming and stopping runs; their command lines |
| `results` | a run's results table, curves and exported models |
| `teachers` | teachers uploaded on the page, saved new into `<runs>/teachers/` |
| `searches` | T/alpha searches: state, trials, best T and alpha, launches |
| `tabs` | the page's parts: `common`, `sidebar`, `launch`, `watch`, `results`, `tuning` |
"""
