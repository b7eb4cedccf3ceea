"""A measured estimate of how long a run takes (`kd_keras run --dry-run`).

The run's own models, optimizer and loss (`kd_keras.train.recipe`) are timed
for a few steps on one synthetic batch (`calibrate`), then the per-epoch and
total time of each stage is computed from those step times
(`stage_times`). It sits above both `recipe` and `speed`, so neither
imports the other. `kd_keras.train.budget` sizes a `--budget` run from the
same measurements.
"""

import math
import statistics
import time

import numpy as np

from kd_keras.distill.teacher import load_teacher, teacher_for_inference
from kd_keras.train import recipe, speed
from kd_keras.train.speed import precision_scope, resolve_run_precisions
from kd_keras.validation import validation_reuses_teacher_logits

STAGE_ORDER = ("teacher", "student_baseline", "student_distilled")


def time_interleaved(calls, steps):
    """Times `calls` (name -> callable) in turns: each one's first call
    (its tracing, or a warm-up), then `steps` rounds of one call each, in
    order.

    A shared machine's speed drifts over seconds; timing one model's steps
    in a block and the next model's after it would give each model its
    own moment of the machine, and their ratios would carry that noise.
    In turns, every model is timed across the same moments.

    Returns:
        name -> (seconds of the first call, median seconds of the others).
    """
    first = {}
    for name, call in calls.items():
        start = time.perf_counter()
        call()
        first[name] = time.perf_counter() - start
    times = {name: [] for name in calls}
    for _ in range(steps):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: (first[name], statistics.median(times[name])) for name in calls}


def _training_call(model, optimizer, images, labels):
    recipe.compile_classifier(model, optimizer)  # The run's loss, metric and optimizer.
    return lambda: model.train_on_batch(images, labels)


def _forward_call(model, images):
    import tensorflow as tf

    forward = tf.function(lambda x: model(x, training=False))
    batch = tf.constant(images)
    return lambda: forward(batch).numpy()


def calibration_calls(config, shape, steps_per_epoch):
    """The run's models, optimizers and loss on one synthetic batch of
    `config.batch_size` images, as calls to time (`time_interleaved`):
    `teacher_train` (unless the teacher is given or not trained),
    `student_train`, `teacher_forward`, `student_forward` and, with several
    teachers (`config.other_teachers`), `other_teacher_<i>` (a forward pass
    each: all of them run on every distillation batch).

    Returns:
        name -> callable, untraced (the first call of each traces it).
    """
    rng = np.random.default_rng(config.seed)
    batch = config.batch_size
    images = rng.integers(0, 256, size=(batch, *shape["input_shape"]), dtype=np.uint8).astype(
        "float32"
    )
    labels = rng.integers(0, shape["num_classes"], size=(batch,)).astype("int32")
    student = recipe.build_student(config, **shape)
    if config.teacher:
        with precision_scope(config.precision):
            teacher = load_teacher(
                config.teacher, shape["num_classes"], image_shape=shape["input_shape"]
            )
    else:
        teacher = recipe.build_teacher(config, **shape)

    calls = {}
    if not (config.teacher or config.teacher_epochs == 0):
        calls["teacher_train"] = _training_call(
            teacher,
            recipe.make_optimizer(config, steps_per_epoch, config.teacher_epochs),
            images,
            labels,
        )
    calls["student_train"] = _training_call(
        student,
        recipe.make_optimizer(config, steps_per_epoch, config.student_epochs),
        images,
        labels,
    )
    calls["teacher_forward"] = _forward_call(
        teacher_for_inference(teacher, config.teacher_precision), images
    )
    calls["student_forward"] = _forward_call(student, images)
    for index, path in enumerate(config.other_teachers or ()):
        with precision_scope(config.precision):
            other = load_teacher(path, shape["num_classes"], image_shape=shape["input_shape"])
        calls[f"other_teacher_{index}"] = _forward_call(
            teacher_for_inference(other, config.teacher_precision), images
        )
    return calls


def measured_step_times(timed):
    """`time_interleaved`'s result over `calibration_calls` as
    `(measured, trace)`: median seconds per step or batch, and the first
    calls' extra (tracing) seconds, keyed by what was timed. The teachers'
    forward passes add up in `teacher_forward_batch_s`."""
    teacher_train = timed.get("teacher_train", (0.0, 0.0))
    student_train = timed["student_train"]
    forwards = [timed["teacher_forward"]] + [
        timed[name] for name in timed if name.startswith("other_teacher_")
    ]
    measured = {
        "teacher_train_step_s": teacher_train[1],
        "student_train_step_s": student_train[1],
        "teacher_forward_batch_s": sum(median for _, median in forwards),
        "student_forward_batch_s": timed["student_forward"][1],
    }
    trace = {
        "teacher_train_trace_s": max(0.0, teacher_train[0] - teacher_train[1]),
        "student_train_trace_s": max(0.0, student_train[0] - student_train[1]),
        "teacher_forward_trace_s": sum(max(0.0, first - median) for first, median in forwards),
    }
    return measured, trace


def calibrate(config, shape, steps_per_epoch, steps):
    """Times the run's models on one synthetic batch of `config.batch_size`
    images (`calibration_calls`): `steps` training steps of the teacher and
    the student and as many forward passes of each, after one warm-up call
    each that traces the graph; the models take turns, one call each a
    round, so they are timed across the same moments of the machine
    (`time_interleaved`).

    Returns:
        (measured, trace): median seconds per step or batch, and the
        warm-up's extra (tracing) seconds, keyed by what was timed
        (`measured_step_times`).
    """
    calls = calibration_calls(config, shape, steps_per_epoch)
    return measured_step_times(time_interleaved(calls, steps))


def stage_epoch_seconds(measured, steps, val_batches, overhead, *, teacher_logits_reused=False):
    """Seconds of one epoch of each stage at `steps` training steps.

    With `teacher_logits_reused`, the distilled stage's validation pass
    runs the student alone (the teacher's logits are computed once, see
    `stage_setup_seconds`)."""
    t_train, s_train = measured["teacher_train_step_s"], measured["student_train_step_s"]
    t_fwd, s_fwd = measured["teacher_forward_batch_s"], measured["student_forward_batch_s"]
    distilled_val = s_fwd if teacher_logits_reused else s_fwd + t_fwd
    return {
        "teacher": steps * t_train + val_batches * t_fwd + overhead,
        "student_baseline": steps * s_train + val_batches * s_fwd + overhead,
        "student_distilled": steps * (s_train + t_fwd) + val_batches * distilled_val + overhead,
    }


def stage_setup_seconds(trace, teacher_validation_s=0.0):
    """Seconds of each stage's one-time set-up: its graph tracing and, for
    the distilled stage, `teacher_validation_s`: the teacher's one pass over
    the validation batches where its logits are reused
    (`validation_reuses_teacher_logits`), else 0."""
    return {
        "teacher": trace["teacher_train_trace_s"],
        "student_baseline": trace["student_train_trace_s"],
        "student_distilled": trace["student_train_trace_s"]
        + trace["teacher_forward_trace_s"]
        + teacher_validation_s,
    }


def stage_times(config, measured, trace, steps_per_epoch, val_images):
    """Per-stage epochs, seconds an epoch and total seconds, from the step
    times `calibrate` measured.

    * teacher: teacher step x steps per epoch, plus the validation pass;
    * student_baseline: student step x steps per epoch, plus validation;
    * student_distilled: (student step + teacher forward) x steps per
      epoch, plus validation of the student (and of the teacher where its
      logits are not reused, `validation_reuses_teacher_logits`);

    times the stage's epochs, plus the warm-up's tracing time once. A
    reused teacher (`config.teacher`) or baseline (`config.baseline`) has
    no training stage.
    """
    reused = validation_reuses_teacher_logits(config)
    val_batches = val_images / config.batch_size
    per_epoch = stage_epoch_seconds(
        measured, steps_per_epoch, val_batches, overhead=0.0, teacher_logits_reused=reused
    )
    setup = stage_setup_seconds(
        trace, val_batches * measured["teacher_forward_batch_s"] if reused else 0.0
    )
    epochs = {
        "teacher": 0 if config.teacher else config.teacher_epochs,
        "student_baseline": 0 if config.baseline else config.student_epochs,
        "student_distilled": config.student_epochs,
    }
    stages = {}
    for stage in STAGE_ORDER:
        total = epochs[stage] * per_epoch[stage] + (setup[stage] if epochs[stage] else 0.0)
        stages[stage] = {
            "epochs": epochs[stage],
            "epoch_seconds": round(per_epoch[stage], 2) if epochs[stage] else 0.0,
            "total_seconds": round(total, 1),
        }
    return stages


def calibrated(config, data, calibration_steps):
    """`calibrate` on `config` with its precisions resolved for this machine;
    returns what `estimate_run_seconds` and `plan_budget` need."""
    from kd_keras.data.splits import data_summary

    config.validate()
    data = data or data_summary(config)
    shape = {"input_shape": tuple(data["image_shape"]), "num_classes": data["num_classes"]}
    machine = speed.local_machine()  # Looked up here: the one the run resolves with.
    config, choice = resolve_run_precisions(config, machine)
    start = time.perf_counter()
    steps_per_epoch = math.ceil(data["train_images"] / config.batch_size)
    steps = max(1, int(calibration_steps))
    measured, trace = calibrate(config, shape, steps_per_epoch, steps)
    calibration = {
        "batch_size": config.batch_size,
        "steps": steps,
        **{k: round(v, 4) for k, v in {**measured, **trace}.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }
    return config, choice, machine, data, measured, trace, steps_per_epoch, calibration


def estimate_run_seconds(config, calibration_steps=3, data=None):
    """Estimated epoch time and total time of each stage of a run.

    Calibrates the run's models (`calibrate`) with the config's precision
    options applied, then computes each stage's time (`stage_times`). The
    estimate leaves out data loading, the final test evaluation and a busy
    machine; treat it as +-25 %.

    Args:
        config: a `RunConfig`.
        calibration_steps: measured steps per model (after the warm-up).
        data: `kd_keras.data.splits.data_summary(config)` (image counts,
            image shape, classes), if already known.

    Returns:
        A dict: `stages` maps each stage name to `{"epochs", "epoch_seconds",
        "total_seconds"}`; `total_seconds`, `steps_per_epoch`,
        `train_images`, `val_images`, and `calibration` (the measured
        per-step seconds and how long the calibration took).
    """
    config, choice, machine, data, measured, trace, steps_per_epoch, calibration = calibrated(
        config, data, calibration_steps
    )
    stages = stage_times(config, measured, trace, steps_per_epoch, data["val_images"])
    return {
        "stages": stages,
        "total_seconds": round(sum(s["total_seconds"] for s in stages.values()), 1),
        "steps_per_epoch": steps_per_epoch,
        "train_images": data["train_images"],
        "val_images": data["val_images"],
        "precision": config.precision,
        "teacher_precision": config.teacher_precision,
        "precision_reason": choice.reason,
        "machine": machine.describe(),
        "calibration": calibration,
    }


def clock(seconds):
    """`seconds` as m:ss, or h:mm:ss from an hour."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def format_estimate(estimate):
    """A few lines of text: epoch and total time of each stage."""
    lines = [
        f"Estimated time ({estimate['steps_per_epoch']} steps per epoch, "
        f"calibrated in {estimate['calibration']['seconds']:.0f} s):",
        f"  {'stage':<18} {'epochs':>6} {'per epoch':>10} {'total':>9}",
    ]
    for stage, row in estimate["stages"].items():
        lines.append(
            f"  {stage:<18} {row['epochs']:>6} {row['epoch_seconds']:>9.1f}s "
            f"{clock(row['total_seconds']):>9}"
        )
    lines.append(f"  {'all stages':<18} {'':>6} {'':>10} {clock(estimate['total_seconds']):>9}")
    if "precision" in estimate:
        lines.append(
            f"Precision {estimate['precision']}, teacher precision "
            f"{estimate['teacher_precision']} ({estimate['precision_reason']})"
        )
        lines.append(f"Machine: {estimate['machine']}")
    return "\n".join(lines)
