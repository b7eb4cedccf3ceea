"""The README's Python example runs as written, on a small generated teacher
and data set (only the data names it leaves to the reader are supplied)."""

import re
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example():
    text = README.read_text()
    section = text.split("## Distil in your own code", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_example_distils_and_saves_a_student(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    keras.utils.set_random_seed(0)
    teacher = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )
    teacher.save("teacher.keras")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (16, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, 16)
    train_ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    scope = {"train_ds": train_ds, "val_ds": train_ds.take(1)}

    exec(compile(readme_example(), str(README), "exec"), scope)

    history = scope["distiller"].history.history
    assert len(history["loss"]) == 20
    assert {"student_loss", "distillation_loss", "val_accuracy"} <= set(history)
    assert all(np.isfinite(history["loss"]))
    saved = keras.saving.load_model("student.keras")
    np.testing.assert_allclose(
        saved.predict(images, verbose=0), scope["student"].predict(images, verbose=0), atol=1e-6
    )
    # The teacher was frozen: the student alone was saved, with its own weights.
    assert saved.count_params() == scope["student"].count_params()
