"""Measuring and shipping a trained model: test-time accuracy and loss,
latency, parameter and FLOP counts (`describe_models`), and the saved
`.keras` file (`save_model`)."""

import time

import keras
import numpy as np

from kd_keras import atomic
from kd_keras.data.splits import data_summary
from kd_keras.distill.teacher import load_teacher
from kd_keras.models.fused_batch_norm import with_keras_batch_norm, with_local_batch_norm
from kd_keras.models.resnet import count_flops, stage_blocks
from kd_keras.train import distribute, recipe
from kd_keras.train.recipe import compile_classifier


def evaluate_model(model, dataset):
    """Test-time accuracy and cross-entropy of a logits model (or of a
    teacher that outputs a softmax's probabilities).

    Returns:
        `{"accuracy": float, "loss": float}`; `loss` is the mean
        cross-entropy of the model's own predictions, so rows of different
        stages are comparable.
    """
    from kd_keras.distill.outputs import outputs_kind

    probe = keras.Model(model.inputs, model.outputs, name=f"{model.name}_eval")
    if outputs_kind(model) == "probabilities":
        # A softmax teacher: its cross-entropy is that of its probabilities.
        probe.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
    else:
        compile_classifier(probe, None)  # Evaluated only: Keras's default optimizer.
    logs = distribute.evaluate(probe, dataset)  # model.evaluate, or its multi-worker form.
    return {"accuracy": float(logs["accuracy"]), "loss": float(logs["loss"])}


def measure_latency_ms(model, repeats=30):
    """Median wall time of one forward pass on one image, in milliseconds."""
    import tensorflow as tf

    forward = tf.function(lambda x: model(x, training=False))
    image = np.zeros((1,) + tuple(model.inputs[0].shape[1:]), dtype="float32")
    for _ in range(3):
        forward(image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward(image).numpy()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def measure_model(model, path, datasets):
    """A trained model's row fields: `params`, `flops` (one image),
    `size_mb` of its saved file `path`, `test_`/`val_` `accuracy` and
    `loss` on `datasets["test"]` and `datasets["val"]`, and `latency_ms`."""
    test = evaluate_model(model, datasets["test"])
    val = evaluate_model(model, datasets["val"])
    return {
        "params": int(model.count_params()),
        "flops": count_flops(model),
        "size_mb": round(path.stat().st_size / 2**20, 3),
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "val_accuracy": val["accuracy"],
        "val_loss": val["loss"],
        "latency_ms": round(measure_latency_ms(model), 3),
    }


def save_model(model, path):
    """Saves the model for shipping: weights and architecture, no optimizer
    state, stock Keras layers only (`FusedBatchNormalization` becomes
    `BatchNormalization`, synchronised batch norm becomes local), so the
    file loads with plain Keras and fine-tunes without a strategy."""
    shipped = with_local_batch_norm(
        with_keras_batch_norm(keras.Model(model.inputs, model.outputs, name=model.name))
    )
    with atomic.atomic_path(path) as tmp:
        shipped.save(tmp)


def resnet_depth(spec, depth):
    """The ResNet depth of a model spec (None for other architectures)."""
    from kd_keras.models.specs import parse_model_spec

    if spec is None:
        return depth
    parsed = parse_model_spec(spec)
    return parsed["depth"] if parsed["kind"] == "resnet" else None


def describe_models(config, data=None):
    """Parameter and FLOP counts of the config's teacher and student, for
    the data's image shape and classes.

    Args:
        config: a `RunConfig` (precisions may be "auto": counts do not
            depend on them).
        data: `kd_keras.data.splits.data_summary(config)`, if already known.

    Returns:
        `{"data": data, "teacher": {...}, "student": {...}}`; each model has
        `model` (its spec), `params`, `flops` (one image) and, for a ResNet,
        `blocks` per stage. A reused teacher (`config.teacher`) is loaded.
    """
    data = data or data_summary(config)
    shape = {"input_shape": tuple(data["image_shape"]), "num_classes": data["num_classes"]}
    if config.teacher:
        teacher = load_teacher(
            config.teacher, data["num_classes"], image_shape=shape["input_shape"]
        )
    else:
        teacher = recipe.build_teacher(config, precision="float32", **shape)
    student = recipe.build_student(config, precision="float32", **shape)
    summary = {"data": data}
    for role, model in (("teacher", teacher), ("student", student)):
        spec = (
            config.teacher
            if role == "teacher" and config.teacher
            else getattr(config, f"{role}_model") or f"resnet{getattr(config, f'{role}_depth')}"
        )
        depth = (
            None
            if role == "teacher" and config.teacher
            else resnet_depth(getattr(config, f"{role}_model"), getattr(config, f"{role}_depth"))
        )
        summary[role] = {"model": spec, "params": model.count_params(), "flops": count_flops(model)}
        if depth is not None:
            summary[role]["blocks"] = stage_blocks(depth)[0]
    return summary
