"""The shared training recipe (`kd_keras.train.recipe`): seeding, models,
optimizer and compile arguments, and that the pipeline and the search take
them from it. Tiny ResNet-8s of width 4, float32."""

import dataclasses
import math

import keras
import keras_tuner
import numpy as np
import pytest

from kd_keras import Distiller, RunConfig, build_resnet
from kd_keras.train import recipe
from kd_keras.train.pipeline import Pipeline
from tuning import DistillationHyperModel, SearchSpace

IMAGES = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
LABELS = np.array([0, 3, 7, 9], dtype="int32")


def tiny_config(**overrides):
    fields = dict(teacher_width=4, student_width=4, batch_size=10, verbose=0)
    fields.update(overrides)
    return RunConfig.from_preset("smoke", **fields)  # float32, ResNet-8s.


def assert_same_weights(first, second):
    a, b = first.get_weights(), second.get_weights()
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def differs(first, second):
    return any(not np.array_equal(x, y) for x, y in zip(first.get_weights(), second.get_weights()))


# --- Seeding and models ---


def test_build_student_is_seeded_with_seed_plus_one():
    config = tiny_config(seed=3)
    first = recipe.build_student(config)
    keras.random.uniform((5,))  # Draws in between must not matter.
    second = recipe.build_student(config)
    assert_same_weights(first, second)
    assert differs(first, recipe.build_student(tiny_config(seed=4)))
    # Exactly the weights of a ResNet-8 built right after seeding with seed + 1.
    keras.utils.set_random_seed(4)
    assert_same_weights(first, build_resnet(8, width=4))
    assert first.name == "student_resnet8"


def test_build_teacher_is_seeded_with_the_seed_and_takes_the_data_contract():
    config = tiny_config(seed=3)
    teacher = recipe.build_teacher(config, input_shape=(16, 16, 3), num_classes=5)
    keras.utils.set_random_seed(3)
    reference = build_resnet(8, width=4, input_shape=(16, 16, 3), num_classes=5)
    assert_same_weights(teacher, reference)
    assert teacher.name == "teacher_resnet8"
    assert tuple(teacher.outputs[0].shape) == (None, 5)


def test_build_options_choose_batch_norm_and_precision():
    config = tiny_config()
    types = {type(layer).__name__ for layer in recipe.build_student(config).layers}
    assert "FusedBatchNormalization" in types
    stock = recipe.build_student(config, fused_batch_norm=False)
    assert "FusedBatchNormalization" not in {type(layer).__name__ for layer in stock.layers}
    assert_same_weights(recipe.build_student(config), stock)  # Same draws, other layer.
    mixed = recipe.build_student(config, precision="mixed_bfloat16")
    assert mixed.get_layer("stem_conv").compute_dtype == "bfloat16"
    assert recipe.build_student(config).get_layer("stem_conv").compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"


def test_pipeline_and_search_start_from_the_same_student(tmp_path):
    config = tiny_config(seed=7)
    images = np.zeros((20, 32, 32, 3), "uint8")
    splits = {"train": (images, np.arange(20) % 10), "classes": list(range(10))}
    pipeline_student = Pipeline(config, tmp_path, None, splits=splits).build_student()
    hypermodel = DistillationHyperModel(
        build_resnet(8, width=4),
        steps_per_epoch=2,
        epochs=1,
        config=config,
        space=SearchSpace(fixed_temperature=2.0, fixed_alpha=0.5),
    )
    trial = hypermodel.build(keras_tuner.HyperParameters())
    assert_same_weights(pipeline_student, trial.student)
    assert_same_weights(pipeline_student, recipe.build_student(config))
    assert differs(pipeline_student, recipe.build_student(tiny_config(seed=8)))


def test_seed_training_reseeds_with_the_configs_seed():
    recipe.seed_training(tiny_config(seed=5))
    first = keras.ops.convert_to_numpy(keras.random.uniform((4,)))
    keras.random.uniform((4,))
    recipe.seed_everything(5)
    np.testing.assert_array_equal(first, keras.ops.convert_to_numpy(keras.random.uniform((4,))))


# --- The optimizer ---


@pytest.mark.parametrize(
    "warmup_epochs, expected",
    [
        # 10 steps per epoch, 10 epochs: 20 warm-up steps from 0.01 to 0.1,
        # then a cosine over the remaining 80 steps down to 0.
        (
            2,
            {
                0: 0.01,
                10: 0.055,
                20: 0.1,
                40: 0.1 * (1 + math.cos(math.pi / 4)) / 2,
                60: 0.05,
                100: 0.0,
            },
        ),
        # No warm-up: a cosine from 0.1 over all 100 steps.
        (0, {0: 0.1, 25: 0.1 * (1 + math.cos(math.pi / 4)) / 2, 50: 0.05, 100: 0.0}),
    ],
)
def test_schedule_warms_up_linearly_then_decays_as_a_cosine(warmup_epochs, expected):
    config = tiny_config(learning_rate=0.1, warmup_epochs=warmup_epochs)
    optimizer = recipe.make_optimizer(config, steps_per_epoch=10, epochs=10)
    for step, value in expected.items():
        optimizer.iterations.assign(step)
        got = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        assert got == pytest.approx(value, abs=1e-7), f"step {step}"


def test_warm_up_leaves_at_least_one_step_of_decay():
    # Front ends refuse such a warm-up (RunConfig.check_schedule); the
    # recipe still keeps one step of decay for a config built directly.
    config = dataclasses.replace(tiny_config(), warmup_epochs=5).validate()
    optimizer = recipe.make_optimizer(config, steps_per_epoch=2, epochs=2)
    schedule = optimizer.get_config()["learning_rate"]["config"]
    assert (schedule["warmup_steps"], schedule["decay_steps"]) == (3, 1)


def test_optimizer_is_nesterov_sgd_with_decoupled_decay_off_batch_norm_and_biases():
    config = tiny_config(learning_rate=1.0, momentum=0.9, weight_decay=0.1, warmup_epochs=0)
    optimizer = recipe.make_optimizer(config, steps_per_epoch=1, epochs=1)
    assert isinstance(optimizer, keras.optimizers.SGD)
    assert optimizer.nesterov and optimizer.momentum == 0.9
    kernel = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
    bias = keras.Variable(np.ones((2,), "float32"), name="bias")
    gamma = keras.Variable(np.ones((2,), "float32"), name="gamma")
    variables = [kernel, bias, gamma]
    optimizer.apply_gradients([(keras.ops.zeros_like(v), v) for v in variables])
    # Zero gradients: only the decay moves a weight, by lr * weight_decay.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kernel), 0.9, rtol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bias), 1.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(gamma), 1.0)
    assert recipe.make_optimizer(tiny_config(weight_decay=0.0), 1, 1).weight_decay is None


@pytest.mark.parametrize(
    "precision, scaled",
    [("float32", False), ("mixed_bfloat16", False), ("mixed_float16", True)],
)
def test_mixed_float16_gets_a_loss_scale_optimizer(precision, scaled):
    optimizer = recipe.make_optimizer(tiny_config(precision=precision), 10, 2)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer) == scaled
    inner = optimizer.inner_optimizer if scaled else optimizer
    assert isinstance(inner, keras.optimizers.SGD) and inner.nesterov


# --- Compiling ---


def test_compile_classifier_uses_cross_entropy_on_logits_and_accuracy():
    config = tiny_config()
    model = recipe.build_student(config)
    optimizer = recipe.make_optimizer(config, 1, 1)
    assert recipe.compile_classifier(model, optimizer, steps_per_execution=2) is model
    assert model.optimizer is optimizer and model.steps_per_execution == 2
    logs = model.evaluate(IMAGES, LABELS, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "accuracy"}
    logits = keras.ops.convert_to_numpy(model(IMAGES, training=False)).astype("float64")
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected_loss = -log_probs[np.arange(4), LABELS].mean()
    assert logs["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert logs["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == LABELS))


def test_compile_distiller_takes_t_and_alpha_from_the_config():
    config = tiny_config(temperature=2.5, alpha=0.7)
    student, teacher = recipe.build_student(config), recipe.build_teacher(config)
    optimizer = recipe.make_optimizer(config, 1, 1)
    distiller = recipe.compile_distiller(student, teacher, config, optimizer, steps_per_execution=2)
    assert isinstance(distiller, Distiller)
    assert (distiller.temperature, distiller.alpha) == (2.5, 0.7)
    assert distiller.student is student and distiller.teacher is teacher
    assert distiller.optimizer is optimizer and distiller.steps_per_execution == 2
    history = distiller.fit(IMAGES, LABELS, batch_size=2, epochs=1, verbose=0)
    assert set(history.history) == {"loss", "student_loss", "distillation_loss", "accuracy"}
    # A trial's own T and alpha override the config's.
    trial = recipe.compile_distiller(
        student, teacher, config, recipe.make_optimizer(config, 1, 1), temperature=6.0, alpha=0.1
    )
    assert (trial.temperature, trial.alpha) == (6.0, 0.1)


# --- Bad input ---


def test_bad_arguments_raise_naming_the_value():
    config = tiny_config()
    with pytest.raises(TypeError, match="RunConfig.*dict"):
        recipe.build_student({"student_depth": 8})
    with pytest.raises(ValueError, match="steps_per_epoch must be an int >= 0, got -1"):
        recipe.make_optimizer(config, -1, 2)
    with pytest.raises(ValueError, match="epochs must be an int >= 0, got 2.5"):
        recipe.make_optimizer(config, 10, 2.5)
    with pytest.raises(ValueError, match="'auto' must be resolved"):
        recipe.build_student(tiny_config(precision="auto"))
    model = recipe.build_student(config)
    with pytest.raises(ValueError, match="loss='mse'"):
        recipe.compile_classifier(model, "sgd", loss="mse")
    with pytest.raises(ValueError, match="metrics=\\['mae'\\]"):
        recipe.compile_distiller(
            model, recipe.build_teacher(config), config, "sgd", metrics=["mae"]
        )
    with pytest.raises(ValueError, match="alpha"):
        recipe.compile_distiller(model, recipe.build_teacher(config), config, "sgd", alpha=1.5)
