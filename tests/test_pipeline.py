import dataclasses
import json
import math

import keras
import numpy as np
import pytest

from kd_keras import RunConfig, build_resnet, run_pipeline
from kd_keras.data.splits import make_dataset, prepare_splits
from kd_keras.distill.teacher import load_teacher
from kd_keras.errors import DatasetError, NonFiniteLossError, RunFolderError, TeacherError
from kd_keras.run_folder import read_history, read_results_csv
from kd_keras.train.callbacks import NonFiniteLossGuard
from kd_keras.train.measure import evaluate_model
from kd_keras.train.pipeline import Pipeline
from kd_keras.train.run_setup import ProgressFile

STAGES = ["teacher", "student_baseline", "student_distilled"]


def test_smoke_run_writes_the_whole_run_folder(smoke_run):
    out, rows = smoke_run
    for name in (
        "config.json",
        "results.csv",
        "results.json",
        "test_accuracy_bar.png",
        "report.png",
        "progress.json",
    ):
        assert (out / name).stat().st_size > 0, name
    for stage in STAGES:
        assert (out / "models" / f"{stage}.keras").is_file()
        history = read_history(out / "history" / f"{stage}.csv")
        assert [row["epoch"] for row in history] == [1, 2, 3, 4]
        assert all(math.isfinite(row["val_loss"]) for row in history)
    distilled = read_history(out / "history" / "student_distilled.csv")
    assert {"student_loss", "distillation_loss", "val_student_loss"} <= set(distilled[0])
    progress = json.loads((out / "progress.json").read_text())
    assert progress["status"] == "finished"
    assert progress["completed_stages"] == STAGES
    assert not (out / "run.lock").exists()
    saved = RunConfig.load(out / "config.json")
    # Recorded resolved: the teacher kd_keras trains outputs logits; the
    # data is named with its fingerprint.
    assert saved.teacher_outputs == "logits"
    assert saved.data_fingerprint["name"] == "cifar-10-python.tar.gz"
    assert saved.data_fingerprint["counts"] == {"train": 50000, "test": 10000}
    expected = RunConfig.from_preset("smoke", data=saved.data, verbose=0)
    assert saved == dataclasses.replace(
        expected, teacher_outputs="logits", data_fingerprint=saved.data_fingerprint
    )


def test_results_rows_are_real_measurements(smoke_run, cifar10_archive):
    out, rows = smoke_run
    assert [r["stage"] for r in rows] == STAGES
    csv_rows = read_results_csv(out / "results.csv")
    assert [r["test_accuracy"] for r in csv_rows] == pytest.approx(
        [r["test_accuracy"] for r in rows]
    )
    # Above chance (10 %) on 200 test images: P(>= 15 % by chance) < 2 %.
    assert all(r["test_accuracy"] >= 0.15 for r in rows), rows
    # Reloading a saved model reproduces its row's test accuracy and loss.
    splits = prepare_splits(cifar10_archive, val_size=5000, val_per_class=20, test_per_class=20)
    test = make_dataset(*splits["test"], batch_size=256, training=False)
    for row in rows:
        model = keras.saving.load_model(out / "models" / f"{row['stage']}.keras")
        measured = evaluate_model(model, test)
        assert measured["accuracy"] == pytest.approx(row["test_accuracy"])
        assert measured["loss"] == pytest.approx(row["test_loss"], rel=1e-4)
        assert row["params"] == model.count_params()
    teacher, baseline, distilled = rows
    assert teacher["params"] > baseline["params"] == distilled["params"]
    assert distilled["temperature"] == 4.0 and distilled["alpha"] == 0.3
    gain = json.loads((out / "results.json").read_text())["distillation_gain_points"]
    assert gain == pytest.approx(100 * (distilled["test_accuracy"] - baseline["test_accuracy"]))


def test_both_students_start_from_the_same_weights(smoke_run):
    out, _ = smoke_run
    config = RunConfig.load(out / "config.json")
    pipeline = Pipeline(config, out, progress=None)
    first = pipeline.student_initial_weights().get_weights()
    second = pipeline.student_initial_weights().get_weights()
    fresh = pipeline.build_student().get_weights()
    for a, b, c in zip(first, second, fresh):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_non_empty_folder_is_refused_and_left_alone(smoke_run):
    out, _ = smoke_run
    before = (out / "results.csv").read_bytes()
    config = RunConfig.from_preset("smoke", verbose=0)
    with pytest.raises(RunFolderError, match="not empty; pass --resume"):
        run_pipeline(config, out)
    assert (out / "results.csv").read_bytes() == before
    assert json.loads((out / "progress.json").read_text())["status"] == "finished"


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(RunFolderError, match="not a kd_keras run folder"):
        run_pipeline(RunConfig.from_preset("smoke"), tmp_path, overwrite=True)
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


def test_resume_of_a_finished_run_retrains_nothing(smoke_run):
    out, rows = smoke_run
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "models").iterdir()}
    config = RunConfig.load(out / "config.json")
    again = run_pipeline(config, out, resume=True)
    assert [r["test_accuracy"] for r in again] == [r["test_accuracy"] for r in rows]
    assert {p: p.stat().st_mtime_ns for p in (out / "models").iterdir()} == mtimes


def test_resume_with_a_different_config_names_the_fields(smoke_run):
    out, _ = smoke_run
    config = RunConfig.load(out / "config.json")
    changed = RunConfig.from_dict({**config.to_dict(), "alpha": 0.9, "seed": 5})
    with pytest.raises(RunFolderError) as info:
        run_pipeline(changed, out, resume=True)
    assert "alpha (saved 0.3, asked 0.9)" in str(info.value)
    assert "seed (saved 0, asked 5)" in str(info.value)


def test_teacher_with_other_classes_is_refused(tmp_path):
    path = tmp_path / "teacher100.keras"
    build_resnet(8, width=4, num_classes=100).save(path)
    with pytest.raises(TeacherError, match="predicts 100 classes .* the student predicts 10"):
        load_teacher(path)


def test_teacher_file_that_is_not_a_model_is_refused(tmp_path):
    path = tmp_path / "teacher.keras"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(TeacherError, match="not a loadable Keras model"):
        load_teacher(path)
    with pytest.raises(TeacherError, match="does not exist"):
        load_teacher(tmp_path / "missing.keras")


def test_teacher_needing_unsafe_deserialisation_is_refused(tmp_path):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(TeacherError, match="unsafe deserialisation"):
        load_teacher(path)


@pytest.mark.slow
def test_reused_teacher_skips_teacher_training(smoke_run, tmp_path):
    out, rows = smoke_run
    config = RunConfig.from_preset(
        "smoke",
        data=RunConfig.load(out / "config.json").data,
        teacher=str(out / "models" / "teacher.keras"),
        teacher_epochs=0,
        student_epochs=1,
        verbose=0,
    )
    reused = run_pipeline(config, tmp_path / "reuse")
    assert reused[0]["test_accuracy"] == pytest.approx(rows[0]["test_accuracy"])
    assert reused[0]["epochs"] == 0
    assert not (tmp_path / "reuse" / "history" / "teacher.csv").exists()


def test_non_finite_loss_stops_the_stage_with_where_and_a_hint():
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    x = np.array([[np.nan, 1.0]] * 4, "float32")
    with pytest.raises(
        NonFiniteLossError,
        match="stage 'teacher' epoch 1 batch 1: the loss is nan. Lower the learning rate",
    ):
        model.fit(
            x, np.zeros((4, 2)), epochs=1, verbose=0, callbacks=[NonFiniteLossGuard("teacher")]
        )


def test_progress_file_is_replaced_atomically(tmp_path):
    progress = ProgressFile(tmp_path)
    progress.update(status="running", epoch=1)
    progress.update(epoch=2)
    assert json.loads((tmp_path / "progress.json").read_text())["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["progress.json"]


def test_run_calls_each_stage_step_in_order_with_the_trained_teacher(tmp_path):
    pipeline = Pipeline(RunConfig.from_preset("smoke"), tmp_path, None)
    assert list(pipeline.stage_steps) == STAGES
    calls = []

    def step(name):
        def run(teacher):
            calls.append((name, teacher))
            return f"{name} model", {}

        return run

    pipeline.stage_steps = {name: step(name) for name in STAGES}
    pipeline.finish_stage = lambda stage, model, extra, started=None: {
        "stage": stage,
        "model": model,
    }
    rows = pipeline.run()
    assert calls == [
        ("teacher", None),
        ("student_baseline", "teacher model"),
        ("student_distilled", "teacher model"),
    ]
    assert [row["model"] for row in rows] == [f"{stage} model" for stage in STAGES]


# --- A teacher's contract, checked once when it is loaded. ---


def _save(model, path):
    model.save(path)
    return path


def test_teacher_with_a_per_pixel_output_is_refused(tmp_path):
    inputs = keras.Input((32, 32, 3))
    path = _save(keras.Model(inputs, keras.layers.Conv2D(10, 1)(inputs)), tmp_path / "t.keras")
    with pytest.raises(
        TeacherError,
        match=r"outputs shape \(None, 32, 32, 10\); a teacher "
        r"must output logits of shape \(batch, 10\)",
    ):
        load_teacher(path)


def test_teacher_with_two_inputs_is_refused(tmp_path):
    a, b = keras.Input((32, 32, 3)), keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([a, b]))
    path = _save(keras.Model([a, b], keras.layers.Dense(10)(x)), tmp_path / "t.keras")
    with pytest.raises(TeacherError, match="takes 2 inputs"):
        load_teacher(path)


@pytest.mark.filterwarnings("ignore:You are saving a model that has not yet been built")
def test_unbuilt_sequential_teacher_is_refused(tmp_path):
    path = _save(keras.Sequential([keras.layers.Dense(10)]), tmp_path / "t.keras")
    with pytest.raises(TeacherError, match="no defined inputs or outputs .*unbuilt Sequential"):
        load_teacher(path)


def test_teacher_that_fails_on_cifar_images_is_refused(tmp_path):
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 40)(inputs)  # Needs images of at least 40x40.
    x = keras.layers.GlobalAveragePooling2D()(x)
    path = _save(keras.Model(inputs, keras.layers.Dense(10)(x)), tmp_path / "t.keras")
    with pytest.raises(TeacherError, match=r"fails on a batch of \(32, 32, 3\) images"):
        load_teacher(path)


def test_teacher_of_any_image_size_that_takes_32x32_is_accepted(tmp_path):
    inputs = keras.Input((None, None, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    path = _save(keras.Model(inputs, keras.layers.Dense(10)(x)), tmp_path / "t.keras")
    assert load_teacher(path).output_shape == (None, 10)


def test_savedmodel_folder_or_fifo_as_teacher_says_what_it_is(tmp_path):
    folder = tmp_path / "teacher"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"")
    with pytest.raises(TeacherError, match="is a folder .*SavedModel.*model.save"):
        load_teacher(folder)
    import os

    fifo = tmp_path / "teacher.keras"
    os.mkfifo(fifo)
    with pytest.raises(TeacherError, match="not a regular file"):
        load_teacher(fifo)


# --- A start that fails leaves nothing behind. ---


def _tiny_config(data, **fields):
    return RunConfig(
        preset="custom",
        data=str(data),
        val_size=20,
        teacher_depth=8,
        student_depth=8,
        teacher_width=4,
        student_width=4,
        teacher_epochs=1,
        student_epochs=1,
        batch_size=10,
        verbose=0,
        **fields,
    ).validate()


def test_bad_teacher_or_data_fails_before_the_folder_is_made(fake_archive, tmp_path):
    bad_teacher = tmp_path / "bad.keras"
    bad_teacher.write_bytes(b"PK\x03\x04 not a model")
    out = tmp_path / "run"
    with pytest.raises(TeacherError):
        run_pipeline(_tiny_config(fake_archive, teacher=str(bad_teacher)), out)
    assert not out.exists()
    not_data = tmp_path / "cifar.tar.gz"
    not_data.write_text("not an archive")
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (out, empty):
        with pytest.raises(DatasetError):
            run_pipeline(_tiny_config(not_data), folder)
    assert not out.exists() and list(empty.iterdir()) == []
    # So the corrected command is not refused as "not empty".
    from kd_keras.train.run_setup import check_run_folder

    assert check_run_folder(out, _tiny_config(fake_archive)).data == str(fake_archive)


def test_failure_after_the_folder_is_made_but_before_training_removes_it(
    fake_archive, tmp_path, monkeypatch
):
    def broken(self):
        raise RuntimeError("no datasets today")

    monkeypatch.setattr(Pipeline, "load_data", broken)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="no datasets today"):
        run_pipeline(_tiny_config(fake_archive), out)
    assert not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # Not a fresh folder: refused, untouched.
    with pytest.raises(RunFolderError, match="not empty"):
        run_pipeline(_tiny_config(fake_archive), out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
