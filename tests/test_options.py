import argparse
import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from kd_keras.cli import _config_from_args, get_args
from kd_keras.config import RunConfig
from kd_keras.options import (
    RUN_OPTIONS,
    Option,
    add_run_options,
    command_line_flags,
    option_for,
    overrides_from_args,
)
from kd_keras.validation import PRECISIONS, STRATEGIES, TEACHER_PRECISIONS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tuning_cli():
    """tuning/cli.py loaded on its own: its imports are Keras-free, the
    `tuning` package's __init__ imports Keras Tuner (tens of seconds)."""
    spec = importlib.util.spec_from_file_location("tuning_cli", REPO / "tuning" / "cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Every run option with a valid value of its type, as a front end holds it.
EVERY_OPTION = {
    "data": "/data/cifar-10-python.tar.gz",
    "seed": 7,
    "val_size": 4000,
    "train_per_class": 300,
    "val_per_class": 40,
    "test_per_class": 50,
    "teacher_depth": 20,
    "teacher_width": 12,
    "student_depth": 14,
    "student_width": 8,
    "teacher": "/models/teacher.keras",
    "baseline": "/runs/a/models/student_baseline.keras",
    "teachers_mode": "weighted",
    "accept_weak_teacher": True,
    "teacher_outputs": "probabilities",
    "teacher_model": "resnet20",
    "student_model": "mobilenetv3small:alpha=0.35",
    "image_size": 48,
    "teacher_epochs": 3,
    "student_epochs": 5,
    "batch_size": 64,
    "learning_rate": 0.05,
    "momentum": 0.8,
    "weight_decay": 1e-4,
    "warmup_epochs": 2,
    "temperature": 2.5,
    "alpha": 0.6,
    "method": "dkd",
    "logit_standardization": True,
    "dkd_alpha": 0.5,
    "dkd_beta": 4.0,
    "dkd_warmup_epochs": 3,
    "hint_layer": "stage1",
    "hint_weight": 10.0,
    "at_beta": 500.0,
    "precision": "float32",
    "teacher_precision": "bfloat16",
    "steps_per_execution": 4,
    "threads": 2,
    "budget": "10m",
    "strategy": "mirrored",
    "devices": ["/gpu:0", "/gpu:1"],
    "sync_batch_norm": True,
}


def test_every_flagged_field_is_one_option_and_flags_are_unique():
    flagged = [f.name for f in dataclasses.fields(RunConfig) if "flag" in f.metadata]
    assert [o.field for o in RUN_OPTIONS] == flagged  # Once each, in field order.
    assert sorted(flagged) == sorted(EVERY_OPTION)
    flags = [o.flag for o in RUN_OPTIONS]
    assert len(set(flags)) == len(flags)
    for option in RUN_OPTIONS:
        assert option.flag == "--" + option.field.replace("_", "-")
        assert option.help and isinstance(option, Option)
    # Set another way: --preset chooses the base, --quiet sets verbose, the
    # run records its data's fingerprint, --teacher given again fills
    # other_teachers (the teacher option's `more`).
    assert {f.name for f in dataclasses.fields(RunConfig)} - set(flagged) == {
        "preset",
        "verbose",
        "data_fingerprint",
        "other_teachers",
    }
    assert [o.more for o in RUN_OPTIONS if o.more] == ["other_teachers"]


def test_types_come_from_the_annotations_and_choices_from_the_config():
    kinds = {o.field: o.type for o in RUN_OPTIONS}
    assert (kinds["seed"], kinds["train_per_class"], kinds["threads"]) == (int, int, int)
    assert (kinds["alpha"], kinds["learning_rate"]) == (float, float)
    assert (kinds["data"], kinds["teacher_model"]) == (str, str)
    assert (kinds["devices"], kinds["sync_batch_norm"]) == (list, bool)
    assert option_for("precision").choices == PRECISIONS
    assert option_for("teacher_precision").choices == TEACHER_PRECISIONS
    assert option_for("strategy").choices == STRATEGIES
    assert option_for("seed").choices is None
    assert option_for("seed").help == "random seed of data split, init and order"


def test_option_for_names_the_problem():
    with pytest.raises(ValueError, match="'preset' is not a run option"):
        option_for("preset")
    with pytest.raises(ValueError, match="'sead' is not a RunConfig field; run options: data"):
        option_for("sead")


def test_add_run_options_refuses_bad_arguments():
    with pytest.raises(ValueError, match="not the string 'seed'; use \\['seed'\\]"):
        add_run_options(argparse.ArgumentParser(), "seed")
    with pytest.raises(ValueError, match="lists a field twice"):
        add_run_options(argparse.ArgumentParser(), ["seed", "seed"])
    with pytest.raises(ValueError, match="help_texts names fields that are not added: alpha"):
        add_run_options(argparse.ArgumentParser(), ["seed"], help_texts={"alpha": "x"})
    with pytest.raises(ValueError, match="args has no 'alpha' \\(--alpha\\)"):
        overrides_from_args(argparse.Namespace(seed=1), ["seed", "alpha"])


def test_kd_keras_run_takes_every_option_as_before():
    args = get_args(
        [
            "run",
            "--preset",
            "smoke",
            "--out",
            "runs/x",
            "--quiet",
            "--data",
            "/data/c.tar.gz",
            "--seed",
            "7",
            "--val-size",
            "4000",
            "--train-per-class",
            "300",
            "--val-per-class",
            "40",
            "--test-per-class",
            "50",
            "--teacher-depth",
            "20",
            "--teacher-width",
            "12",
            "--student-depth",
            "14",
            "--student-width",
            "8",
            "--teacher",
            "t.keras",
            "--teacher-model",
            "resnet20",
            "--student-model",
            "mobilenetv3small:alpha=0.35",
            "--image-size",
            "48",
            "--teacher-epochs",
            "3",
            "--student-epochs",
            "5",
            "--batch-size",
            "64",
            "--learning-rate",
            "0.05",
            "--momentum",
            "0.8",
            "--weight-decay",
            "1e-4",
            "--warmup-epochs",
            "2",
            "--temperature",
            "2.5",
            "--alpha",
            "0.6",
            "--precision",
            "float32",
            "--teacher-precision",
            "bfloat16",
            "--steps-per-execution",
            "4",
            "--threads",
            "2",
            "--strategy",
            "mirrored",
            "--devices",
            "/gpu:0, /gpu:1",
            "--sync-batch-norm",
        ]
    )
    assert overrides_from_args(args) == {
        "data": "/data/c.tar.gz",
        "seed": 7,
        "val_size": 4000,
        "train_per_class": 300,
        "val_per_class": 40,
        "test_per_class": 50,
        "teacher_depth": 20,
        "teacher_width": 12,
        "student_depth": 14,
        "student_width": 8,
        "teacher": "t.keras",
        "teacher_model": "resnet20",
        "student_model": "mobilenetv3small:alpha=0.35",
        "image_size": 48,
        "teacher_epochs": 3,
        "student_epochs": 5,
        "batch_size": 64,
        "learning_rate": 0.05,
        "momentum": 0.8,
        "weight_decay": 1e-4,
        "warmup_epochs": 2,
        "temperature": 2.5,
        "alpha": 0.6,
        "precision": "float32",
        "teacher_precision": "bfloat16",
        "steps_per_execution": 4,
        "threads": 2,
        "strategy": "mirrored",
        "devices": ["/gpu:0", "/gpu:1"],
        "sync_batch_norm": True,
    }
    config = _config_from_args(args)
    assert (config.preset, config.verbose, config.teacher_epochs) == ("smoke", 2, 3)
    assert (config.data, config.devices, config.sync_batch_norm) == (
        "/data/c.tar.gz",
        ["/gpu:0", "/gpu:1"],
        True,
    )


def test_kd_keras_run_flags_not_given_keep_the_preset():
    args = get_args(["run", "--preset", "smoke", "--epochs", "6", "--teacher-epochs", "2"])
    assert overrides_from_args(args) == {"teacher_epochs": 2}
    assert all(getattr(args, o.field) is None for o in RUN_OPTIONS if o.field != "teacher_epochs")
    config = _config_from_args(args)
    assert (config.teacher_epochs, config.student_epochs, config.verbose) == (2, 6, 1)
    assert (config.batch_size, config.sync_batch_norm, config.devices) == (50, False, None)


def test_devices_flag_refuses_an_empty_list(capsys):
    with pytest.raises(SystemExit) as info:
        get_args(["run", "--devices", " , "])
    assert info.value.code == 2
    assert "--devices needs one or more comma-separated names, got ' , '" in (
        capsys.readouterr().err
    )


def test_tuning_takes_its_subset_as_before(tuning_cli, capsys):
    tuning_args, fields = tuning_cli.get_args, tuning_cli._CONFIG_FIELDS
    args = tuning_args(
        [
            "--out",
            "s",
            "--seed",
            "3",
            "--student-depth",
            "14",
            "--student-width",
            "8",
            "--student-model",
            "resnet8",
            "--image-size",
            "40",
            "--val-size",
            "1000",
            "--train-per-class",
            "90",
            "--val-per-class",
            "20",
            "--batch-size",
            "32",
            "--learning-rate",
            "0.02",
            "--temperature",
            "3",
            "--alpha",
            "0.4",
        ]
    )
    assert overrides_from_args(args, fields) == {
        "seed": 3,
        "student_depth": 14,
        "student_width": 8,
        "student_model": "resnet8",
        "image_size": 40,
        "val_size": 1000,
        "train_per_class": 90,
        "val_per_class": 20,
        "batch_size": 32,
        "learning_rate": 0.02,
    }
    # The search's own --temperature and --alpha hold T and alpha fixed.
    assert (args.temperature, args.alpha) == (3.0, 0.4)
    assert overrides_from_args(tuning_args(["--out", "s"]), fields) == {}
    with pytest.raises(SystemExit):
        tuning_args(["--out", "s", "--teacher-depth", "20"])  # Not a search option.
    capsys.readouterr()
    with pytest.raises(SystemExit):
        tuning_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "seed of the data split, student init, data order and tuner" in text
    assert "(as --teacher-model)" not in text


def test_command_line_flags_round_trip_through_the_cli():
    argv = command_line_flags(EVERY_OPTION)
    assert argv[:4] == ["--data", "/data/cifar-10-python.tar.gz", "--seed", "7"]
    assert argv[-3:] == ["--devices", "/gpu:0,/gpu:1", "--sync-batch-norm"]
    args = get_args(["run", "--preset", "smoke", *argv])
    assert overrides_from_args(args) == EVERY_OPTION
    # --baseline and --budget are refused together: each reaches the config
    # without the other.
    for left_out in ("baseline", "budget"):
        options = {k: v for k, v in EVERY_OPTION.items() if k != left_out}
        args = get_args(["run", "--preset", "smoke", *command_line_flags(options)])
        config = _config_from_args(args)
        assert {k: getattr(config, k) for k in options} == options


def test_command_line_flags_values():
    assert command_line_flags({"alpha": 1, "seed": 3.0, "temperature": 0.1}) == [
        "--seed",
        "3",
        "--temperature",
        "0.1",
        "--alpha",
        "1.0",
    ]
    # Unset form fields and the off switch add nothing.
    assert (
        command_line_flags({"seed": None, "data": " ", "devices": [], "sync_batch_norm": False})
        == []
    )
    # A leading "-" is not taken for a flag (argparse reads "-1e-05" as one).
    argv = command_line_flags({"weight_decay": -1e-05, "data": "-odd-name"})
    assert argv == ["--data=-odd-name", "--weight-decay=-1e-05"]
    args = get_args(["run", *argv])
    assert (args.weight_decay, args.data) == (-1e-05, "-odd-name")
    assert command_line_flags({"devices": "/gpu:0,/gpu:1", "teacher": Path("t.keras")}) == [
        "--teacher",
        "t.keras",
        "--devices",
        "/gpu:0,/gpu:1",
    ]


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ({"epochs": 3}, "'epochs' is not a RunConfig field"),
        ({"preset": "quick"}, "'preset' is not a run option"),
        ({"seed": 3.5}, "seed must be an int, got 3.5"),
        ({"seed": True}, "seed must be an int, got True"),
        ({"alpha": "0.5"}, "alpha must be a number, got '0.5'"),
        ({"sync_batch_norm": 1}, "sync_batch_norm must be True or False, got 1"),
        ({"devices": ["/gpu:0,/gpu:1"]}, "devices must be a list of names without commas"),
        ({"teacher_model": 20}, "teacher_model must be a string, got 20"),
    ],
)
def test_command_line_flags_refuses_bad_settings(settings, fragment):
    with pytest.raises(ValueError) as info:
        command_line_flags(settings)
    assert fragment in str(info.value)


def test_options_module_imports_neither_keras_nor_tensorflow():
    # The front ends' Keras-free helpers too: the CLI and the search import
    # them before TensorFlow starts.
    code = (
        "import kd_keras.options, kd_keras.cli, kd_keras.quiet, kd_keras.extras, "
        "kd_keras.text, kd_keras.report.reference, kd_keras.keras_files, sys; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
