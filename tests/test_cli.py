import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kd_keras.cli import _config_from_args, get_args, main
from kd_keras.config import RunConfig
from kd_keras.errors import MAX_MESSAGE_CHARS, ConfigError, run_command

REPO = Path(__file__).resolve().parent.parent


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
        # Unbounded values that hung or aborted TensorFlow, and a warm-up
        # longer than the stages.
        (["run", "--threads", "100000"], "threads must be at most 256"),
        (["run", "--batch-size", "1000000000"], "batch_size must be at most 65536"),
        (
            ["run", "--warmup-epochs", "1000", "--epochs", "4"],
            "--warmup-epochs 1000 must be below the epochs of every stage it warms up "
            "(--teacher-epochs 4, --student-epochs 4); use --warmup-epochs 3 or less",
        ),
        (
            ["run", "--warmup-epochs", "3", "--teacher-epochs", "9", "--student-epochs", "3"],
            "(--teacher-epochs 9, --student-epochs 3); use --warmup-epochs 2 or less",
        ),
        # An explicit 0 is kept: no teacher to reuse, so it is refused.
        (["run", "--teacher-epochs", "0", "--epochs", "2"], "teacher_epochs is 0 but no --teacher"),
        (["evaluate", "m.keras", "--image-size", "0"], "got 0; give --image-size a side length"),
        (["evaluate", "m.keras", "--image-size", "-5"], "got -5; give --image-size a side length"),
        (
            ["evaluate", "m.h5"],
            "does not exist; give a .keras file, a LiteRT .tflite file or a SavedModel",
        ),
        (["export", "/no/such/run", "--threads", "100000"], "threads must be at most 256"),
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


def test_an_explicit_zero_is_kept_and_epochs_fills_only_the_stages_not_given():
    args = ["run", "--teacher", "t.keras", "--teacher-epochs", "0", "--epochs", "2"]
    config = _config_from_args(get_args(args))
    assert (config.teacher_epochs, config.student_epochs) == (0, 2)
    config = _config_from_args(get_args(["run", "--student-epochs", "5", "--epochs", "2"]))
    assert (config.teacher_epochs, config.student_epochs) == (2, 5)


def test_the_preset_warm_up_fits_fewer_epochs_and_an_explicit_one_is_checked():
    # quick warms up for 1 epoch; with 1 epoch a stage there is none left.
    assert RunConfig.from_preset("quick", teacher_epochs=1, student_epochs=1).warmup_epochs == 0
    assert RunConfig.from_preset("quick", teacher_epochs=2, student_epochs=2).warmup_epochs == 1
    assert RunConfig.from_preset("paper", teacher_epochs=3, student_epochs=9).warmup_epochs == 2
    assert RunConfig.from_preset("paper").warmup_epochs == 5
    # A reused teacher trains nothing: only the students' epochs count.
    reused = RunConfig.from_preset(
        "smoke", teacher="t.keras", teacher_epochs=0, student_epochs=3, warmup_epochs=2
    )
    assert reused.warmup_epochs == 2
    with pytest.raises(ConfigError, match="--warmup-epochs 3 must be below .*--student-epochs 3"):
        RunConfig.from_preset("smoke", teacher="t.keras", student_epochs=3, warmup_epochs=3)


def test_resume_checks_the_warm_up_only_when_it_or_the_epochs_change(tmp_path):
    # A run saved before the check (warm-up as long as its 1 epoch) still
    # resumes as it was; changing it to something impossible is refused.
    saved = RunConfig.from_preset("smoke", teacher_epochs=1, student_epochs=1).to_dict()
    saved["warmup_epochs"] = 1
    (tmp_path / "config.json").write_text(json.dumps(saved))
    resume = ["run", "--resume", "--out", str(tmp_path)]
    assert _config_from_args(get_args(resume)).warmup_epochs == 1
    with pytest.raises(ConfigError, match="--warmup-epochs 5 must be below"):
        _config_from_args(get_args(resume + ["--warmup-epochs", "5"]))


def _fresh_python(code, env=None):
    """Runs `code` in a fresh interpreter from the repository."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        timeout=300,
    )


def test_bad_flags_and_paths_exit_2_before_tensorflow_is_imported(tmp_path):
    # Each command in a fresh interpreter's view: the exit code and whether
    # TensorFlow (or Keras) was imported on the way to it.
    commands = [
        ["run", "--alpha", "2"],
        ["run", "--warmup-epochs", "9", "--epochs", "4"],
        ["run", "--threads", "100000"],
        ["run", "--data", str(tmp_path / "missing.npz"), "--preset", "smoke"],
        ["run", "--data", str(tmp_path / "missing.tar.gz"), "--preset", "smoke"],
        ["evaluate", str(tmp_path / "missing.keras")],
        ["evaluate", "m.keras", "--image-size", "-5"],
        ["evaluate", str(tmp_path), "--split", "val"],
        ["export", str(tmp_path), "--threads", "0"],
        ["report", str(tmp_path / "none")],
    ]
    code = (
        "import contextlib, io, json, sys\n"
        "from kd_keras.cli import main\n"
        f"results = []\n"
        f"for argv in {commands!r}:\n"
        "    with contextlib.redirect_stderr(io.StringIO()) as err:\n"
        "        code = main(argv)\n"
        "    heavy = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)\n"
        "    results.append([code, heavy, err.getvalue()])\n"
        "print(json.dumps(results))\n"
    )
    result = _fresh_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    for argv, (code, heavy, err) in zip(commands, json.loads(result.stdout)):
        assert (code, heavy) == (2, []), (argv, err)
        assert err.startswith("kd_keras: error: ") and err.count("\n") == 1, (argv, err)


def test_a_refusal_is_one_line_of_reasonable_length_that_keeps_its_fix(capsys):
    names = ", ".join(f"class_{i:04d}" for i in range(1000))

    def refuse():
        raise ConfigError(f"the teacher predicts 10 classes, the data has 1000 ({names}); fix X")

    assert run_command("kd_keras", refuse) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) <= len("kd_keras: error: \n") + MAX_MESSAGE_CHARS
    assert err.startswith("kd_keras: error: the teacher predicts 10 classes, the data has 1000")
    assert err.rstrip().endswith("; fix X") and "characters left out" in err


@pytest.fixture(scope="module")
def exported_models(tmp_path_factory):
    """A tiny 3-class logits model on 8x8 images as .keras, .tflite and a
    SavedModel folder, and a .npz with its test images."""
    import keras
    import numpy as np

    from kd_keras.export.exporter import export_model

    root = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(60, 8, 8, 3), dtype=np.uint8)
    y = np.arange(60) % 3
    np.savez(root / "data.npz", x_train=x, y_train=y, x_test=x[:30], y_test=y[:30])
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    hidden = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    model.save(root / "model.keras")
    export_model(model, root / "model.tflite")
    export_model(model, root / "saved", format="saved_model")
    predicted = np.argmax(model.predict(x[:30].astype("float32"), verbose=0), axis=-1)
    return root, predicted, y[:30]


def test_evaluate_takes_a_tflite_file_and_a_saved_model_folder(exported_models, capsys):
    root, predicted, labels = exported_models
    expected = float(np.mean(predicted == labels))
    results = {}
    for name in ("model.keras", "model.tflite", "saved"):
        argv = ["evaluate", str(root / name), "--data", str(root / "data.npz"), "--per-class"]
        assert main(argv) == 0, capsys.readouterr().err
        results[name] = json.loads(capsys.readouterr().out)
    assert [r["format"] for r in results.values()] == ["keras", "litert", "saved_model"]
    for result in results.values():
        assert result["test_images"] == 30
        assert result["accuracy"] == pytest.approx(expected)
        for label, name in enumerate(("0", "1", "2")):
            mine = predicted[labels == label] == label
            assert result["per_class"][name] == {
                "accuracy": pytest.approx(mine.mean()),
                "images": 10,
            }
    assert results["model.tflite"]["loss"] == pytest.approx(
        results["model.keras"]["loss"], abs=1e-4
    )


def test_evaluate_a_tflite_file_of_another_image_size_is_one_line(exported_models, capsys):
    root, _, _ = exported_models
    argv = ["evaluate", str(root / "model.tflite"), "--data", str(root / "data.npz")]
    assert main(argv + ["--image-size", "16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "takes images of shape (8, 8, 3)" in err


# --- Wording ---


def test_plural_and_the_lines_that_count_epochs(capsys):
    from kd_app.run_state import progress_texts
    from kd_keras.text import plural
    from tuning.cli import _print_trial

    assert (plural(1, "epoch"), plural(0, "epoch"), plural(2, "class", "classes")) == (
        "1 epoch",
        "0 epochs",
        "2 classes",
    )
    summary = dict(done_epochs=0, total_epochs=1, epoch=1, epochs=1, batch=0, batches=0)
    summary.update(stage_index=0, stages=3, stage="teacher")
    assert progress_texts(summary, alive=False) == (
        "Overall: 0 of 1 epoch done",
        "Stage 1/3 teacher: 1/1 epoch done",
    )
    row = dict(trial_id="00", temperature=4.0, alpha=0.3, val_accuracy=0.5, epochs=1, seconds=2.0)
    _print_trial(row)
    assert "(1 epoch, 2.0 s)" in capsys.readouterr().out


def test_the_teacher_check_says_the_teacher_once_and_offers_the_flag_only_where_it_exists(capsys):
    import keras

    from kd_keras.distill.teacher import teacher_sanity_check
    from kd_keras.errors import TeacherError

    # Always class 0 on 3 balanced classes: near chance.
    inputs = keras.Input((4, 4, 3))
    flat = keras.layers.Flatten()(inputs)
    teacher = keras.Model(inputs, keras.layers.Dense(3, kernel_initializer="zeros")(flat))
    teacher.layers[-1].bias.assign([1.0, 0.0, 0.0])
    images = np.zeros((30, 4, 4, 3), dtype="uint8")
    splits = {"val": (images, np.arange(30) % 3), "classes": ["a", "b", "c"]}
    teacher_sanity_check(teacher, splits, refuse=False)  # A trained teacher: a warning.
    captured = capsys.readouterr()
    assert captured.out.startswith("kd_keras: the teacher: validation accuracy 0.3333 on 30")
    assert captured.err.startswith("kd_keras: warning: the teacher is near chance")
    assert "--accept-weak-teacher" not in captured.err and "teacher the" not in captured.err
    with pytest.raises(TeacherError, match="teacher 't.keras' is near chance") as error:
        teacher_sanity_check(teacher, splits, name="'t.keras'", verbose=0)
    assert str(error.value).endswith("if the teacher is meant, pass --accept-weak-teacher")


# --- Quiet start-up (kd_keras/quiet.py) ---

STARTUP_NOISE = ("oneDNN", "cuInit", "cuda drivers", "absl::InitializeLog")


def test_quiet_unless_verbose_or_the_user_set_the_level():
    from kd_keras.quiet import is_quiet

    assert is_quiet(False, {})
    assert not is_quiet(True, {})
    assert not is_quiet(False, {"TF_CPP_MIN_LOG_LEVEL": "0"})


def test_held_back_lines_are_shown_only_if_the_start_fails(capfd):
    from kd_keras.quiet import held_stderr

    with held_stderr():
        os.write(2, b"start-up noise\n")
    assert capfd.readouterr().err == ""
    with pytest.raises(ImportError), held_stderr():
        os.write(2, b"why it failed\n")
        raise ImportError("no such library")
    assert capfd.readouterr().err == "why it failed\n"


def _cli(argv, **env):
    """`python -m <argv>` in a fresh interpreter, with the user's
    TF_CPP_MIN_LOG_LEVEL unset unless given in `env`."""
    environ = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=environ,
        timeout=600,
    )


@pytest.mark.slow
def test_tensorflow_start_up_lines_only_with_verbose_or_the_users_level(exported_models):
    root, _, _ = exported_models
    evaluate = ["kd_keras", "evaluate", str(root / "model.keras"), "--data", str(root / "data.npz")]
    quiet = _cli(evaluate)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert json.loads(quiet.stdout)["test_images"] == 30
    assert not [n for n in STARTUP_NOISE if n in quiet.stderr], quiet.stderr
    for loud in (_cli(evaluate + ["--verbose"]), _cli(evaluate, TF_CPP_MIN_LOG_LEVEL="0")):
        assert loud.returncode == 0, loud.stderr[-2000:]
        # oneDNN's line on CPUs where TensorFlow turns it on, CUDA's where
        # its libraries are installed: some start-up line on every machine.
        assert any(noise in loud.stderr for noise in STARTUP_NOISE), loud.stderr[-2000:]
    # The search's front end: its own output first, nothing from TensorFlow.
    for front_end, prog in (
        (["tuning"], "python -m tuning"),
        (["kd_keras", "tune"], "kd-keras tune"),
    ):
        search = _cli([*front_end, "--help"])
        assert (search.returncode, search.stderr) == (0, ""), front_end
        assert search.stdout.startswith(f"usage: {prog} ")
        loud = _cli([*front_end, "--help", "--verbose"]).stderr
        assert any(noise in loud for noise in STARTUP_NOISE), loud[-2000:]


def test_evaluate_names_a_bad_keras_file_a_model_file(tmp_path, capsys):
    import numpy as np

    x, y = (
        np.random.default_rng(0).integers(0, 256, (24, 8, 8, 3), dtype=np.uint8),
        np.arange(24) % 2,
    )
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    assert main(["evaluate", str(tmp_path / "bad.keras"), "--data", str(tmp_path / "d.npz")]) == 2
    err = capsys.readouterr().err
    assert f"error: model file '{tmp_path / 'bad.keras'}' is not a loadable Keras model" in err
    assert "teacher" not in err
