"""Tests of the Streamlit launcher `app.py` with `streamlit.testing.v1.AppTest`.

The app runs in this process (AppTest); training it starts runs as separate
`python -m kd_keras run` processes, exactly as under `streamlit run`.
"""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from app_smoke import APP, subprocess_env
from streamlit.testing.v1 import AppTest

from kd_app import results, searches, settings
from kd_app import run_state as states
from kd_app.files import tail
from kd_app.processes import launch_files
from kd_keras.atomic import read_json

APP_TIMEOUT = 60  # Seconds per script run: the machine may be busy training.


@pytest.fixture
def smoke_run_dir(smoke_run):
    """The session's real smoke run folder (conftest's `smoke_run`)."""
    return smoke_run[0]


@pytest.fixture
def app_env(tmp_path, monkeypatch):
    """An empty runs folder and an existing (fake) dataset path."""
    runs = tmp_path / "runs"
    fake = tmp_path / "cifar-10-python.tar.gz"
    fake.write_bytes(b"")
    monkeypatch.setenv(settings.RUNS_ENV_VAR, str(runs))
    monkeypatch.setenv(settings.DATA_ENV_VAR, str(fake))
    return runs


@pytest.fixture
def real_runs(tmp_path, monkeypatch, cifar10_archive):
    """A runs folder for real runs started from the UI, with the real
    archive; any run still alive at the end of the test is stopped."""
    archive = cifar10_archive
    runs = tmp_path / "runs"
    for key, value in subprocess_env(tmp_path).items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    monkeypatch.setenv(settings.RUNS_ENV_VAR, str(runs))
    monkeypatch.setenv(settings.DATA_ENV_VAR, str(archive))
    yield runs
    for state in states.alive_runs(runs):
        os.kill(state.pid, signal.SIGTERM)


def run_app():
    at = AppTest.from_file(str(APP), default_timeout=APP_TIMEOUT)
    return at.run()


def texts(elements):
    return [str(e.value) for e in elements]


def assert_no_exception(at):
    assert not at.exception, [e.value for e in at.exception]


def wait_for_status(folder, wanted, timeout, training=False):
    """Polls `progress.json` until its status is in `wanted` (and, with
    `training`, a stage has begun); returns it."""
    deadline = time.time() + timeout
    progress = {}
    while time.time() < deadline:
        progress = read_json(Path(folder) / "progress.json", {}) or {}
        if progress.get("status") in wanted and (progress.get("stage") or not training):
            return progress
        state = states.run_state(folder)
        if state.status in ("exited", "died"):
            break
        time.sleep(1)
    log = tail(launch_files(folder)[0], 40)
    pytest.fail(f"status {progress.get('status')!r}, wanted {wanted}; log:\n{log}")


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


def test_renders_with_no_runs(app_env):
    at = run_app()
    assert_no_exception(at)
    assert not at.error, texts(at.error)
    assert [t.label for t in at.tabs] == ["Launch", "Watch", "Results", "Tuning"]
    assert any("No run" in t for t in texts(at.info))
    assert at.button(key="start").label == "Start"
    assert not app_env.exists()  # Rendering writes nothing.


def test_app_never_imports_tensorflow_or_keras(app_env):
    code = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({str(APP)!r}, default_timeout={APP_TIMEOUT}).run()\n"
        "assert not at.exception, at.exception\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras'})\n"
        "assert not loaded, loaded\n"
        "ours = sorted(m for m in sys.modules if m.startswith('kd_keras.'))\n"
        "assert ours == ["
        "'kd_keras.atomic', 'kd_keras.config', 'kd_keras.data', "
        "'kd_keras.data.cifar10', 'kd_keras.data.describe', "
        "'kd_keras.data.image_folders', 'kd_keras.data.sizes', "
        "'kd_keras.data.source_checks', 'kd_keras.errors', 'kd_keras.export', "
        "'kd_keras.export.plan', 'kd_keras.export.spec', 'kd_keras.extras', "
        "'kd_keras.layout', 'kd_keras.models', 'kd_keras.models.depth', "
        "'kd_keras.models.specs', 'kd_keras.options', 'kd_keras.owned_files', "
        "'kd_keras.presets', 'kd_keras.report', 'kd_keras.report.reference', "
        "'kd_keras.run_folder', 'kd_keras.search_folder', 'kd_keras.stages', "
        "'kd_keras.text', 'kd_keras.validation'], ours\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=APP.parent, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_renders_smoke_run_with_the_numbers_of_results_csv(
    smoke_run_dir, monkeypatch, cifar10_archive
):
    monkeypatch.setenv(settings.RUNS_ENV_VAR, str(smoke_run_dir.parent))
    monkeypatch.setenv(settings.DATA_ENV_VAR, str(cifar10_archive))
    at = run_app()
    assert_no_exception(at)
    assert not at.error, texts(at.error)
    assert at.sidebar.selectbox(key="run").value == "smoke"

    expected = pd.read_csv(smoke_run_dir / "results.csv")
    shown = at.table[0].value
    assert list(shown.columns) == list(results.SHOWN_COLUMNS)
    assert list(shown["stage"]) == ["teacher", "student_baseline", "student_distilled"]
    for column in results.SHOWN_COLUMNS:
        assert list(shown[column]) == list(expected[column]), column

    gain = json.loads((smoke_run_dir / "results.json").read_text())["distillation_gain_points"]
    metric = next(m for m in at.metric if m.label.startswith("Distilled student vs"))
    assert metric.value == f"{gain:+.2f} points"
    assert any("finished" in t for t in texts(at.markdown))
    assert len(at.image) >= 2  # test_accuracy_bar.png and report.png
    labels = [b.label for b in at.download_button]
    assert "Download results.csv" in labels
    assert "Download the distilled student (.keras)" in labels
    config = json.loads((smoke_run_dir / "config.json").read_text())
    assert json.loads(at.json[0].value) == config
    # The run next to the reference table, as `kd_keras report --reference`.
    from kd_keras.report.reference import reference_table_of

    reference = [m for m in texts(at.markdown) if "| teacher (depth 8) |" in m]
    assert reference == [reference_table_of(smoke_run_dir)]
    assert "Settings that differ from the reference: " in reference[0]


@pytest.fixture
def shipped_run_dir(smoke_run, tmp_path):
    """A copy of the session's smoke run (the shared one keeps its three
    rows) with the teacher and the distilled student exported as SavedModel
    and int8 LiteRT files, evaluated on 40 test images."""
    from kd_keras.export.exporter import export_run

    folder = tmp_path / "runs" / "shipped"
    shutil.copytree(smoke_run[0], folder)
    export_run(
        folder,
        stages=["teacher", "student_distilled"],
        formats=["saved_model", "litert"],
        quantizations=["int8"],
        calibration_images=32,
        max_images=40,
        latency_repeats=3,
    )
    return folder


@pytest.mark.slow
def test_results_tab_shows_exported_models_and_offers_their_files(
    shipped_run_dir, monkeypatch, cifar10_archive
):
    monkeypatch.setenv(settings.RUNS_ENV_VAR, str(shipped_run_dir.parent))
    monkeypatch.setenv(settings.DATA_ENV_VAR, str(cifar10_archive))
    at = run_app()
    assert_no_exception(at)
    assert not at.error, texts(at.error)
    exported = [
        "teacher@saved_model",
        "teacher@int8",
        "student_distilled@saved_model",
        "student_distilled@int8",
    ]
    # The run's table holds the new rows, with the numbers of results.csv.
    expected = pd.read_csv(shipped_run_dir / "results.csv")
    shown = at.table[0].value
    assert list(shown["stage"]) == ["teacher", "student_baseline", "student_distilled", *exported]
    for column in results.SHOWN_COLUMNS:
        assert list(shown[column].fillna(-1)) == list(expected[column].fillna(-1)), column
    # The shipped-models table: the measurements of each export.
    shipped = at.table[1].value
    assert list(shipped.columns) == list(results.EXPORT_TABLE_COLUMNS)
    assert list(shipped["stage"]) == exported
    row = json.loads((shipped_run_dir / "export" / "student_distilled" / "int8.json").read_text())
    int8 = shipped.set_index("stage").loc["student_distilled@int8"]
    assert (int8["agreement"], int8["speedup"], int8["test_images"]) == (
        row["agreement"],
        row["speedup"],
        40,
    )
    ratios = at.table[2].value
    assert list(ratios["as"]) == ["keras", "saved_model", "int8"]
    labels = [b.label for b in at.download_button]
    for name in (
        "student_distilled@int8 (int8.tflite)",
        "teacher@int8 (int8.tflite)",
        "student_distilled@saved_model (saved_model.zip)",
    ):
        assert f"Download {name}" in labels, labels
    # What the buttons hand out: the .tflite file, the SavedModel zipped.
    tflite = shipped_run_dir / "export" / "student_distilled" / "int8.tflite"
    assert results.export_download(tflite) == (
        tflite.read_bytes(),
        "int8.tflite",
        "application/octet-stream",
    )
    data, name, mime = results.export_download(tflite.parent / "saved_model")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert "saved_model/saved_model.pb" in archive.namelist()
    assert (name, mime) == ("saved_model.zip", "application/zip")


# --------------------------------------------------------------------------
# Failures are shown, not thrown
# --------------------------------------------------------------------------


def test_missing_dataset_path_shows_an_error(app_env, tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "cifar-10-python.tar.gz"
    monkeypatch.setenv(settings.DATA_ENV_VAR, str(missing))
    at = run_app()
    assert_no_exception(at)
    assert any("does not exist" in t and str(missing) in t for t in texts(at.error))
    at.selectbox(key="preset").set_value("smoke")
    at.button(key="start").click().run()
    assert_no_exception(at)
    assert any(t.startswith("Not started") and "does not exist" in t for t in texts(at.error))
    assert not app_env.exists() or not any(app_env.iterdir())  # Nothing launched.


def test_bad_temperature_and_alpha_show_errors(app_env):
    at = run_app()
    at.number_input(key="temperature").set_value(-1.0)
    at.number_input(key="alpha").set_value(1.5)
    at.run()
    assert_no_exception(at)
    errors = texts(at.error)
    assert any("Temperature T must be a finite number > 0" in t for t in errors)
    assert any("alpha must be in [0, 1]" in t for t in errors)
    at.button(key="start").click().run()
    assert_no_exception(at)
    assert any(t.startswith("Not started") for t in texts(at.error))
    assert not app_env.exists() or not any(app_env.iterdir())


def test_failed_run_shows_its_error_and_log_tail(app_env):
    folder = app_env / "broken"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps({"preset": "smoke", "teacher_epochs": 4, "student_epochs": 4})
    )
    (folder / "progress.json").write_text(
        json.dumps(
            {
                "status": "failed",
                "pid": 999999,
                "stage": "teacher",
                "stage_index": 0,
                "epoch": 1,
                "epochs": 4,
                "completed_stages": [],
                "elapsed_s": 3.0,
                "error": "NonFiniteLossError: stage 'teacher' epoch 2 batch 3: the loss is nan",
            }
        )
    )
    log, record = launch_files(folder)
    log.write_text("Epoch 1/4\nkd_keras: error: the loss is nan (the last log line)\n")
    record.write_text(
        json.dumps(
            {"pid": 999999, "kind": "run", "argv": [], "started_at": "2000-01-01T00:00:00+00:00"}
        )
    )
    at = run_app()
    assert_no_exception(at)
    assert any("The run failed" in t and "the loss is nan" in t for t in texts(at.error))
    assert any("the last log line" in t for t in texts(at.code))


def test_tuning_tab_shows_trials_and_best(app_env):
    # The files of `python -m tuning` (tuning/search.py), for a search the
    # app launched (its launch record names the teacher) that ended early.
    search = searches.searches_dir(app_env) / "search-a"
    search.mkdir(parents=True)
    (search / "trials.csv").write_text(
        "trial_id,temperature,alpha,val_accuracy,val_loss,epochs,seconds,best_epoch,"
        "distiller_val_loss,status\n"
        "0,2.0,0.5,0.41,1.7,3,10.0,3,0.9,COMPLETED\n"
        "1,8.0,0.1,0.47,1.6,3,11.0,2,0.8,COMPLETED\n"
    )
    (search / "best.json").write_text(
        json.dumps(
            {
                "trial_id": "1",
                "temperature": 8.0,
                "alpha": 0.1,
                "score": 0.47,
                "objective": "val_accuracy",
                "val_loss": 1.6,
                "epochs": 3,
                "completed_trials": 2,
            }
        )
    )
    teacher = app_env / "gone" / "teacher.keras"
    launch_files(search)[1].write_text(
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
                    str(teacher),
                    "--preset",
                    "smoke",
                    "--trials",
                    "3",
                ],
            }
        )
    )
    at = run_app()
    assert_no_exception(at)
    trials = at.dataframe[0].value
    assert list(trials["temperature"]) == [2.0, 8.0]
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Best T"], metrics["Best alpha"], metrics["Score"]) == ("8", "0.1", "0.4700")
    assert any("ended before all its trials" in t for t in texts(at.warning))
    assert at.selectbox(key="best_preset").value == "smoke"
    at.button(key="run_best").click().run()
    assert_no_exception(at)
    assert any("Run not started" in t and "does not exist" in t for t in texts(at.error))


# --------------------------------------------------------------------------
# Launching and stopping real runs
# --------------------------------------------------------------------------


@pytest.mark.slow
def test_start_smoke_run_from_the_ui(real_runs):
    runs = real_runs
    at = run_app()
    at.selectbox(key="preset").set_value("smoke")
    at.run()
    at.number_input(key="epochs").set_value(1)
    at.number_input(key="temperature").set_value(2.0)
    at.number_input(key="alpha").set_value(0.5)
    at.text_input(key="run_name").input("ui-smoke")
    at.button(key="start").click().run()
    assert_no_exception(at)
    assert any("Started run 'ui-smoke'" in t for t in texts(at.success)), texts(at.error)
    folder = runs / "ui-smoke"

    # A second start while the first is alive is refused.
    at.button(key="start").click().run()
    assert any(t.startswith("Not started") and "already running" in t for t in texts(at.error))

    wait_for_status(folder, {"finished"}, timeout=240)
    config = json.loads((folder / "config.json").read_text())
    assert (config["preset"], config["student_epochs"], config["temperature"], config["alpha"]) == (
        "smoke",
        1,
        2.0,
        0.5,
    )
    assert (folder / "results.csv").is_file()
    assert (folder / "models" / "student_distilled.keras").is_file()
    assert "kd_keras run --preset smoke" in launch_files(folder)[0].read_text()

    at.run()
    assert_no_exception(at)
    assert at.sidebar.selectbox(key="run").value == "ui-smoke"
    shown = at.table[0].value
    expected = pd.read_csv(folder / "results.csv")
    assert list(shown["test_accuracy"]) == list(expected["test_accuracy"])


@pytest.mark.slow
def test_stop_button_stops_the_run_cleanly(real_runs):
    runs = real_runs
    at = run_app()
    at.selectbox(key="preset").set_value("smoke")
    at.run()
    at.number_input(key="epochs").set_value(30)  # Long enough to stop it.
    at.text_input(key="run_name").input("to-stop")
    at.button(key="start").click().run()
    assert any("Started run 'to-stop'" in t for t in texts(at.success)), texts(at.error)
    folder = runs / "to-stop"
    # Stop a run that trains, so the stop lands in a stage.
    wait_for_status(folder, {"running"}, timeout=180, training=True)
    at.run()
    at.button(key="stop_watch").click().run()
    assert_no_exception(at)
    assert any("SIGTERM" in t for t in texts(at.info)), texts(at.error)
    progress = wait_for_status(folder, {"stopped"}, timeout=120)
    assert "SIGTERM" in (progress.get("error") or "")
    deadline = time.time() + 30
    while states.run_state(folder).alive and time.time() < deadline:
        time.sleep(0.5)
    at.run()
    assert_no_exception(at)
    assert any("stopped" in t for t in texts(at.warning))

    # Resume: `kd_keras run --resume --out DIR` takes the saved settings
    # (30 epochs, not the preset's 4) and trains on; then stop it again.
    at.button(key="resume_watch").click().run()
    assert any("Resumed run 'to-stop'" in t for t in texts(at.success)), texts(at.error)
    wait_for_status(folder, {"running"}, timeout=180, training=True)
    log = launch_files(folder)[0].read_text()
    assert "--resume" in log and "--preset" not in log.rsplit("--resume", 1)[1].splitlines()[0]
    assert json.loads((folder / "progress.json").read_text())["epochs"] == 30
    at.run()
    at.button(key="stop_watch").click().run()
    wait_for_status(folder, {"stopped"}, timeout=120)


def test_own_image_folder_is_described_and_sized_before_launch(app_env, monkeypatch):
    from PIL import Image

    images = app_env / "data" / "my images"
    for index, name in enumerate(("cats", "dogs", "owls")):
        (images / name).mkdir(parents=True)
        for i in range(4 + index):
            Image.new("RGB" if i % 2 else "L", (24, 20), color=i).save(images / name / f"{i}.png")
    monkeypatch.setenv(settings.DATA_ENV_VAR, "")  # No CIFAR-10 default.
    at = run_app()
    at.sidebar.text_input(key="data_path").input("data/my images").run()
    assert_no_exception(at)
    assert not at.error, texts(at.error)
    facts = [t for t in texts(at.info) if t.startswith("**Data**")]
    assert facts == [
        "**Data**: image folder: 3 classes (cats, dogs, owls); 15 images (20% of each class "
        "held out for testing); 24x20 pixels."
    ]
    assert at.text_input(key="val_size").placeholder == "follows the data"
    at.text_input(key="train_per_class").input("all")
    at.text_input(key="val_size").input("3")
    at.number_input(key="image_size").set_value(16)
    at.selectbox(key="teacher_outputs").set_value("probabilities")
    at.run()
    assert_no_exception(at)
    assert not at.error, texts(at.error)
    (command,) = [c for c in texts(at.code) if "kd_keras run" in c]
    assert f"--data {images.resolve()}" in command
    for flag in ("--val-size 3", "--train-per-class all", "--image-size 16"):
        assert flag in command, command
    assert "--teacher-outputs probabilities" in command
    at.text_input(key="val_size").input("ten").run()
    assert any("Validation images must be a whole number" in t for t in texts(at.error))
