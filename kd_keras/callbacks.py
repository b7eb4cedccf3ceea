"""Callbacks of the pipeline: progress file, history, checkpoints, NaN guard."""

import csv
import io
import math
import time
from pathlib import Path

import keras
import numpy as np

from kd_keras import atomic


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops a stage at the first NaN/inf loss with a message that says where.

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


class HistoryWriter(keras.callbacks.Callback):
    """Writes `history/<stage>.csv` atomically after every epoch.

    On resume, rows of epochs that will be retrained are dropped, so the file
    always holds one row per completed epoch.
    """

    def __init__(self, path):
        super().__init__()
        self.path = Path(path)
        self.rows = []

    def on_train_begin(self, logs=None):
        initial_epoch = getattr(self.model, "_initial_epoch", None) or 0
        self.rows = [r for r in read_history(self.path) if int(r["epoch"]) <= initial_epoch]

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        row["learning_rate"] = float(
            keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        )
        self.rows = [r for r in self.rows if int(r["epoch"]) != epoch + 1] + [row]
        write_history(self.path, self.rows)


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


def read_history(path):
    """Reads a history CSV into a list of dicts of floats (empty if absent)."""
    try:
        with open(path, newline="") as file:
            rows = [
                {k: float(v) for k, v in row.items() if v not in ("", None)}
                for row in csv.DictReader(file)
            ]
    except FileNotFoundError:
        return []
    for row in rows:
        row["epoch"] = int(row["epoch"])
    return rows


class TrainingCheckpoint(keras.callbacks.Callback):
    """Saves the model's and the optimizer's state after every epoch, and
    the best-validation weights, so an interrupted stage resumes from its
    last completed epoch and the stage ends with its best weights.

    Everything is written atomically (`.npz` and JSON), so a kill at any
    moment leaves either the previous or the new checkpoint, never a torn one.

    Args:
        folder: where the checkpoint lives (one folder per stage).
        monitor: the validation metric that picks the best weights.
    """

    def __init__(self, folder, monitor="val_accuracy"):
        super().__init__()
        self.folder = Path(folder)
        self.monitor = monitor
        self.best = -math.inf
        self.best_epoch = None

    @property
    def _state_path(self):
        return self.folder / "latest.npz"

    @property
    def _best_path(self):
        return self.folder / "best.npz"

    @property
    def _meta_path(self):
        return self.folder / "meta.json"

    def completed_epochs(self):
        """Epochs completed by an earlier, interrupted fit (0 if none)."""
        return (atomic.read_json(self._meta_path) or {}).get("epoch", 0)

    def on_train_begin(self, logs=None):
        meta = atomic.read_json(self._meta_path)
        if meta is None:
            return
        optimizer = self.model.optimizer
        if not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        with np.load(self._state_path) as state:
            _assign(self.model.weights, state, "w")
            _assign(optimizer.variables, state, "o")
        self.best = meta["best"]
        self.best_epoch = meta["best_epoch"]
        self.model._initial_epoch = meta["epoch"]

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
        atomic.write_json(
            self._meta_path,
            {"epoch": epoch + 1, "best": self.best, "best_epoch": self.best_epoch},
        )

    def restore_best(self):
        """Loads the best-validation weights into the model."""
        if self._best_path.exists():
            with np.load(self._best_path) as state:
                _assign(self.model.weights, state, "w")


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
