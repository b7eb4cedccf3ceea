"""Callbacks of the pipeline: progress file, history, checkpoints, NaN guard."""

import contextlib
import csv
import io
import math
import time
from pathlib import Path

import keras
import numpy as np

from kd_keras import atomic
from kd_keras.errors import DamagedFileError, NonFiniteLossError
from kd_keras.run_folder import read_history


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops a stage at the first NaN/inf loss with a message that says where.

    Not Keras's `TerminateOnNaN`: that one only prints a line and stops
    `fit`, so the run would go on with a diverged model; this raises the
    project's one-line error naming the stage, epoch and batch.

    Args:
        stage: the stage's name, for the message.
    """

    def __init__(self, stage):
        super().__init__()
        self.stage = stage
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(
                f"stage '{self.stage}' epoch {self.epoch + 1} batch {batch + 1}: "
                f"the loss is {float(loss)}. Lower the learning rate "
                "(--learning-rate) or check the temperature (--temperature)."
            )


def epoch_row(model, epoch, logs):
    """The history row of a finished epoch: `epoch` (from 1), every log
    value as a float, and the optimizer's learning rate."""
    row = {"epoch": epoch + 1}
    row.update({k: float(v) for k, v in (logs or {}).items()})
    row["learning_rate"] = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    return row


class HistoryWriter(keras.callbacks.Callback):
    """Writes `history/<stage>.csv` atomically after every epoch.

    Not Keras's `CSVLogger`: that one appends to an open file (a kill leaves a
    torn row) and on resume cannot drop the rows of epochs being retrained.

    On resume, rows of epochs that will be retrained are dropped, so the file
    always holds one row per completed epoch. With a `checkpoint`, the rows
    of the epochs it recorded are taken from its record: a kill between the
    checkpoint's write and this file's loses no row, and a damaged file is
    rebuilt.

    Args:
        path: the CSV file.
        checkpoint: the stage's `TrainingCheckpoint`, or `None`.
    """

    def __init__(self, path, checkpoint=None):
        super().__init__()
        self.path = Path(path)
        self.checkpoint = checkpoint
        self.rows = []

    def on_train_begin(self, logs=None):
        initial_epoch = getattr(self.model, "_initial_epoch", None) or 0
        self.rows = repair_history(self.path, self.checkpoint, initial_epoch)

    def on_epoch_end(self, epoch, logs=None):
        row = epoch_row(self.model, epoch, logs)
        self.rows = [r for r in self.rows if int(r["epoch"]) != epoch + 1] + [row]
        write_history(self.path, self.rows)


def repair_history(path, checkpoint, completed_epochs):
    """Makes a history CSV hold exactly epochs 1..`completed_epochs`.

    Rows beyond `completed_epochs` (epochs that will be trained again) are
    dropped; rows the checkpoint recorded replace missing or damaged ones.
    The file is rewritten only if it changes.

    Args:
        path: the CSV file.
        checkpoint: a `TrainingCheckpoint` (its `history()`), or `None`.
        completed_epochs: the epochs completed so far.

    Returns:
        The rows, in epoch order.

    Raises:
        DamagedFileError: the CSV is damaged and the checkpoint cannot
            replace it (a checkpoint written by kd_keras 0.1 holds no rows).
    """
    recorded = {int(r["epoch"]): r for r in (checkpoint.history() if checkpoint else [])}
    try:
        rows = read_history(path)
    except DamagedFileError:
        if not all(e in recorded for e in range(1, completed_epochs + 1)):
            raise
        rows = []
    by_epoch = {int(r["epoch"]): r for r in rows if int(r["epoch"]) <= completed_epochs}
    for epoch, row in recorded.items():
        if epoch <= completed_epochs:
            by_epoch[epoch] = row
    repaired = [by_epoch[e] for e in sorted(by_epoch)]
    if repaired != rows and (repaired or path.exists()):
        write_history(path, repaired)
    return repaired


def write_history(path, rows):
    """Writes a list of per-epoch dicts as CSV atomically."""
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buffer.getvalue())


class TrainingCheckpoint(keras.callbacks.Callback):
    """Saves the model's and the optimizer's state after every epoch, and
    the best-validation weights, so an interrupted stage resumes from its
    last completed epoch and the stage ends with its best weights.

    Not Keras's `BackupAndRestore`: it keeps neither the best weights, the
    stage's summed training time nor the history rows, and is not atomic.

    Everything is written atomically (`.npz` and JSON), so a kill at any
    moment leaves either the previous or the new checkpoint, never a torn one.
    `meta.json`, written last, commits the epoch: it records the epoch, the
    best score and epoch, the stage's training time so far (summed over every
    process that worked on the stage) and every completed epoch's history
    row (from which `HistoryWriter` restores rows a kill kept it from
    writing).

    Args:
        folder: where the checkpoint lives (one folder per stage).
        monitor: the validation metric that picks the best weights.

    Raises:
        DamagedFileError: from `completed_epochs()`, `on_train_begin()` or
            `restore_best()`, when a checkpoint file cannot be read or
            belongs to another model; the message names the file and says
            to delete the stage's checkpoint folder and resume.
    """

    _META_KEYS = ("epoch", "best", "best_epoch")

    def __init__(self, folder, monitor="val_accuracy"):
        super().__init__()
        self.folder = Path(folder)
        self.monitor = monitor
        self.best = -math.inf
        self.best_epoch = None
        self._clock = time.time()  # This process's share of the stage starts now.
        self._previous_seconds = None

    @property
    def _state_path(self):
        return self.folder / "latest.npz"

    @property
    def _best_path(self):
        return self.folder / "best.npz"

    @property
    def _meta_path(self):
        return self.folder / "meta.json"

    def _meta(self):
        meta = atomic.read_json_object(self._meta_path, keys=self._META_KEYS)
        if meta is None:
            return None
        epoch, best, best_epoch = meta["epoch"], meta["best"], meta["best_epoch"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise DamagedFileError(self._meta_path, f"epoch {epoch!r}")
        if isinstance(best, bool) or not isinstance(best, (int, float)):
            raise DamagedFileError(self._meta_path, f"best {best!r}")
        if best_epoch is not None and (
            isinstance(best_epoch, bool) or not isinstance(best_epoch, int)
        ):
            raise DamagedFileError(self._meta_path, f"best_epoch {best_epoch!r}")
        return meta

    def completed_epochs(self):
        """Epochs completed by an earlier, interrupted fit (0 if none)."""
        return (self._meta() or {}).get("epoch", 0)

    def history(self):
        """The history rows of the completed epochs, as recorded (a list of
        dicts, columns in their CSV order)."""
        recorded = (self._meta() or {}).get("history") or []
        try:
            # Pairs, not objects: JSON objects are written with sorted keys.
            rows = [dict(pairs) for pairs in recorded]
        except (TypeError, ValueError):
            raise DamagedFileError(self._meta_path, "a malformed 'history' entry") from None
        return [r for r in rows if "epoch" in r]

    def train_seconds(self):
        """Wall time spent on the stage so far, over every process: the
        recorded time of the completed epochs of earlier processes plus this
        process's time since the checkpoint was made."""
        if self._previous_seconds is None:
            self._previous_seconds = float((self._meta() or {}).get("train_seconds", 0.0))
        return self._previous_seconds + (time.time() - self._clock)

    def on_train_begin(self, logs=None):
        meta = self._meta()
        self.train_seconds()  # Reads the earlier processes' time once.
        if meta is None:
            return
        optimizer = self.model.optimizer
        if not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        with self._load(self._state_path) as state:
            self._assign(self.model.weights, state, "w", self._state_path)
            self._assign(optimizer.variables, state, "o", self._state_path)
        self.best = meta["best"]
        self.best_epoch = meta["best_epoch"]
        self.model._initial_epoch = meta["epoch"]

    @contextlib.contextmanager
    def _load(self, path):
        try:
            state = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise DamagedFileError(
                self._meta_path, f"it records an epoch but '{path.name}' is missing"
            ) from None
        except Exception as error:  # NumPy raises many types for bad files.
            raise DamagedFileError(path, f"not a readable .npz: {error}") from None
        with state:
            yield state

    def _assign(self, variables, state, prefix, path):
        try:
            _assign(variables, state, prefix)
        except (ValueError, KeyError, OSError, EOFError) as error:
            raise DamagedFileError(path, str(error).splitlines()[0]) from None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(
                f"TrainingCheckpoint monitors '{self.monitor}' but the logs "
                f"hold only {sorted(logs or {})}"
            )
        if value > self.best:
            self.best, self.best_epoch = float(value), epoch + 1
            _save(self._best_path, w=self.model.weights)
        _save(self._state_path, w=self.model.weights, o=self.model.optimizer.variables)
        history = [r for r in self.history() if int(r["epoch"]) < epoch + 1]
        history.append(epoch_row(self.model, epoch, logs))
        atomic.write_json(
            self._meta_path,
            {
                "epoch": epoch + 1,
                "best": self.best,
                "best_epoch": self.best_epoch,
                "train_seconds": round(self.train_seconds(), 3),
                "history": [list(map(list, row.items())) for row in history],
            },
        )

    def restore_best(self):
        """Loads the best-validation weights into the model."""
        if self._best_path.exists():
            with self._load(self._best_path) as state:
                self._assign(self.model.weights, state, "w", self._best_path)


def _save(path, **groups):
    arrays = {
        f"{prefix}{i}": keras.ops.convert_to_numpy(v)
        for prefix, variables in groups.items()
        for i, v in enumerate(variables)
    }
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "wb") as file:
            np.savez(file, **arrays)


def _assign(variables, state, prefix):
    count = sum(1 for k in state.files if k.startswith(prefix))
    if count != len(variables):
        raise ValueError(
            f"checkpoint holds {count} '{prefix}' arrays but the model has "
            f"{len(variables)} variables: it belongs to another model"
        )
    for i, variable in enumerate(variables):
        variable.assign(state[f"{prefix}{i}"])


class ProgressReporter(keras.callbacks.Callback):
    """Publishes the stage's progress through `progress(...)` updates.

    Args:
        update: a callable taking keyword fields (`epoch`, `epochs`,
            `batch`, `batches`, `metrics`) that records progress.
        every_batches: how often to report within an epoch.
    """

    def __init__(self, update, every_batches=10):
        super().__init__()
        self.update = update
        self.every_batches = every_batches
        self.epoch = 0
        self.started = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.update(epoch=epoch, batch=0)

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.every_batches == 0:
            self.update(epoch=self.epoch, batch=batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        metrics = {k: float(v) for k, v in (logs or {}).items()}
        self.update(epoch=epoch + 1, batch=0, metrics=metrics)
