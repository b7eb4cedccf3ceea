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

import os
import shutil
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np

from kd_keras import atomic
from kd_keras.callbacks import (
    HistoryWriter,
    NonFiniteLossGuard,
    ProgressReporter,
    TrainingCheckpoint,
)
from kd_keras.config import RunConfig
from kd_keras.data import (
    IMAGE_SHAPE,
    NUM_CLASSES,
    make_dataset,
    prepare_splits,
    resolve_source,
)
from kd_keras.distiller import Distiller
from kd_keras.fused_batch_norm import with_keras_batch_norm
from kd_keras.models import build_resnet, count_flops, stage_blocks
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


class ProgressFile:
    """The run's machine-readable progress, `progress.json`, written atomically.

    Fields: `status` ("running", "finished", "failed", "stopped"), `pid`,
    `stage`, `stage_index`, `stages`, `epoch`, `epochs`, `batch`, `batches`,
    `metrics` (the last epoch's logs), `completed_stages`, `started_at`,
    `updated_at`, `elapsed_s`, `error`.
    """

    def __init__(self, folder):
        self.path = Path(folder) / "progress.json"
        self.state = atomic.read_json(self.path, {}) or {}
        self._started = time.time() - self.state.get("elapsed_s", 0.0)

    def update(self, **fields):
        self.state.update(fields)
        self.state["updated_at"] = _now()
        self.state["elapsed_s"] = round(time.time() - self._started, 1)
        atomic.write_json(self.path, self.state)


def load_teacher(path, num_classes=NUM_CLASSES):
    """Loads a trained teacher `.keras` file in Keras's safe mode.

    Args:
        path: path of a `.keras` model file.
        num_classes: the number of classes its logits must have.

    Returns:
        The `keras.Model`.

    Raises:
        TeacherError: the file is missing, is not a Keras model, needs unsafe
            deserialisation (e.g. a `Lambda` layer), or has the wrong input or
            output shape.
    """
    path = Path(path)
    if not path.is_file():
        raise TeacherError(f"teacher file '{path}' does not exist")
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
    if not isinstance(model, keras.Model) or len(model.outputs or []) != 1:
        raise TeacherError(f"teacher file '{path}' is not a single-output Keras model")
    out_shape = tuple(model.outputs[0].shape)
    if out_shape[-1] != num_classes:
        raise TeacherError(
            f"teacher '{path}' predicts {out_shape[-1]} classes (output {out_shape}) "
            f"but the student predicts {num_classes}; use a teacher trained on "
            "the same classes"
        )
    in_shape = tuple(model.inputs[0].shape[1:])
    if in_shape != IMAGE_SHAPE:
        raise TeacherError(
            f"teacher '{path}' takes inputs of shape {in_shape}, not {IMAGE_SHAPE}"
        )
    return model


def prepare_run_folder(out_dir, config, *, resume=False, overwrite=False):
    """Checks and creates the run folder; returns the config to run.

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
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"'{out}' exists and is not a folder")
    existing = out.is_dir() and any(c.name != "run.lock" for c in out.iterdir())
    saved_path = out / "config.json"
    if resume:
        if not saved_path.is_file():
            raise RunFolderError(f"nothing to resume: '{saved_path}' does not exist")
        saved = RunConfig.load(saved_path)
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
        # A kill during a write can leave a temporary file; never a final one.
        for leftover in out.rglob(".*.tmp*"):
            leftover.unlink()
        # Where the data lives and how chatty the run is may change on resume.
        saved.data = config.data or saved.data
        saved.verbose = config.verbose
        # So may the speed options that do not change results.
        saved.steps_per_execution = config.steps_per_execution
        saved.threads = config.threads
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
        lock = atomic.RunLock(out)
        owner = lock.owner()
        if owner and owner != os.getpid() and atomic.pid_alive(owner):
            raise RunFolderError(f"'{out}' is in use by process {owner}")
        for child in out.iterdir():
            if child.name == "run.lock":
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
    logs = probe.evaluate(dataset, verbose=0, return_dict=True)
    return {"accuracy": float(logs["accuracy"]), "loss": float(logs["loss"])}


def measure_latency_ms(model, repeats=30):
    """Median wall time of one forward pass on one image, in milliseconds."""
    import tensorflow as tf

    forward = tf.function(lambda x: model(x, training=False))
    image = np.zeros((1,) + IMAGE_SHAPE, dtype="float32")
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
    """

    def __init__(self, config, out_dir, progress):
        self.config = config
        self.out = Path(out_dir)
        self.progress = progress
        self.splits = None
        self.datasets = {}

    # --- Data ---
    def load_data(self):
        c = self.config
        self.splits = prepare_splits(
            c.data,
            val_size=c.val_size,
            train_per_class=c.train_per_class,
            val_per_class=c.val_per_class,
            test_per_class=c.test_per_class,
            seed=c.seed,
        )
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

        callbacks = [
            checkpoint,  # First: it sets the initial epoch the others read.
            NonFiniteLossGuard(stage),
            HistoryWriter(self.out / "history" / f"{stage}.csv"),
            ProgressReporter(report),
        ]
        report(epoch=0, batch=0, metrics={})
        start = time.time()
        if checkpoint.completed_epochs() >= epochs:
            # Killed after its last epoch, before the stage was recorded.
            checkpoint.set_model(trainable)
            checkpoint.on_train_begin()
            checkpoint.restore_best()
            return time.time() - start, checkpoint.best_epoch
        trainable.fit(
            self.train_dataset(epochs, checkpoint.completed_epochs()),
            validation_data=self.datasets["val"],
            epochs=epochs,
            steps_per_epoch=self.steps_per_epoch,
            callbacks=callbacks,
            verbose=self.config.verbose,
            shuffle=False,  # The dataset shuffles itself, with the run's seed.
        )
        checkpoint.restore_best()
        return time.time() - start, checkpoint.best_epoch

    def student_initial_weights(self):
        """The one set of initial weights both students start from."""
        path = self.out / "checkpoints" / "student_init.weights.h5"
        student = self.build_student()
        if path.exists():
            student.load_weights(path)
        else:
            with atomic.atomic_path(path) as tmp:
                student.save_weights(tmp)
        return student

    def build_student(self):
        c = self.config
        keras.utils.set_random_seed(c.seed + 1)
        with precision_scope(c.precision):
            return build_resnet(
                c.student_depth, width=c.student_width, name=f"student_resnet{c.student_depth}"
            )

    def stage_teacher(self):
        c = self.config
        if c.teacher:
            teacher = load_teacher(c.teacher)
            save_model(teacher, self.out / "models" / "teacher.keras")
            return teacher, {"train_seconds": 0.0, "best_epoch": None, "epochs": 0,
                             "source": str(c.teacher)}
        keras.utils.set_random_seed(c.seed)
        with precision_scope(c.precision):
            teacher = build_resnet(
                c.teacher_depth, width=c.teacher_width, name=f"teacher_resnet{c.teacher_depth}"
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
        distiller_val = distiller.evaluate(self.datasets["val"], verbose=0, return_dict=True)
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
        if stage == "teacher":
            # A reused teacher's depth is whatever it was built with.
            depth = None if self.config.teacher else self.config.teacher_depth
        else:
            depth = self.config.student_depth
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
        return atomic.read_json(self.out / "stages" / f"{stage}.json")

    def run(self):
        rows = []
        teacher = None
        completed = []
        for stage in STAGES:
            row = self.completed_row(stage)
            if row is None:
                if teacher is None and stage != "teacher":
                    teacher = load_teacher(self.out / "models" / "teacher.keras")
                run_stage = getattr(self, f"stage_{stage}")
                model, extra = run_stage() if stage == "teacher" else run_stage(teacher)
                row = self.finish_stage(stage, model, extra)
                if stage == "teacher":
                    teacher = model
            rows.append(row)
            completed.append(stage)
            self.progress.update(completed_stages=completed)
        return rows


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

    Raises:
        RunFolderError, ConfigError, DatasetError, TeacherError,
        NonFiniteLossError, DiskWriteError, RunLockedError: each with a
        message naming the problem; `progress.json` then says "failed".

    Example:

    >>> config = RunConfig.from_preset("quick", data="cifar-10-python.tar.gz")
    >>> rows = run_pipeline(config, "runs/quick")
    """
    config.validate()
    resolve_source(config.data)  # A missing dataset fails before any folder is made.
    out = Path(out_dir)
    created = not out.exists()
    lock = atomic.RunLock(out)
    try:
        lock.acquire()  # Before reading or touching anything in the folder.
    except OSError as error:
        raise RunFolderError(f"cannot write to '{out}': {error.strerror or error}") from None
    try:
        config = prepare_run_folder(out, config, resume=resume, overwrite=overwrite)
    except BaseException:
        lock.release()
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    apply_threading(config)  # Before TensorFlow starts (the data loads next).
    # "auto" precisions become what this machine runs fastest; a resumed run
    # keeps its saved (resolved) values.
    config, choice = resolve_run_precisions(config)
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
        progress.update(
            status="running",
            pid=os.getpid(),
            stages=list(STAGES),
            started_at=progress.state.get("started_at") or _now(),
            error=None,
        )
        pipeline = Pipeline(config, out, progress)
        pipeline.load_data()
        rows = pipeline.run()
        write_results(out, load_stage_rows(out))  # Keeps stages added by tuning.
        progress.update(status="finished", finished_at=_now())
        return rows
    except (RunStopped, KeyboardInterrupt) as error:
        progress.update(status="stopped", error=str(error) or "interrupted")
        raise
    except BaseException as error:
        progress.update(status="failed", error=f"{type(error).__name__}: {error}")
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        lock.release()


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
