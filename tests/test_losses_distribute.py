"""Feature and DKD losses under `tf.distribute.MirroredStrategy` on two
logical CPU devices against one device: the same reported losses and
weights (adapters included). As tests/test_distribute.py, each run is a
fresh process (logical devices are set before TensorFlow starts)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

RUN = r"""
import json, sys
import numpy as np
import tensorflow as tf

replicas = int(sys.argv[1])
if replicas > 1:
    [cpu] = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * replicas
    )
import keras
from kd_keras import Distiller
from kd_keras.distill.losses import DKD, AttentionTransfer, FeatureDistillation, FitNets

strategy = (
    tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
    if replicas > 1 else tf.distribute.get_strategy()
)
assert strategy.num_replicas_in_sync == replicas


def model(seed, width):
    inputs = keras.Input((6, 6, 3))
    f1 = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="f1")(inputs)
    f2 = keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu", name="f2")(f1)
    pooled = keras.layers.GlobalAveragePooling2D()(f2)
    built = keras.Model(inputs, keras.layers.Dense(4, name="logits")(pooled))
    rng = np.random.default_rng(seed)  # The same weights in every process.
    built.set_weights([rng.normal(scale=0.3, size=w.shape) for w in built.get_weights()])
    return built


rng = np.random.default_rng(0)
x = rng.normal(size=(16, 6, 6, 3)).astype("float32")
y = (np.arange(16) % 4).astype("int32")
CASES = {
    "fitnets": lambda: [FitNets("f2", "f2")],
    "at": lambda: [AttentionTransfer(["f1", "f2"], ["f1", "f2"])],
    "dkd": lambda: [DKD(warmup_epochs=2)],
    "feature": lambda: [FeatureDistillation("mse", "f1", "f1"), DKD(warmup_epochs=0)],
}
results = {}
for case, losses in CASES.items():
    with strategy.scope():
        teacher_width = 3 if case == "feature" else 5
        distiller = Distiller(
            student=model(1, 3), teacher=model(2, teacher_width),
            distillation_losses=losses(), student_loss_weight=0.5,
        )
        for adapter in distiller.adapters:  # The same initial adapter everywhere.
            adapter.set_weights(
                [rng.normal(scale=0.3, size=w.shape) if w.ndim > 1 else w for w in adapter.get_weights()]
            )
        distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), metrics=["accuracy"])
    history = distiller.fit(
        x, y, validation_data=(x, y), batch_size=8, epochs=2, shuffle=False, verbose=0
    )
    results[case] = {
        "history": history.history,
        "weights": [v.numpy().tolist() for v in distiller.trained_variables()],
    }
print("RESULTS " + json.dumps(results, default=float))
"""


def run(replicas):
    env = {
        **os.environ,
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.Popen(
        [sys.executable, "-c", RUN, str(replicas)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def runs():
    processes = {replicas: run(replicas) for replicas in (1, 2)}
    results = {}
    for replicas, process in processes.items():
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
        [line] = [row for row in stdout.splitlines() if row.startswith("RESULTS ")]
        results[replicas] = json.loads(line[len("RESULTS ") :])
    return results[1], results[2]


CASES = ["fitnets", "at", "dkd", "feature"]
REPORTED = ["loss", "student_loss", "distillation_loss", "val_loss", "val_distillation_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_two_replicas_report_the_losses_and_weights_of_one_device(runs, case):
    one, two = runs[0][case], runs[1][case]
    assert min(one["history"]["distillation_loss"]) > 0
    for key in REPORTED:
        np.testing.assert_allclose(
            two["history"][key], one["history"][key], rtol=1e-5, atol=1e-6, err_msg=key
        )
    assert len(one["weights"]) == len(two["weights"])
    for a, b in zip(one["weights"], two["weights"]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
