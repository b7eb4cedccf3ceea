"""The Distiller's default loss (Hinton KD, now a loss object) gives the
same numbers as its former built-in formula: a tiny model trained a few
steps with a fixed seed, compared step by step, loss by loss and weight by
weight, with a plain TensorFlow loop applying that formula."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_keras import Distiller

STEPS, BATCH, CLASSES, LR = 4, 8, 5, 0.5


def tiny_model(seed, name):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(7, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(hidden), name=name)


def batches():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(STEPS * BATCH, 6)).astype("float32")
    y = rng.integers(0, CLASSES, size=STEPS * BATCH)
    return [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, STEPS * BATCH, BATCH)]


def former_formula_run(alpha, temperature):
    """alpha * CE + (1 - alpha) * T**2 * KL(softmax(t/T) || softmax(s/T)),
    SGD on the student only: the Distiller's loss before losses became
    objects. Returns each step's (loss, CE, soft term) and the final
    student weights."""
    student, teacher = tiny_model(1, "student"), tiny_model(2, "teacher")
    optimizer = keras.optimizers.SGD(LR)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    kl = keras.losses.KLDivergence()
    losses = []
    for x, y in batches():
        t = teacher(x, training=False)
        with tf.GradientTape() as tape:
            s = student(x, training=True)
            hard = ce(y, s)
            soft = temperature**2 * kl(
                tf.nn.softmax(t / temperature, axis=-1), tf.nn.softmax(s / temperature, axis=-1)
            )
            loss = alpha * hard + (1.0 - alpha) * soft
        grads = tape.gradient(loss, student.trainable_variables)
        optimizer.apply_gradients(zip(grads, student.trainable_variables))
        losses.append(
            {"loss": float(loss), "student_loss": float(hard), "distillation_loss": float(soft)}
        )
    return losses, student.get_weights()


def distiller_run(alpha, temperature, explicit):
    student, teacher = tiny_model(1, "student"), tiny_model(2, "teacher")
    if explicit:
        from kd_keras.distill.losses import HintonKD

        distiller = Distiller(
            student=student,
            teacher=teacher,
            distillation_losses=[HintonKD(temperature=temperature)],
            student_loss_weight=alpha,
        )
        distiller.compile(optimizer=keras.optimizers.SGD(LR))
    else:
        distiller = Distiller(student=student, teacher=teacher)
        distiller.compile(optimizer=keras.optimizers.SGD(LR), alpha=alpha, temperature=temperature)
    # train_on_batch resets the metrics: each log is that step's value.
    logs = [distiller.train_on_batch(x, y, return_dict=True) for x, y in batches()]
    return logs, student.get_weights()


@pytest.mark.parametrize("alpha, temperature", [(0.3, 4.0), (0.7, 2.0)])
@pytest.mark.parametrize("explicit", [False, True], ids=["compile-keywords", "loss-object"])
def test_default_loss_trains_as_the_former_formula(alpha, temperature, explicit):
    expected_logs, expected_weights = former_formula_run(alpha, temperature)
    logs, weights = distiller_run(alpha, temperature, explicit)
    # Exactly: the same float32 operations in the same order.
    for step, expected in enumerate(expected_logs):
        for key, value in expected.items():
            assert logs[step][key] == value, (key, step)
    for got, want in zip(weights, expected_weights):
        np.testing.assert_array_equal(got, want)
    # The run moved the weights: the comparison is not of untouched ones.
    assert not np.allclose(weights[0], tiny_model(1, "student").get_weights()[0])
