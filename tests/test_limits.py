"""Upper limits of settings: every accepted value can run."""

import sys

import pytest

from kd_keras.config import RunConfig
from kd_keras.errors import ConfigError
from kd_keras.models.depth import MAX_DEPTH, stage_blocks


def test_depth_above_the_limit_is_refused_with_the_limit():
    assert stage_blocks(MAX_DEPTH) == ((33, 33, 33), False)
    with pytest.raises(ValueError, match=f"depth must be at most {MAX_DEPTH}.*got {MAX_DEPTH + 1}"):
        stage_blocks(MAX_DEPTH + 1)
    with pytest.raises(ConfigError, match=r"depth must be at most 200 \(.*\), got 1202"):
        RunConfig.from_preset("smoke", teacher_depth=1202)


@pytest.mark.slow
def test_deepest_accepted_teacher_trains_saves_and_loads_at_python_default_recursion_limit(
    tmp_path,
):
    import keras
    import numpy as np

    from kd_keras.distill.teacher import load_teacher
    from kd_keras.models.resnet import build_resnet
    from kd_keras.train.measure import save_model

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # Python's default (importing Keras may have raised it).
    try:
        model = build_resnet(MAX_DEPTH, width=1)
        model.compile(
            optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        model.fit(np.zeros((2, 32, 32, 3), "float32"), np.zeros(2, "int32"), verbose=0)
        save_model(model, tmp_path / "deep.keras")
        assert load_teacher(tmp_path / "deep.keras").count_params() == model.count_params()
    finally:
        sys.setrecursionlimit(limit)


@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({"temperature": 100.5}, "temperature must be in [0.01, 100]"),
        ({"temperature": 0.001}, "temperature must be in [0.01, 100]"),
        ({"student_width": 257}, "student_width must be at most 256"),
        ({"teacher_epochs": 1001}, "teacher_epochs must be at most 1000"),
        ({"warmup_epochs": 1001}, "warmup_epochs must be at most 1000"),
        ({"val_size": 49991}, "--val-size 49991 leaves no training image in class 'airplane'"),
        ({"val_size": 1000, "val_per_class": 101}, "--val-per-class 101 > the 100 validation"),
        ({"batch_size": 501}, "--batch-size 501 > the 500 training images (at most 500)"),
        ({"learning_rate": float("inf")}, "learning_rate must be a finite number"),
        ({"weight_decay": "0.1"}, "weight_decay must be a finite number, got '0.1'"),
        ({"data": 5}, "data must be a string, got 5"),
    ],
)
def test_values_that_would_crash_later_are_refused_up_front(fields, fragment):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_preset("smoke", **fields)
    assert fragment in str(info.value)


def test_largest_accepted_values_pass():
    config = RunConfig.from_preset(
        "smoke",
        temperature=100.0,
        val_size=49900,
        train_per_class=10,
        val_per_class=4990,
        test_per_class=1000,
        seed=2**31 - 2,
        teacher_depth=MAX_DEPTH,
        student_width=256,
    )
    assert config.temperature == 100.0 and config.val_size == 49900


def test_decoded_data_is_bounded_by_the_memory_this_process_may_use():
    import subprocess

    from kd_keras.data.source_checks import MAX_ARRAY_BYTES, MEMORY_SHARE, memory_budget

    assert 0 < memory_budget() <= MAX_ARRAY_BYTES
    limit = 2 << 30
    code = (
        "import resource\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n"
        "from kd_keras.data.source_checks import memory_budget\n"
        "print(memory_budget())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert int(done.stdout) == limit // MEMORY_SHARE, done.stderr[-300:]


def test_size_options_are_checked_by_flag_before_any_data_is_read():
    from kd_keras.data.sizes import resolve_sizes

    # A per-class number is "at most": unbalanced classes keep what they have.
    assert resolve_sizes({"train_per_class": 40}, [50, 20], [5, 5]) == {
        "val_size": 7,
        "train_per_class": 40,
        "val_per_class": 4,
        "test_per_class": 5,
    }
    with pytest.raises(ConfigError, match=r"class\(es\) 'b' have no training images"):
        resolve_sizes({}, [5, 0], [1, 1], ["a", "b"])
    with pytest.raises(ConfigError, match=r"--val-size all with --train-per-class 20 leaves no"):
        resolve_sizes({"val_size": "all", "train_per_class": 20}, [50, 20], [5, 5])
