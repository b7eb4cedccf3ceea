"""The search on the user's own data: classes, image size and split sizes
come from the data (or the --apply-to run), not from CIFAR-10.

Tiny generated data (3 classes, 20x20 images in a `.npz` file), tiny models,
one epoch."""

import json

import keras
import numpy as np
import pytest

from kd_keras.config import RunConfig
from tuning.cli import _config_from_args, get_args, main

TINY = dict(
    teacher_depth=8,
    teacher_width=4,
    student_depth=8,
    student_width=4,
    teacher_epochs=1,
    student_epochs=1,
    batch_size=30,
    verbose=0,
    threads=1,
)


def three_class_npz(path, n=150, size=20):
    """3 classes, 20x20 RGB; class c brighter in channel c."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = rng.integers(0, 120, size=(n, size, size, 3), dtype=np.uint8)
    for c in range(3):
        x[y == c, :, :, c] += np.uint8(100)
    np.savez(
        path,
        x_train=x[:120],
        y_train=y[:120],
        x_test=x[120:],
        y_test=y[120:],
        class_names=np.array(["cat", "dog", "emu"]),
    )
    return path


def tiny_run_config(**fields):
    base = RunConfig.from_preset("smoke").to_dict()
    base.update(train_per_class=None, val_per_class=None, test_per_class=None, **TINY)
    base.update(fields)
    return RunConfig.from_dict(base)


@pytest.fixture
def npz(tmp_path):
    return three_class_npz(tmp_path / "three.npz")


def test_split_sizes_are_checked_against_the_data_not_cifar(npz, tmp_path, capsys):
    # 30 validation images of 3 classes: 10 a class. As if CIFAR-10 (10
    # classes), 10 a class was refused ("at most 3").
    argv = ["--data", str(npz), "--out", str(tmp_path / "s"), "--preset", "smoke"]
    argv += ["--train-per-class", "20"]
    config = _config_from_args(get_args(argv + ["--val-size", "30", "--val-per-class", "10"]))
    assert config.data == str(npz) and config.val_per_class == 10
    # 11 is more than the data has: refused in one line, before any trial.
    teacher = tmp_path / "t.keras"
    keras.Sequential(
        [keras.Input((20, 20, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)]
    ).save(teacher)
    code = main(
        argv + ["--teacher", str(teacher), "--val-size", "30", "--val-per-class", "11", "--quiet"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "val_per_class 11 > 10" in err and "at most 10" in err
    assert not (tmp_path / "s" / "trials.csv").exists()


def test_apply_to_a_run_on_own_data_uses_its_classes_and_image_size(npz, tmp_path, capsys):
    from kd_keras.train.pipeline import run_pipeline

    run = tmp_path / "run"
    # image_size 16: the run resizes the 20x20 images; so must the search.
    run_pipeline(tiny_run_config(data=str(npz), val_size=30, image_size=16), run)
    search = tmp_path / "search"
    argv = ["--apply-to", str(run), "--out", str(search), "--trials", "1", "--epochs", "1"]
    assert main(argv + ["--quiet", "--val-per-class", "10"]) == 0
    out = capsys.readouterr().out
    assert "search data: 3 classes, 16x16x3 images: 90 training, 30 validation" in out
    saved = json.loads((search / "search.json").read_text())
    assert saved["data"] == {
        "classes": ["cat", "dog", "emu"],
        "image_shape": [16, 16, 3],
        "train_images": 90,
        "val_images": 30,
    }
    results = json.loads((run / "results.json").read_text())
    assert results["rows"][-1]["stage"] == "student_distilled_tuned"
    tuned = keras.saving.load_model(run / "models" / "student_distilled_tuned.keras")
    assert tuple(tuned.input_shape) == (None, 16, 16, 3) and tuned.output_shape == (None, 3)
    # Resuming with other data (here: another image size) is refused.
    code = main(argv + ["--quiet", "--val-per-class", "10", "--image-size", "12"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot resume" in err and "image_size" in err
