"""`Distiller` in a Keras user's own project: the keras.io example's calls,
subclassed models, teachers that output probabilities, sample and class
weights, and Keras's callbacks."""

import json

import keras
import numpy as np
import pytest

from kd_keras import Distiller

NUM_CLASSES = 4
FEATURES = 6


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def per_example_kl(teacher_logits, student_logits, temperature):
    """Keras's KLDivergence per example (both sides clipped to [1e-7, 1])."""
    p = np.clip(softmax(teacher_logits / temperature), 1e-7, 1)
    q = np.clip(softmax(student_logits / temperature), 1e-7, 1)
    return np.sum(p * np.log(p / q), axis=-1)


def tiny_model(seed, num_classes=NUM_CLASSES, activation=None, name=None):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((FEATURES,))
    hidden = keras.layers.Dense(5, activation="relu")(inputs)
    outputs = keras.layers.Dense(num_classes, activation=activation)(hidden)
    return keras.Model(inputs, outputs, name=name)


def tiny_data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    y = (np.arange(n) % NUM_CLASSES).astype("int32")
    return x, y


def compiled(student, teacher, learning_rate=0.0, **compile_kwargs):
    distiller = Distiller(student=student, teacher=teacher)
    compile_kwargs.setdefault("alpha", 0.3)
    compile_kwargs.setdefault("temperature", 4.0)
    distiller.compile(
        optimizer=keras.optimizers.SGD(learning_rate), metrics=["accuracy"], **compile_kwargs
    )
    return distiller


class Small(keras.Model):
    """A subclassed classifier: its own `call`, no `.outputs`."""

    def __init__(self, num_classes=NUM_CLASSES, softmax=False, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(5, activation="relu")
        self.head = keras.layers.Dense(num_classes)
        self.softmax = softmax

    def call(self, x):
        logits = self.head(self.hidden(x))
        return keras.ops.softmax(logits) if self.softmax else logits


class TwoHeads(Small):
    def call(self, x):
        hidden = self.hidden(x)
        return self.head(hidden), self.head(hidden)


def built(model, seed=0):
    keras.utils.set_random_seed(seed)
    model(np.zeros((1, FEATURES), "float32"))
    return model


# --- The keras.io "Knowledge Distillation" example, ported. ---------------


def example_model(filters, name):
    # The example's Sequential CNNs, on 8x8 instead of 28x28 images.
    return keras.Sequential(
        [
            keras.Input(shape=(8, 8, 1)),
            keras.layers.Conv2D(filters, (3, 3), strides=(2, 2), padding="same"),
            keras.layers.LeakyReLU(negative_slope=0.2),
            keras.layers.MaxPooling2D(pool_size=(2, 2), strides=(1, 1), padding="same"),
            keras.layers.Conv2D(2 * filters, (3, 3), strides=(2, 2), padding="same"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ],
        name=name,
    )


def test_keras_io_example_runs_unchanged_on_kd_keras_distiller():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x_train = rng.uniform(size=(64, 8, 8, 1)).astype("float32")
    y_train = rng.integers(0, 10, 64)
    x_test, y_test = x_train[:32], y_train[:32]
    teacher, student = example_model(8, "teacher"), example_model(2, "student")
    teacher.compile(
        optimizer=keras.optimizers.Adam(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    teacher.fit(x_train, y_train, epochs=1, verbose=0)
    teacher_weights = [w.copy() for w in teacher.get_weights()]

    # The example's calls, with kd_keras.Distiller in place of its class.
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.Adam(),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
        student_loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        distillation_loss_fn=keras.losses.KLDivergence(),
        alpha=0.1,
        temperature=10,
    )
    history = distiller.fit(x_train, y_train, epochs=3, verbose=0)
    results = distiller.evaluate(x_test, y_test, verbose=0)

    assert len(history.history["loss"]) == 3
    assert {"student_loss", "distillation_loss", "sparse_categorical_accuracy"} <= set(
        history.history
    )
    loss, student_loss, distillation_loss, accuracy = results
    t_logits = np.asarray(teacher(x_test, training=False))
    s_logits = np.asarray(student(x_test, training=False))
    cross_entropy = -np.mean(np.log(softmax(s_logits)[np.arange(32), y_test]))
    soft = 100.0 * np.mean(per_example_kl(t_logits, s_logits, 10.0))
    assert student_loss == pytest.approx(cross_entropy, rel=1e-4)
    assert distillation_loss == pytest.approx(soft, rel=1e-3)
    assert loss == pytest.approx(0.1 * cross_entropy + 0.9 * soft, rel=1e-3)
    assert accuracy == pytest.approx(np.mean(s_logits.argmax(-1) == y_test))
    for before, after in zip(teacher_weights, teacher.get_weights()):
        np.testing.assert_array_equal(before, after)


def test_loss_argument_of_keras_distillation_is_refused_naming_the_keywords():
    distiller = Distiller(student=tiny_model(1), teacher=tiny_model(2))
    with pytest.raises(ValueError, match="student_loss_fn and distillation_loss_fn, not loss="):
        distiller.compile(optimizer="adam", loss="sparse_categorical_crossentropy")


# --- Subclassed models. ---------------------------------------------------


def test_unbuilt_subclassed_student_is_built_on_first_batch_and_trains():
    student = Small(name="small")
    distiller = compiled(student, tiny_model(2, name="teacher"), alpha=0.5, temperature=2.0)
    assert not student.built and not distiller.built
    x, y = tiny_data()
    logs = distiller.train_on_batch(x, y, return_dict=True)  # Learning rate 0.
    assert student.built and distiller.built
    t_logits = np.asarray(distiller.teacher(x))
    s_logits = np.asarray(student(x))
    cross_entropy = -np.mean(np.log(softmax(s_logits)[np.arange(8), y]))
    soft = 4.0 * np.mean(per_example_kl(t_logits, s_logits, 2.0))
    assert logs["student_loss"] == pytest.approx(cross_entropy, rel=1e-5)
    assert logs["distillation_loss"] == pytest.approx(soft, rel=1e-4)
    np.testing.assert_allclose(distiller.predict(x, verbose=0), s_logits, rtol=1e-6)


def test_subclassed_teacher_and_student_distil():
    teacher = built(Small(name="teacher"), seed=3)
    distiller = compiled(Small(name="student"), teacher, learning_rate=0.5)
    x, y = tiny_data()
    history = distiller.fit(x, y, epochs=3, batch_size=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_subclassed_student_with_other_classes_is_refused_when_first_built():
    distiller = compiled(Small(num_classes=7), tiny_model(2))
    x, y = tiny_data()
    with pytest.raises(ValueError, match=r"\(None, 4\) does not match the student's \(None, 7\)"):
        distiller.fit(x, y, verbose=0)


def test_built_subclassed_student_with_other_classes_is_refused_at_once():
    with pytest.raises(ValueError, match=r"\(None, 4\) does not match the student's \(None, 7\)"):
        Distiller(student=built(Small(num_classes=7)), teacher=tiny_model(2))


def test_subclassed_model_with_two_outputs_is_refused():
    with pytest.raises(ValueError, match="must return one tensor of logits.*tuple of 2"):
        Distiller(student=tiny_model(1), teacher=built(TwoHeads(name="two")))


def test_unbuilt_teacher_is_refused_naming_the_fix():
    with pytest.raises(ValueError, match=r"teacher must be a trained, built.*unbuilt.*build\("):
        Distiller(student=tiny_model(1), teacher=Small(name="fresh"))


# --- Teachers that output probabilities. ----------------------------------


def softmax_teachers():
    def dense_softmax():
        return tiny_model(2, activation="softmax", name="dense_softmax")

    def softmax_layer():
        logits = tiny_model(2)
        return keras.Model(logits.inputs, keras.layers.Softmax()(logits.outputs[0]))

    def ops_softmax():
        logits = tiny_model(2)
        return keras.Model(logits.inputs, keras.ops.softmax(logits.outputs[0]))

    def nested():  # A wrapped model, e.g. a keras.applications backbone.
        return keras.Sequential([keras.Input((FEATURES,)), dense_softmax()])

    def subclassed():  # Not inspectable: found from its outputs.
        return built(Small(softmax=True, name="subclassed_softmax"), seed=2)

    return [dense_softmax, softmax_layer, ops_softmax, nested, subclassed]


@pytest.mark.parametrize("make_teacher", softmax_teachers(), ids=lambda f: f.__name__)
def test_teacher_that_outputs_probabilities_is_refused_naming_both_fixes(make_teacher):
    with pytest.raises(ValueError, match="outputs probabilities") as info:
        Distiller(student=tiny_model(1), teacher=make_teacher())
    assert "classifier_activation=None" in str(info.value)
    assert "teacher_outputs='probabilities'" in str(info.value)


@pytest.mark.parametrize("make_teacher", softmax_teachers(), ids=lambda f: f.__name__)
def test_probabilities_teacher_is_accepted_when_declared(make_teacher):
    """Declared, every kind of probability teacher distils on the softened
    probabilities p**(1/T) (renormalised), not on p taken as logits."""
    teacher, student = make_teacher(), tiny_model(1)
    x, y = tiny_data()
    p = np.asarray(teacher(x), dtype="float64")
    s = np.asarray(student(x), dtype="float64")
    distiller = Distiller(student=student, teacher=teacher, teacher_outputs="probabilities")
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), alpha=0.2, temperature=3.0)
    logs = distiller.train_on_batch(x, y, return_dict=True)  # Losses before the update.
    soft = p ** (1 / 3.0)
    soft /= soft.sum(-1, keepdims=True)
    q = np.exp(s / 3.0 - (s / 3.0).max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    expected = 9.0 * np.mean(np.sum(soft * (np.log(soft) - np.log(q)), axis=-1))
    assert logs["distillation_loss"] == pytest.approx(expected, rel=1e-4)


def test_keras_applications_teacher_needs_classifier_activation_none():
    kwargs = dict(
        weights=None,
        input_shape=(32, 32, 3),
        classes=NUM_CLASSES,
        alpha=0.25,
        include_preprocessing=False,
    )
    student = keras.applications.MobileNetV3Small(classifier_activation=None, **kwargs)
    with pytest.raises(ValueError, match="classifier_activation=None"):
        Distiller(student=student, teacher=keras.applications.MobileNetV3Small(**kwargs))
    Distiller(
        student=student,
        teacher=keras.applications.MobileNetV3Small(classifier_activation=None, **kwargs),
    )


def test_declared_probabilities_from_a_logits_teacher_are_refused():
    with pytest.raises(ValueError, match="teacher_outputs='probabilities', but the teacher"):
        Distiller(student=tiny_model(1), teacher=tiny_model(2), teacher_outputs="probabilities")
    with pytest.raises(ValueError, match="teacher_outputs='probabilities', but the teacher"):
        Distiller(student=tiny_model(1), teacher=built(Small()), teacher_outputs="probabilities")


@pytest.mark.parametrize("value", ["softmax", None, "Logits"])
def test_bad_teacher_outputs_is_refused_with_the_value(value):
    with pytest.raises(ValueError, match=f"teacher_outputs must be one of.*got {value!r}"):
        Distiller(student=tiny_model(1), teacher=tiny_model(2), teacher_outputs=value)


def test_student_that_ends_in_softmax_is_refused():
    with pytest.raises(ValueError, match="student .* ends in a softmax"):
        Distiller(student=tiny_model(1, activation="softmax"), teacher=tiny_model(2))


def test_softmax_of_log_probabilities_is_the_renormalised_power():
    rng = np.random.default_rng(0)
    p = softmax(rng.normal(scale=4.0, size=(16, 10))).astype("float32")
    p[0, 3] = 1e-30  # Small probabilities too.
    p[0] /= p[0].sum()
    for temperature in (1.0, 2.5, 10.0):
        ours = np.asarray(keras.ops.softmax(keras.ops.log(p) / temperature, axis=-1))
        power = p.astype("float64") ** (1.0 / temperature)
        np.testing.assert_allclose(ours, power / power.sum(-1, keepdims=True), rtol=2e-5, atol=1e-7)


def test_distilling_from_probabilities_equals_distilling_from_the_logits():
    """The same teacher with and without its softmax: the same losses and
    the same training step."""
    logits_teacher = tiny_model(2)
    probabilities_teacher = keras.Model(
        logits_teacher.inputs, keras.layers.Softmax()(logits_teacher.outputs[0])
    )
    x, y = tiny_data()
    runs = []
    for teacher, outputs in ((logits_teacher, "logits"), (probabilities_teacher, "probabilities")):
        distiller = Distiller(student=tiny_model(1), teacher=teacher, teacher_outputs=outputs)
        distiller.compile(optimizer=keras.optimizers.SGD(0.5), alpha=0.2, temperature=3.0)
        logs = distiller.train_on_batch(x, y, return_dict=True)
        runs.append((logs, distiller.student.get_weights()))
    (logs_a, weights_a), (logs_b, weights_b) = runs
    assert logs_b["distillation_loss"] == pytest.approx(logs_a["distillation_loss"], rel=1e-5)
    assert logs_b["loss"] == pytest.approx(logs_a["loss"], rel=1e-5)
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_config_round_trip_keeps_teacher_outputs_and_weighted_metrics(tmp_path):
    teacher = tiny_model(2, activation="softmax")
    distiller = Distiller(student=tiny_model(1), teacher=teacher, teacher_outputs="probabilities")
    distiller.compile(
        optimizer="sgd",
        metrics=["accuracy"],
        weighted_metrics=["accuracy"],
        alpha=0.4,
        temperature=2.0,
    )
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    reloaded = keras.saving.load_model(path)
    assert reloaded.teacher_outputs == "probabilities"
    assert reloaded.get_compile_config() == distiller.get_compile_config()
    x, y = tiny_data()
    logs = reloaded.evaluate(x, y, return_dict=True, verbose=0)
    assert {"accuracy", "weighted_accuracy", "student_loss"} <= set(logs)


def test_loss_functions_are_averaged_over_the_batch_like_loss_instances():
    """A loss given as a function (or its name) returns per-example values;
    it is averaged as keras.Model.compile averages it, not summed."""
    x, y = tiny_data()
    runs = []
    for loss in (keras.losses.KLDivergence(), "kl_divergence", keras.losses.kl_divergence):
        distiller = compiled(
            tiny_model(1), tiny_model(2), learning_rate=0.5, distillation_loss_fn=loss
        )
        logs = distiller.train_on_batch(x, y, return_dict=True)
        runs.append((logs["distillation_loss"], distiller.student.get_weights()))
    (reference, weights), *others = runs
    for value, other_weights in others:
        assert value == pytest.approx(reference, rel=1e-6)
        for a, b in zip(weights, other_weights):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# --- Sample and class weights. --------------------------------------------


def plain_copy(student, learning_rate=0.0):
    """The student as a plain compiled Keras model, same weights."""
    plain = keras.models.clone_model(student)
    plain.set_weights(student.get_weights())
    plain.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return plain


CLASS_WEIGHT = {0: 0.5, 1: 2.0, 2: 1.0, 3: 3.0}


def test_class_weight_weighs_the_cross_entropy_as_a_plain_keras_model():
    x, y = tiny_data(10)  # Batches of 4, 4 and 2.
    distiller = compiled(tiny_model(1), tiny_model(2))
    plain = plain_copy(distiller.student)
    ours = distiller.fit(x, y, batch_size=4, class_weight=CLASS_WEIGHT, shuffle=False, verbose=0)
    keras_own = plain.fit(x, y, batch_size=4, class_weight=CLASS_WEIGHT, shuffle=False, verbose=0)
    unweighted = plain_copy(distiller.student).fit(x, y, batch_size=4, shuffle=False, verbose=0)
    assert ours.history["student_loss"][0] == pytest.approx(keras_own.history["loss"][0], rel=1e-6)
    assert abs(keras_own.history["loss"][0] - unweighted.history["loss"][0]) > 1e-2


def test_sample_weight_weighs_both_terms_per_example():
    x, y = tiny_data()
    w = np.linspace(0.0, 2.0, 8).astype("float32")
    distiller = compiled(tiny_model(1), tiny_model(2), alpha=0.3, temperature=4.0)
    plain = plain_copy(distiller.student)
    logs = distiller.train_on_batch(x, y, sample_weight=w, return_dict=True)
    keras_own = plain.train_on_batch(x, y, sample_weight=w, return_dict=True)
    kl = per_example_kl(np.asarray(distiller.teacher(x)), np.asarray(distiller.student(x)), 4.0)
    soft = 16.0 * np.sum(w * kl) / len(w)
    assert logs["student_loss"] == pytest.approx(keras_own["loss"], rel=1e-6)
    assert logs["distillation_loss"] == pytest.approx(soft, rel=1e-4)
    assert logs["loss"] == pytest.approx(0.3 * keras_own["loss"] + 0.7 * soft, rel=1e-4)


def test_sample_weighted_step_moves_the_student_as_keras_would():
    """alpha = 1: one weighted SGD step of the Distiller is one weighted
    step of the plain model."""
    x, y = tiny_data()
    w = np.linspace(0.0, 2.0, 8).astype("float32")
    distiller = compiled(tiny_model(1), tiny_model(2), learning_rate=0.5, alpha=1.0)
    plain = plain_copy(distiller.student, learning_rate=0.5)
    distiller.train_on_batch(x, y, sample_weight=w)
    plain.train_on_batch(x, y, sample_weight=w)
    for ours, theirs in zip(distiller.student.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)


def test_weighted_metrics_use_the_sample_weights():
    x, y = tiny_data()
    distiller = Distiller(student=tiny_model(1), teacher=tiny_model(2))
    distiller.compile(optimizer="sgd", metrics=["accuracy"], weighted_metrics=["accuracy"])
    correct = np.asarray(distiller.student(x)).argmax(-1) == y
    w = np.where(correct, 1.0, 0.0).astype("float32")  # Only the right ones count.
    assert 0 < correct.sum() < 8
    logs = distiller.evaluate(x, y, sample_weight=w, return_dict=True, verbose=0)
    assert logs["weighted_accuracy"] == pytest.approx(1.0)
    assert logs["accuracy"] == pytest.approx(correct.mean())


def test_precomputed_teacher_logits_ride_in_x_next_to_sample_weights():
    x, y = tiny_data()
    w = np.linspace(0.0, 2.0, 8).astype("float32")
    live = compiled(tiny_model(1), tiny_model(2))
    cached = compiled(tiny_model(1), tiny_model(2))
    t_logits = np.asarray(live.teacher(x))
    a = live.evaluate(x, y, sample_weight=w, return_dict=True, verbose=0)
    b = cached.evaluate(
        {"images": x, "teacher_logits": t_logits}, y, sample_weight=w, return_dict=True, verbose=0
    )
    for key in ("loss", "student_loss", "distillation_loss"):
        assert b[key] == pytest.approx(a[key], rel=1e-6)
    np.testing.assert_allclose(
        cached.predict({"images": x, "teacher_logits": t_logits}, verbose=0),
        cached.student.predict(x, verbose=0),
    )
    with pytest.raises(ValueError, match=r"x\['teacher_logits'\] has shape \(None, 3\)"):
        cached.evaluate({"images": x, "teacher_logits": t_logits[:, :3]}, y, verbose=0)


# --- Keras callbacks, no extra steps. -------------------------------------


def callback_run(callbacks, epochs=3, learning_rate=0.1):
    x, y = tiny_data(16)
    distiller = compiled(tiny_model(1), tiny_model(2), learning_rate=learning_rate)
    history = distiller.fit(
        x,
        y,
        validation_data=(x, y),
        epochs=epochs,
        batch_size=8,
        callbacks=callbacks,
        shuffle=False,
        verbose=0,
    )
    return distiller, history


def test_early_stopping_on_val_accuracy_knows_to_maximise():
    stop = keras.callbacks.EarlyStopping(
        monitor="val_accuracy", patience=1, restore_best_weights=True
    )
    distiller, history = callback_run([stop], epochs=20, learning_rate=0.0)
    assert stop.monitor_op is keras.ops.greater
    # Nothing improves at learning rate 0: stopped after patience.
    assert len(history.history["loss"]) == 2


def test_backup_and_restore_resumes_an_interrupted_fit(tmp_path):
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("interrupted")

    backup = tmp_path / "backup"
    x, y = tiny_data(16)
    first = compiled(tiny_model(1), tiny_model(2), learning_rate=0.1)
    with pytest.raises(RuntimeError, match="interrupted"):
        first.fit(
            x,
            y,
            epochs=4,
            batch_size=8,
            verbose=0,
            shuffle=False,
            callbacks=[keras.callbacks.BackupAndRestore(backup), Interrupt()],
        )
    after_two_epochs = first.student.get_weights()
    second = compiled(tiny_model(1), tiny_model(2), learning_rate=0.1)
    restored = []

    class Record(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            restored.extend(self.model.student.get_weights())

    history = second.fit(
        x,
        y,
        epochs=4,
        batch_size=8,
        verbose=0,
        shuffle=False,
        callbacks=[keras.callbacks.BackupAndRestore(backup), Record()],
    )
    assert len(history.history["loss"]) == 2  # Epochs 3 and 4 only.
    for a, b in zip(after_two_epochs, restored):
        np.testing.assert_array_equal(a, b)


def test_model_checkpoint_saves_the_best_distiller_and_its_weights(tmp_path):
    best = tmp_path / "best.keras"
    weights = tmp_path / "last.weights.h5"
    distiller, history = callback_run(
        [
            keras.callbacks.ModelCheckpoint(best, monitor="val_accuracy", save_best_only=True),
            keras.callbacks.ModelCheckpoint(weights, save_weights_only=True),
        ]
    )
    reloaded = keras.saving.load_model(best)
    assert isinstance(reloaded, Distiller)
    # The best epoch's weights: its score on the validation data again.
    x16, y16 = tiny_data(16)
    score = reloaded.evaluate(x16, y16, batch_size=8, return_dict=True, verbose=0)["accuracy"]
    assert score == pytest.approx(max(history.history["val_accuracy"]))
    fresh = Distiller(student=tiny_model(5), teacher=tiny_model(2))
    fresh.load_weights(weights)
    x, _ = tiny_data()
    np.testing.assert_allclose(
        fresh.predict(x, verbose=0), distiller.predict(x, verbose=0), rtol=1e-6
    )


def test_reduce_lr_on_plateau_on_val_accuracy_reduces_when_it_stalls():
    reduce = keras.callbacks.ReduceLROnPlateau(monitor="val_accuracy", factor=0.5, patience=1)
    distiller, history = callback_run([reduce], epochs=3, learning_rate=1e-9)
    assert reduce.monitor_op is keras.ops.greater
    # Epoch 1 improves on nothing; epochs 2 and 3 stall: halved twice.
    assert history.history["learning_rate"][0] == pytest.approx(1e-9)
    assert float(distiller.optimizer.learning_rate) == pytest.approx(0.25e-9)


def test_tensorboard_writes_logs(tmp_path):
    pytest.importorskip("tensorboard")
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, history = callback_run(
        [keras.callbacks.TensorBoard(tmp_path / "logs", histogram_freq=1)], epochs=2
    )
    logged = {}
    for split, prefix in (("train", ""), ("validation", "val_")):
        events = EventAccumulator(str(tmp_path / "logs" / split), size_guidance={"tensors": 0})
        events.Reload()
        for tag in events.Tags()["tensors"]:
            if tag.startswith("epoch_"):
                values = [float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]
                logged[prefix + tag[len("epoch_") :]] = values
    for name in ("loss", "student_loss", "distillation_loss", "val_loss", "val_accuracy"):
        assert logged[name] == pytest.approx(history.history[name], rel=1e-5), name


def test_distiller_of_functional_models_is_built_at_once():
    distiller = Distiller(student=tiny_model(1), teacher=tiny_model(2))
    assert distiller.built
    assert json.loads(distiller.to_json())["class_name"] == "Distiller"


def _feature_models(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(5, activation="relu", name="dense_1")(inputs)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, name="logits")(hidden))


def test_keras_distillation_feature_example_ported_trains_the_same():
    """The docs/distiller.md example: keras.distillation's LogitsDistillation
    (with a KLDivergence instance) plus FeatureDistillation, and the
    kd_keras port with HintonKD and FeatureDistillation, train to the same
    weights and report the same distillation loss."""
    from kd_keras.distill.losses import FeatureDistillation, HintonKD

    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 6)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, 24)
    runs = {}
    for library in ("keras", "kd_keras"):
        teacher, student = _feature_models(2), _feature_models(1)
        if library == "keras":
            distiller = keras.distillation.Distiller(
                teacher=teacher,
                student=student,
                distillation_losses=[
                    keras.distillation.LogitsDistillation(
                        temperature=4.0, loss=keras.losses.KLDivergence()
                    ),
                    keras.distillation.FeatureDistillation(
                        loss="mse", teacher_layer_name="dense_1", student_layer_name="dense_1"
                    ),
                ],
                distillation_loss_weights=[1.0, 0.5],
                student_loss_weight=0.3,
            )
            distiller.compile(
                optimizer=keras.optimizers.SGD(0.1),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        else:
            distiller = Distiller(
                student=student,
                teacher=teacher,
                distillation_losses=[
                    HintonKD(temperature=4.0),
                    FeatureDistillation(
                        loss="mse", teacher_layer_name="dense_1", student_layer_name="dense_1"
                    ),
                ],
                distillation_loss_weights=[1.0, 0.5],
                student_loss_weight=0.3,
            )
            distiller.compile(optimizer=keras.optimizers.SGD(0.1))
        logs = [
            distiller.train_on_batch(x[i : i + 8], y[i : i + 8], return_dict=True)
            for i in range(0, 24, 8)
        ]
        runs[library] = logs, student.get_weights()
    (theirs, their_weights), (ours, our_weights) = runs["keras"], runs["kd_keras"]
    for a, b in zip(their_weights, our_weights):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert not np.allclose(our_weights[0], _feature_models(1).get_weights()[0])
    for mine, keras_logs in zip(ours, theirs):
        assert mine["distillation_loss"] == pytest.approx(keras_logs["distillation_loss"], rel=1e-5)
        assert mine["loss"] == pytest.approx(keras_logs["total_loss"], rel=1e-5)
