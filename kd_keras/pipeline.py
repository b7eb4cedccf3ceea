"""The three-stage pipeline: teacher, student baseline, distilled student.

`run_pipeline(config, out_dir)` trains (or reuses) the teacher, then trains
two students from the same initial weights on the same data order with the
same optimizer and schedule; only their loss differs (cross-entropy versus
the `Distiller`'s blend). Everything it produces lands in one run folder:

```
config.json  progress.json  results.csv  results.json
history/<stage>.csv  models/<stage>.keras  stages/<stage>.json
test_accuracy_bar.png  report.png
```

A stage is complete once `stages/<stage>.json` exists; `resume=True`
skips complete stages and continues an interrupted one from its last
completed epoch.
"""

import math
import os
import shutil
import signal
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np

from kd_keras import atomic, distribute
from kd_keras.callbacks import (
    HistoryWriter,
    NonFiniteLossGuard,
    ProgressReporter,
    TrainingCheckpoint,
    repair_history,
)
from kd_keras.config import ConfigError, RunConfig
from kd_keras.data import (
    IMAGE_SHAPE,
    NUM_CLASSES,
    make_dataset,
    prepare_splits,
)
from kd_keras.distiller import Distiller
from kd_keras.fused_batch_norm import with_keras_batch_norm
from kd_keras.models import build_resnet, count_flops, stage_blocks
from kd_keras.zoo import build_model
from kd_keras.results import load_stage_rows, write_results
from kd_keras.speed import (
    apply_threading,
    effective_steps_per_execution,
    precision_scope,
    resolve_run_precisions,
    teacher_for_inference,
)
from kd_keras.stages import STAGES



class RunFolderError(ValueError):
    """The run folder cannot be used as asked (exists, differs, not writable)."""


class TeacherError(ValueError):
    """A teacher file that cannot be used: not a model, wrong classes, unsafe."""


class RunStopped(BaseException):
    """The run was asked to stop (SIGTERM). A `BaseException`, like
    `KeyboardInterrupt`, so no `except Exception` on the way swallows it."""


def _now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _warn(message):
    print(f"kd_keras: warning: {message}", file=sys.stderr, flush=True)


def load_run_config(path):
    """The `RunConfig` saved in a run folder's `config.json`.

    Returns:
        The config, or `None` if the file does not exist.

    Raises:
        DamagedFileError: the file is not JSON, not an object, or not a
            config kd_keras can run (an unknown field, a bad value); the
            message names the file and the fix.
    """
    values = atomic.read_json_object(path)
    if values is None:
        return None
    try:
        return RunConfig.from_dict(values)
    except (ConfigError, TypeError) as error:
        raise atomic.DamagedFileError(path, f"not a valid run config: {error}") from None


class ProgressFile:
    """The run's machine-readable progress, `progress.json`, written atomically.

    Fields: `status` ("running", "finished", "failed", "stopped"), `pid`,
    `stage`, `stage_index`, `stages`, `epoch`, `epochs`, `batch`, `batches`,
    `metrics` (the last epoch's logs), `completed_stages`, `started_at`,
    `updated_at`, `elapsed_s`, `error`.
    """

    def __init__(self, folder):
        self.path = Path(folder) / "progress.json"
        try:
            self.state = atomic.read_json_object(self.path) or {}
        except atomic.DamagedFileError as error:
            # Only a report for other processes: rebuilt from here on.
            _warn(f"'{self.path}' was damaged ({error.problem}); rebuilding it")
            self.state = {}
        elapsed = self.state.get("elapsed_s")
        if isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)) or not (
            math.isfinite(elapsed)
        ):
            elapsed = 0.0
        self._started = time.time() - elapsed

    def update(self, **fields):
        self.state.update(fields)
        self.state["updated_at"] = _now()
        self.state["elapsed_s"] = round(time.time() - self._started, 1)
        atomic.write_json(self.path, self.state)


def load_teacher(path, num_classes=NUM_CLASSES, *, image_shape=IMAGE_SHAPE):
    """Loads a trained teacher `.keras` file in Keras's safe mode and checks
    that it can serve as a teacher.

    The contract, checked once here so that no stage fails on it later: one
    input that accepts `(batch, 32, 32, 3)` images (a dimension may be
    `None`), one output of `(batch, num_classes)` logits, and a forward pass
    on two blank images that returns that shape with finite values.

    Args:
        path: path of a `.keras` model file.
        num_classes: the number of classes its logits must have.

    Returns:
        The `keras.Model`.

    Raises:
        TeacherError: the file is missing, a folder (e.g. a SavedModel) or
            not a regular file, is not a Keras model, needs unsafe
            deserialisation (e.g. a `Lambda` layer), has the wrong inputs or
            outputs, or fails on a batch of images.
    """
    path = Path(path)
    if path.is_dir():
        raise TeacherError(
            f"teacher '{path}' is a folder (a TensorFlow SavedModel?), not a Keras "
            "'.keras' file; load the model in Keras and save it with "
            "model.save('teacher.keras')"
        )
    if not path.exists():
        raise TeacherError(f"teacher file '{path}' does not exist")
    if not path.is_file():
        raise TeacherError(
            f"teacher '{path}' is not a regular file (a FIFO, socket or device)"
        )
    if path.suffix != ".keras":
        raise TeacherError(f"teacher file '{path}' must be a Keras v3 '.keras' file")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for bad files.
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "safe_mode" in str(error) or "unsafe" in str(error).lower():
            message = (
                "it needs unsafe deserialisation (e.g. a Lambda layer), which "
                "kd_keras refuses; rebuild it from stock layers"
            )
        raise TeacherError(f"teacher file '{path}' is not a loadable Keras model: {message}") from None
    check_teacher(model, num_classes, name=f"'{path}'", image_shape=image_shape)
    return model


def _symbolic(model, attribute):
    try:
        return list(getattr(model, attribute) or [])
    except (AttributeError, ValueError):  # An unbuilt model has none.
        return []


def check_teacher(model, num_classes=NUM_CLASSES, *, name="the teacher", image_shape=IMAGE_SHAPE):
    """Checks a model's input and output contract as a teacher (see
    `load_teacher`), for images of `image_shape`; raises `TeacherError`
    naming what does not fit."""
    IMAGE_SHAPE = tuple(image_shape)  # noqa: N806 (the data's, not CIFAR's)
    if not isinstance(model, keras.Model):
        raise TeacherError(f"teacher {name} is a {type(model).__name__}, not a Keras model")
    inputs, outputs = _symbolic(model, "inputs"), _symbolic(model, "outputs")
    if not inputs or not outputs:
        raise TeacherError(
            f"teacher {name} has no defined inputs or outputs (an unbuilt "
            "Sequential model?); build it on (32, 32, 3) images before saving, "
            "e.g. with keras.Input((32, 32, 3)) as its first layer"
        )
    if len(inputs) != 1:
        raise TeacherError(
            f"teacher {name} takes {len(inputs)} inputs; a teacher takes one batch "
            f"of images of shape {IMAGE_SHAPE}"
        )
    if len(outputs) != 1:
        raise TeacherError(
            f"teacher {name} has {len(outputs)} outputs; a teacher returns one "
            f"batch of logits of shape (batch, {num_classes})"
        )
    in_shape = tuple(inputs[0].shape[1:])
    if len(in_shape) != len(IMAGE_SHAPE) or any(
        dim is not None and dim != want for dim, want in zip(in_shape, IMAGE_SHAPE)
    ):
        raise TeacherError(
            f"teacher {name} takes inputs of shape {in_shape}, not {IMAGE_SHAPE}"
        )
    out_shape = tuple(outputs[0].shape)
    if out_shape[-1] != num_classes:
        raise TeacherError(
            f"teacher {name} predicts {out_shape[-1]} classes (output {out_shape}) "
            f"but the student predicts {num_classes}; use a teacher trained on "
            "the same classes"
        )
    if len(out_shape) != 2:
        raise TeacherError(
            f"teacher {name} outputs shape {out_shape}; a teacher must output "
            f"logits of shape (batch, {num_classes}) (add pooling and a Dense "
            f"layer of {num_classes} units)"
        )
    try:
        with warnings.catch_warnings():
            # A reloaded functional model names its input; a bare array is fine.
            warnings.filterwarnings("ignore", message="The structure of `inputs`")
            logits = keras.ops.convert_to_numpy(
                model(np.zeros((2,) + IMAGE_SHAPE, "float32"), training=False)
            )
    except Exception as error:  # Whatever the model raises, it cannot serve.
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise TeacherError(
            f"teacher {name} fails on a batch of {IMAGE_SHAPE} images: "
            f"{type(error).__name__}: {first}"
        ) from None
    if logits.shape != (2, num_classes):
        raise TeacherError(
            f"teacher {name} returned shape {logits.shape} for 2 images, not "
            f"(2, {num_classes})"
        )
    if not np.all(np.isfinite(logits.astype("float32"))):
        raise TeacherError(f"teacher {name} returns non-finite logits for blank images")


def check_run_folder(out_dir, config, *, resume=False, overwrite=False):
    """Checks, without changing anything, that a run can start in `out_dir`.

    Args:
        out_dir: the run folder.
        config: the requested `RunConfig`.
        resume: continue the run saved in `out_dir` (its config must not
            differ in anything that changes results).
        overwrite: replace a previous kd_keras run in `out_dir`.

    Returns:
        The `RunConfig` to run: `config`, or with `resume` the saved one
        (with this call's data path, verbosity and speed options).

    Raises:
        RunFolderError: see `prepare_run_folder`.
        DamagedFileError: with `resume`, a `config.json` that cannot be read.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"'{out}' exists and is not a folder")
    existing = out.is_dir() and any(c.name != atomic.LOCK_FILE for c in out.iterdir())
    saved_path = out / "config.json"
    if resume:
        saved = load_run_config(saved_path) if saved_path.exists() else None
        if saved is None:
            raise RunFolderError(f"nothing to resume: '{saved_path}' does not exist")
        differences = saved.result_differences(config)
        if differences:
            details = ", ".join(
                f"{k} (saved {getattr(saved, k)!r}, asked {getattr(config, k)!r})"
                for k in differences
            )
            raise RunFolderError(
                f"cannot resume '{out}': the config differs in {details}. "
                "Resume with the saved settings, or start a new --out folder."
            )
        # Where the data lives and how chatty the run is may change on resume.
        saved.data = config.data or saved.data
        saved.verbose = config.verbose
        # So may the speed options that do not change results.
        saved.steps_per_execution = config.steps_per_execution
        saved.threads = config.threads
        # And the devices the same recipe runs on (kd_keras.distribute).
        saved.strategy = config.strategy
        saved.devices = config.devices
        return saved
    if existing:
        if not overwrite:
            raise RunFolderError(
                f"'{out}' is not empty; pass --resume to continue it, "
                "--overwrite to replace it, or choose another --out"
            )
        if not saved_path.is_file():
            raise RunFolderError(
                f"refusing to overwrite '{out}': it is not a kd_keras run folder "
                "(no config.json); choose another --out"
            )
        holder = atomic.lock_holder(out)
        if holder is not None and holder.get("pid") != os.getpid():
            raise RunFolderError(f"'{out}' is in use by process {holder.get('pid')}")
    return config


def prepare_run_folder(out_dir, config, *, resume=False, overwrite=False):
    """Checks and creates the run folder; returns the config to run.

    Call it holding the folder's `RunLock`: it removes a kill's temporary
    leftovers (`resume`) or the previous run (`overwrite`).

    Args:
        out_dir: the run folder.
        config: the requested `RunConfig`.
        resume: continue the run saved in `out_dir` (its config must not
            differ in anything that changes results).
        overwrite: replace a previous kd_keras run in `out_dir`.

    Returns:
        The `RunConfig` to run.

    Raises:
        RunFolderError: `out_dir` is a non-empty folder and neither flag was
            given, `--resume` with a differing config or nothing to resume,
            `--overwrite` on a folder that is not a kd_keras run, or the
            folder is not writable.
        DamagedFileError: with `resume`, a `config.json` that cannot be read.
    """
    out = Path(out_dir)
    config = check_run_folder(out, config, resume=resume, overwrite=overwrite)
    if resume:
        # A kill during a write can leave a temporary file; never a final one.
        for leftover in out.rglob(".*.tmp*"):
            leftover.unlink()
        return config
    if overwrite and out.is_dir():
        for child in out.iterdir():
            if child.name == atomic.LOCK_FILE:
                continue
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise RunFolderError(f"cannot write to '{out}': {error.strerror or error}") from None
    return config


def make_optimizer(config, steps_per_epoch, epochs):
    """SGD with Nesterov momentum, decoupled weight decay (not on batch-norm
    parameters or biases) and a linear warm-up followed by cosine decay."""
    total_steps = max(1, steps_per_epoch * epochs)
    warmup_steps = min(steps_per_epoch * config.warmup_epochs, total_steps - 1)
    if warmup_steps > 0:
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=config.learning_rate / 10,
            decay_steps=total_steps - warmup_steps,
            warmup_target=config.learning_rate,
            warmup_steps=warmup_steps,
        )
    else:
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=config.learning_rate, decay_steps=total_steps
        )
    optimizer = keras.optimizers.SGD(
        learning_rate=schedule,
        momentum=config.momentum,
        nesterov=True,
        weight_decay=config.weight_decay or None,
    )
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    if config.precision == "mixed_float16":
        # float16 gradients underflow without loss scaling. Keras wraps the
        # optimizer of a mixed_float16 model itself; a Distiller keeps the
        # float32 policy, so wrap here for every stage alike.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _cross_entropy_accuracy(model):
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def evaluate_model(model, dataset):
    """Test-time accuracy and cross-entropy of a logits model.

    Returns:
        `{"accuracy": float, "loss": float}`; `loss` is the mean
        cross-entropy of the model's own predictions, so rows of different
        stages are comparable.
    """
    probe = keras.Model(model.inputs, model.outputs, name=f"{model.name}_eval")
    _cross_entropy_accuracy(probe)
    logs = distribute.evaluate(probe, dataset)  # model.evaluate, or its multi-worker form.
    return {"accuracy": float(logs["accuracy"]), "loss": float(logs["loss"])}


def measure_latency_ms(model, repeats=30):
    """Median wall time of one forward pass on one image, in milliseconds."""
    import tensorflow as tf

    forward = tf.function(lambda x: model(x, training=False))
    image = np.zeros((1,) + tuple(model.inputs[0].shape[1:]), dtype="float32")
    for _ in range(3):
        forward(image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward(image).numpy()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def save_model(model, path):
    """Saves the model for shipping: weights and architecture, no optimizer
    state, stock Keras layers only (`FusedBatchNormalization` becomes
    `BatchNormalization`), so the file loads with plain Keras."""
    shipped = with_keras_batch_norm(keras.Model(model.inputs, model.outputs, name=model.name))
    with atomic.atomic_path(path) as tmp:
        shipped.save(tmp)


class Pipeline:
    """Runs the stages of one `RunConfig` into one run folder.

    Prefer `run_pipeline`; this class holds the state the stages share.

    Args:
        config: the `RunConfig`.
        out_dir: the run folder.
        progress: a `ProgressFile`, or `None`.
        splits: the data splits, if already loaded (`load_data` then only
            builds the datasets).
        teacher: the loaded `config.teacher` model, if already loaded.
    """

    def __init__(self, config, out_dir, progress, *, splits=None, teacher=None):
        self.config = config
        self.out = Path(out_dir)
        self.progress = progress
        self.splits = splits
        self.reused_teacher = teacher
        self.datasets = {}

    # --- Data ---
    def data_contract(self):
        """`input_shape` and `num_classes` of the run's data (for `build_model`);
        loads the run's splits if they are not loaded yet."""
        if self.splits is None:
            self.splits = load_splits(self.config)
        images, _ = self.splits["train"]
        return {"input_shape": tuple(images.shape[1:]),
                "num_classes": len(self.splits.get("classes") or range(NUM_CLASSES))}

    def teacher_contract(self):
        """`load_teacher`'s `num_classes` and `image_shape` for the run's data."""
        contract = self.data_contract()
        return {"num_classes": contract["num_classes"], "image_shape": contract["input_shape"]}

    def load_data(self):
        c = self.config
        if self.splits is None:
            self.splits = load_splits(c)
        for name in ("val", "test"):
            images, labels = self.splits[name]
            self.datasets[name] = make_dataset(
                images, labels, batch_size=256, training=False
            )

    def train_dataset(self, epochs, start_epoch):
        images, labels = self.splits["train"]
        return make_dataset(
            images,
            labels,
            batch_size=self.config.batch_size,
            training=True,
            seed=self.config.seed,
            epochs=epochs,
            start_epoch=start_epoch,
        )

    @property
    def steps_per_epoch(self):
        return int(np.ceil(len(self.splits["train"][1]) / self.config.batch_size))

    def compile_options(self):
        """Speed options of `compile`: `steps_per_execution`, lowered to a
        divisor of the steps per epoch (see `kd_keras.speed`)."""
        requested = self.config.steps_per_execution
        steps = effective_steps_per_execution(requested, self.steps_per_epoch)
        if steps != requested and not getattr(self, "_warned_steps", False):
            self._warned_steps = True
            print(
                f"kd_keras: steps_per_execution {requested} does not divide the "
                f"{self.steps_per_epoch} steps per epoch; using {steps}",
                flush=True,
            )
        return {"steps_per_execution": steps}

    # --- One stage ---
    def fit(self, stage, trainable, epochs):
        """Fits `trainable` (a model or a Distiller), resumable; restores
        the best-validation weights at the end."""
        checkpoint = TrainingCheckpoint(self.out / "checkpoints" / stage)
        stage_index = STAGES.index(stage) if stage in STAGES else len(STAGES)

        def report(**fields):
            if self.progress is None:
                return
            self.progress.update(
                stage=stage,
                stage_index=stage_index,
                epochs=epochs,
                batches=self.steps_per_epoch,
                **fields,
            )

        history_path = self.out / "history" / f"{stage}.csv"
        callbacks = [
            checkpoint,  # First: it sets the initial epoch the others read.
            NonFiniteLossGuard(stage),
            HistoryWriter(history_path, checkpoint),
            ProgressReporter(report),
        ]
        report(epoch=0, batch=0, metrics={})
        if checkpoint.completed_epochs() >= epochs:
            # Killed after its last epoch, before the stage was recorded.
            checkpoint.set_model(trainable)
            checkpoint.on_train_begin()
            repair_history(history_path, checkpoint, checkpoint.completed_epochs())
            checkpoint.restore_best()
            return checkpoint.train_seconds(), checkpoint.best_epoch
        # `fit` (the dataset shuffles itself, with the run's seed), or its
        # multi-worker form (kd_keras.distribute).
        distribute.fit(
            trainable,
            self.train_dataset(epochs, checkpoint.completed_epochs()),
            validation_data=self.datasets["val"],
            epochs=epochs,
            steps_per_epoch=self.steps_per_epoch,
            callbacks=callbacks,
            verbose=self.config.verbose,
        )
        checkpoint.restore_best()
        # Summed over every process that trained this stage (see the checkpoint).
        return checkpoint.train_seconds(), checkpoint.best_epoch

    def student_initial_weights(self):
        """The one set of initial weights both students start from."""
        path = self.out / "checkpoints" / "student_init.weights.h5"
        student = self.build_student()
        if path.exists():
            try:
                student.load_weights(path)
                return student
            except Exception as error:  # h5py and Keras raise many types.
                # Derivable: the seeded build above made these very weights.
                _warn(f"'{path}' was damaged ({type(error).__name__}); rebuilding it "
                      "from the run's seed")
                student = self.build_student()
        with atomic.atomic_path(path) as tmp:
            student.save_weights(tmp)
        return student

    def build_student(self):
        c = self.config
        keras.utils.set_random_seed(c.seed + 1)
        with precision_scope(c.precision):
            return build_model(
                c.student_model, role="student", depth=c.student_depth, width=c.student_width,
                synchronized_batch_norm=c.sync_batch_norm, **self.data_contract(),
            )

    def stage_teacher(self):
        c = self.config
        if c.teacher:
            teacher = self.reused_teacher or load_teacher(c.teacher, **self.teacher_contract())
            save_model(teacher, self.out / "models" / "teacher.keras")
            return teacher, {"train_seconds": 0.0, "best_epoch": None, "epochs": 0,
                             "source": str(c.teacher)}
        keras.utils.set_random_seed(c.seed)
        with precision_scope(c.precision):
            teacher = build_model(
                c.teacher_model, role="teacher", depth=c.teacher_depth, width=c.teacher_width,
                synchronized_batch_norm=c.sync_batch_norm, **self.data_contract(),
            )
        teacher.compile(
            optimizer=make_optimizer(c, self.steps_per_epoch, c.teacher_epochs),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            **self.compile_options(),
        )
        keras.utils.set_random_seed(c.seed)
        seconds, best_epoch = self.fit("teacher", teacher, c.teacher_epochs)
        return teacher, {"train_seconds": seconds, "best_epoch": best_epoch,
                         "epochs": c.teacher_epochs}

    def stage_student_baseline(self, teacher):
        c = self.config
        student = self.student_initial_weights()
        student.compile(
            optimizer=make_optimizer(c, self.steps_per_epoch, c.student_epochs),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            **self.compile_options(),
        )
        keras.utils.set_random_seed(c.seed)
        seconds, best_epoch = self.fit("student_baseline", student, c.student_epochs)
        return student, {"train_seconds": seconds, "best_epoch": best_epoch,
                         "epochs": c.student_epochs}

    def stage_student_distilled(self, teacher):
        return self.distill(
            teacher, "student_distilled", self.config.temperature, self.config.alpha
        )

    def distill(self, teacher, stage, temperature, alpha):
        """Trains a student from the shared initial weights with the
        `Distiller`, under the run's recipe and data order.

        Args:
            teacher: the trained teacher.
            stage: the stage's name (its checkpoint, history and row).
            temperature: T of the distillation loss.
            alpha: weight of the hard-label loss.

        Returns:
            `(student, extra)`: the trained student and the stage's extra
            result fields.
        """
        c = self.config
        student = self.student_initial_weights()
        # The frozen teacher may run in lower precision; the student not.
        teacher = teacher_for_inference(teacher, c.teacher_precision)
        distiller = Distiller(student=student, teacher=teacher)
        distiller.compile(
            optimizer=make_optimizer(c, self.steps_per_epoch, c.student_epochs),
            metrics=["accuracy"],
            alpha=alpha,
            temperature=temperature,
            **self.compile_options(),
        )
        keras.utils.set_random_seed(c.seed)
        seconds, best_epoch = self.fit(stage, distiller, c.student_epochs)
        distiller_val = distribute.evaluate(distiller, self.datasets["val"])
        return student, {
            "train_seconds": seconds,
            "best_epoch": best_epoch,
            "epochs": c.student_epochs,
            "distiller_val_loss": float(distiller_val["loss"]),
            "temperature": temperature,
            "alpha": alpha,
        }

    def finish_stage(self, stage, model, extra):
        """Saves the model, evaluates it and records the stage as complete."""
        model_path = self.out / "models" / f"{stage}.keras"
        if stage != "teacher" or not self.config.teacher:
            save_model(model, model_path)
        test = evaluate_model(model, self.datasets["test"])
        val = evaluate_model(model, self.datasets["val"])
        c = self.config
        if stage == "teacher":
            # A reused teacher's depth is whatever it was built with.
            depth = None if c.teacher else _resnet_depth(c.teacher_model, c.teacher_depth)
            # Printed, recorded and (a reused teacher: already refused if
            # near chance) warned about before the students distil from it.
            check = teacher_sanity_check(model, self.splits, verbose=c.verbose, refuse=False,
                                         accuracy=val["accuracy"])
            extra = {**extra, "chance_accuracy": check["chance_accuracy"]}
        else:
            depth = _resnet_depth(c.student_model, c.student_depth)
        row = {
            "stage": stage,
            "model": model.name,
            "depth": depth,
            "params": int(model.count_params()),
            "flops": count_flops(model),
            "size_mb": round(model_path.stat().st_size / 2**20, 3),
            "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            "val_accuracy": val["accuracy"],
            "val_loss": val["loss"],
            "latency_ms": round(measure_latency_ms(model), 3),
            **extra,
        }
        atomic.write_json(self.out / "stages" / f"{stage}.json", row)
        return row

    def completed_row(self, stage):
        """The stage's recorded row, or `None` if it has none; a damaged
        record is reported and counts as none (the stage is then finished
        again from its checkpoint, which trains only what is missing)."""
        path = self.out / "stages" / f"{stage}.json"
        try:
            return atomic.read_json_object(path, keys=("stage", "test_accuracy"))
        except atomic.DamagedFileError as error:
            _warn(f"'{path}' was damaged ({error.problem}); rebuilding it from the "
                  "stage's checkpoint")
            return None

    def repair_history(self, stage, finished):
        """Rebuilds missing or damaged history rows of a stage from its
        checkpoint's record (e.g. after a kill between the two writes).

        A damaged checkpoint of a `finished` stage is only reported: the
        stage does not need it. Otherwise its `DamagedFileError` is raised.
        """
        checkpoint = TrainingCheckpoint(self.out / "checkpoints" / stage)
        try:
            completed = checkpoint.completed_epochs()
            if completed:
                repair_history(self.out / "history" / f"{stage}.csv", checkpoint, completed)
        except atomic.DamagedFileError as error:
            if not finished:
                raise
            _warn(f"{error} (stage '{stage}' is finished and does not need it)")

    def saved_teacher(self):
        """The run's trained teacher (`models/teacher.keras`), or `None` if
        that file is missing or damaged (the teacher stage is then finished
        again from its checkpoint or `config.teacher`)."""
        path = self.out / "models" / "teacher.keras"
        try:
            return load_teacher(path, **self.teacher_contract())
        except TeacherError as error:
            _warn(f"{error}; rebuilding it")
            return None

    def run(self):
        rows = {}
        teacher = None
        completed = []
        for stage in STAGES:
            row = self.completed_row(stage)
            self.repair_history(stage, finished=row is not None)
            if row is None:
                if teacher is None and stage != "teacher":
                    teacher = self.saved_teacher()
                    if teacher is None:
                        teacher, extra = self.stage_teacher()
                        rows["teacher"] = self.finish_stage("teacher", teacher, extra)
                run_stage = getattr(self, f"stage_{stage}")
                model, extra = run_stage() if stage == "teacher" else run_stage(teacher)
                row = self.finish_stage(stage, model, extra)
                if stage == "teacher":
                    teacher = model
            rows[stage] = row
            completed.append(stage)
            if self.progress is not None:
                self.progress.update(completed_stages=completed)
        return [rows[stage] for stage in STAGES]


def _raise_stop(signum, frame):
    raise RunStopped(f"stopped by signal {signal.Signals(signum).name}")


def run_pipeline(config, out_dir, *, resume=False, overwrite=False):
    """Runs teacher, student baseline and distilled student into `out_dir`.

    Args:
        config: a `RunConfig`.
        out_dir: the run folder (created; must be empty unless `resume` or
            `overwrite`).
        resume: skip completed stages and continue the interrupted one.
        overwrite: replace a previous kd_keras run in `out_dir`.

    Returns:
        A list of result rows (dicts), one per stage, as in `results.json`.

    The folder, the teacher file and the data are checked before the folder
    is made or changed; a new run that fails before its first stage starts
    removes what it created, so the corrected command is not refused.

    Raises:
        RunFolderError, ConfigError, DatasetError, TeacherError,
        NonFiniteLossError, DiskWriteError, RunLockedError, DamagedFileError:
        each with a message naming the problem (and, for a damaged file, the
        file and the fix); once training has started, `progress.json` then
        says "failed".

    Example:

    >>> config = RunConfig.from_preset("quick", data="cifar-10-python.tar.gz")
    >>> rows = run_pipeline(config, "runs/quick")
    """
    config.validate()
    out = Path(out_dir)
    worker = None
    if config.strategy == "multi_worker" and not distribute.is_chief():
        # Only the chief writes the run folder; this worker writes a copy.
        worker = distribute.WorkerFolder(out, resume=resume)
        out = worker.path
    try:
        return _run_pipeline(config, out, resume=resume, overwrite=overwrite)
    finally:
        if worker is not None:
            worker.cleanup()


def _run_pipeline(config, out, *, resume, overwrite):
    # Everything that can be checked is checked before the folder is made
    # or touched: the folder's state, the teacher file, the data.
    config = check_run_folder(out, config, resume=resume, overwrite=overwrite)
    apply_threading(config)  # Before TensorFlow starts (the teacher and data load next).
    # The strategy too: tf.distribute fixes its devices and cluster when it starts.
    strategy = distribute.make_strategy(config.strategy, config.devices)
    distribute.check_batch_size(strategy, config.batch_size)
    # "auto" precisions become what this machine runs fastest; a resumed run
    # keeps its saved (resolved) values.
    config, choice = resolve_run_precisions(config)
    splits = load_splits(config)
    reused_teacher = None
    if config.teacher and not (out / "stages" / "teacher.json").is_file():
        contract = Pipeline(config, out, None, splits=splits).teacher_contract()
        reused_teacher = load_teacher(config.teacher, **contract)
        # Refused here, before the run folder is made, if near chance.
        teacher_sanity_check(reused_teacher, splits, name=f"'{config.teacher}'",
                             verbose=config.verbose)
    created = not out.exists()
    # A new run in a new or empty folder: a failed start leaves nothing.
    fresh = not resume and (
        created or not any(c.name != atomic.LOCK_FILE for c in out.iterdir())
    )
    lock = atomic.RunLock(out)
    try:
        lock.acquire()  # Before changing anything in the folder.
    except OSError as error:
        raise RunFolderError(f"cannot write to '{out}': {error.strerror or error}") from None
    started = False
    try:
        # Checked again under the lock: another process may have started here.
        prepare_run_folder(out, config, resume=resume, overwrite=overwrite)
    except BaseException:
        _remove_failed_start(out, lock, created, fresh=fresh)
        lock.release()
        raise
    if config.verbose:
        print(f"kd_keras: {choice.describe()}", flush=True)
    progress = ProgressFile(out)
    previous = {
        signum: signal.signal(signum, _raise_stop)
        for signum in (signal.SIGTERM,)
        if _in_main_thread()
    }
    try:
        atomic.write_text(out / "config.json", config.to_json() + "\n")
        write_classes(out, config, splits)
        progress.update(
            status="running",
            pid=os.getpid(),
            stages=list(STAGES),
            started_at=progress.state.get("started_at") or _now(),
            error=None,
        )
        pipeline = Pipeline(config, out, progress, splits=splits, teacher=reused_teacher)
        pipeline.load_data()
        started = True
        # Every worker has its copy of the run folder before the chief goes on.
        distribute.barrier(strategy)
        with strategy.scope():  # Models, optimizers and Distillers are built in it.
            rows = pipeline.run()
        write_results(out, load_stage_rows(out))  # Keeps stages added by tuning.
        progress.update(status="finished", finished_at=_now())
        return rows
    except (RunStopped, KeyboardInterrupt) as error:
        if started or not fresh:
            progress.update(status="stopped", error=str(error) or "interrupted")
        raise
    except BaseException as error:
        if started or not fresh:
            progress.update(status="failed", error=f"{type(error).__name__}: {error}")
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if not started:
            _remove_failed_start(out, lock, created, fresh=fresh)
        lock.release()


def load_splits(config):
    """The data splits of a config (`prepare_splits` with its fields)."""
    return prepare_splits(
        config.data,
        val_size=config.val_size,
        train_per_class=config.train_per_class,
        val_per_class=config.val_per_class,
        test_per_class=config.test_per_class,
        seed=config.seed,
        image_size=config.image_size,
    )


# A teacher whose validation accuracy is below this many times chance
# (1 / classes) is taken as broken: 15% for 10 classes, 3 standard errors
# above chance on a validation split of 360 images.
NEAR_CHANCE_FACTOR = 1.5


def teacher_sanity_check(teacher, splits, *, name="the teacher", verbose=1, refuse=True,
                         accuracy=None):
    """The teacher's accuracy on the run's validation split, checked
    against chance before anything is distilled from it.

    Args:
        teacher: the teacher model (raw 0..255 pixels in, logits out).
        splits: the run's splits (`prepare_splits`); `"val"` is used.
        name: the teacher, for messages.
        verbose: print the accuracy if non-zero.
        refuse: raise for a near-chance teacher (else warn).
        accuracy: the validation accuracy, if already measured.

    Returns:
        `{"val_accuracy": float, "chance_accuracy": float}`.

    Raises:
        TeacherError: with `refuse`, an accuracy below `NEAR_CHANCE_FACTOR`
            times chance; the message lists the usual causes.
    """
    classes = list(splits.get("classes") or range(NUM_CLASSES))
    images, labels = splits["val"]
    if accuracy is None:
        accuracy = evaluate_model(
            teacher, make_dataset(images, labels, batch_size=256, training=False)
        )["accuracy"]
    chance = 1.0 / len(classes)
    if verbose:
        print(f"kd_keras: teacher {name}: validation accuracy {accuracy:.4f} on "
              f"{len(labels)} images (chance {chance:.4f})", flush=True)
    if accuracy < NEAR_CHANCE_FACTOR * chance:
        shown = ", ".join(map(str, classes[:10])) + (", ..." if len(classes) > 10 else "")
        message = (
            f"teacher {name} is near chance on this data: validation accuracy "
            f"{accuracy:.4f} on {len(labels)} images, chance {chance:.4f} (refused below "
            f"{NEAR_CHANCE_FACTOR * chance:.4f}). Likely causes: wrong preprocessing "
            "(kd_keras feeds raw 0-255 pixels; a teacher trained on 0-1 inputs needs "
            "keras.layers.Rescaling(1/255) as its first layer), wrong class order "
            f"(class i here is: {shown}; see classes.json), or a teacher trained on "
            "other data or outputs not matching its classes (probabilities are "
            "accepted only via Distiller(teacher_outputs='probabilities'))"
        )
        if refuse:
            raise TeacherError(message)
        _warn(message)
    return {"val_accuracy": float(accuracy), "chance_accuracy": float(chance)}


def write_classes(out, config, splits):
    """Writes the run's `classes.json`: class names in label order, the
    data's kind, image shape and split sizes."""
    from kd_keras.data_sources import data_kind

    images, _ = splits["train"]
    atomic.write_json(Path(out) / "classes.json", {
        "classes": list(splits.get("classes") or range(NUM_CLASSES)),
        "data": config.data,
        "kind": data_kind(config.data),
        "image_shape": list(images.shape[1:]),
        "images": {k: int(len(splits[k][1])) for k in ("train", "val", "test")},
    })


def _resnet_depth(spec, depth):
    """The ResNet depth of a model spec (None for other architectures)."""
    from kd_keras.model_specs import parse_model_spec

    if spec is None:
        return depth
    parsed = parse_model_spec(spec)
    return parsed["depth"] if parsed["kind"] == "resnet" else None


def _remove_failed_start(out, lock, created, *, fresh):
    """Removes what a new run that failed before training created: the
    folder if this run made it, else (the folder was empty) the files it
    wrote. Called holding the lock; a folder that held anything before
    (a resumed or overwritten run, someone's files) is never touched."""
    if not fresh or not lock.held:
        return
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in out.iterdir() if out.is_dir() else ():
        if child.name != atomic.LOCK_FILE:
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(
                missing_ok=True
            )


def _in_main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()


def describe_models(config):
    """Parameter and FLOP counts of the config's teacher and student."""
    teacher = build_resnet(config.teacher_depth, width=config.teacher_width)
    student = build_resnet(config.student_depth, width=config.student_width)
    return {
        "teacher": {"params": teacher.count_params(), "flops": count_flops(teacher),
                    "blocks": stage_blocks(config.teacher_depth)[0]},
        "student": {"params": student.count_params(), "flops": count_flops(student),
                    "blocks": stage_blocks(config.student_depth)[0]},
    }
