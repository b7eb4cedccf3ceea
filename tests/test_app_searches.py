"""Tests of `kd_app.searches`: a search folder read through
`kd_keras.search_folder.SearchFolder` and its real columns."""

import csv
import json
import subprocess
import sys
import time

from app_smoke import REPO  # noqa: F401 (puts the repository on sys.path)

from kd_app import processes, searches
from kd_app.processes import launch_files
from kd_keras.search_folder import TRIAL_COLUMNS, TUNERS, SearchFolder


def write_trials(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    with open(SearchFolder(folder).trials_file, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=TRIAL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def trial(trial_id, temperature, alpha, score, status="COMPLETED"):
    return {
        "trial_id": trial_id,
        "temperature": temperature,
        "alpha": alpha,
        "val_accuracy": score,
        "status": status,
    }


def test_best_params_from_best_json(tmp_path):
    folder = tmp_path / "s"
    write_trials(folder, [trial("0", 2.0, 0.5, 0.4)])
    SearchFolder(folder).best_file.write_text(
        json.dumps(
            {
                "trial_id": "3",
                "temperature": 8.0,
                "alpha": 0.1,
                "score": 0.47,
                "objective": "val_accuracy",
            }
        )
    )
    assert searches.best_params(folder) == {
        "temperature": 8.0,
        "alpha": 0.1,
        "score": 0.47,
        "source": "best.json",
    }


def test_best_params_from_the_completed_trials(tmp_path):
    folder = tmp_path / "s"
    write_trials(
        folder,
        [
            trial("0", 2.0, 0.5, 0.41),
            trial("1", 8.0, 0.1, 0.47),
            trial("2", 3.0, 0.2, 0.47),  # A tie: the earlier trial wins.
            trial("3", 1.0, 0.9, 0.90, status="RUNNING"),  # Not finished: not a result.
            trial("4", 5.0, 0.3, "", status="FAILED"),
        ],
    )
    assert searches.best_params(folder) == {
        "temperature": 8.0,
        "alpha": 0.1,
        "score": 0.47,
        "source": "trials.csv",
    }
    state = searches.search_state(folder)
    assert (state.completed, state.status) == (3, "finished")  # No plan known.


def test_only_the_searchs_own_columns_count(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    SearchFolder(folder).trials_file.write_text("T,a,score\n2.0,0.5,0.9\n")
    SearchFolder(folder).best_file.write_text(json.dumps({"T": 2.0, "a": 0.5}))
    assert searches.best_params(folder) is None


def test_search_state_counts_trials_against_the_plan(tmp_path):
    folder = searches.searches_dir(tmp_path) / "s"
    write_trials(folder, [trial("0", 2.0, 0.5, 0.4), trial("1", 4.0, 0.5, 0.5)])
    SearchFolder(folder).settings_file.write_text(json.dumps({"max_trials": 2}))
    state = searches.search_state(folder)
    assert (state.status, state.planned, state.completed, state.pid) == ("finished", 2, 2, None)
    launch_files(folder)[1].write_text(
        json.dumps(
            {
                "pid": 999999,
                "kind": "search",
                "argv": [
                    "python",
                    "-m",
                    "kd_keras",
                    "tune",
                    "--teacher",
                    "t.keras",
                    "--preset",
                    "smoke",
                    "--trials",
                    "5",
                ],
            }
        )
    )
    state = searches.search_state(folder)
    assert (state.status, state.planned, state.teacher, state.preset) == (
        "incomplete",
        5,
        "t.keras",
        "smoke",
    )
    assert searches.status_message(state)[0] == "warning"
    assert [p.name for p in searches.list_searches(tmp_path)] == ["s"]


def test_search_form_checks(tmp_path):
    options = searches.TuneOptions(name="bad name", tuner="grid", trials=0, epochs=2.0)
    errors = searches.validate_search(options, tmp_path)
    assert any("Search name 'bad name' is not usable" in e for e in errors)
    assert f"Unknown tuner 'grid'; choose one of {', '.join(TUNERS)}." in errors
    assert "Trials must be a whole number >= 1, got 0." in errors
    assert not any("Epochs per trial" in e for e in errors)  # 2.0 is a whole number.
    assert searches.TuneOptions.tuner in TUNERS


def test_a_search_is_kd_keras_tune_and_its_process_is_told_by_both_words(tmp_path):
    options = searches.TuneOptions(name="s", teacher="t.keras", data="d.tar.gz")
    assert searches.search_command(options, tmp_path / "s")[:4] == [
        sys.executable,
        "-m",
        "kd_keras",
        "tune",
    ]
    # A stand-in whose command line reads `... -m kd_keras tune --out s`.
    argv = ["-c", "import time; time.sleep(60)", "-m", "kd_keras", "tune", "--out", "s"]
    process = subprocess.Popen([sys.executable, *argv], cwd=tmp_path)
    try:
        # Until the child has exec'd, /proc shows the parent's command line.
        deadline = time.monotonic() + 10
        while "tune" not in (processes.process_args(process.pid) or []) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.01)
        assert processes.runs_module(process.pid, searches.SEARCH_MODULE)
        assert processes.runs_module_on(process.pid, searches.SEARCH_MODULE, tmp_path / "s")
        assert processes.runs_module(process.pid, "kd_keras")
        assert not processes.runs_module(process.pid, "kd_keras run")
        assert not processes.runs_module(process.pid, "tuning")
    finally:
        process.kill()
        process.wait()


def test_workers_seeds_and_methods_reach_the_search_command(tmp_path):
    from tuning.cli import get_args

    plain = searches.search_command(searches.TuneOptions(teacher="t", data="d"), tmp_path / "s")
    assert "--workers" not in plain and "--trial-seeds" not in plain and "--methods" not in plain
    options = searches.TuneOptions(
        teacher="t", data="d", workers=2.0, trial_seeds=3, methods=("hinton", "dkd")
    )
    argv = searches.search_command(options, tmp_path / "s")
    args = get_args(argv[4:])  # After `python -m kd_keras tune`.
    assert (args.workers, args.trial_seeds, args.methods) == (2, 3, ["hinton", "dkd"])
    errors = searches.validate_search(
        searches.TuneOptions(workers=0, trial_seeds=101, methods=("crd",)), tmp_path
    )
    assert "Workers must be a whole number >= 1, got 0." in errors
    assert "Seeds per trial must be at most 100, got 101." in errors
    assert any(e.startswith("Unknown method 'crd'") for e in errors)


def test_the_trials_table_says_which_worker_ran_each_trial(tmp_path):
    folder = tmp_path / "tuning" / "s"
    write_trials(folder, [trial("00", 4.0, 0.3, 0.5), trial("01", 2.0, 0.5, 0.6)])
    assert "worker" not in searches.search_state(folder).trials  # One process: no column.
    settings = {
        **{key: None for key in ("tuner", "objective", "epochs", "space", "config")},
        "max_trials": 3,
        "workers": {"00": "worker1", "01": "worker2"},
    }
    SearchFolder(folder).settings_file.write_text(json.dumps(settings))
    table = searches.search_state(folder).trials
    assert list(table["worker"]) == ["worker1", "worker2"]
    assert list(table.columns[:2]) == ["trial_id", "worker"]


def test_the_best_of_a_search_of_methods_carries_its_method(tmp_path):
    folder = tmp_path / "s"
    rows = [dict(trial("00", 4.0, 0.3, 0.5), method="hinton")]
    rows.append(dict(trial("01", 2.0, 0.5, 0.6), method="dkd", dkd_beta=3.5))
    write_trials(folder, rows)
    best = searches.best_params(folder)  # From trials.csv: no best.json yet.
    assert (best["method"], best["dkd_beta"], best["temperature"]) == ("dkd", 3.5, 2.0)
    SearchFolder(folder).best_file.write_text(
        json.dumps({"temperature": 4.0, "alpha": 0.3, "score": 0.6, "method": "at"})
    )
    best = searches.best_params(folder)
    assert (best["method"], best["dkd_beta"]) == ("at", None)
    write_trials(tmp_path / "plain", [trial("00", 4.0, 0.3, 0.5)])
    assert "method" not in searches.best_params(tmp_path / "plain")
