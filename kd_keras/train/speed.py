"""Speed options of a run, and a measured estimate of how long a run takes.

Four `RunConfig` fields (and `kd_keras run` flags) trade nothing or a little
numerical precision for speed:

* `precision` (`--precision`), default "auto": the trained models
  (teacher, both students) compute in "mixed_bfloat16" or
  "mixed_float16" (float32 weights; logits, softmax and losses stay
  float32) or in "float32". "auto" picks from the machine
  (`kd_keras.hardware`): bfloat16 where the CPU or GPU computes it
  natively, float16 on GPUs older than compute capability 8.0, float32
  elsewhere. Emulated bfloat16 (a CPU without `avx512_bf16`/`amx_bf16`)
  is several times slower than float32, so it is never chosen there.
* `teacher_precision` (`--teacher-precision`), default "auto": the frozen
  teacher runs in "bfloat16" or "float16" while distilling (a copy with
  the same weights, batch norm folded), or "float32"; "auto" as above.
* `steps_per_execution` (`--steps-per-execution`), default 1: training
  steps per call into the compiled graph (less Python overhead). Does not
  change results.
* `threads` (`--threads`), default None (TensorFlow's choice): TensorFlow's
  intra-op threads, with inter-op threads 1. Does not change results
  beyond float round-off.

"auto" is resolved once, when a run (or a search, a benchmark case, a dry
run) starts (`resolve_run_precisions`); the run folder's `config.json`
records the resolved values and the run prints why they were chosen.

`steps_per_execution` must divide the steps of an epoch, or Keras would run
past the epoch's end and shift every later batch; the pipeline therefore uses
the largest divisor of the steps per epoch that is not above the requested
value (`effective_steps_per_execution`), and says so when it differs.

Which options are faster on a machine is measured, not assumed: run
`python -m benchmarks.throughput` (docs/speed.md).

Teacher-output caching
----------------------
Within one run the teacher always runs on the current batch: every epoch
has new crops and flips, and the teacher must see exactly the student's
view. Where views repeat (the trials of a T/alpha search), the logits are
cached: see `kd_keras.distill.teacher_cache`.
"""

import contextlib
import dataclasses
import math
import statistics
import time
import warnings

import keras
import numpy as np

from kd_keras.config import AUTO_FIELDS
from kd_keras.distill.teacher import load_teacher, teacher_for_inference
from kd_keras.hardware import resolve_precisions, this_machine

# Inter-op threads when `threads` is set: on a few cores, independent ops
# running side by side only oversubscribe the cores the intra-op pool uses.
INTER_OP_THREADS = 1


# --------------------------------------------------------------------------
# Mechanics
# --------------------------------------------------------------------------
def apply_threading(threads):
    """Sets TensorFlow's intra-op threads to `threads` and inter-op to 1.

    TensorFlow only accepts this before its runtime starts (before the first
    op, dataset or model), so call it first thing. Later calls that would
    change the settings warn and change nothing.

    Args:
        threads: an int >= 1, `None` (keep TensorFlow's defaults), or a
            `RunConfig` (its `threads` field).

    Returns:
        True if the threads are now as asked, False if `threads` is None or
        the runtime had already started with other settings.
    """
    threads = getattr(threads, "threads", threads)
    if threads is None:
        return False
    import tensorflow as tf

    current = (
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )
    if current == (threads, INTER_OP_THREADS):
        return True
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(INTER_OP_THREADS)
    except RuntimeError as error:
        warnings.warn(
            f"threads={threads} not applied: TensorFlow's runtime has already "
            f"started ({error}). Set it before building any model or dataset.",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


def gpu_capabilities():
    """`(major, minor)` compute capability of each GPU TensorFlow sees."""
    import tensorflow as tf

    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability")
        if capability:
            capabilities.append(tuple(capability))
        else:  # A GPU that does not say: assume the older, float16 kind.
            capabilities.append((7, 0))
    return tuple(capabilities)


def local_machine():
    """This process's `kd_keras.hardware.Machine`, GPUs included."""
    return this_machine(gpu_capabilities())


def resolve_run_precisions(config, machine=None):
    """A copy of `config` with "auto" precisions resolved for `machine`.

    Args:
        config: a `RunConfig`.
        machine: a `kd_keras.hardware.Machine`; default this machine.

    Returns:
        `(config, choice)`: the resolved config (the same object if nothing
        was "auto") and the `PrecisionChoice` with its reason.
    """
    if config.is_resolved():
        return config, resolve_precisions(
            config.precision, config.teacher_precision, machine or this_machine()
        )
    choice = resolve_precisions(
        config.precision, config.teacher_precision, machine or local_machine()
    )
    resolved = dataclasses.replace(
        config, **{field: getattr(choice, field) for field in AUTO_FIELDS}
    )
    return resolved, choice


@contextlib.contextmanager
def precision_scope(policy):
    """Sets Keras's global dtype policy inside the block, restores it after.

    Layers take the global policy when they are built, so models built in
    the block keep it after the block ends.

    Args:
        policy: a policy name ("float32", "mixed_bfloat16", ...), a
            `keras.DTypePolicy`, or None to leave the policy alone.

    Example:

    >>> with precision_scope("mixed_bfloat16"):
    ...     student = build_resnet(8)
    >>> student.layers[2].compute_dtype, student.output.dtype
    ('bfloat16', 'float32')
    """
    if policy is None:
        yield
        return
    if policy == "auto":
        raise ValueError(
            "precision 'auto' must be resolved before building models: "
            "use kd_keras.train.speed.resolve_run_precisions(config)"
        )
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def effective_steps_per_execution(requested, steps_per_epoch):
    """The largest divisor of `steps_per_epoch` that is <= `requested`.

    Keras runs whole executions of `steps_per_execution` steps, so a value
    that does not divide the steps per epoch would run past the epoch's end
    (into the next epoch's batches). 79 steps per epoch (the quick preset),
    for instance, admits only 1 or 79.
    """
    requested = max(1, int(requested))
    steps_per_epoch = max(1, int(steps_per_epoch))
    for candidate in range(min(requested, steps_per_epoch), 0, -1):
        if steps_per_epoch % candidate == 0:
            return candidate
    return 1


# --------------------------------------------------------------------------
# Run-time estimate
# --------------------------------------------------------------------------
def _time_calls(call, steps):
    """(seconds of the first call, median seconds of the next `steps`)."""
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def _calibrate_training(model, optimizer, images, labels, steps):
    from kd_keras.train.recipe import compile_classifier

    compile_classifier(model, optimizer)  # The run's loss, metric and optimizer.
    return _time_calls(lambda: model.train_on_batch(images, labels), steps)


def _calibrate_forward(model, images, steps):
    import tensorflow as tf

    forward = tf.function(lambda x: model(x, training=False))
    batch = tf.constant(images)
    return _time_calls(lambda: forward(batch).numpy(), steps)


def estimate_run_seconds(config, calibration_steps=3, data=None):
    """Estimated epoch time and total time of each stage of a run.

    Times `calibration_steps` training steps of the teacher and the student
    (the run's models, optimizer and loss, from `kd_keras.train.recipe`),
    and as many teacher forward passes, on one synthetic batch of
    `config.batch_size` images, after one warm-up step that traces the
    graph, with the config's precision options applied. Then, per stage:

    * teacher: teacher step x steps per epoch, plus the validation pass;
    * student_baseline: student step x steps per epoch, plus validation;
    * student_distilled: (student step + teacher forward) x steps per
      epoch, plus validation of both models;

    times the stage's epochs, plus the warm-up's tracing time once. The
    estimate leaves out data loading, the final test evaluation and a busy
    machine; treat it as +-25 %. A reused teacher (`config.teacher`) is
    loaded for its forward pass and has no training stage.

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
    from kd_keras.data.splits import data_summary
    from kd_keras.train import recipe

    config.validate()
    data = data or data_summary(config)
    shape = {"input_shape": tuple(data["image_shape"]), "num_classes": data["num_classes"]}
    machine = local_machine()
    config, choice = resolve_run_precisions(config, machine)
    calibration_start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    batch = config.batch_size
    images = rng.integers(0, 256, size=(batch, *shape["input_shape"]), dtype=np.uint8).astype(
        "float32"
    )
    labels = rng.integers(0, shape["num_classes"], size=(batch,)).astype("int32")
    train_images, val_images = data["train_images"], data["val_images"]
    steps_per_epoch = math.ceil(train_images / batch)
    steps = max(1, int(calibration_steps))

    # The run's models, for its data, in its precision.
    student = recipe.build_student(config, **shape)
    if config.teacher:
        with precision_scope(config.precision):
            teacher = load_teacher(
                config.teacher, shape["num_classes"], image_shape=shape["input_shape"]
            )
    else:
        teacher = recipe.build_teacher(config, **shape)

    if config.teacher or config.teacher_epochs == 0:
        teacher_train = (0.0, 0.0)
    else:
        teacher_train = _calibrate_training(
            teacher,
            recipe.make_optimizer(config, steps_per_epoch, config.teacher_epochs),
            images,
            labels,
            steps,
        )
    student_train = _calibrate_training(
        student,
        recipe.make_optimizer(config, steps_per_epoch, config.student_epochs),
        images,
        labels,
        steps,
    )
    teacher_forward = _calibrate_forward(
        teacher_for_inference(teacher, config.teacher_precision), images, steps
    )
    student_forward = _calibrate_forward(student, images, steps)
    measured = {
        "teacher_train_step_s": teacher_train[1],
        "student_train_step_s": student_train[1],
        "teacher_forward_batch_s": teacher_forward[1],
        "student_forward_batch_s": student_forward[1],
    }
    trace = {
        "teacher_train_trace_s": max(0.0, teacher_train[0] - teacher_train[1]),
        "student_train_trace_s": max(0.0, student_train[0] - student_train[1]),
        "teacher_forward_trace_s": max(0.0, teacher_forward[0] - teacher_forward[1]),
    }
    val_batches = val_images / batch
    teacher_val = val_batches * measured["teacher_forward_batch_s"]
    student_val = val_batches * measured["student_forward_batch_s"]
    per_epoch = {
        "teacher": steps_per_epoch * measured["teacher_train_step_s"] + teacher_val,
        "student_baseline": steps_per_epoch * measured["student_train_step_s"] + student_val,
        "student_distilled": steps_per_epoch
        * (measured["student_train_step_s"] + measured["teacher_forward_batch_s"])
        + student_val
        + teacher_val,
    }
    setup = {
        "teacher": trace["teacher_train_trace_s"],
        "student_baseline": trace["student_train_trace_s"],
        "student_distilled": trace["student_train_trace_s"] + trace["teacher_forward_trace_s"],
    }
    epochs = {
        "teacher": 0 if config.teacher else config.teacher_epochs,
        "student_baseline": config.student_epochs,
        "student_distilled": config.student_epochs,
    }
    stages = {}
    for stage in ("teacher", "student_baseline", "student_distilled"):
        total = epochs[stage] * per_epoch[stage] + (setup[stage] if epochs[stage] else 0.0)
        stages[stage] = {
            "epochs": epochs[stage],
            "epoch_seconds": round(per_epoch[stage], 2) if epochs[stage] else 0.0,
            "total_seconds": round(total, 1),
        }
    return {
        "stages": stages,
        "total_seconds": round(sum(s["total_seconds"] for s in stages.values()), 1),
        "steps_per_epoch": steps_per_epoch,
        "train_images": train_images,
        "val_images": val_images,
        "precision": config.precision,
        "teacher_precision": config.teacher_precision,
        "precision_reason": choice.reason,
        "machine": machine.describe(),
        "calibration": {
            "batch_size": batch,
            "steps": steps,
            **{k: round(v, 4) for k, v in {**measured, **trace}.items()},
            "seconds": round(time.perf_counter() - calibration_start, 1),
        },
    }


def _clock(seconds):
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
            f"{_clock(row['total_seconds']):>9}"
        )
    lines.append(f"  {'all stages':<18} {'':>6} {'':>10} {_clock(estimate['total_seconds']):>9}")
    if "precision" in estimate:
        lines.append(
            f"Precision {estimate['precision']}, teacher precision "
            f"{estimate['teacher_precision']} ({estimate['precision_reason']})"
        )
        lines.append(f"Machine: {estimate['machine']}")
    return "\n".join(lines)
