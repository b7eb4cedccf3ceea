"""Training on several devices and machines with `tf.distribute`.

Three strategies (`RunConfig.strategy`, `--strategy`):

* "default": one device, TensorFlow's default strategy. Nothing changes.
* "mirrored": `tf.distribute.MirroredStrategy` on the devices of one
  machine (`devices`, e.g. `["/gpu:0", "/gpu:1"]`; all GPUs if `None`).
  Keras's `fit` and `evaluate` run under it as they are.
* "multi_worker": `tf.distribute.MultiWorkerMirroredStrategy`, one
  process per machine (or per device group), described by the `TF_CONFIG`
  environment variable of each process. Keras 3's `fit` fails under this
  strategy for any model (keras-team/keras#20585: its metric reduction
  calls `strategy.reduce("MEAN", value, axis=0)` on scalars), so `fit`
  and `evaluate` here run the model's own `train_step` / `test_step`
  through `strategy.run` over `strategy.experimental_distribute_dataset`,
  calling the callbacks' hooks as `fit` does, so checkpoints, history and
  progress behave as in a one-process run.

The batch and the learning rate: `batch_size` is the global batch, split
evenly over the replicas, and the learning rate is not scaled. A run's
recipe then does not depend on the number of devices: the optimizer sees
the same gradient (the mean over the same global batch) at every step, a
run resumes on another number of devices, and stages stay comparable. The
price is a smaller per-replica batch on more devices; to use more devices
for more throughput, raise `--batch-size` (and, by the linear scaling rule
of Goyal et al. (2017), `--learning-rate` with it, keeping the warm-up).

Batch norm: each replica normalises with the statistics of its own part of
the batch unless `sync_batch_norm` is set (`BatchNormalization(
synchronized=True)`: the statistics of the global batch, as on one device,
at the cost of one all-reduce per layer and step).

Who writes what: every worker runs the same pipeline, but only the chief
(task "chief", or worker 0 when the cluster has no chief) writes the run
folder. The other workers work in a private temporary copy of it
(`WorkerFolder`), made when they start and removed when they finish, the
way Keras writes a non-chief's checkpoints to a temporary folder.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

from kd_keras import atomic
from kd_keras.errors import DistributeError
from kd_keras.validation import STRATEGIES

# Collectives wait at most this long for the other workers, so a dead worker
# ends the run with an error instead of a hang; the environment variable
# overrides it (seconds).
COLLECTIVE_TIMEOUT_S = 120.0
TIMEOUT_ENV_VAR = "KD_KERAS_COLLECTIVE_TIMEOUT"


def read_tf_config(environ=None):
    """The parsed `TF_CONFIG` of this process (`{}` if unset).

    Raises:
        DistributeError: `TF_CONFIG` is not a JSON object with a `cluster`
            and a `task` of a type and index in that cluster.
    """
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError as error:
        raise DistributeError(f"TF_CONFIG is not JSON ({error}): {raw[:200]!r}") from None
    task = value.get("task") if isinstance(value, dict) else None
    cluster = value.get("cluster") if isinstance(value, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise DistributeError(
            "TF_CONFIG must be a JSON object with 'cluster' and 'task', e.g. "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}'
        )
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in cluster or not isinstance(index, int) or not (0 <= index < len(cluster[kind])):
        raise DistributeError(f"TF_CONFIG task {task!r} is not in its cluster {sorted(cluster)}")
    return value


def is_chief(environ=None):
    """True unless this process is a non-chief worker of a `TF_CONFIG`
    cluster. The chief is task "chief", or worker 0 if there is none."""
    tf_config = read_tf_config(environ)
    if not tf_config:
        return True
    task = tf_config["task"]
    if task["type"] == "chief":
        return True
    return (
        task["type"] == "worker"
        and task.get("index", 0) == 0
        and "chief" not in tf_config["cluster"]
    )


def make_strategy(name, devices=None, *, timeout_seconds=None):
    """The `tf.distribute.Strategy` named `name`.

    Create it before anything else touches TensorFlow (logical devices and
    the multi-worker runtime are fixed when TensorFlow starts), and only one
    per process.

    Args:
        name: "default", "mirrored" or "multi_worker".
        devices: for "mirrored", the devices to mirror on (`None`: every
            GPU, else the CPU).
        timeout_seconds: for "multi_worker", how long a collective waits
            for the other workers before it fails (default:
            `$KD_KERAS_COLLECTIVE_TIMEOUT`, else `COLLECTIVE_TIMEOUT_S`).

    Returns:
        The strategy.

    Raises:
        DistributeError: an unknown name, devices with a strategy other
            than "mirrored", or "multi_worker" without a `TF_CONFIG`.
    """
    if name not in STRATEGIES:
        raise DistributeError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if devices is not None and name != "mirrored":
        raise DistributeError(f"devices apply to the 'mirrored' strategy only, not {name!r}")
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(list(devices) if devices else None)
    if not read_tf_config():
        raise DistributeError(
            "strategy 'multi_worker' needs TF_CONFIG in every worker's "
            "environment (the cluster's addresses and this worker's task)"
        )
    if timeout_seconds is None:
        raw = os.environ.get(TIMEOUT_ENV_VAR) or COLLECTIVE_TIMEOUT_S
        try:
            timeout_seconds = float(raw)
        except ValueError:
            timeout_seconds = -1.0
        if not timeout_seconds > 0:
            raise DistributeError(f"{TIMEOUT_ENV_VAR} must be a number of seconds > 0, got {raw!r}")
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_seconds)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def is_multi_worker(strategy=None):
    """True if `strategy` (default: the current one) spans several workers."""
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def check_batch_size(strategy, batch_size):
    """Raises `DistributeError` unless the global batch splits evenly over
    the strategy's replicas."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise DistributeError(
            f"batch_size {batch_size} does not split evenly over {replicas} "
            f"replicas; use a multiple of {replicas} (e.g. "
            f"{-(-batch_size // replicas) * replicas})"
        )


def barrier(strategy, name="kd_keras"):
    """Returns once every worker of a multi-worker `strategy` got here."""
    if not is_multi_worker(strategy):
        return
    import tensorflow as tf

    total = strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)
    if int(total) != strategy.num_replicas_in_sync:
        raise DistributeError(f"barrier {name}: {int(total)} replicas answered")


def check_agreement(strategy, settings, choices, *, replica_values=None):
    """Raises `DistributeError` unless every worker of a multi-worker
    `strategy` holds the same `settings`.

    Each worker resolves `precision="auto"` from its own hardware; workers on
    different machines could pick different precisions and train different
    models in lockstep. This compares them with one all-reduce: each setting
    becomes its index in `choices[name]` plus one, and the values agree iff
    the replicas' sum of squares times their number equals their sum squared.

    Args:
        strategy: the run's strategy (nothing is checked on one worker).
        settings: `{name: value}` of this worker, e.g. the resolved precisions.
        choices: `{name: tuple of the possible values}`.
        replica_values: for tests: a function `(replica_id) -> {name: value}`
            that stands in for `settings` per replica.
    """
    if replica_values is None and not is_multi_worker(strategy):
        return
    import tensorflow as tf

    names = sorted(settings)

    def codes(values):
        return [float(choices[n].index(values[n]) + 1) for n in names]

    def per_replica():
        if replica_values is None:
            return tf.constant(codes(settings))
        context = tf.distribute.get_replica_context()
        replica = context.replica_id_in_sync_group
        table = tf.constant(
            [codes(replica_values(i)) for i in range(strategy.num_replicas_in_sync)]
        )
        return tf.gather(table, replica)

    values = strategy.run(per_replica)
    squares = strategy.run(lambda v: v * v, args=(values,))
    total = strategy.reduce("SUM", values, axis=None).numpy()
    total_sq = strategy.reduce("SUM", squares, axis=None).numpy()
    count = strategy.num_replicas_in_sync
    differ = [n for n, s, q in zip(names, total, total_sq) if abs(count * q - s * s) > 1e-6]
    if differ:
        mine = ", ".join(f"{n}={settings[n]}" for n in differ)
        flags = " ".join(f"--{n.replace('_', '-')} {settings[n]}" for n in differ)
        raise DistributeError(
            f"the workers resolved {', '.join(differ)} differently (this worker: "
            f"{mine}); their machines differ, so give it explicitly on every "
            f"worker, e.g. {flags}"
        )


class WorkerFolder:
    """A non-chief worker's private copy of the run folder.

    With `resume`, the copy holds the run folder's files as they are when
    the worker starts (config, completed stages, checkpoints; not the lock
    or temporary files), so the worker resumes exactly where the chief does.
    The run folder must then be readable at the same path on every machine
    (a shared file system, or a copy of the chief's folder). Otherwise the
    copy starts empty.

    Args:
        out_dir: the run folder.
        resume: copy the run folder's state.
    """

    def __init__(self, out_dir, *, resume):
        self._root = Path(tempfile.mkdtemp(prefix="kd_keras_worker_"))
        self.path = self._root / Path(out_dir).name
        source = Path(out_dir)
        if resume and source.is_dir():
            shutil.copytree(
                source,
                self.path,
                ignore=shutil.ignore_patterns(atomic.LOCK_FILE, ".*.tmp*"),
            )

    def cleanup(self):
        shutil.rmtree(self._root, ignore_errors=True)


def fit(trainable, dataset, *, validation_data, epochs, steps_per_epoch, callbacks, verbose=1):
    """`trainable.fit(...)`, or under a multi-worker strategy the same
    training through `strategy.run` (see the module docstring).

    Args:
        trainable: a compiled model or `Distiller`, built in the
            strategy's scope.
        dataset: a batched `tf.data.Dataset` of the global batches of
            every epoch still to train, back to back.
        validation_data: a batched `tf.data.Dataset`, evaluated after every
            epoch into `val_*` logs.
        epochs: the last epoch (the first is the model's `_initial_epoch`,
            set by a `TrainingCheckpoint` in `on_train_begin`).
        steps_per_epoch: batches per epoch.
        callbacks: Keras callbacks.
        verbose: 0 silent, 1 progress bar, 2 one line per epoch.
    """
    if not is_multi_worker():
        return trainable.fit(
            dataset,
            validation_data=validation_data,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,
        )
    return _fit_multi_worker(
        trainable,
        dataset,
        validation_data=validation_data,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=callbacks,
        verbose=verbose,
    )


def evaluate(model, dataset):
    """`model.evaluate(dataset, return_dict=True)`, or under a multi-worker
    strategy the same through `strategy.run`; returns a dict of floats."""
    if not is_multi_worker():
        logs = model.evaluate(dataset, verbose=0, return_dict=True)
        return {k: float(v) for k, v in logs.items()}
    return _evaluate_multi_worker(model, dataset)


def _distribute(strategy, dataset):
    import tensorflow as tf

    options = tf.data.Options()
    # Every worker builds the same dataset (same seed, same order) and keeps
    # its replicas' parts of each global batch.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def _step_function(model, strategy, step):
    import tensorflow as tf

    def mean(value):
        return strategy.reduce("MEAN", value, axis=None)

    @tf.function
    def run(iterator):
        outputs = strategy.run(step, args=(next(iterator),))
        return tf.nest.map_structure(mean, outputs)

    return run


def _build(model, strategy, dataset):
    """Builds the compiled losses and metrics as `fit` does, on one
    undistributed batch (`fit`'s own build is what fails under the
    multi-worker strategy)."""
    if getattr(model, "_kd_keras_built", False):
        return
    batch = next(iter(dataset.take(1)))
    with strategy.scope():
        model._symbolic_build(data_batch=batch)
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
    model._kd_keras_built = True


def _metrics_or_logs(model, logs):
    results = model.get_metrics_result()
    values = results if results and set(logs) <= set(results) else logs
    return {k: float(v) for k, v in values.items()}


def _evaluate_multi_worker(model, dataset):
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    _build(model, strategy, dataset)
    step = _step_function(model, strategy, model.test_step)
    model.reset_metrics()
    logs = {}
    iterator = iter(_distribute(strategy, dataset))
    # Every worker runs the same number of steps: the dataset's length.
    for _ in range(int(dataset.cardinality())):
        logs = step(iterator)
    return _metrics_or_logs(model, logs)


def _fit_multi_worker(
    trainable, dataset, *, validation_data, epochs, steps_per_epoch, callbacks, verbose
):
    import keras
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    callbacks = keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=verbose != 0,
        verbose=verbose,
        epochs=epochs,
        steps=steps_per_epoch,
        model=trainable,
    )
    _build(trainable, strategy, dataset)
    step = _step_function(trainable, strategy, trainable.train_step)
    trainable.stop_training = False
    trainable._initial_epoch = None
    callbacks.on_train_begin()
    initial_epoch = trainable._initial_epoch or 0
    iterator = iter(_distribute(strategy, dataset))
    epoch_logs = {}
    for epoch in range(initial_epoch, epochs):
        trainable.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        logs = {}
        for batch in range(steps_per_epoch):
            callbacks.on_train_batch_begin(batch)
            logs = step(iterator)
            callbacks.on_train_batch_end(batch, {k: float(v) for k, v in logs.items()})
            if trainable.stop_training:
                break
        epoch_logs = _metrics_or_logs(trainable, logs)
        if validation_data is not None:
            val_logs = _evaluate_multi_worker(trainable, validation_data)
            epoch_logs.update({f"val_{k}": v for k, v in val_logs.items()})
        callbacks.on_epoch_end(epoch, epoch_logs)
        if trainable.stop_training:
            break
    callbacks.on_train_end(logs=epoch_logs)
    return trainable.history
