"""`--method` through the front ends: flags, config.json, the results row;
export ships the student alone; resume continues any method exactly; a
smoke run of every method."""

import json

import keras
import numpy as np
import pytest

from kd_keras import Distiller, RunConfig
from kd_keras.cli import get_args, main
from kd_keras.distill.losses import DKD, AttentionTransfer, FitNets
from kd_keras.errors import ConfigError
from kd_keras.models.resnet import build_resnet
from kd_keras.options import RUN_OPTIONS, add_run_options, overrides_from_args
from kd_keras.train.callbacks import TrainingCheckpoint
from kd_keras.validation import METHOD_FIELDS, METHODS


def test_method_flags_are_run_options_with_the_choices():
    options = {o.field: o for o in RUN_OPTIONS}
    assert options["method"].choices == METHODS == ("hinton", "dkd", "fitnets", "at")
    import argparse

    parser = argparse.ArgumentParser()
    add_run_options(parser, fields=METHOD_FIELDS)
    args = parser.parse_args(
        [
            "--method",
            "dkd",
            "--dkd-beta",
            "4",
            "--logit-standardization",
            "--dkd-warmup-epochs",
            "0",
        ]
    )
    overrides = overrides_from_args(args, fields=METHOD_FIELDS)
    assert overrides == {
        "method": "dkd",
        "dkd_beta": 4.0,
        "logit_standardization": True,
        "dkd_warmup_epochs": 0,
    }
    config = RunConfig.from_preset("smoke", **overrides)
    saved = json.loads(config.to_json())
    assert (saved["method"], saved["dkd_beta"], saved["dkd_alpha"]) == ("dkd", 4.0, 1.0)


def test_run_help_lists_the_methods(capsys):
    with pytest.raises(SystemExit):
        get_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for method in METHODS:
        assert method in text
    for flag in ("--method", "--dkd-beta", "--hint-layer", "--at-beta", "--logit-standardization"):
        assert flag in text


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"method": "crd"}, "method must be one of hinton, dkd, fitnets, at, got 'crd'"),
        ({"dkd_beta": -1.0}, "dkd_beta must be a finite number >= 0, got -1.0 (--dkd-beta)"),
        ({"method": "at", "logit_standardization": True}, "--logit-standardization applies"),
        ({"dkd_warmup_epochs": 1.5}, "--dkd-warmup-epochs"),
        ({"hint_layer": " "}, "--hint-layer"),
    ],
)
def test_bad_method_settings_are_one_line_naming_value_and_flag(fields, words):
    with pytest.raises(ConfigError) as error:
        RunConfig.from_preset("smoke", **fields)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_cli_refuses_an_unknown_method_with_exit_code_2(tmp_path, capsys):
    code = main(["run", "--preset", "smoke", "--method", "crd", "--out", str(tmp_path / "r")])
    assert code == 2
    assert "method must be one of" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_old_config_without_method_fields_loads_as_hinton():
    values = RunConfig.from_preset("smoke").to_dict()
    for field in METHOD_FIELDS:
        del values[field]
    config = RunConfig.from_dict(values)
    assert config.method == "hinton" and not config.logit_standardization


# --- Export and resume at the Distiller level ---


def resnets():
    keras.utils.set_random_seed(0)
    teacher = build_resnet(14, width=8, num_classes=4, input_shape=(8, 8, 3), name="t")
    student = build_resnet(8, width=4, num_classes=4, input_shape=(8, 8, 3), name="s")
    return teacher, student


def image_data(n=16):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (n, 8, 8, 3)).astype("float32"), rng.integers(0, 4, n)


def test_saved_student_of_a_fitnets_run_has_no_adapter(tmp_path):
    teacher, student = resnets()
    distiller = Distiller(student, teacher, distillation_losses=[FitNets()])
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    x, y = image_data()
    distiller.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert distiller.adapters and distiller.adapters[0].count_params() > 0
    path = tmp_path / "student.keras"
    distiller.student.save(path)
    shipped = keras.saving.load_model(path)
    names = [layer.name for layer in shipped.layers]
    assert not [n for n in names if "adapter" in n or "fitnets" in n]
    fresh = resnets()[1]
    assert shipped.count_params() == fresh.count_params()
    np.testing.assert_allclose(shipped.predict(x, verbose=0), student.predict(x, verbose=0))


def make_distiller(method):
    teacher, student = resnets()
    losses = {
        "dkd": [DKD(warmup_epochs=3)],
        "fitnets": [FitNets()],
        "at": [AttentionTransfer()],
    }[method]
    distiller = Distiller(student, teacher, distillation_losses=losses, student_loss_weight=0.5)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), metrics=["accuracy"])
    return distiller


def fit_with_checkpoint(distiller, folder, epochs):
    checkpoint = TrainingCheckpoint(folder)
    x, y = image_data()
    history = distiller.fit(
        x,
        y,
        validation_data=(x, y),
        epochs=epochs,
        initial_epoch=checkpoint.completed_epochs(),
        batch_size=8,
        shuffle=False,
        callbacks=[checkpoint],
        verbose=0,
    )
    return history.history


@pytest.mark.parametrize("method", ["dkd", "fitnets", "at"])
def test_resume_continues_any_method_exactly(tmp_path, method):
    whole = make_distiller(method)
    fit_with_checkpoint(whole, tmp_path / "whole", 3)
    # Interrupted after one epoch, resumed by a new process's Distiller.
    first = make_distiller(method)
    fit_with_checkpoint(first, tmp_path / "split", 1)
    resumed = make_distiller(method)
    history = fit_with_checkpoint(resumed, tmp_path / "split", 3)
    assert len(history["loss"]) == 2  # Epochs 2 and 3 only.
    for a, b in zip(whole.weights, resumed.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    if method == "fitnets":
        # The adapter is in the checkpoint: it resumed trained, not fresh.
        fresh = make_distiller(method).adapters[0].get_weights()[0]
        assert not np.allclose(resumed.adapters[0].get_weights()[0], fresh)
    if method == "dkd":
        # The warm-up factor followed the resumed epoch (epoch 3 of 3: 1).
        assert float(resumed.distillation_losses[0]._warmup.numpy()) == 1.0


# --- Every method end to end on tiny generated data ---


def tiny_npz(path, n=120, size=8, classes=4):
    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    x = rng.integers(0, 120, size=(n, size, size, 3), dtype=np.uint8)
    for c in range(classes):
        x[y == c, :, :, c % 3] += np.uint8(40 * (c + 1) // 2)
    np.savez(path, x_train=x[:80], y_train=y[:80], x_test=x[80:], y_test=y[80:])
    return path


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_smoke_run_of_every_method_records_it(tmp_path, method):
    data = tiny_npz(tmp_path / "d.npz")
    out = tmp_path / "run"
    argv = ["run", "--preset", "smoke", "--data", str(data), "--out", str(out), "--quiet"]
    argv += ["--val-size", "20", "--teacher-epochs", "1", "--student-epochs", "2"]
    argv += ["--train-per-class", "15", "--val-per-class", "5", "--test-per-class", "10"]
    argv += ["--teacher-width", "8", "--student-width", "4", "--method", method]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method
    row = json.loads((out / "stages" / "student_distilled.json").read_text())
    assert row["method"] == method and np.isfinite(row["distiller_val_loss"])
    shipped = keras.saving.load_model(out / "models" / "student_distilled.keras")
    baseline = keras.saving.load_model(out / "models" / "student_baseline.keras")
    assert [layer.name for layer in shipped.layers] == [layer.name for layer in baseline.layers]


# --- Several teachers: --teacher given again ---


def test_teacher_given_again_adds_teachers_and_round_trips():
    from kd_keras.cli import _config_from_args
    from kd_keras.options import command_line_flags

    argv = ["run", "--teacher", "a.keras", "--teacher", "b.keras", "--teacher", "c.keras"]
    config = _config_from_args(get_args([*argv, "--teachers-mode", "weighted"]))
    assert (config.teacher, config.other_teachers) == ("a.keras", ["b.keras", "c.keras"])
    assert config.teachers_mode == "weighted"
    saved = RunConfig.from_dict(json.loads(config.to_json()))
    assert saved.other_teachers == ["b.keras", "c.keras"]
    flags = command_line_flags({"teacher": "a.keras", "other_teachers": ["b.keras", "c.keras"]})
    assert flags == argv[1:]
    single = _config_from_args(get_args(["run", "--teacher", "a.keras"]))
    assert (single.teacher, single.other_teachers, single.teachers_mode) == (
        "a.keras",
        None,
        "mean",
    )


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"teacher": "a.keras", "other_teachers": ["b.keras"], "method": "dkd"}, "--method dkd"),
        (
            {"teacher": "a.keras", "other_teachers": ["b.keras"], "logit_standardization": True},
            "--logit-standardization",
        ),
        ({"teacher": "a.keras", "other_teachers": ["a.keras"]}, "'a.keras' is given twice"),
        ({"other_teachers": ["b.keras"]}, "needs a first --teacher"),
        ({"teacher": "a.keras", "other_teachers": [f"{i}.keras" for i in range(8)]}, "got 9"),
        ({"teachers_mode": "median"}, "got 'median' (--teachers-mode)"),
    ],
)
def test_bad_several_teacher_settings_are_one_line(fields, words):
    with pytest.raises(ConfigError) as error:
        RunConfig.from_preset("smoke", **fields)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_compile_distiller_distils_from_every_teacher():
    from kd_keras.distill.losses import MultiTeacherKD
    from kd_keras.train import recipe

    teacher, student = resnets()
    other = build_resnet(8, width=4, input_shape=(8, 8, 3), num_classes=4, name="other")
    config = RunConfig.from_preset("smoke", teachers_mode="weighted")
    distiller = recipe.compile_distiller(
        student, teacher, config, "sgd", temperature=2.0, other_teachers=[other]
    )
    (loss,) = distiller.distillation_losses
    assert isinstance(loss, MultiTeacherKD) and loss.mode == "weighted"
    assert loss.temperature == 2.0 and loss.other_teachers == [other]
    x, _ = image_data()
    t1, t2, s = (
        np.asarray(m(x, training=False), dtype="float64") for m in (teacher, other, student)
    )

    def softmax(z):
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def kl(p, q):
        return np.sum(p * (np.log(p) - np.log(q)), axis=-1)

    expected = np.mean(sum(0.5 * 4.0 * kl(softmax(t / 2.0), softmax(s / 2.0)) for t in (t1, t2)))
    _, _, value = distiller.compute_losses(
        np.zeros(len(x), dtype="int32"),
        t1,
        s,
        other_teacher_logits={0: [t2]},
    )
    assert float(value) == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
def test_smoke_run_with_several_teachers(tmp_path, capsys):
    data = tiny_npz(tmp_path / "d.npz")
    teachers = []
    for index in range(2):
        keras.utils.set_random_seed(index)
        path = tmp_path / f"t{index}.keras"
        build_resnet(8, width=4, input_shape=(8, 8, 3), num_classes=4, name=f"t{index}").save(path)
        teachers.append(str(path))
    argv = ["run", "--preset", "smoke", "--data", str(data), "--quiet"]
    argv += ["--val-size", "20", "--student-epochs", "1", "--accept-weak-teacher"]
    argv += ["--train-per-class", "15", "--val-per-class", "5", "--test-per-class", "10"]
    argv += ["--student-width", "4", "--student-depth", "8"]
    # A softmax teacher among them is refused in one line, before any stage.
    softmax = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(4, "softmax")]
    )
    softmax.save(tmp_path / "p.keras")
    bad = [*argv, "--out", str(tmp_path / "bad"), "--teacher", teachers[0]]
    assert main([*bad, "--teacher", str(tmp_path / "p.keras")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # After the weak-teacher warning.
    assert (
        error.startswith("kd_keras: error: teacher '") and "p.keras' outputs probabilities" in error
    )
    assert not (tmp_path / "bad" / "stages").exists()
    assert main([*bad, "--teacher", str(tmp_path / "missing.keras")]) == 2
    assert "missing.keras" in capsys.readouterr().err
    out = tmp_path / "run"
    argv += ["--out", str(out), "--teacher", teachers[0], "--teacher", teachers[1]]
    assert main([*argv, "--dry-run"]) == 0  # The estimate times both teachers.
    assert "other_teachers" in capsys.readouterr().out and not out.exists()
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["other_teachers"] == [teachers[1]] and config["teachers_mode"] == "mean"
    row = json.loads((out / "stages" / "student_distilled.json").read_text())
    assert row["other_teachers"] == [teachers[1]] and row["teachers_mode"] == "mean"
    assert np.isfinite(row["distiller_val_loss"])
    shipped = keras.saving.load_model(out / "models" / "student_distilled.keras")
    baseline = keras.saving.load_model(out / "models" / "student_baseline.keras")
    assert [layer.name for layer in shipped.layers] == [layer.name for layer in baseline.layers]
