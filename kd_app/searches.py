"""T/alpha searches (`python -m kd_keras tune`): their state, trials and best T
and alpha, and starting and stopping them.

A search folder's files are named by `kd_keras.search_folder.SearchFolder`
and its trials have `TRIAL_COLUMNS` (scored by `OBJECTIVE`); the app's
searches live in `<runs>/tuning/<name>`.
"""

import dataclasses
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd

from kd_keras import atomic
from kd_keras.errors import LaunchError
from kd_keras.presets import DEFAULT_PRESET
from kd_keras.search_folder import (
    MAX_TRIAL_SEEDS,
    MAX_TRIALS,
    MAX_WORKERS,
    OBJECTIVE,
    TRIAL_COMPLETED,
    TUNERS,
    SearchFolder,
)
from kd_keras.validation import MAX_EPOCHS, METHODS

from . import checks, confine, processes
from .files import number, read_csv, read_or
from .launching import LaunchOptions, start_run
from .settings import TUNING_SUBDIR, presets, tuning_available

# A search is `python -m kd_keras tune ...` (the package, installed or not).
SEARCH_MODULE = "kd_keras tune"


@dataclasses.dataclass
class TuneOptions:
    """The search form: `python -m kd_keras tune --teacher --data --out --preset
    --tuner --trials --epochs --quiet [--workers N] [--trial-seeds K]
    [--methods M1,M2]`."""

    name: str = ""
    teacher: str = ""
    data: str = ""
    preset: str = DEFAULT_PRESET
    tuner: str = "bayesian"  # One of TUNERS.
    trials: int = 10
    epochs: int = 3
    # Trials in N worker processes under one chief (Keras Tuner's
    # distributed mode), the machine's cores split between them.
    workers: int = 1
    trial_seeds: int = 1  # Each trial scored as the mean of K students.
    methods: tuple = ()  # Methods each trial chooses from; () = Hinton KD only.


@dataclasses.dataclass
class SearchState(processes.ProcessState):
    """What the app knows about one search folder.

    `status`: "starting" (process alive, no trial yet), "running",
    "finished" (all planned trials done), "incomplete" (the process ended
    with some trials done: stopped, or failed; running the same search
    again resumes it), "exited" (ended with no trial done: see the log),
    "empty".
    """

    path: Path
    status: str
    pid: int = None
    launch: dict = None
    trials: object = None  # DataFrame or None
    best: dict = None  # {"temperature", "alpha", "score", "source"} or None
    teacher: str = None
    preset: str = None
    planned: int = None
    completed: int = 0
    exit_code: int = None
    log_path: Path = None


def searches_dir(runs_dir):
    return Path(runs_dir) / TUNING_SUBDIR


def list_searches(runs_dir):
    """T/alpha search folders under `<runs_dir>/tuning`, newest first (a
    folder or `tuning/` itself that leads out of the root through a
    symlink is left out)."""
    base = searches_dir(runs_dir)
    if not base.is_dir() or not confine.is_inside(base, runs_dir):
        return []
    found = {
        c.name: c
        for c in base.iterdir()
        if c.is_dir() and not c.name.startswith(".") and confine.is_inside(c, base)
    }
    for name, folder in processes.launched_folders(base, "search").items():
        if confine.is_inside(folder, base):
            found.setdefault(name, folder)
    return processes.newest_first(found.values(), lambda f: SearchFolder(f).trials_file)


def read_trials(folder):
    """`trials.csv` of a search (columns `TRIAL_COLUMNS`), or None (also
    when it leads out of the search folder through a symlink)."""
    path = SearchFolder(folder).trials_file
    return read_csv(path) if confine.own_file(folder, path) else None


def with_workers(trials, settings):
    """`trials` with a `worker` column: which worker of a distributed search
    (`--workers`, or chief and workers on several machines) ran each trial,
    from `search.json`'s `workers` (the chief records each as it ends);
    unchanged for a search in one process."""
    workers = (settings or {}).get("workers") if isinstance(settings, dict) else None
    if trials is None or not isinstance(workers, dict) or not workers or "trial_id" not in trials:
        return trials
    # keras-tuner's ids are zero-padded strings ("00"); the CSV reader made numbers.
    by_number = {}
    for trial_id, worker in workers.items():
        try:
            by_number[int(trial_id)] = str(worker)
        except (TypeError, ValueError):
            continue
    trials = trials.copy()
    position = list(trials.columns).index("trial_id") + 1
    trials.insert(
        position, "worker", [by_number.get(_trial_number(t), "") for t in trials["trial_id"]]
    )
    return trials


def _trial_number(trial_id):
    try:
        return int(trial_id)
    except (TypeError, ValueError):
        return None


def best_params(folder, trials=None):
    """The best T and alpha of a search: from `best.json`, else the
    completed trial of `trials.csv` with the highest `OBJECTIVE` (earliest
    on ties). A dict with `temperature`, `alpha`, `score` (any may be None)
    and `source`, or None."""
    search = SearchFolder(folder)
    best = read_or(search.best) if confine.own_file(search.path, search.best_file) else None
    if best and (best.get("temperature") is not None or best.get("alpha") is not None):
        return {
            "temperature": number(best.get("temperature")),
            "alpha": number(best.get("alpha")),
            "score": number(best.get("score")),
            "source": search.best_file.name,
            **_method_of(best),
        }
    trials = read_trials(folder) if trials is None else trials
    if trials is None or not {"temperature", "alpha", OBJECTIVE} <= set(trials.columns):
        return None
    scores = pd.to_numeric(trials[OBJECTIVE], errors="coerce")
    if "status" in trials:
        scores = scores.where(trials["status"] == TRIAL_COMPLETED)
    if not scores.notna().any():
        return None
    row = trials.loc[scores.idxmax()]
    return {
        "temperature": number(row["temperature"]),
        "alpha": number(row["alpha"]),
        "score": number(row[OBJECTIVE]),
        "source": search.trials_file.name,
        **_method_of(row),
    }


def _method_of(values):
    """`{"method", "dkd_beta"}` of a best trial (a search of methods), or {}."""
    method = values.get("method")
    if not isinstance(method, str) or method not in METHODS:
        return {}
    beta = number(values.get("dkd_beta")) if method == "dkd" else None
    return {"method": method, "dkd_beta": beta}


def _flag_value(argv, flag):
    argv = list(argv or [])
    for i, arg in enumerate(argv[:-1]):
        if arg == flag:
            return argv[i + 1]
    return None


def search_state(folder):
    """The `SearchState` of a search folder (it may not exist yet)."""
    search = SearchFolder(folder)
    log_path = processes.launch_files(search.path)[0]
    launch = processes.read_launch(search.path)
    argv = (launch or {}).get("argv")
    launch_pid = launch.get("pid") if launch else None
    # The search's lock decides, as `python -m kd_keras tune` itself does; before
    # the lock is taken, the launched process if it still runs this search.
    pid = (atomic.lock_holder(path=search.lock_file) or {}).get("pid")
    if not pid and processes.runs_module_on(launch_pid, SEARCH_MODULE, search.path):
        pid = launch_pid
    trials = read_trials(search.path)
    best = best_params(search.path, trials)
    completed = 0
    if trials is not None and len(trials):
        completed = (
            int((trials["status"] == TRIAL_COMPLETED).sum()) if "status" in trials else len(trials)
        )
    settings = read_or(search.settings, {})
    trials = with_workers(trials, settings)
    planned = number(_flag_value(argv, "--trials") or settings.get("max_trials"))
    planned = int(planned) if planned else None
    if pid:
        status = "running" if trials is not None else "starting"
    elif completed and (planned is None or completed >= planned):
        status = "finished"
    elif completed or best:
        status = "incomplete"
    else:
        status = "exited" if launch else "empty"
    return SearchState(
        path=search.path,
        status=status,
        pid=pid or None,
        launch=launch,
        trials=trials,
        best=best,
        teacher=_flag_value(argv, "--teacher"),
        preset=_flag_value(argv, "--preset"),
        planned=planned,
        completed=completed,
        exit_code=processes.exit_code(launch_pid) if launch_pid else None,
        log_path=(
            log_path
            if log_path.exists() and confine.own_file(search.path.parent, log_path)
            else None
        ),
    )


def status_message(state):
    """What the Tuning tab says about a search's status: `(kind, text)`, or None."""
    if state.status == "exited":
        code = f" (exit code {state.exit_code})" if state.exit_code is not None else ""
        return "error", (
            f"The search ended before any trial completed{code}; the log below says why."
        )
    if state.status == "incomplete":
        return "warning", (
            "The search ended before all its trials (stopped, or a trial failed: see "
            "the log). Running `python -m kd_keras tune` again with the same settings "
            "resumes it; its best so far is below."
        )
    return None


def validate_search(options, runs_dir):
    """Every problem with a search launch, as readable messages."""
    errors = []
    if not tuning_available():
        errors.append(
            "The T/alpha search is not installed (neither kd_keras.tuning nor the "
            "checkout's tuning/), so a search cannot be started."
        )
    errors += checks.check_name(options.name, "Search")
    if not options.teacher:
        errors.append("Pick a trained teacher (.keras) to tune against.")
    errors += checks.check_teacher(options.teacher, runs_dir)
    errors += checks.check_data_path(options.data, runs_dir)
    if options.preset not in presets():
        errors.append(f"Unknown preset '{options.preset}'; choose one of {', '.join(presets())}.")
    if options.tuner not in TUNERS:
        errors.append(f"Unknown tuner '{options.tuner}'; choose one of {', '.join(TUNERS)}.")
    for field, label, high in (
        ("trials", "Trials", MAX_TRIALS),
        ("epochs", "Epochs per trial", MAX_EPOCHS),
        ("workers", "Workers", MAX_WORKERS),
        ("trial_seeds", "Seeds per trial", MAX_TRIAL_SEEDS),
    ):
        value = checks.whole(getattr(options, field))
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            errors.append(f"{label} must be a whole number >= 1, got {value}.")
        elif value > high:
            errors.append(f"{label} must be at most {high}, got {value}.")
    unknown = [m for m in options.methods or () if m not in METHODS]
    if unknown:
        errors.append(f"Unknown method '{unknown[0]}'; choose from {', '.join(METHODS)}.")
    if options.name and not errors:
        try:
            base = confine.within(runs_dir, TUNING_SUBDIR, "searches folder")
            folder = confine.within(base, options.name, "search name")
        except LaunchError as error:
            return errors + [str(error)]
        if search_state(folder).alive:
            errors.append(f"Search '{options.name}' is already running; stop it first.")
        elif folder.exists() and any(folder.iterdir()):
            errors.append(
                f"The search folder '{folder}' already exists; choose another search "
                "name (running `python -m kd_keras tune` with its settings again resumes it)."
            )
    return errors


def search_command(options, out):
    """`python -m kd_keras tune ...` of a search (its teacher and data as given:
    `start_search` resolves them inside the roots first)."""
    return [
        sys.executable,
        "-m",
        *SEARCH_MODULE.split(),
        "--teacher",
        str(options.teacher),
        "--data",
        str(options.data),
        "--out",
        str(out),
        "--preset",
        options.preset,
        "--tuner",
        options.tuner,
        "--trials",
        str(int(options.trials)),
        "--epochs",
        str(int(options.epochs)),
        "--quiet",
        *(["--workers", str(int(options.workers))] if checks.whole(options.workers) != 1 else []),
        *(
            ["--trial-seeds", str(int(options.trial_seeds))]
            if checks.whole(options.trial_seeds) != 1
            else []
        ),
        *(["--methods", ",".join(options.methods)] if options.methods else []),
    ]


def start_search(options, runs_dir):
    """Validates and starts `python -m kd_keras tune` in the background.

    Returns:
        `(folder, pid)`. Raises `LaunchError`.
    """
    runs_dir = Path(runs_dir).expanduser().resolve()
    if not options.name:
        options = dataclasses.replace(
            options, name=f"search-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        )
    errors = validate_search(options, runs_dir)
    if errors:  # Refused before anything is written, even the lock.
        raise LaunchError("\n".join(errors))
    with processes.launch_lock(runs_dir):
        errors = validate_search(options, runs_dir)  # Again, now under the lock.
        if errors:
            raise LaunchError("\n".join(errors))
        busy = [s for s in map(search_state, list_searches(runs_dir)) if s.alive]
        if busy:
            raise LaunchError(
                f"A search is already going: '{busy[0].name}' (process {busy[0].pid}). "
                "Only one at a time: wait for it or stop it first."
            )
        teacher, _ = checks.resolve_keras_file(options.teacher, runs_dir, "teacher")
        data, _ = checks.resolve_data(options.data, runs_dir)
        options = dataclasses.replace(options, teacher=str(teacher), data=str(data))
        folder = searches_dir(runs_dir) / options.name
        return folder, processes.start(
            search_command(options, folder), folder, kind="search", what="start the search"
        )


def stop_search(folder):
    """SIGTERMs a running search (it ends at once; running it again with
    the same settings resumes it from its finished trials)."""
    state = search_state(folder)
    if not state.alive:
        raise LaunchError(f"Search '{state.name}' is not running ({state.status}).")
    return processes.terminate(state.pid, SEARCH_MODULE).replace(
        "it stops after the current batch", "finished trials are kept"
    )


def start_best_run(
    teacher, temperature, alpha, runs_dir, data, preset, name="", method=None, dkd_beta=None
):
    """Starts a distillation run with a search's best T and alpha (and
    method and DKD beta, from a search of methods) against its teacher.
    Returns `(folder, pid)`; raises `LaunchError`."""
    if not teacher:
        raise LaunchError(
            "This search names no teacher; start the run from the Launch tab with its T and alpha."
        )
    return start_run(
        LaunchOptions(
            preset=preset,
            name=name,
            data=data,
            teacher=teacher,
            temperature=temperature,
            alpha=alpha,
            method=method or "hinton",
            dkd_beta=dkd_beta,
        ),
        runs_dir,
    )
