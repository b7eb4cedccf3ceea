"""Speed options of a run (the estimate of how long a run takes is in
`kd_keras.train.estimate`).

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
import warnings

import keras

from kd_keras.config import AUTO_FIELDS
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
