"""Own teachers and students as they are saved: what a model outputs
(logits, a softmax's probabilities, a sigmoid's values), `--teacher-outputs`,
checks made before any stage trains, `.keras` files that are damaged or
crafted, and the student-not-smaller warning."""

import json
import os
import subprocess
import sys
import textwrap
import warnings
import zipfile

import numpy as np
import pytest
from conftest import tiny_config

from kd_keras.config import RunConfig
from kd_keras.errors import ConfigError, ModelSpecError, TeacherError


def channel_model(path, shape=(16, 16, 3), classes=4, activation=None, hidden=0):
    """A model whose scores are the mean of each colour channel (0 for any
    further class), ending in `activation`; on `balanced_npz` it gets
    classes 0-2 right. `hidden` adds a wide layer (more parameters)."""
    import keras

    inputs = keras.Input(shape)
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    if hidden:
        x = keras.layers.Concatenate()([x, keras.layers.Dense(hidden)(x)])
    kernel = np.zeros((x.shape[-1], classes), dtype="float32")
    kernel[[0, 1, 2], [0, 1, 2]] = 1.0 / 40.0
    dense = keras.layers.Dense(classes, use_bias=False, activation=activation)
    outputs = dense(x)
    dense.set_weights([kernel])
    model = keras.Model(inputs, outputs)
    if path is not None:
        model.save(path)
    return model


def balanced_npz(path, n=200, size=16, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    # Class c is brighter in channel c % 3.
    x = rng.integers(0, 120, size=(n, size, size, 3), dtype=np.uint8)
    for c in range(classes):
        x[y == c, :, :, c % 3] += np.uint8(40 * (c + 1) // 2)
    np.savez(
        path,
        x_train=x[: n * 3 // 4],
        y_train=y[: n * 3 // 4],
        x_test=x[n * 3 // 4 :],
        y_test=y[n * 3 // 4 :],
        class_names=np.array([f"k{c}" for c in range(classes)]),
    )
    return path


def tiny_splits(size=16, classes=4, n=40):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    y = np.arange(n) % classes
    return {"train": (x, y), "val": (x, y), "test": (x, y), "classes": list(range(classes))}


# --- The field and its flag ---


def test_teacher_outputs_field_flag_choices_and_resume_match():
    from kd_keras.options import option_for

    option = option_for("teacher_outputs")
    assert option.flag == "--teacher-outputs"
    assert option.choices == ("auto", "logits", "probabilities")
    assert RunConfig().teacher_outputs == "auto"
    with pytest.raises(ConfigError, match="teacher_outputs must be one of.*'softmax'"):
        tiny_config(teacher_outputs="softmax")
    saved = tiny_config(teacher_outputs="probabilities")
    # Asked "auto" matches what a run resolved; an explicit other kind does not.
    assert saved.result_differences(tiny_config()) == []
    assert saved.result_differences(tiny_config(teacher_outputs="logits")) == ["teacher_outputs"]
    assert tiny_config().result_differences(saved) == []  # A folder saved before resolving.
    # A config.json from before the field loads with "auto".
    old = tiny_config().to_dict()
    del old["teacher_outputs"]
    assert RunConfig.from_dict(old).teacher_outputs == "auto"


# --- What a model outputs ---


def test_outputs_kind_reads_the_last_layer_and_looks_through_linear_layers():
    import keras

    from kd_keras.distill.outputs import outputs_kind

    for activation, kind in (
        (None, "logits"),
        ("softmax", "probabilities"),
        ("sigmoid", "bounded"),
    ):
        model = channel_model(None, activation=activation)
        assert outputs_kind(model) == kind
        # A float32 cast layer and Dropout after it (as kd_keras's zoo adds)
        # hand the values on: the layer before decides.
        x = keras.layers.Dropout(0.1)(model.outputs[0])
        x = keras.layers.Activation("linear", dtype="float32")(x)
        assert outputs_kind(keras.Model(model.inputs, x)) == kind
    # A softmax applied by an Activation layer or keras.ops.
    base = channel_model(None)
    for head, kind in (
        (keras.layers.Activation("sigmoid"), "bounded"),
        (keras.layers.Softmax(), "probabilities"),
    ):
        assert outputs_kind(keras.Model(base.inputs, head(base.outputs[0]))) == kind


def test_outputs_kind_of_a_subclassed_model_is_probed():
    import keras

    from kd_keras.distill.outputs import outputs_kind

    class Scores(keras.Model):
        def __init__(self, squash):
            super().__init__()
            self.dense = keras.layers.Dense(3)
            self.squash = squash

        def call(self, x):
            return self.squash(self.dense(keras.ops.reshape(x, (-1, 48))))

    for squash, kind in (
        (keras.ops.sigmoid, "bounded"),
        (lambda z: keras.ops.softmax(z, axis=-1), "probabilities"),
        (lambda z: 10.0 * z, "logits"),
    ):
        model = Scores(squash)
        model(np.zeros((1, 4, 4, 3), "float32"))  # Built by a call, as usual.
        assert outputs_kind(model) == kind


def test_resolve_teacher_outputs_detects_refuses_and_checks_a_given_kind():
    from kd_keras.distill.teacher import resolve_teacher_outputs

    softmax = channel_model(None, activation="softmax")
    logits = channel_model(None)
    assert resolve_teacher_outputs(softmax, "auto") == "probabilities"
    assert resolve_teacher_outputs(softmax, "probabilities") == "probabilities"
    assert resolve_teacher_outputs(logits, "auto") == "logits"
    with pytest.raises(TeacherError) as error:
        resolve_teacher_outputs(softmax, "logits", name="'t.keras'")
    message = str(error.value)
    assert "'t.keras' outputs probabilities" in message
    assert "--teacher-outputs auto" in message and "\n" not in message
    with pytest.raises(TeacherError, match="outputs logits, but --teacher-outputs probabilities"):
        resolve_teacher_outputs(logits, "probabilities")
    with pytest.raises(TeacherError) as error:
        resolve_teacher_outputs(channel_model(None, activation="sigmoid"), "auto")
    assert "sigmoid" in str(error.value) and "activation=None" in str(error.value)


def test_distiller_refuses_sigmoid_teacher_and_student():
    from kd_keras.distill.distiller import Distiller

    with pytest.raises(ValueError, match="ends in a sigmoid"):
        Distiller(student=channel_model(None), teacher=channel_model(None, activation="sigmoid"))
    with pytest.raises(ValueError, match="softmax or sigmoid"):
        Distiller(student=channel_model(None, activation="sigmoid"), teacher=channel_model(None))


# --- Checked before any stage trains ---


def test_check_models_resolves_a_softmax_teacher_and_prints_it(tmp_path, capsys):
    from kd_keras.train.preflight import check_models

    teacher = channel_model(tmp_path / "t.keras", activation="softmax")
    config = tiny_config(teacher=str(tmp_path / "t.keras"), teacher_epochs=0, verbose=1)
    resolved = check_models(config, tmp_path / "run", tiny_splits(), teacher)
    assert resolved.teacher_outputs == "probabilities"
    assert config.teacher_outputs == "auto"  # A copy: the request is kept.
    out = capsys.readouterr().out.strip().splitlines()
    assert [line for line in out if "outputs probabilities" in line and "log p" in line]
    # Given explicitly, it must agree with what the teacher outputs.
    logits_config = tiny_config(
        teacher=str(tmp_path / "t.keras"), teacher_epochs=0, teacher_outputs="logits"
    )
    with pytest.raises(TeacherError, match="--teacher-outputs logits was given"):
        check_models(logits_config, tmp_path / "run", tiny_splits(), teacher)
    assert not (tmp_path / "run").exists()


def test_check_models_refuses_sigmoid_teacher_softmax_student_and_given_kind(tmp_path):
    from kd_keras.train.preflight import check_models

    sigmoid = channel_model(tmp_path / "sig.keras", activation="sigmoid")
    config = tiny_config(teacher=str(tmp_path / "sig.keras"), teacher_epochs=0)
    with pytest.raises(TeacherError, match="ends in a sigmoid"):
        check_models(config, tmp_path / "run", tiny_splits(), sigmoid)
    for activation, last in (("softmax", "a softmax"), ("sigmoid", "a sigmoid")):
        path = tmp_path / f"student_{activation}.keras"
        channel_model(path, activation=activation)
        with pytest.raises(ModelSpecError) as error:
            check_models(tiny_config(student_model=str(path)), tmp_path / "run", tiny_splits())
        message = str(error.value)
        assert f"ends in {last}" in message and "classifier_activation=None" in message
        assert "\n" not in message
        # The same for a teacher kd_keras would train from that file.
        with pytest.raises(ModelSpecError, match="teacher model .* ends in"):
            check_models(tiny_config(teacher_model=str(path)), tmp_path / "run", tiny_splits())
    with pytest.raises(ConfigError, match="--teacher-outputs probabilities applies to a --teacher"):
        check_models(tiny_config(teacher_outputs="probabilities"), tmp_path / "run", tiny_splits())
    # A trained teacher outputs logits, recorded so.
    assert check_models(tiny_config(), tmp_path / "run", tiny_splits()).teacher_outputs == "logits"


def test_teacher_of_another_image_size_names_the_image_size_flag(tmp_path):
    from kd_keras.distill.teacher import load_teacher

    channel_model(tmp_path / "t24.keras", shape=(24, 24, 3))
    with pytest.raises(TeacherError) as error:
        load_teacher(tmp_path / "t24.keras", 4, image_shape=(16, 16, 3))
    assert "not (16, 16, 3)" in str(error.value) and "--image-size 24" in str(error.value)
    with pytest.raises(TeacherError, match="predicts 4 classes"):
        load_teacher(tmp_path / "t24.keras", 3, image_shape=(24, 24, 3))


def test_student_not_smaller_than_teacher_is_warned_about(tmp_path, capsys):
    from kd_keras.train.preflight import check_models

    small = channel_model(tmp_path / "small.keras")
    channel_model(tmp_path / "big.keras", hidden=64)
    config = tiny_config(
        teacher=str(tmp_path / "small.keras"),
        teacher_epochs=0,
        student_model=str(tmp_path / "big.keras"),
    )
    check_models(config, tmp_path / "run", tiny_splits(), small)
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "not smaller than the teacher" in line]
    assert (
        len(warning) == 1
        and "big.keras" in warning[0]
        and f"({small.count_params():,})" in warning[0]
    )
    # The usual way round: no warning.
    check_models(tiny_config(student_width=2), tmp_path / "run", tiny_splits())
    assert "not smaller" not in capsys.readouterr().err


# --- .keras files that are damaged or crafted ---


def test_truncated_keras_file_is_called_damaged(tmp_path):
    from kd_keras.distill.teacher import load_teacher

    channel_model(tmp_path / "t.keras")
    data = (tmp_path / "t.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(TeacherError) as error:
        load_teacher(tmp_path / "cut.keras", 4, image_shape=(16, 16, 3))
    message = str(error.value)
    assert "damaged/truncated .keras file" in message and "cut.keras" in message
    assert "File not found" not in message and "\n" not in message
    with zipfile.ZipFile(tmp_path / "noconfig.keras", "w") as archive:
        archive.writestr("metadata.json", "{}")
    with pytest.raises(TeacherError, match="no config.json inside"):
        load_teacher(tmp_path / "noconfig.keras", 4, image_shape=(16, 16, 3))


def write_inflating_keras(path, megabytes):
    """A small `.keras` whose config.json unpacks to `megabytes` MB of spaces."""
    chunk = b" " * 2**20
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("metadata.json", '{"keras_version": "3.15.1"}')
        with archive.open("config.json", "w", force_zip64=True) as member:
            for _ in range(megabytes):
                member.write(chunk)
        archive.writestr("model.weights.h5", b"")
    return path


def test_keras_member_sizes_are_checked_before_reading_under_a_memory_limit(tmp_path):
    """A 200 MB config.json in a ~0.2 MB file is refused from the zip directory:
    the check runs under an address-space limit of what is in use plus 96 MB, so
    reading the member (as Keras would) fails the test instead of the machine."""
    path = write_inflating_keras(tmp_path / "bomb.keras", 200)
    assert path.stat().st_size < 2**20
    code = textwrap.dedent(
        f"""
        import resource
        from kd_keras.distill.teacher import load_teacher
        from kd_keras.errors import TeacherError

        with open("/proc/self/status") as status:
            vm = next(int(l.split()[1]) for l in status if l.startswith("VmSize:")) * 1024
        limit = vm + 96 * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            load_teacher({str(path)!r}, 4, image_shape=(16, 16, 3))
        except TeacherError as error:
            print("REFUSED", error)
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("REFUSED")]
    assert line, result.stdout + result.stderr[-2000:]
    assert "'config.json' unpacks to 200.0 MB" in line[0] and "refused before reading" in line[0]


# --- Reloading a Distiller ---


def test_reloaded_distiller_restores_optimizer_state_without_warning(tmp_path):
    import keras

    from kd_keras.distill.distiller import Distiller

    x = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    y = np.arange(8) % 4
    for trained in (False, True):
        distiller = Distiller(student=channel_model(None), teacher=channel_model(None))
        distiller.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), metrics=["accuracy"])
        if trained:
            distiller.fit(x, y, epochs=1, batch_size=4, verbose=0)
        path = tmp_path / f"distiller_{trained}.keras"
        distiller.save(path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            reloaded = keras.saving.load_model(path)
        assert not [w for w in caught if "Skipping variable loading" in str(w.message)]
        saved = [v.numpy() for v in distiller.optimizer.variables]
        restored = [v.numpy() for v in reloaded.optimizer.variables]
        assert len(saved) == len(restored) == 3  # iterations, lr, the momentum
        for a, b in zip(saved, restored):
            np.testing.assert_array_equal(a, b)
        if trained:
            assert int(reloaded.optimizer.iterations.numpy()) == 2
            assert np.abs(restored[-1]).sum() > 0  # A real momentum, restored.


# --- End to end ---


@pytest.mark.slow
def test_run_with_a_softmax_teacher_distils_from_log_p_and_resumes(tmp_path, capsys):
    from kd_keras.train.pipeline import run_pipeline

    data = balanced_npz(tmp_path / "d.npz")
    channel_model(tmp_path / "t.keras", activation="softmax")
    config = tiny_config(
        data=str(data), teacher=str(tmp_path / "t.keras"), val_size=40, teacher_epochs=0, verbose=1
    )
    rows = run_pipeline(config, tmp_path / "run")
    assert [r["stage"] for r in rows] == ["teacher", "student_baseline", "student_distilled"]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["teacher_outputs"] == "probabilities"
    # The teacher's loss is the cross-entropy of its probabilities, not of
    # probabilities taken as logits (which is at least log(classes) - 1).
    import keras

    teacher = keras.saving.load_model(tmp_path / "run" / "models" / "teacher.keras")
    with np.load(data) as arrays:
        images, labels = arrays["x_test"].astype("float32"), arrays["y_test"]
    p = keras.ops.convert_to_numpy(teacher(images))
    expected = float(np.mean(-np.log(p[np.arange(len(labels)), labels])))
    assert rows[0]["test_loss"] == pytest.approx(expected, rel=1e-4)
    out = capsys.readouterr().out
    assert "outputs probabilities" in out and "distilling from log p" in out
    # A folder of an older kd_keras ("auto" saved, distilled stage to redo)
    # resumes: resolved up front again, and finished.
    saved["teacher_outputs"] = "auto"
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
    (tmp_path / "run" / "stages" / "student_distilled.json").unlink()
    rows = run_pipeline(
        tiny_config(
            data=str(data), teacher=str(tmp_path / "t.keras"), val_size=40, teacher_epochs=0
        ),
        tmp_path / "run",
        resume=True,
    )
    assert rows[-1]["stage"] == "student_distilled"
    assert (
        json.loads((tmp_path / "run" / "config.json").read_text())["teacher_outputs"]
        == "probabilities"
    )


@pytest.mark.slow
def test_run_with_a_softmax_student_is_refused_before_any_stage(tmp_path):
    from kd_keras.train.pipeline import run_pipeline

    data = balanced_npz(tmp_path / "d.npz")
    channel_model(tmp_path / "s.keras", activation="softmax")
    config = tiny_config(data=str(data), val_size=40, student_model=str(tmp_path / "s.keras"))
    with pytest.raises(ModelSpecError, match="student model .* ends in a softmax"):
        run_pipeline(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # Nothing trained, nothing left.


def test_command_line_refusals_are_one_line_exit_2(tmp_path, capsys):
    from kd_keras.cli import main

    channel_model(tmp_path / "t.keras")
    data = (tmp_path / "t.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[:-100])
    cases = [
        (
            ["run", "--teacher-outputs", "softmax", "--out", str(tmp_path / "run")],
            "teacher_outputs must be one of auto, logits, probabilities, got 'softmax'",
        ),
        (["evaluate", str(tmp_path / "cut.keras")], "damaged/truncated .keras file"),
    ]
    for argv, fragment in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("kd_keras: error: ") and fragment in err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()
