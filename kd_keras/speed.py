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
`python -m benchmarks.throughput` (README "Speed").

Teacher-output caching
----------------------
Within one run the teacher always runs on the current batch: every epoch
has new crops and flips, and the teacher must see exactly the student's
view. Where views repeat (the trials of a T/alpha search), the logits are
cached: see `kd_keras.teacher_cache`.
"""

import contextlib
import dataclasses
import math
import statistics
import time
import warnings

import keras
import numpy as np

from kd_keras.config import AUTO_FIELDS, TEACHER_PRECISIONS
from kd_keras.folding import fold_batch_norm
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
            "use kd_keras.speed.resolve_run_precisions(config)"
        )
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _output_layer_names(model):
    names = set()
    for tensor in model.outputs or []:
        history = getattr(tensor, "_keras_history", None)
        if history is not None:
            names.add(history.operation.name)
    return names


def teacher_for_inference(teacher, precision="float32", *, fold=True):
    """The frozen teacher to run while distilling: folded, and in `precision`.

    Args:
        teacher: a trained `keras.Model` returning logits.
        precision: "float32" keeps the teacher's own compute dtype.
            "bfloat16" (or "float16") makes its layers compute in that
            type (policy `mixed_bfloat16` / `mixed_float16`: weights stay
            float32), except the output layer, which keeps its own policy
            (float32 logits for kd_keras models).
        fold: fold batch norm into the convolutions before it
            (`kd_keras.fold_batch_norm`): the same outputs up to round-off,
            faster. A model that cannot be rebuilt from its config (a
            subclassed model) is used unfolded.

    Returns:
        `teacher` itself if there is nothing to change, else a frozen copy
        (`trainable = False`) with the same weights, for inference only.

    Raises:
        ValueError: for another precision, or a model Keras cannot clone
            in bfloat16 (a subclassed model).
    """
    if precision not in TEACHER_PRECISIONS or precision == "auto":
        raise ValueError(
            "teacher_precision must be one of "
            f"{', '.join(p for p in TEACHER_PRECISIONS if p != 'auto')}, got "
            f"{precision!r} (resolve 'auto' with resolve_run_precisions)"
        )
    if fold:
        try:
            teacher = fold_batch_norm(teacher)
        except ValueError:
            pass  # Not rebuildable: run it as it is.
    if precision == "float32":
        return teacher
    keep = _output_layer_names(teacher)

    def clone_layer(layer):
        config = layer.get_config()
        if (
            "dtype" in config
            and layer.name not in keep
            and not isinstance(layer, keras.layers.InputLayer)
        ):
            config["dtype"] = f"mixed_{precision}"
        return layer.__class__.from_config(config)

    try:
        copy = keras.models.clone_model(teacher, clone_function=clone_layer)
    except Exception as error:  # Keras raises several types here.
        raise ValueError(
            f"cannot run teacher '{teacher.name}' in {precision}: Keras cannot "
            f"clone it ({error}); use teacher_precision='float32'"
        ) from None
    copy.set_weights(teacher.get_weights())
    copy.trainable = False
    return copy


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
def _data_sizes(config):
    train = (
        config.train_per_class * 10
        if config.train_per_class
        else 50000 - config.val_size
    )
    val = config.val_per_class * 10 if config.val_per_class else config.val_size
    test = config.test_per_class * 10 if config.test_per_class else 10000
    return train, min(val, config.val_size), test


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


def _calibrate_training(model, images, labels, steps):
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9, nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return _time_calls(lambda: model.train_on_batch(images, labels), steps)


def _calibrate_forward(model, images, steps):
    import tensorflow as tf

    forward = tf.function(lambda x: model(x, training=False))
    batch = tf.constant(images)
    return _time_calls(lambda: forward(batch).numpy(), steps)


def estimate_run_seconds(config, calibration_steps=3):
    """Estimated epoch time and total time of each stage of a run.

    Times `calibration_steps` training steps of the teacher and the student
    (and as many teacher forward passes) on one synthetic batch of
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

    Returns:
        A dict: `stages` maps each stage name to `{"epochs", "epoch_seconds",
        "total_seconds"}`; `total_seconds`, `steps_per_epoch`,
        `train_images`, `val_images`, and `calibration` (the measured
        per-step seconds and how long the calibration took).
    """
    from kd_keras.models import build_resnet
    from kd_keras.pipeline import load_teacher

    config.validate()
    machine = local_machine()
    config, choice = resolve_run_precisions(config, machine)
    calibration_start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    batch = config.batch_size
    images = rng.integers(0, 256, size=(batch, 32, 32, 3), dtype=np.uint8).astype("float32")
    labels = rng.integers(0, 10, size=(batch,)).astype("int32")
    train_images, val_images, _ = _data_sizes(config)
    steps_per_epoch = math.ceil(train_images / batch)
    steps = max(1, int(calibration_steps))

    with precision_scope(config.precision):
        student = build_resnet(config.student_depth, width=config.student_width)
        if config.teacher:
            teacher = load_teacher(config.teacher)
        else:
            teacher = build_resnet(config.teacher_depth, width=config.teacher_width)

    if config.teacher or config.teacher_epochs == 0:
        teacher_train = (0.0, 0.0)
    else:
        teacher_train = _calibrate_training(teacher, images, labels, steps)
    student_train = _calibrate_training(student, images, labels, steps)
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
