"""`Distiller` under `tf.distribute.MirroredStrategy` on two logical CPU
devices against one device: the same weights and the same reported losses.

TensorFlow allows one strategy per process, and logical devices must be
set before it starts, so each run is a fresh `python -c` process that
prints its results as JSON.
"""

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

strategy = (
    tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
    if replicas > 1 else tf.distribute.get_strategy()
)
assert strategy.num_replicas_in_sync == replicas


def model(seed, l2):
    inputs = keras.Input((6,))
    regulariser = keras.regularizers.L2(l2) if l2 else None
    hidden = keras.layers.Dense(5, activation="relu", kernel_regularizer=regulariser)(inputs)
    outputs = keras.layers.Dense(4, kernel_regularizer=regulariser)(hidden)
    built = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)  # The same weights in every process.
    built.set_weights([rng.normal(scale=0.5, size=w.shape) for w in built.get_weights()])
    return built


rng = np.random.default_rng(0)
x = rng.normal(size=(16, 6)).astype("float32")
y = (np.arange(16) % 4).astype("int32")
w = np.linspace(0.25, 2.0, 16).astype("float32")
results = {}
CASES = (
    ("plain", 0.0, False, False),
    ("l2", 0.05, False, False),
    ("weighted", 0.0, True, False),
    ("cached", 0.0, True, True),  # Weighted, teacher logits precomputed in x.
)
for case, l2, weighted, cached in CASES:
    with strategy.scope():
        teacher = model(2, 0.0)
        distiller = Distiller(student=model(1, l2), teacher=teacher)
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.2, momentum=0.9),
            metrics=["accuracy"], alpha=0.3, temperature=4.0,
        )
    inputs = {"images": x, "teacher_logits": np.asarray(teacher(x))} if cached else x
    history = distiller.fit(
        inputs, y, sample_weight=w if weighted else None, validation_data=(inputs, y),
        batch_size=8, epochs=2, shuffle=False, verbose=0,
    )
    results[case] = {
        "history": history.history,
        "evaluate": distiller.evaluate(inputs, y, batch_size=8, return_dict=True, verbose=0),
        "weights": [v.tolist() for v in distiller.student.get_weights()],
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


CASES = ["plain", "l2", "weighted", "cached"]
REPORTED = [
    "loss",
    "student_loss",
    "distillation_loss",
    "accuracy",
    "val_loss",
    "val_student_loss",
    "val_distillation_loss",
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_two_replicas_report_the_losses_of_one_device(runs, case):
    one, two = runs[0][case], runs[1][case]
    for key in REPORTED:
        np.testing.assert_allclose(
            two["history"][key], one["history"][key], rtol=1e-5, atol=1e-6, err_msg=key
        )
    for key, value in one["evaluate"].items():
        assert two["evaluate"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_two_replicas_train_the_weights_of_one_device(runs, case):
    one, two = runs[0][case], runs[1][case]
    for a, b in zip(one["weights"], two["weights"]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_precomputed_teacher_logits_train_as_the_live_teacher(runs):
    for result in runs:
        np.testing.assert_allclose(
            result["cached"]["history"]["loss"], result["weighted"]["history"]["loss"], rtol=1e-5
        )


@pytest.mark.slow
def test_reported_loss_includes_the_regularisation_once(runs):
    history = runs[0]["l2"]["history"]
    blend = 0.3 * np.array(history["student_loss"]) + 0.7 * np.array(history["distillation_loss"])
    # The L2 term is positive and the same on one device and on two.
    assert np.all(np.array(history["loss"]) > blend + 1e-3)
    np.testing.assert_allclose(runs[1]["l2"]["history"]["loss"], history["loss"], rtol=1e-5)


AGREEMENT = r"""
import tensorflow as tf
[cpu] = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from kd_keras.validation import PRECISIONS, TEACHER_PRECISIONS
from kd_keras.errors import DistributeError
from kd_keras.train.distribute import check_agreement

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
choices = {"precision": PRECISIONS, "teacher_precision": TEACHER_PRECISIONS}
mine = {"precision": "float32", "teacher_precision": "bfloat16"}
check_agreement(strategy, mine, choices, replica_values=lambda i: mine)
print("same: ok")
other = {"precision": "mixed_bfloat16", "teacher_precision": "bfloat16"}
try:
    check_agreement(strategy, mine, choices,
                    replica_values=lambda i: mine if i == 0 else other)
except DistributeError as error:
    print("differ:", error)
"""


@pytest.mark.slow
def test_workers_that_resolve_precision_differently_are_refused():
    out = subprocess.run(
        [sys.executable, "-c", AGREEMENT],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "same: ok"
    assert lines[1] == (
        "differ: the workers resolved precision differently (this worker: "
        "precision=float32); their machines differ, so give it explicitly on every "
        "worker, e.g. --precision float32"
    )
