"""Speed options (precision, teacher precision, steps per execution,
threads), the run-time estimate and the throughput benchmark. No timing
assertions: these check behaviour, not speed."""

import json
import math
import time
import warnings

import keras
import numpy as np
import pytest
from conftest import tiny_config

from kd_keras import Distiller, RunConfig, build_resnet
from kd_keras.cli import main as cli_main
from kd_keras.distill.teacher import teacher_for_inference
from kd_keras.errors import ConfigError
from kd_keras.hardware import Machine
from kd_keras.train.estimate import estimate_run_seconds
from kd_keras.train.pipeline import Pipeline
from kd_keras.train.speed import (
    apply_threading,
    effective_steps_per_execution,
    precision_scope,
    resolve_run_precisions,
)

KEYS = {"loss", "student_loss", "distillation_loss", "accuracy"}
IMAGES = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3)).astype("float32")
LABELS = np.arange(32, dtype="int32") % 10


def _tiny_distiller(config, steps_per_epoch=4):
    """A tiny Distiller set up the way `Pipeline` sets one up for `config`
    ("auto" resolved as on a CPU without native bfloat16: float32)."""
    config, _ = resolve_run_precisions(config, Machine("no-bf16 CPU", frozenset({"avx2"})))
    keras.utils.set_random_seed(0)
    with precision_scope(config.precision):
        student = build_resnet(8, width=4)
    teacher = teacher_for_inference(build_resnet(8, width=4), config.teacher_precision)
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        metrics=["accuracy"],
        steps_per_execution=effective_steps_per_execution(
            config.steps_per_execution, steps_per_epoch
        ),
    )
    return distiller


@pytest.mark.parametrize(
    "options",
    [
        {"precision": "mixed_bfloat16"},
        {"teacher_precision": "bfloat16"},
        {"precision": "mixed_float16"},
        {"teacher_precision": "float16"},
        {"steps_per_execution": 2},
    ],
    ids=[
        "mixed_bfloat16",
        "teacher_bfloat16",
        "mixed_float16",
        "teacher_float16",
        "steps_per_execution_2",
    ],
)
def test_each_speed_option_trains_to_finite_losses_with_the_same_keys(options):
    config = RunConfig(**options).validate()
    distiller = _tiny_distiller(config)
    history = distiller.fit(IMAGES, LABELS, batch_size=8, epochs=1, verbose=0)
    assert set(history.history) == KEYS
    assert all(math.isfinite(values[-1]) for values in history.history.values())
    # 32 images / 8 = 4 steps, whatever the steps per execution.
    assert int(distiller.optimizer.iterations.numpy()) == 4
    assert distiller.student(IMAGES[:2]).dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"


def test_mixed_bfloat16_student_computes_in_bfloat16_with_float32_logits_and_loss():
    with precision_scope("mixed_bfloat16"):
        student = build_resnet(8, width=4)
    assert student.get_layer("stem_conv").compute_dtype == "bfloat16"
    assert student.get_layer("stem_conv").variable_dtype == "float32"
    assert student(IMAGES[:4]).dtype == "float32"

    reference = Distiller(student=build_resnet(8, width=4), teacher=build_resnet(8, width=4))
    mixed = Distiller(student=student, teacher=build_resnet(8, width=4))
    for distiller in (reference, mixed):
        distiller.compile(alpha=0.3, temperature=4.0)
    rng = np.random.default_rng(1)
    teacher_logits = rng.normal(size=(6, 10)).astype("float32") * 3
    student_logits = rng.normal(size=(6, 10)).astype("float32") * 3
    labels = np.arange(6) % 10
    expected = [float(v) for v in reference.compute_losses(labels, teacher_logits, student_logits)]
    got = [float(v) for v in mixed.compute_losses(labels, teacher_logits, student_logits)]
    assert got == pytest.approx(expected, abs=1e-6)
    # And both are the hand-computed float64 value of T**2 * KL.
    p = np.exp(teacher_logits / 4.0) / np.exp(teacher_logits / 4.0).sum(-1, keepdims=True)
    q = np.exp(student_logits / 4.0) / np.exp(student_logits / 4.0).sum(-1, keepdims=True)
    kl = (p * np.log(p / q)).sum(-1).mean() * 16.0
    assert got[2] == pytest.approx(kl, rel=1e-5)


def test_bfloat16_teacher_is_a_frozen_copy_with_the_same_weights():
    teacher = build_resnet(8, width=4)
    copy = teacher_for_inference(teacher, "bfloat16", fold=False)
    assert teacher_for_inference(teacher, "float32", fold=False) is teacher
    assert copy is not teacher and not copy.trainable
    assert copy.get_layer("stem_conv").compute_dtype == "bfloat16"
    assert copy.get_layer("logits").compute_dtype == "float32"
    assert teacher.get_layer("stem_conv").compute_dtype == "float32"  # Untouched.
    for mine, theirs in zip(teacher.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    logits = copy(IMAGES[:4], training=False)
    assert logits.dtype == "float32"
    np.testing.assert_allclose(logits, teacher(IMAGES[:4], training=False), atol=0.1)
    # float16 is a teacher precision too (GPUs before compute capability 8.0).
    half = teacher_for_inference(teacher, "float16")
    assert half.get_layer("stem_conv").compute_dtype == "float16"
    np.testing.assert_allclose(half(IMAGES[:4], training=False), logits, atol=0.1)
    with pytest.raises(ValueError, match="'int8'"):
        teacher_for_inference(teacher, "int8")
    with pytest.raises(ValueError, match="'auto'.*resolve"):
        teacher_for_inference(teacher, "auto")


@pytest.mark.parametrize("precision, atol", [("float32", 1e-4), ("bfloat16", 0.1)])
def test_teacher_for_inference_folds_batch_norm_by_default(precision, atol):
    teacher = build_resnet(8, width=4)
    inference = teacher_for_inference(teacher, precision)
    layer_types = {type(layer).__name__ for layer in inference.layers}
    assert not any("BatchNormalization" in name for name in layer_types)
    assert not inference.trainable
    np.testing.assert_allclose(
        inference(IMAGES[:4], training=False), teacher(IMAGES[:4], training=False), atol=atol
    )


def test_precision_scope_restores_the_global_policy_even_on_error():
    before = keras.config.dtype_policy().name
    with precision_scope("mixed_bfloat16"):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == before
    with pytest.raises(RuntimeError):
        with precision_scope("mixed_bfloat16"):
            raise RuntimeError("boom")
    assert keras.config.dtype_policy().name == before
    with precision_scope(None):
        assert keras.config.dtype_policy().name == before


def test_pipeline_builds_and_compiles_with_the_speed_options(tmp_path):
    config = RunConfig(
        student_depth=8,
        student_width=4,
        batch_size=1,
        precision="mixed_bfloat16",
        steps_per_execution=4,
    )
    pipeline = Pipeline(config, tmp_path, progress=None)
    student = pipeline.build_student()
    assert student.get_layer("stem_conv").compute_dtype == "bfloat16"
    assert student.output.dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"
    # 79 steps per epoch (the quick preset's) admit only 1 or 79.
    pipeline.splits = {"train": (None, np.zeros(79))}
    assert pipeline.compile_options() == {"steps_per_execution": 1}
    pipeline.splits = {"train": (None, np.zeros(80))}
    assert pipeline.compile_options() == {"steps_per_execution": 4}


@pytest.mark.parametrize(
    "requested, steps_per_epoch, expected",
    [(1, 79, 1), (4, 79, 1), (4, 80, 4), (3, 10, 2), (100, 10, 10), (79, 79, 79)],
)
def test_steps_per_execution_divides_the_epoch(requested, steps_per_epoch, expected):
    assert effective_steps_per_execution(requested, steps_per_epoch) == expected


@pytest.mark.parametrize(
    "field, value",
    [
        ("precision", "float16"),
        ("precision", "bf16"),
        ("teacher_precision", "mixed_bfloat16"),
        ("steps_per_execution", 0),
        ("steps_per_execution", 2.5),
        ("steps_per_execution", True),
        ("threads", 0),
        ("threads", "2"),
    ],
)
def test_invalid_speed_options_raise_config_error_naming_the_value(field, value):
    with pytest.raises(ConfigError) as error:
        RunConfig(**{field: value}).validate()
    assert field in str(error.value) and repr(value) in str(error.value)


def test_invalid_precision_flag_exits_2_with_the_value(capsys):
    assert cli_main(["run", "--preset", "smoke", "--precision", "fp16", "--dry-run"]) == 2
    assert "'fp16'" in capsys.readouterr().err


def test_threads_and_steps_per_execution_do_not_block_a_resume():
    saved = RunConfig()
    assert saved.result_differences(RunConfig(threads=2, steps_per_execution=4)) == []
    assert saved.result_differences(RunConfig(precision="float32")) == ["precision"]


def test_threads_cannot_change_once_tensorflow_runs():
    import tensorflow as tf

    tf.constant(1.0) + 1.0  # The runtime has started.
    assert apply_threading(None) is False
    current = tf.config.threading.get_intra_op_parallelism_threads()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert apply_threading(current + 1) is False
    assert any("threads" in str(w.message) for w in caught)
    assert tf.config.threading.get_intra_op_parallelism_threads() == current


def test_estimate_covers_every_stage_with_positive_times():
    estimate = estimate_run_seconds(RunConfig.from_preset("smoke"), calibration_steps=1)
    assert set(estimate["stages"]) == {"teacher", "student_baseline", "student_distilled"}
    for stage in estimate["stages"].values():
        assert stage["epochs"] == 4
        assert stage["epoch_seconds"] > 0 and stage["total_seconds"] > 0
    assert estimate["total_seconds"] > 0
    assert estimate["steps_per_epoch"] == 10  # 500 images, batch 50.
    calibration = estimate["calibration"]
    assert calibration["student_train_step_s"] > 0
    assert calibration["teacher_forward_batch_s"] > 0
    # The arithmetic: 10 steps an epoch and 200 validation images = 4 batches
    # of 50 (the measured times are rounded to 0.1 ms, the epochs to 10 ms).
    c, stages = calibration, estimate["stages"]
    assert estimate["val_images"] == 200
    teacher_val, student_val = 4 * c["teacher_forward_batch_s"], 4 * c["student_forward_batch_s"]
    expected = {
        "teacher": 10 * c["teacher_train_step_s"] + teacher_val,
        "student_baseline": 10 * c["student_train_step_s"] + student_val,
        # The teacher's validation logits are computed once a stage.
        "student_distilled": 10 * (c["student_train_step_s"] + c["teacher_forward_batch_s"])
        + student_val,
    }
    for stage, seconds in expected.items():
        assert stages[stage]["epoch_seconds"] == pytest.approx(seconds, abs=0.01)
        # Four epochs plus the tracing of the stage's graphs, once.
        assert stages[stage]["total_seconds"] >= 4 * stages[stage]["epoch_seconds"] - 0.1
    assert stages["student_distilled"]["total_seconds"] >= (
        4 * stages["student_distilled"]["epoch_seconds"] + teacher_val - 0.1
    )
    assert (
        stages["student_distilled"]["epoch_seconds"] > stages["student_baseline"]["epoch_seconds"]
    )
    assert estimate["total_seconds"] == pytest.approx(
        sum(stage["total_seconds"] for stage in stages.values()), abs=0.11
    )


def test_torch_reference_has_the_keras_models_trainable_parameters():
    pytest.importorskip("torch")
    from benchmarks import torch_resnet

    for depth in (8, 15):
        keras_model = build_resnet(depth, width=4)
        trainable = sum(int(np.prod(w.shape)) for w in keras_model.trainable_weights)
        torch_model = torch_resnet.build_resnet(depth, width=4)
        assert sum(p.numel() for p in torch_model.parameters()) == trainable


@pytest.mark.slow
def test_benchmark_writes_json_and_markdown_with_one_row_per_case(tmp_path):
    from benchmarks.throughput import main as bench_main

    cases = ["kd_distiller_threads", "input_pipeline", "student_train_pipeline"]
    args = [
        "--steps",
        "2",
        "--repeats",
        "2",
        "--warmup-steps",
        "1",
        "--batch-size",
        "8",
        "--teacher-depth",
        "8",
        "--student-depth",
        "8",
        "--teacher-width",
        "4",
        "--student-width",
        "4",
        "--cases",
        ",".join(cases),
        "--out",
        str(tmp_path),
    ]
    assert bench_main(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["cases"]) == cases
    assert results["machine"]["cpu_count"] >= 1 and results["machine"]["tensorflow"]
    for case in results["cases"].values():
        assert case["status"] == "ok"
        assert case["median_images_per_s"] > 0 and case["peak_rss_mib"] > 0
        assert len(case["images_per_s"]) == 2
    # The threads case set its threads in a fresh process and trained the
    # Distiller to finite losses with the usual keys.
    threaded = results["cases"]["kd_distiller_threads"]
    assert threaded["options"]["threads"] >= 1
    assert set(threaded["logs"]) == KEYS
    assert all(math.isfinite(v) for v in threaded["logs"].values())
    # The pipeline case trained on a run's input pipeline, not the fixed batch.
    fed = results["cases"]["student_train_pipeline"]
    assert fed["dataset_images"] == 10000 and "dataset_images" not in threaded
    assert math.isfinite(fed["logs"]["loss"])
    rows = [
        line
        for line in (tmp_path / "results.md").read_text().splitlines()
        if line.startswith("| `")
    ]
    # One table per precision; the case without a model (the input
    # pipeline alone) comes last.
    assert [row.split("`")[1] for row in rows] == [
        "kd_distiller_threads",
        "student_train_pipeline",
        "input_pipeline",
    ]


def test_benchmark_rounds_pool_every_repeat():
    from benchmarks.throughput_report import merge_rounds

    def result(rates, peak):
        return {
            "case": "c",
            "kind": "distill",
            "status": "ok",
            "batch_size": 100,
            "images_per_s": rates,
            "median_images_per_s": float(np.median(rates)),
            "peak_rss_mib": peak,
            "rss_after_import_mib": 10.0,
            "wall_s": 5.0,
        }

    merged = merge_rounds([result([100.0, 300.0], 50.0), result([200.0, 400.0], 70.0)])
    assert merged["images_per_s"] == [100.0, 300.0, 200.0, 400.0]
    assert merged["median_images_per_s"] == 250.0
    assert (merged["min_images_per_s"], merged["max_images_per_s"]) == (100.0, 400.0)
    assert merged["step_ms"] == 400.0 and merged["peak_rss_mib"] == 70.0
    assert merged["rounds"] == 2 and merged["wall_s"] == 10.0
    failed = {"case": "c", "kind": "distill", "status": "failed", "error": "boom"}
    assert merge_rounds([result([1.0], 1.0), failed])["status"] == "failed"


# --budget: the sizing is a pure function of a (fabricated) calibration.
STEP = {
    "teacher_train_step_s": 0.1,
    "student_train_step_s": 0.05,
    "teacher_forward_batch_s": 0.03,
    "student_forward_batch_s": 0.01,
}
NO_TRACE = {
    "teacher_train_trace_s": 0.0,
    "student_train_trace_s": 0.0,
    "teacher_forward_trace_s": 0.0,
}
SIZES = {
    "train_images": 10000,
    "val_images": 1000,
    "test_images": 1000,
    "num_classes": 10,
    "batch_size": 100,
}


def _run_seconds(images, teacher_epochs, student_epochs, step=STEP, teacher=True):
    """The run's seconds by hand: per epoch, steps x step time + 10
    validation batches + 1 s; evaluation 20 batches a model; 15 s once."""
    steps = -(-images // 100)
    teacher_epoch = steps * step["teacher_train_step_s"] + 10 * 0.03 + 1
    baseline_epoch = steps * 0.05 + 10 * 0.01 + 1
    distilled_epoch = steps * (0.05 + 0.03) + 10 * (0.01 + 0.03) + 1
    evaluation = 20 * ((0.03 if teacher else 0.0) + 2 * 0.01)
    return (
        teacher_epochs * teacher_epoch
        + student_epochs * (baseline_epoch + distilled_epoch)
        + evaluation
        + 15
    )


def test_budget_chooses_the_most_epochs_that_fit():
    from kd_keras.train.budget import size_to_budget

    sizes = size_to_budget(600, STEP, NO_TRACE, teacher_epochs=20, student_epochs=20, **SIZES)
    # Per epoch 11.3 + 6.1 + 9.4 = 26.8 s; 1 s evaluation and 15 s once:
    # 21 epochs = 579.8 s fit in 600, 22 = 606.6 s do not. The 20.2 s left
    # hold one more teacher epoch (11.3 s, 591.1 s in all), not two.
    assert (sizes["teacher_epochs"], sizes["student_epochs"]) == (22, 21)
    assert sizes["train_images"] == 10000 and sizes["train_per_class"] is None
    assert sizes["predicted_seconds"] == pytest.approx(_run_seconds(10000, 22, 21), abs=0.2)
    assert _run_seconds(10000, 22, 22) > 600 >= sizes["predicted_seconds"]
    assert _run_seconds(10000, 23, 21) > 600
    assert sizes["stages"]["teacher"]["epoch_seconds"] == pytest.approx(11.3)
    assert sizes["stages"]["student_distilled"]["epoch_seconds"] == pytest.approx(9.4)


def test_budget_counts_reused_teacher_validation_logits_once_a_stage():
    from kd_keras.train.budget import size_to_budget

    sizes = size_to_budget(
        600,
        STEP,
        NO_TRACE,
        teacher_epochs=20,
        student_epochs=20,
        teacher_logits_reused=True,
        **SIZES,
    )
    # The distilled epoch loses its 10 teacher validation batches (9.4 - 0.3
    # = 9.1 s); the stage pays them once (0.3 s): 26.5 s an epoch, so 22
    # epochs = 599.6 s now fit in 600.
    distilled = sizes["stages"]["student_distilled"]
    assert distilled["epoch_seconds"] == pytest.approx(9.1)
    assert distilled["total_seconds"] == pytest.approx(22 * 9.1 + 0.3)
    assert (sizes["teacher_epochs"], sizes["student_epochs"]) == (22, 22)
    assert sizes["predicted_seconds"] == pytest.approx(
        _run_seconds(10000, 22, 22) - 22 * 0.3 + 0.3, abs=0.2
    )


def test_budget_keeps_the_presets_teacher_to_student_ratio_and_counts_spent_time():
    from kd_keras.train.budget import size_to_budget

    sizes = size_to_budget(
        1200, STEP, NO_TRACE, teacher_epochs=40, student_epochs=20, spent_seconds=100, **SIZES
    )
    epochs, teacher = sizes["student_epochs"], sizes["teacher_epochs"]
    assert 2 * epochs <= teacher < 2 * epochs + 2  # The ratio, then what is left.
    assert 100 + _run_seconds(10000, teacher, epochs) <= 1200
    assert 100 + _run_seconds(10000, 2 * epochs + 2, epochs + 1) > 1200
    assert 100 + _run_seconds(10000, teacher + 1, epochs) > 1200


def test_budget_fills_what_the_students_leave_with_teacher_epochs():
    from kd_keras.train.budget import size_to_budget

    # A fast teacher step: per epoch 1.6 + 6.1 + 9.4 = 17.1 s, 16 s once;
    # 34 epochs = 597.4 s fit in 610, 35 = 614.5 s do not. The 12.6 s left
    # hold 7 more teacher epochs of 1.6 s (608.6 s), not 8 (610.2 s).
    step = {**STEP, "teacher_train_step_s": 0.003}
    sizes = size_to_budget(610, step, NO_TRACE, teacher_epochs=20, student_epochs=20, **SIZES)
    assert (sizes["teacher_epochs"], sizes["student_epochs"]) == (41, 34)
    assert sizes["stages"]["student_baseline"]["epochs"] == 34
    assert sizes["stages"]["student_distilled"]["epochs"] == 34
    assert sizes["predicted_seconds"] == pytest.approx(
        _run_seconds(10000, 41, 34, step=step), abs=0.2
    )
    assert _run_seconds(10000, 41, 34, step=step) <= 610 < _run_seconds(10000, 42, 34, step=step)
    assert _run_seconds(10000, 35, 35, step=step) > 610


def test_a_faster_machine_gets_more_epochs_in_the_same_budget():
    from kd_keras.train.budget import size_to_budget

    slow = size_to_budget(600, STEP, NO_TRACE, teacher_epochs=20, student_epochs=20, **SIZES)
    fast_step = {key: value / 2 for key, value in STEP.items()}
    fast = size_to_budget(600, fast_step, NO_TRACE, teacher_epochs=20, student_epochs=20, **SIZES)
    assert fast["student_epochs"] > slow["student_epochs"]


def test_below_the_epoch_floor_the_training_images_shrink():
    from kd_keras.train.budget import MIN_BUDGET_EPOCHS, size_to_budget

    # 5 epochs on all 10,000 images need 5 x 26.8 + 16 = 150 s; 120 s do not hold them.
    sizes = size_to_budget(120, STEP, NO_TRACE, teacher_epochs=20, student_epochs=20, **SIZES)
    assert sizes["student_epochs"] == sizes["teacher_epochs"] == MIN_BUDGET_EPOCHS
    per_class = sizes["train_per_class"]
    assert 10 <= per_class < 1000 and sizes["train_images"] == 10 * per_class
    assert _run_seconds(10 * per_class, 5, 5) <= 120 < _run_seconds(10 * (per_class + 1), 5, 5)


def test_a_budget_too_short_for_the_floor_is_refused_with_the_time_needed():
    from kd_keras.train.budget import size_to_budget

    with pytest.raises(ConfigError, match=r"--budget of 30s is too short.*need about \d+s"):
        size_to_budget(30, STEP, NO_TRACE, teacher_epochs=20, student_epochs=20, **SIZES)


def test_a_reused_teacher_is_not_trained_or_budgeted():
    from kd_keras.train.budget import size_to_budget

    sizes = size_to_budget(600, STEP, NO_TRACE, teacher_epochs=0, student_epochs=20, **SIZES)
    assert sizes["teacher_epochs"] == 0 and sizes["stages"]["teacher"]["total_seconds"] == 0
    epochs = sizes["student_epochs"]
    assert _run_seconds(10000, 0, epochs, teacher=False) <= 600
    assert _run_seconds(10000, 0, epochs + 1, teacher=False) > 600


@pytest.mark.parametrize(
    "text, seconds", [("90s", 90), ("10m", 600), ("1h", 3600), ("1h30m", 5400), ("2.5m", 150)]
)
def test_parse_budget(text, seconds):
    from kd_keras.validation import parse_budget

    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["10", "10x", "m", "1h1h", "30m1h", "", "5s", "8d"])
def test_bad_budget_exits_2_naming_the_flag(text, capsys):
    assert cli_main(["run", "--preset", "smoke", "--budget", text, "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert "--budget" in error and len(error.strip().splitlines()) == 1


def test_budget_on_resume_is_refused_and_the_saved_run_untouched(tmp_path, capsys):
    saved = RunConfig.from_preset("smoke", budget="10m", student_epochs=7)
    (tmp_path / "config.json").write_text(saved.to_json())
    before = (tmp_path / "config.json").read_text()
    assert cli_main(["run", "--resume", "--out", str(tmp_path), "--budget", "20m"]) == 2
    assert "drop --budget to resume" in capsys.readouterr().err
    assert (tmp_path / "config.json").read_text() == before


def test_plan_budget_sizes_the_config_it_returns():
    from kd_keras.train.budget import format_budget_plan, plan_budget

    config = RunConfig.from_preset("smoke", budget="3m")
    sized, plan = plan_budget(config, calibration_steps=1)
    assert sized.budget == "3m" and sized.is_resolved()
    assert (sized.teacher_epochs, sized.student_epochs) == (
        plan["teacher_epochs"],
        plan["student_epochs"],
    )
    # smoke: the teacher at least the students' epochs (equal in the preset,
    # then what is left), the students at least the floor (its 4 epochs).
    assert sized.teacher_epochs >= sized.student_epochs >= 4
    assert sized.train_per_class == (plan["train_per_class"] or 50)
    assert plan["predicted_seconds"] <= 180
    text = format_budget_plan(plan)
    assert text.startswith("Budget 3m (3:00)")
    stage_lines = text.splitlines()[1:]
    assert [line.split()[0] for line in stage_lines] == [
        "teacher",
        "student_baseline",
        "student_distilled",
    ]
    assert f"{sized.teacher_epochs} epochs" in stage_lines[0]
    assert all(f"{sized.student_epochs} epochs" in line for line in stage_lines[1:])


def test_budget_with_explicit_epochs_is_refused(capsys):
    assert cli_main(["run", "--preset", "smoke", "--budget", "10m", "--epochs", "3"]) == 2
    error = capsys.readouterr().err
    assert "--budget chooses the epochs; drop --epochs" in error


def test_budget_under_multi_worker_is_refused_before_calibrating(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--preset", "smoke", "--budget", "10m", "--strategy", "multi_worker"]
    assert cli_main(argv + ["--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "--strategy multi_worker would plan its own epochs" in error
    assert "--teacher-epochs and --student-epochs" in error
    assert not out.exists()


def test_budget_checks_the_folder_and_the_data_before_calibrating(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert cli_main(["run", "--preset", "smoke", "--budget", "10m", "--out", str(taken)]) == 2
    assert (taken / "notes.txt").read_text() == "mine" and len(list(taken.iterdir())) == 1
    missing = tmp_path / "missing.tar.gz"
    argv = ["run", "--preset", "smoke", "--budget", "10m", "--data", str(missing)]
    assert cli_main(argv + ["--out", str(tmp_path / "new")]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_budget_dry_run_prints_the_sized_config_and_the_plan(monkeypatch, capsys):
    from kd_keras.train import budget

    # This test process has run for a while; a real run's process starts with it.
    monkeypatch.setattr(budget, "_process_seconds", lambda: 0.0)
    assert cli_main(["run", "--preset", "smoke", "--budget", "1h", "--dry-run"]) == 0
    captured = capsys.readouterr()
    config, _ = json.JSONDecoder().raw_decode(captured.out)
    assert config["budget"] == "1h" and config["precision"] == "float32"
    assert config["teacher_epochs"] >= config["student_epochs"] > 4  # More than smoke's 4.
    assert config["train_per_class"] == 50  # Not reduced: the epochs fit.
    plan = [line for line in captured.err.splitlines() if "epochs x" in line]
    assert [line.split()[0] for line in plan] == [
        "teacher",
        "student_baseline",
        "student_distilled",
    ]
    assert f"{config['teacher_epochs']} epochs x" in plan[0]
    assert all(f"{config['student_epochs']} epochs x" in line for line in plan[1:])


def _plan(budget_seconds=600, **fields):
    """`size_to_budget`'s plan for the fabricated calibration, as `plan_budget`
    saves it."""
    from kd_keras.train.budget import size_to_budget

    sizes = size_to_budget(
        budget_seconds, STEP, NO_TRACE, teacher_epochs=20, student_epochs=20, **SIZES
    )
    return {"budget_seconds": budget_seconds, "started_unix": 0.0, **sizes, **fields}


def test_replan_gives_the_students_what_a_fast_teacher_stage_left():
    from kd_keras.train.budget import replan_students

    plan = _plan()
    assert (plan["teacher_epochs"], plan["student_epochs"]) == (22, 21)
    # Planned teacher stage: 22 x 11.3 s + 20 batches x 0.03 s = 249.2 s; it
    # took 0.8 of that. 230 s in, 600 - 230 - 5 = 365 s are left; a student
    # epoch pair costs (6.1 + 9.4) x 0.8 = 12.4 s, their evaluation 0.32 s:
    # 29 epochs = 359.92 s fit, 30 = 372.32 s do not.
    replan = replan_students(plan, teacher_seconds=0.8 * 249.2, elapsed_seconds=230)
    assert replan["teacher_predicted_seconds"] == pytest.approx(249.2)
    assert replan["speed"] == pytest.approx(0.8)
    assert (replan["planned_student_epochs"], replan["student_epochs"]) == (21, 29)
    assert replan["predicted_seconds"] == pytest.approx(230 + 29 * 12.4 + 0.32 + 5, abs=0.1)
    assert replan["over_budget_seconds"] == 0


def test_replan_takes_epochs_from_the_students_after_a_slow_teacher_stage():
    from kd_keras.train.budget import format_replan, replan_students

    # 1.25x the plan: 600 - 340 - 5 = 255 s left, 19.375 s a pair, 0.5 s
    # evaluation: 13 epochs (252.4 s), not 14 (271.75 s).
    replan = replan_students(_plan(), teacher_seconds=1.25 * 249.2, elapsed_seconds=340)
    assert replan["student_epochs"] == 13
    line = format_replan(replan)
    assert "students 13 epochs each (planned 21)" in line and "1.25x" in line


def test_replan_never_goes_below_the_floor_or_the_warmup():
    from kd_keras.train.budget import MIN_BUDGET_EPOCHS, format_replan, replan_students

    plan = _plan()
    spent = {"teacher_seconds": 249.2, "elapsed_seconds": 590}  # 5 s left: not one epoch.
    replan = replan_students(plan, **spent)
    assert replan["student_epochs"] == MIN_BUDGET_EPOCHS
    # 5 epochs x 15.5 s + 0.4 s evaluation, from 590 s, + 5 s: 672.9 s.
    assert replan["over_budget_seconds"] == pytest.approx(72.9, abs=0.1)
    assert "1:13 over the budget (the students' floor of 5 epochs)" in format_replan(replan)
    assert replan_students(plan, warmup_epochs=6, **spent)["student_epochs"] == 7
    # A plan already at fewer epochs than the floor keeps them.
    assert replan_students({**plan, "student_epochs": 3}, **spent)["student_epochs"] == 3


def _tiny_budget_config(tmp_path, **fields):
    """The tests' tiny run (`tiny_config`) on 90 training images of 12x12 in an .npz."""
    rng = np.random.default_rng(0)
    labels = np.arange(120) % 3
    images = rng.integers(0, 256, size=(120, 12, 12, 3), dtype=np.uint8)
    data = tmp_path / "d.npz"
    np.savez(data, x_train=images[:90], y_train=labels[:90], x_test=images[90:], y_test=labels[90:])
    sizes = dict(val_size=15, teacher_width=8, warmup_epochs=0, budget="10m")
    return tiny_config(data=str(data), **{**sizes, **fields})


def test_a_budgeted_run_replans_its_students_after_the_teacher(tmp_path):
    import dataclasses

    from kd_keras import run_pipeline
    from kd_keras.run_folder import RunFolder
    from kd_keras.train.budget import plan_budget

    sized, plan = plan_budget(_tiny_budget_config(tmp_path), calibration_steps=1)
    # A real plan, cut to 1 teacher and 3 student epochs to keep the test
    # short, whose budget started an hour ago: nothing is left, so the
    # students fall to the floor (1 here).
    config = dataclasses.replace(sized, teacher_epochs=1, student_epochs=3)
    plan.update(teacher_epochs=1, student_epochs=3, min_student_epochs=1)
    plan["started_unix"] = time.time() - 3600
    plan["stages"]["teacher"]["epochs"] = 1
    rows = run_pipeline(config, tmp_path / "run", budget_plan=plan)
    run = RunFolder(tmp_path / "run")
    saved = run.budget()
    replan = saved["replan"]
    assert saved["calibration"] == json.loads(json.dumps(plan["calibration"]))
    assert (replan["planned_student_epochs"], replan["student_epochs"]) == (3, 1)
    assert replan["elapsed_seconds"] >= 3600 and replan["teacher_seconds"] > 0
    assert replan["over_budget_seconds"] >= 3000
    assert replan["speed"] == pytest.approx(
        replan["teacher_seconds"] / replan["teacher_predicted_seconds"], abs=0.002
    )
    assert run.config().student_epochs == 1  # A --resume trains what was re-planned.
    assert [row["epochs"] for row in rows] == [1, 1, 1]
    assert [len(run.history(stage)) for stage in ("student_baseline", "student_distilled")] == [
        1,
        1,
    ]
    # A resumed run keeps its sizes: the plan is not applied again.
    assert run_pipeline(run.config(), tmp_path / "run", resume=True, budget_plan=saved)
    assert run.budget()["replan"] == replan and run.config().student_epochs == 1


def test_a_reused_teacher_is_not_timed_so_its_run_is_not_replanned(tmp_path):
    from kd_keras.run_folder import RunFolder

    config = _tiny_budget_config(tmp_path, teacher="teacher.keras", student_epochs=21)
    plan = _plan()
    plan["stages"]["teacher"]["epochs"] = 0
    pipeline = Pipeline(config, tmp_path, None, budget_plan=plan)
    pipeline.replan_after_teacher(1.0)
    assert pipeline.config.student_epochs == 21
    assert RunFolder(tmp_path).budget() is None and not (tmp_path / "config.json").exists()


def test_a_budget_plan_that_cannot_be_replanned_is_refused_before_the_run(tmp_path):
    from kd_keras import run_pipeline

    config = RunConfig.from_preset("smoke", budget="10m", data=str(tmp_path / "d.npz"))
    plan = _plan()
    with pytest.raises(ConfigError, match="made for 22 teacher and 21 student epochs"):
        run_pipeline(config, tmp_path / "run", budget_plan=plan)
    del plan["stages"]["teacher"]["evaluation_seconds"]
    with pytest.raises(ConfigError, match=r"missing stages\.teacher\.evaluation_seconds"):
        run_pipeline(config, tmp_path / "run", budget_plan=plan)
    with pytest.raises(ConfigError, match="this config has no budget"):
        run_pipeline(RunConfig.from_preset("smoke"), tmp_path / "run", budget_plan=_plan())
    with pytest.raises(ConfigError, match="must be the dict .* got list"):
        run_pipeline(config, tmp_path / "run", budget_plan=[])
    assert not (tmp_path / "run").exists()


def test_the_cli_hands_a_new_budgeted_run_its_plan(tmp_path, monkeypatch, capsys):
    from kd_keras.train import budget, pipeline

    monkeypatch.setattr(budget, "_process_seconds", lambda: 0.0)
    calls = []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda *a, **k: calls.append(k) or [])
    out = str(tmp_path / "run")
    assert cli_main(["run", "--preset", "smoke", "--budget", "1h", "--out", out]) == 0
    plan = calls[0]["budget_plan"]
    assert plan["budget_seconds"] == 3600 and plan["stages"]["teacher"]["epochs"] > 0
    assert 0 < time.time() - plan["started_unix"] < 600
