"""Tests of `kd_app.launching` and `kd_app.checks`: the launch form's
checks (kd_keras's own rules) and the command lines it starts."""

import json
import sys

import pytest
from app_smoke import REPO  # noqa: F401 (puts the repository on sys.path)

from kd_app import checks, launching
from kd_keras import cli
from kd_keras.errors import LaunchError
from kd_keras.models.depth import MAX_DEPTH


@pytest.fixture
def data(tmp_path, monkeypatch):
    """A (fake) CIFAR-10 archive, named by the operator's $KD_KERAS_CIFAR10
    (a data source outside the runs root must be one the operator named)."""
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(b"")
    monkeypatch.setenv("KD_KERAS_CIFAR10", str(path))
    return str(path)


def launch_errors(tmp_path, data, **fields):
    options = launching.LaunchOptions(**{"preset": "quick", "name": "r", "data": data, **fields})
    return launching.validate_launch(options, tmp_path / "runs")


def test_the_command_line_gives_the_config_the_form_asked_for(tmp_path, data):
    options = launching.LaunchOptions(
        preset="smoke",
        name="r",
        data=data,
        epochs=2,
        temperature=2,
        alpha=0.5,
        teacher_depth=20.0,
        student_depth=14,
        train_per_class=30,
        seed=7,
        student_model="resnet8",
    )
    argv = launching.run_command(options, tmp_path / "runs" / "r")
    assert argv[:9] == [
        sys.executable,
        "-m",
        "kd_keras",
        "run",
        "--preset",
        "smoke",
        "--out",
        str(tmp_path / "runs" / "r"),
        "--quiet",
    ]
    assert argv[argv.index("--teacher-depth") + 1] == "20"  # A whole float as an int.
    config = cli._config_from_args(cli.get_args(argv[3:]))
    assert (config.preset, config.teacher_epochs, config.student_epochs) == ("smoke", 2, 2)
    assert (config.temperature, config.alpha, config.seed) == (2.0, 0.5, 7)
    assert (config.teacher_depth, config.student_depth) == (20, 14)
    assert (config.train_per_class, config.student_model, config.data) == (30, "resnet8", data)
    assert config.teacher_width == 8  # The preset's, as no field set it.
    overwrite = launching.run_command(
        launching.LaunchOptions(preset="smoke", if_exists="overwrite"), tmp_path / "o"
    )
    assert overwrite[-1] == "--overwrite" and "--epochs" not in " ".join(overwrite)


def test_resume_command_takes_the_saved_config(tmp_path, data):
    folder = tmp_path / "runs" / "r"
    with pytest.raises(LaunchError, match="holds no config.json"):
        launching.resume_command(folder)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"preset": "smoke"}))
    assert launching.resume_command(folder, data)[3:] == [
        "run",
        "--resume",
        "--out",
        str(folder),
        "--quiet",
        "--data",
        data,
    ]


def test_hyperparameter_errors_are_kd_kerass_one_line_and_name_the_value():
    errors = checks.check_hyperparameters(1000, -0.25)
    assert errors == [
        "Temperature T must be in [0.01, 100] (1-20 is usual; the default is 4), got 1000.",
        "alpha must be in [0, 1] (it weights the hard-label loss), got -0.25.",
    ]
    assert checks.check_hyperparameters(None, None) == []  # The preset's values.
    assert checks.check_hyperparameters(4, 0.3) == []


def test_the_form_has_the_clis_depth_limits(tmp_path, data):
    errors = launch_errors(tmp_path, data, teacher_depth=MAX_DEPTH + 50, student_depth=5)
    assert len(errors) == 2
    assert errors[0].startswith(f"Teacher depth must be at most {MAX_DEPTH}")
    assert f"got {MAX_DEPTH + 50}" in errors[0]
    assert errors[1].startswith("Student depth must be an int >= 8") and "got 5" in errors[1]
    assert launch_errors(tmp_path, data, teacher_depth=MAX_DEPTH, student_depth=8) == []


def test_the_rest_of_runconfigs_rules_apply_with_the_forms_labels(tmp_path, data):
    assert launch_errors(tmp_path, data, epochs=0) == [
        "Epochs (every stage) must be an int >= 1, got 0."
    ]
    (error,) = launch_errors(tmp_path, data, train_per_class=4600)
    assert "Train images per class 4600 > the 4500 training images" in error
    assert "--train-per-class" not in error  # The form's label, not the flag.
    (error,) = launch_errors(tmp_path, data, seed=2.5)
    assert error == "Seed must be an int >= 0, got 2.5."
    for line in launch_errors(tmp_path, data, temperature=0, alpha=2, epochs=3.5):
        assert "\n" not in line


def test_an_existing_folder_is_refused_unless_asked(tmp_path, data):
    folder = tmp_path / "runs" / "r"
    folder.mkdir(parents=True)
    (folder / "run.lock").write_text("")  # A lock file alone is not a run.
    assert launch_errors(tmp_path, data) == []
    (folder / "x.txt").write_text("")
    assert "already exists" in launch_errors(tmp_path, data)[0]
    assert "no config.json" in launch_errors(tmp_path, data, if_exists="overwrite")[0]
    assert "not usable" in launch_errors(tmp_path, data, name="tuning")[0]


def test_stop_overdue_only_for_the_same_live_process():
    state = launching.run_state("/nonexistent/run")
    running = type(state)(path=state.path, status="running", pid=42)
    assert launching.stop_overdue(running, (100.0, 42), 20, now=121.0)
    assert not launching.stop_overdue(running, (100.0, 42), 20, now=119.0)
    assert not launching.stop_overdue(running, (100.0, 41), 20, now=200.0)  # Another process.
    assert not launching.stop_overdue(running, None, 20, now=200.0)


def test_device_settings_reach_the_command_line_and_are_checked(tmp_path, data):
    options = launching.LaunchOptions(
        preset="smoke",
        name="r",
        data=data,
        strategy="mirrored",
        devices=" /cpu:0, /cpu:1 ",
        sync_batch_norm=True,
    )
    argv = launching.run_command(options, tmp_path / "runs" / "r")
    config = cli._config_from_args(cli.get_args(argv[3:]))
    assert (config.strategy, config.devices, config.sync_batch_norm) == (
        "mirrored",
        ["/cpu:0", "/cpu:1"],
        True,
    )
    plain = launching.run_command(
        launching.LaunchOptions(preset="smoke", name="r", data=data), tmp_path / "runs" / "r"
    )
    assert "--strategy" not in plain and "--sync-batch-norm" not in plain
    # Devices without the mirrored strategy: kd_keras's own one-line message.
    errors = launch_errors(tmp_path, data, devices="/gpu:0")
    assert len(errors) == 1 and "mirrored" in errors[0] and "/gpu:0" in errors[0]


def test_the_method_and_its_own_hyperparameters_reach_the_command_line(tmp_path, data):
    def config_of(**fields):
        options = launching.LaunchOptions(preset="smoke", name="r", data=data, **fields)
        argv = launching.run_command(options, tmp_path / "runs" / "r")
        return argv, cli._config_from_args(cli.get_args(argv[3:]))

    typed = dict(dkd_beta=2.0, hint_layer="stage1", at_beta=50.0, logit_standardization=True)
    argv, config = config_of(method="dkd", **typed)
    assert (config.method, config.dkd_beta, config.logit_standardization) == ("dkd", 2.0, True)
    # Values typed for other methods never reach the run.
    assert "--hint-layer" not in argv and "--at-beta" not in argv
    assert (config.hint_layer, config.at_beta) == ("stage2", 1000.0)
    argv, config = config_of(method="fitnets", **typed)
    assert (config.method, config.hint_layer, config.dkd_beta) == ("fitnets", "stage1", 8.0)
    assert "--logit-standardization" not in argv and not config.logit_standardization
    argv, config = config_of(method="at", **typed)
    assert (config.method, config.at_beta, config.hint_layer) == ("at", 50.0, "stage2")
    argv, config = config_of(method="hinton", **typed)
    assert "--method" not in argv and config.method == "hinton" and config.logit_standardization
    assert "--dkd-beta" not in argv


def test_method_and_budget_errors_use_the_forms_labels(tmp_path, data):
    (error,) = launch_errors(tmp_path, data, method="crd")
    assert error.startswith("Unknown method 'crd'") and "dkd" in error
    (error,) = launch_errors(tmp_path, data, method="dkd", dkd_beta=-1.0)
    assert "-1" in error and "DKD beta" in error and "\n" not in error
    (error,) = launch_errors(tmp_path, data, budget="10m", epochs=3)
    assert "Time budget chooses the epochs" in error
    (error,) = launch_errors(tmp_path, data, budget="ten minutes")
    assert "ten minutes" in error and "\n" not in error
    assert launch_errors(tmp_path, data, budget="10m", method="at", at_beta=500.0) == []
    argv = launching.run_command(
        launching.LaunchOptions(preset="quick", name="r", data=data, budget="10m"),
        tmp_path / "runs" / "r",
    )
    assert argv[argv.index("--budget") + 1] == "10m"


def test_size_fields_take_a_number_all_or_nothing(tmp_path, data):
    options = launching.LaunchOptions(
        preset="smoke",
        name="r",
        data=data,
        val_size="600",
        train_per_class="all",
        val_per_class=" ALL ",
        test_per_class=None,
        image_size=16.0,
        teacher_outputs="probabilities",
    )
    assert launching.validate_launch(options, tmp_path / "runs") == []
    argv = launching.run_command(options, tmp_path / "runs" / "r")
    flags = argv[argv.index("--quiet") + 1 :]
    pairs = dict(zip(flags[::2], flags[1::2]))
    assert pairs["--val-size"] == "600" and pairs["--image-size"] == "16"
    assert (pairs["--train-per-class"], pairs["--val-per-class"]) == ("all", "all")
    assert pairs["--teacher-outputs"] == "probabilities"
    assert "--test-per-class" not in flags  # Empty: the default that follows the data.
    plain = launching.run_command(launching.LaunchOptions(preset="smoke", data=data), "o")
    assert "--teacher-outputs" not in plain  # auto is the CLI's default.
    errors = launch_errors(tmp_path, data, val_size="lots", test_per_class=0, teacher_outputs="x")
    assert errors == [
        "Validation images must be a whole number >= 1, 'all', or empty (the default "
        "that follows the data), got 'lots'.",
        "Test images per class must be a whole number >= 1, 'all', or empty (the default "
        "that follows the data), got 0.",
        "Unknown teacher output 'x'; choose one of auto, logits, probabilities.",
    ]


def test_placeholders_follow_the_data_kind():
    cifar = launching.placeholders("quick", "cifar10")
    folder = launching.placeholders("quick", "folder")
    assert cifar["val_size"].startswith("quick: ") and folder["val_size"] == "follows the data"
    assert folder["train_per_class"] == "follows the data" and cifar["image_size"] == "the data's"


def test_a_relative_cifar10_variable_is_the_operators_file_and_launches(tmp_path, monkeypatch):
    """`KD_KERAS_CIFAR10=../data/cifar.tar.gz streamlit run app.py`: the
    page's default data source is that file, absolute, and is accepted
    (a relative name on the page is read inside the runs root instead)."""
    from kd_app import checks, settings

    archive = tmp_path / "data" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(b"")
    (tmp_path / "app").mkdir()
    monkeypatch.chdir(tmp_path / "app")
    monkeypatch.setenv("KD_KERAS_CIFAR10", "../data/cifar-10-python.tar.gz")
    default = settings.default_data_path()
    assert default == str(archive.resolve())
    path, errors = checks.resolve_data(default, tmp_path / "runs")
    assert (path, errors) == (archive.resolve(), [])
    monkeypatch.delenv("KD_KERAS_CIFAR10")
    assert settings.default_data_path() == ""
