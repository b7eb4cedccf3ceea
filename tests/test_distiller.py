import keras
import numpy as np
import pytest

from kd_keras import Distiller

NUM_CLASSES = 4
BATCH = 8


def tiny_model(seed, num_classes=NUM_CLASSES, name=None):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(5, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(hidden), name=name)


def tiny_batch(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH, 6)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=BATCH)
    return x, y


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def hand_losses(teacher_logits, student_logits, y, alpha, temperature):
    """Hinton et al.'s loss, written out in NumPy."""
    probs = softmax(student_logits)
    cross_entropy = -np.mean(np.log(probs[np.arange(len(y)), y]))
    p_teacher = np.clip(softmax(teacher_logits / temperature), 1e-7, 1)
    p_student = np.clip(softmax(student_logits / temperature), 1e-7, 1)
    kl = np.mean(np.sum(p_teacher * np.log(p_teacher / p_student), axis=-1))
    soft = temperature**2 * kl
    return alpha * cross_entropy + (1 - alpha) * soft, cross_entropy, soft


def make_distiller(alpha=0.3, temperature=4.0, learning_rate=0.0):
    student, teacher = tiny_model(1, name="student"), tiny_model(2, name="teacher")
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        metrics=["accuracy"],
        alpha=alpha,
        temperature=temperature,
    )
    return distiller


@pytest.mark.parametrize("alpha, temperature", [(0.3, 4.0), (0.0, 1.0), (1.0, 10.0)])
def test_reported_losses_match_hand_computation(alpha, temperature):
    distiller = make_distiller(alpha, temperature)
    x, y = tiny_batch()
    # Learning rate 0: the weights after the step are the weights before it.
    logs = distiller.train_on_batch(x, y, return_dict=True)
    teacher_logits = np.asarray(distiller.teacher(x))
    student_logits = np.asarray(distiller.student(x))
    loss, cross_entropy, soft = hand_losses(teacher_logits, student_logits, y, alpha, temperature)
    assert logs["student_loss"] == pytest.approx(cross_entropy, rel=1e-5)
    assert logs["distillation_loss"] == pytest.approx(soft, rel=1e-4)
    assert logs["loss"] == pytest.approx(loss, rel=1e-4)
    accuracy = np.mean(student_logits.argmax(-1) == y)
    assert logs["accuracy"] == pytest.approx(accuracy)
    assert soft > 0


def test_test_step_reports_same_terms_as_hand_computation():
    distiller = make_distiller(0.5, 2.0)
    x, y = tiny_batch(3)
    logs = distiller.evaluate(x, y, batch_size=BATCH, return_dict=True, verbose=0)
    loss, cross_entropy, soft = hand_losses(
        np.asarray(distiller.teacher(x)), np.asarray(distiller.student(x)), y, 0.5, 2.0
    )
    assert set(logs) == {"loss", "student_loss", "distillation_loss", "accuracy"}
    assert logs["loss"] == pytest.approx(loss, rel=1e-4)
    assert logs["student_loss"] == pytest.approx(cross_entropy, rel=1e-5)


def test_distillation_term_matches_keras_logits_distillation_with_kl_instance():
    temperature = 4.0
    distiller = make_distiller(0.0, temperature)
    x, y = tiny_batch(5)
    teacher_logits = distiller.teacher(x)
    student_logits = distiller.student(x)
    ours = distiller.compute_losses(y, teacher_logits, student_logits)[2]
    builtin = keras.distillation.LogitsDistillation(
        temperature=temperature, loss=keras.losses.KLDivergence()
    ).compute_loss(teacher_logits, student_logits)
    assert float(ours) == pytest.approx(float(builtin), rel=1e-5)


def test_keras_logits_distillation_default_string_loss_skips_softmax_and_t2():
    """Documents the trap in the README: the default `"kl_divergence"` string
    is not a `KLDivergence` instance, so the built-in skips the softmax and
    the T**2 and applies KL to temperature-scaled *logits* (clipped to
    [1e-7, 1])."""
    temperature = 4.0
    distiller = make_distiller(0.0, temperature)
    x, y = tiny_batch(5)
    teacher_logits = np.asarray(distiller.teacher(x))
    student_logits = np.asarray(distiller.student(x))
    default = float(
        keras.distillation.LogitsDistillation(temperature=temperature).compute_loss(
            teacher_logits, student_logits
        )
    )
    t = np.clip(teacher_logits / temperature, 1e-7, 1)
    s = np.clip(student_logits / temperature, 1e-7, 1)
    on_raw_logits = np.mean(np.sum(t * np.log(t / s), axis=-1))
    assert default == pytest.approx(on_raw_logits, rel=1e-4)
    correct = float(distiller.compute_losses(y, teacher_logits, student_logits)[2])
    assert abs(default - correct) > 1e-3


def test_only_student_weights_change_and_teacher_is_frozen():
    distiller = make_distiller(0.3, 4.0, learning_rate=0.5)
    teacher_before = [w.copy() for w in distiller.teacher.get_weights()]
    student_before = [w.copy() for w in distiller.student.get_weights()]
    x, y = tiny_batch()
    distiller.train_on_batch(x, y)
    for before, after in zip(teacher_before, distiller.teacher.get_weights()):
        np.testing.assert_array_equal(before, after)
    changed = [
        not np.array_equal(b, a) for b, a in zip(student_before, distiller.student.get_weights())
    ]
    assert all(changed)


def test_gradient_matches_hand_gradient_of_blended_loss():
    """One SGD step moves the student's bias by -lr * dLoss/dbias, where the
    gradient of the blended loss w.r.t. the logits is known in closed form:
    alpha * (p - onehot) + (1 - alpha) * T * (p_T - q_T)."""
    alpha, temperature, lr = 0.3, 4.0, 0.1
    distiller = make_distiller(alpha, temperature, learning_rate=lr)
    x, y = tiny_batch()
    bias_before = distiller.student.layers[-1].bias.numpy().copy()
    teacher_logits = np.asarray(distiller.teacher(x))
    student_logits = np.asarray(distiller.student(x))
    distiller.train_on_batch(x, y)
    onehot = np.eye(NUM_CLASSES)[y]
    grad_logits = alpha * (softmax(student_logits) - onehot) + (1 - alpha) * temperature * (
        softmax(student_logits / temperature) - softmax(teacher_logits / temperature)
    )
    expected = bias_before - lr * grad_logits.mean(axis=0)
    np.testing.assert_allclose(
        distiller.student.layers[-1].bias.numpy(), expected, rtol=1e-4, atol=1e-6
    )


def test_call_predict_and_evaluate_behave_like_the_student():
    distiller = make_distiller()
    x, _ = tiny_batch()
    np.testing.assert_allclose(
        distiller.predict(x, verbose=0), distiller.student.predict(x, verbose=0)
    )


@pytest.mark.parametrize("alpha", [-0.1, 1.5, "0.3", None])
def test_bad_alpha_is_refused_with_the_value(alpha):
    distiller = Distiller(student=tiny_model(1), teacher=tiny_model(2))
    with pytest.raises(ValueError, match="alpha") as info:
        distiller.compile(alpha=alpha)
    assert repr(alpha) in str(info.value) or str(alpha) in str(info.value)


@pytest.mark.parametrize("temperature", [0, -1.0, float("inf"), "4"])
def test_bad_temperature_is_refused_with_the_value(temperature):
    distiller = Distiller(student=tiny_model(1), teacher=tiny_model(2))
    with pytest.raises(ValueError, match="temperature") as info:
        distiller.compile(temperature=temperature)
    assert str(temperature) in str(info.value)


def test_teacher_with_other_classes_is_refused():
    with pytest.raises(ValueError, match=r"\(None, 7\).*\(None, 4\)"):
        Distiller(student=tiny_model(1), teacher=tiny_model(2, num_classes=7))


def test_non_model_is_refused():
    with pytest.raises(ValueError, match="teacher must be a keras.Model"):
        Distiller(student=tiny_model(1), teacher="teacher.keras")


def test_trained_student_saves_and_reloads_with_same_predictions(tmp_path):
    distiller = make_distiller(learning_rate=0.1)
    x, y = tiny_batch()
    distiller.fit(x, y, epochs=2, batch_size=4, verbose=0)
    path = tmp_path / "student.keras"
    distiller.student.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0), distiller.student.predict(x, verbose=0), rtol=1e-6
    )


def test_distiller_config_round_trip_keeps_models_and_compile_settings(tmp_path):
    distiller = make_distiller(alpha=0.6, temperature=2.5, learning_rate=0.1)
    x, y = tiny_batch()
    distiller.fit(x, y, epochs=1, batch_size=4, verbose=0)
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded, Distiller)
    assert (reloaded.alpha, reloaded.temperature) == (0.6, 2.5)
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0), distiller.predict(x, verbose=0), rtol=1e-6
    )
    clone = Distiller.from_config(distiller.get_config())
    assert clone.student.count_params() == distiller.student.count_params()
