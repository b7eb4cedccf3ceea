import json

import pytest

from kd_keras.cli import get_args, main


def test_help_lists_every_command_and_run_option(capsys):
    with pytest.raises(SystemExit) as info:
        get_args(["run", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--preset",
        "--data",
        "--out",
        "--epochs",
        "--temperature",
        "--alpha",
        "--teacher-depth",
        "--student-depth",
        "--seed",
        "--teacher",
        "--resume",
        "--overwrite",
        "--dry-run",
    ):
        assert flag in text


def test_epochs_sets_both_stages_and_flags_override_the_preset():
    from kd_keras.cli import _config_from_args

    config = _config_from_args(
        get_args(["run", "--preset", "quick", "--epochs", "3", "--alpha", "0.5"])
    )
    assert (config.teacher_epochs, config.student_epochs, config.alpha) == (3, 3, 0.5)
    config = _config_from_args(get_args(["run", "--epochs", "3", "--student-epochs", "7"]))
    assert (config.teacher_epochs, config.student_epochs) == (3, 7)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["run", "--alpha", "2"], "alpha must be in [0, 1]"),
        (["run", "--temperature", "0"], "temperature must be a finite number > 0, got 0.0"),
        (["run", "--student-depth", "3"], "depth must be an int >= 8"),
        (["run", "--data", "/no/such/cifar.tar.gz", "--preset", "smoke"], "/no/such/cifar.tar.gz"),
        (["evaluate", "/no/such/model.keras"], "does not exist"),
        (["report", "/no/such/run"], "holds no completed stage"),
        # Values that used to pass validation and crash later.
        (["run", "--temperature", "1e300"], "temperature must be in [0.01, 100]"),
        (["run", "--temperature", "1e-300"], "temperature must be in [0.01, 100]"),
        (["run", "--teacher-depth", "1000"], "depth must be at most 200"),
        (["run", "--student-epochs", "1000000"], "student_epochs must be at most 1000"),
        (["run", "--seed", "99999999999"], "seed must be at most 2147483646"),
        (["run", "--teacher-width", "100000"], "teacher_width must be at most 256"),
        # Requests larger than CIFAR-10, once silently shrunk.
        (
            ["run", "--train-per-class", "6000"],
            "--train-per-class 6000 > the 4500 training images (after the validation split)",
        ),
        (["run", "--val-size", "49995"], "--val-size 49995 leaves no training image in class"),
        (["run", "--test-per-class", "1001"], "--test-per-class 1001 > the 1000 test images"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, fragment, capsys, tmp_path):
    if argv[0] == "run":
        argv = argv + ["--out", str(tmp_path / "run")]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("kd_keras: error: ")
    assert fragment in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert not (tmp_path / "run").exists()  # Nothing left behind.


def test_dry_run_prints_config_and_model_sizes(capsys):
    assert main(["run", "--preset", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert '"teacher_depth": 30' in out and '"student_depth": 15' in out
    sizes = json.loads(out[out.index("}\n{") + 2 :])
    assert sizes["teacher"]["blocks"] == [5, 5, 4]
    assert sizes["student"]["params"] < sizes["teacher"]["params"]


def test_evaluate_and_report_on_a_real_run(smoke_run, cifar10_archive, capsys):
    out, rows = smoke_run
    model = out / "models" / "student_distilled.keras"
    assert (
        main(["evaluate", str(model), "--data", str(cifar10_archive), "--test-per-class", "20"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["test_images"] == 200
    assert result["accuracy"] == pytest.approx(rows[2]["test_accuracy"])

    (out / "report.png").unlink()
    assert main(["report", str(out)]) == 0
    table = capsys.readouterr().out
    assert "student_distilled" in table and f"{rows[0]['test_accuracy']:.4f}" in table
    assert (out / "report.png").stat().st_size > 0


@pytest.mark.slow
def test_run_command_end_to_end(cifar10_archive, tmp_path, capsys):
    argv = [
        "run",
        "--preset",
        "smoke",
        "--data",
        str(cifar10_archive),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--quiet",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "distilled student vs baseline" in out
    assert main(argv) == 2  # The folder is not empty now.
    assert "--resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
    # `--resume --out DIR` alone continues the run with its saved settings
    # (here: the smoke preset with 1 epoch, not the default quick preset).
    capsys.readouterr()
    assert main(["run", "--resume", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert main(["run", "--resume", "--out", str(tmp_path / "run"), "--alpha", "0.9"]) == 2
    assert "alpha (saved 0.3, asked 0.9)" in capsys.readouterr().err


def test_special_files_as_inputs_are_one_line_and_leave_nothing(tmp_path, capsys):
    import os

    fifo = tmp_path / "cifar.tar.gz"
    os.mkfifo(fifo)
    saved_model = tmp_path / "teacher"
    saved_model.mkdir()
    for argv, fragment in (
        (["--data", str(fifo)], "not a regular file or folder"),
        (["--teacher", str(saved_model)], "is a folder (a TensorFlow SavedModel?)"),
    ):
        assert main(["run", "--preset", "smoke", "--out", str(tmp_path / "run"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("kd_keras: error: ") and err.count("\n") == 1, err
        assert fragment in err
        assert not (tmp_path / "run").exists()
