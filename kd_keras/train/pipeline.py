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

import dataclasses
import errno
import fnmatch
import json
import math
import os
import shutil
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np

from kd_keras import atomic
from kd_keras.data.cifar10 import NUM_CLASSES
from kd_keras.data.splits import data_summary, describe_splits, make_dataset, splits_for
from kd_keras.distill.losses.methods import method_summary
from kd_keras.distill.teacher import (
    check_teacher_file,
    load_teacher,
    resolve_teacher_outputs,
    teacher_for_inference,
    teacher_sanity_check,
)
from kd_keras.errors import (
    DamagedFileError,
    DiskWriteError,
    RunFolderError,
    RunStopped,
    TeacherError,
    is_disk_full,
)
from kd_keras.models.fused_batch_norm import with_keras_batch_norm, with_local_batch_norm
from kd_keras.models.resnet import count_flops, stage_blocks
from kd_keras.report.results import load_stage_rows, write_results
from kd_keras.run_folder import (
    LEGACY_STUDENT_INIT_FILE,
    TEMP_PATTERN,
    RemovalPlan,
    RunFolder,
    describe_paths,
    remove_planned,
)
from kd_keras.stages import STAGES
from kd_keras.train import distribute, recipe
from kd_keras.train.callbacks import (
    HistoryWriter,
    NonFiniteLossGuard,
    ProgressReporter,
    TrainingCheckpoint,
    repair_history,
)
from kd_keras.train.recipe import compile_classifier, make_optimizer
from kd_keras.train.speed import (
    apply_threading,
    effective_steps_per_execution,
    resolve_run_precisions,
)
from kd_keras.validation import PRECISIONS, TEACHER_PRECISIONS


def _now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _warn(message):
    print(f"kd_keras: warning: {message}", file=sys.stderr, flush=True)


class ProgressFile:
    """The run's machine-readable progress, `progress.json`, written atomically.

    Fields: `status` ("running", "finished", "failed", "stopped"), `pid`,
    `stage`, `stage_index`, `stages`, `epoch`, `epochs`, `batch`, `batches`,
    `metrics` (the last epoch's logs), `completed_stages`, `started_at`,
    `updated_at`, `elapsed_s`, `error`.
    """

    def __init__(self, folder):
        self.path = RunFolder(folder).progress_file
        try:
            self.state = atomic.read_json_object(self.path) or {}
        except DamagedFileError as error:
            # Only a report for other processes: rebuilt from here on.
            _warn(f"'{self.path}' was damaged ({error.problem}); rebuilding it")
            self.state = {}
        elapsed = self.state.get("elapsed_s")
        if (
            isinstance(elapsed, bool)
            or not isinstance(elapsed, (int, float))
            or not (math.isfinite(elapsed))
        ):
            elapsed = 0.0
        self._started = time.time() - elapsed

    def update(self, **fields):
        self.state.update(fields)
        self.state["updated_at"] = _now()
        self.state["elapsed_s"] = round(time.time() - self._started, 1)
        atomic.write_json(self.path, self.state)


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
    run = RunFolder(out)
    saved_path = run.config_file
    if resume:
        saved = run.config()
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
        # And the devices the same recipe runs on (kd_keras.train.distribute).
        saved.strategy = config.strategy
        saved.devices = config.devices
        return saved
    if existing:
        if not overwrite:
            raise RunFolderError(
                f"'{out}' is not empty; pass --resume to continue it, "
                "--overwrite to replace it, or choose another --out"
            )
        _check_overwrite(out, run)
        holder = atomic.lock_holder(out)
        if holder is not None and holder.get("pid") != os.getpid():
            raise RunFolderError(f"'{out}' is in use by process {holder.get('pid')}")
    return config


def _check_overwrite(out, run):
    """Refuses `--overwrite` of a folder that is not a kd_keras run (its
    `config.json` must be a `RunConfig`), or that holds unknown entries
    inside a folder only removed whole; returns the `RemovalPlan`."""
    if not run.config_file.is_file() or run.config_file.is_symlink():
        what = "is a symbolic link" if run.config_file.is_symlink() else "is missing"
        raise RunFolderError(
            f"refusing to overwrite '{out}': it is not a kd_keras run folder "
            f"(no config.json: it {what}); choose another --out"
        )
    try:
        run.config()
    except DamagedFileError as error:
        problem = error.problem if len(error.problem) <= 100 else error.problem[:97] + "..."
        raise RunFolderError(
            f"refusing to overwrite '{out}': its config.json is not a kd_keras run config "
            f"({problem}); kd_keras replaces only its own runs: choose another --out"
        ) from None
    plan = run.removal_plan()
    if plan.refused:
        raise RunFolderError(
            f"refusing to overwrite '{out}': {describe_paths(plan.refused, out)} "
            "were not written by kd_keras; move them out of the folder, or choose another --out"
        )
    return plan


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
    run = RunFolder(out)
    if resume:
        run.check_real_folders()
        # A kill during a write can leave a temporary file; never a final one.
        plan = run.removal_plan()
        remove_planned(
            RemovalPlan(files=[p for p in plan.files if fnmatch.fnmatchcase(p.name, TEMP_PATTERN)])
        )
        return config
    if overwrite and out.is_dir():
        # Only what kd_keras wrote; links are unlinked, never followed.
        plan = _check_overwrite(out, run)
        remove_planned(plan)
        if plan.kept and config.verbose:
            print(
                f"kd_keras: kept {len(plan.kept)} entr{'y' if len(plan.kept) == 1 else 'ies'} "
                f"kd_keras did not write: {describe_paths(plan.kept, out)}",
                flush=True,
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise RunFolderError(f"cannot write to '{out}': {error.strerror or error}") from None
    return config


def evaluate_model(model, dataset):
    """Test-time accuracy and cross-entropy of a logits model (or of a
    teacher that outputs a softmax's probabilities).

    Returns:
        `{"accuracy": float, "loss": float}`; `loss` is the mean
        cross-entropy of the model's own predictions, so rows of different
        stages are comparable.
    """
    from kd_keras.distill.distiller import outputs_kind

    probe = keras.Model(model.inputs, model.outputs, name=f"{model.name}_eval")
    if outputs_kind(model) == "probabilities":
        # A softmax teacher: its cross-entropy is that of its probabilities.
        probe.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
    else:
        compile_classifier(probe, None)  # Evaluated only: Keras's default optimizer.
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
    `BatchNormalization`, synchronised batch norm becomes local), so the
    file loads with plain Keras and fine-tunes without a strategy."""
    shipped = with_local_batch_norm(
        with_keras_batch_norm(keras.Model(model.inputs, model.outputs, name=model.name))
    )
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
        self.folder = RunFolder(self.out)
        self.progress = progress
        self.splits = splits
        self.reused_teacher = teacher
        self.datasets = {}

    # --- Data ---
    def data_contract(self):
        """`input_shape` and `num_classes` of the run's data (for `build_model`);
        loads the run's splits if they are not loaded yet."""
        if self.splits is None:
            self.splits = splits_for(self.config)
        images, _ = self.splits["train"]
        return {
            "input_shape": tuple(images.shape[1:]),
            "num_classes": len(self.splits.get("classes") or range(NUM_CLASSES)),
        }

    def teacher_contract(self):
        """`load_teacher`'s `num_classes` and `image_shape` for the run's data."""
        contract = self.data_contract()
        return {"num_classes": contract["num_classes"], "image_shape": contract["input_shape"]}

    def load_data(self):
        c = self.config
        if self.splits is None:
            self.splits = splits_for(c)
        for name in ("val", "test"):
            images, labels = self.splits[name]
            self.datasets[name] = make_dataset(images, labels, batch_size=256, training=False)

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
        divisor of the steps per epoch (see `kd_keras.train.speed`)."""
        requested = self.config.steps_per_execution
        steps = effective_steps_per_execution(requested, self.steps_per_epoch)
        reason = f"does not divide the {self.steps_per_epoch} steps per epoch"
        if self.config.strategy == "multi_worker":
            # The multi-worker loop (kd_keras.train.distribute) runs one step
            # per call: Keras's fit, which batches steps, fails there.
            steps, reason = 1, "is not supported by the multi-worker loop"
        if steps != requested and not getattr(self, "_warned_steps", False):
            self._warned_steps = True
            print(f"kd_keras: steps_per_execution {requested} {reason}; using {steps}", flush=True)
        return {"steps_per_execution": steps}

    # --- One stage ---
    def fit(self, stage, trainable, epochs):
        """Fits `trainable` (a model or a Distiller), resumable; restores
        the best-validation weights at the end."""
        checkpoint = TrainingCheckpoint(self.folder.checkpoint_dir(stage))
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

        history_path = self.folder.history_file(stage)
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
        # multi-worker form (kd_keras.train.distribute).
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
        path = self.folder.student_init_file
        legacy = self.folder.checkpoints_dir / LEGACY_STUDENT_INIT_FILE
        student = self.build_student()
        for source in (path, legacy):
            if not source.exists():
                continue
            try:
                if source == legacy:
                    student.load_weights(source)  # Written by an older kd_keras.
                else:
                    with np.load(source, allow_pickle=False) as saved:
                        weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
                    student.set_weights(weights)
                return student
            except Exception as error:  # NumPy, h5py and Keras raise many types.
                # Derivable: the seeded build above made these very weights.
                _warn(
                    f"'{source}' was damaged ({type(error).__name__}); rebuilding it "
                    "from the run's seed"
                )
                student = self.build_student()
        # A plain .npz through Python's file API: a full disk is a clean
        # DiskWriteError (HDF5, failing on a full disk, crashes at exit).
        with atomic.atomic_path(path) as tmp:
            with open(tmp, "wb") as file:
                np.savez(file, *student.get_weights())
        return student

    def build_student(self):
        """The run's student, seeded (`kd_keras.train.recipe.build_student`)."""
        return recipe.build_student(self.config, **self.data_contract())

    def stage_teacher(self):
        c = self.config
        if c.teacher:
            teacher = self.reused_teacher or load_teacher(c.teacher, **self.teacher_contract())
            save_model(teacher, self.folder.model_file("teacher"))
            return teacher, {
                "train_seconds": 0.0,
                "best_epoch": None,
                "epochs": 0,
                "source": str(c.teacher),
            }
        teacher = recipe.build_teacher(c, **self.data_contract())
        return teacher, self.train_classifier("teacher", teacher, c.teacher_epochs)

    def stage_student_baseline(self, teacher):
        student = self.student_initial_weights()
        extra = self.train_classifier("student_baseline", student, self.config.student_epochs)
        return student, extra

    def train_classifier(self, stage, model, epochs):
        """Trains `model` with cross-entropy as stage `stage` (the recipe's
        optimizer and seeding); returns the stage row's training fields."""
        compile_classifier(
            model,
            make_optimizer(self.config, self.steps_per_epoch, epochs),
            **self.compile_options(),
        )
        recipe.seed_training(self.config)
        seconds, best_epoch = self.fit(stage, model, epochs)
        return {"train_seconds": seconds, "best_epoch": best_epoch, "epochs": epochs}

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
        distiller = recipe.compile_distiller(
            student,
            teacher,
            c,
            make_optimizer(c, self.steps_per_epoch, c.student_epochs),
            temperature=temperature,
            alpha=alpha,
            **self.compile_options(),
        )
        recipe.seed_training(c)
        seconds, best_epoch = self.fit(stage, distiller, c.student_epochs)
        distiller_val = distribute.evaluate(distiller, self.datasets["val"])
        return student, {
            "train_seconds": seconds,
            "best_epoch": best_epoch,
            "epochs": c.student_epochs,
            "distiller_val_loss": float(distiller_val["loss"]),
            "temperature": temperature,
            "alpha": alpha,
            **method_summary(c),
        }

    def finish_stage(self, stage, model, extra):
        """Saves the model, evaluates it and records the stage as complete."""
        model_path = self.folder.model_file(stage)
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
            check = teacher_sanity_check(
                model, self.splits, verbose=c.verbose, refuse=False, accuracy=val["accuracy"]
            )
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
        atomic.write_json(self.folder.stage_file(stage), row)
        return row

    def completed_row(self, stage):
        """The stage's recorded row, or `None` if it has none; a damaged
        record is reported and counts as none (the stage is then finished
        again from its checkpoint, which trains only what is missing)."""
        path = self.folder.stage_file(stage)
        try:
            return atomic.read_json_object(path, keys=("stage", "test_accuracy"))
        except DamagedFileError as error:
            _warn(
                f"'{path}' was damaged ({error.problem}); rebuilding it from the stage's checkpoint"
            )
            return None

    def repair_history(self, stage, finished):
        """Rebuilds missing or damaged history rows of a stage from its
        checkpoint's record (e.g. after a kill between the two writes).

        A damaged checkpoint of a `finished` stage is only reported: the
        stage does not need it. Otherwise its `DamagedFileError` is raised.
        """
        checkpoint = TrainingCheckpoint(self.folder.checkpoint_dir(stage))
        try:
            completed = checkpoint.completed_epochs()
            if completed:
                repair_history(self.folder.history_file(stage), checkpoint, completed)
        except DamagedFileError as error:
            if not finished:
                raise
            _warn(f"{error} (stage '{stage}' is finished and does not need it)")

    def saved_teacher(self):
        """The run's trained teacher (`models/teacher.keras`), or `None` if
        that file is missing or damaged (the teacher stage is then finished
        again from its checkpoint or `config.teacher`)."""
        path = self.folder.model_file("teacher")
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
    requested = config
    config = check_run_folder(out, config, resume=resume, overwrite=overwrite)
    apply_threading(config)  # Before TensorFlow starts (the teacher and data load next).
    # The strategy too: tf.distribute fixes its devices and cluster when it starts.
    strategy = distribute.make_strategy(config.strategy, config.devices)
    distribute.check_batch_size(strategy, config.batch_size)
    # "auto" precisions become what this machine runs fastest; a resumed run
    # keeps its saved (resolved) values.
    config, choice = resolve_run_precisions(config)
    # Workers on different machines may resolve "auto" differently.
    distribute.check_agreement(
        strategy,
        {"precision": config.precision, "teacher_precision": config.teacher_precision},
        {"precision": PRECISIONS, "teacher_precision": TEACHER_PRECISIONS},
    )
    if config.teacher and not RunFolder(out).is_complete("teacher"):
        check_teacher_file(config.teacher)  # Before the data loads.
    splits = splits_for(config, batch_size=config.batch_size)
    if resume:
        check_resumed_data(out, requested, config, splits)
    # Recorded resolved: the absolute data path, the sizes, the fingerprint.
    config = dataclasses.replace(
        config,
        data=None if splits["source"] is None else os.path.abspath(splits["source"]),
        data_fingerprint=splits["fingerprint"],
        **splits["sizes"],
    )
    if config.verbose:
        print(f"kd_keras: {describe_splits(splits)}", flush=True)
    reused_teacher = None
    if config.teacher and not RunFolder(out).is_complete("teacher"):
        contract = Pipeline(config, out, None, splits=splits).teacher_contract()
        reused_teacher = load_teacher(config.teacher, **contract)
        # Refused here, before the run folder is made, if near chance.
        teacher_sanity_check(
            reused_teacher,
            splits,
            name=f"'{config.teacher}'",
            verbose=config.verbose,
            refuse=not config.accept_weak_teacher,
        )
    # What the teacher and student imply (classes, image size, output kind,
    # sizes) is checked before any stage trains; "auto" is resolved.
    config = check_models(config, out, splits, reused_teacher)
    created = not out.exists()
    # A new run in a new or empty folder: a failed start leaves nothing.
    fresh = not resume and (created or not any(c.name != atomic.LOCK_FILE for c in out.iterdir()))
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
        atomic.write_text(RunFolder(out).config_file, config.to_json() + "\n")
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
            _mark(progress, status="stopped", error=str(error) or "interrupted")
        raise
    except BaseException as error:
        if started or not fresh:
            # Out of memory included: the folder says failed, not running.
            _mark(progress, status="failed", error=f"{type(error).__name__}: {error}"[:1000])
        if (started or not fresh) and (isinstance(error, DiskWriteError) or is_disk_full(error)):
            # Everything written so far is whole: the run continues from it.
            resume = RunFolder(out).resume_command()
            raise DiskWriteError(
                errno.ENOSPC if is_disk_full(error) else error.errno,
                f"{error.strerror if isinstance(error, DiskWriteError) else DISK_FULL_HINT}; "
                f"then continue with '{resume}'",
            ) from error
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if not started:
            _remove_failed_start(out, lock, created, fresh=fresh)
        lock.release()


def _probe_images(splits, count=16):
    """A few validation images, as the teacher sees them (float32)."""
    images, _ = splits["val"]
    return np.asarray(images[:count], dtype="float32")


def check_models(config, out, splits, reused_teacher=None):
    """Checks, before any stage trains, what the run's models imply, and
    resolves `teacher_outputs`.

    - the student (a `.keras` student ending in a softmax or sigmoid is
      refused: both students would train on probabilities as logits);
    - the teacher to train (`--teacher-model FILE.keras`, the same), or the
      reused `--teacher` (classes and image size are checked when it
      loads): its output kind, "auto" detected from its last layer or its
      outputs on a few validation images, and printed;
    - a warning when the student has at least the teacher's parameters.

    Args:
        config: the run's `RunConfig` (precisions resolved).
        out: the run folder (its completed stages are not checked again).
        splits: the run's data splits.
        reused_teacher: the loaded `config.teacher`, if the teacher stage
            is still to be done.

    Returns:
        `config` with `teacher_outputs` resolved ("logits" or
        "probabilities"), or as it was if no distillation is left to run.

    Raises:
        TeacherError: a sigmoid teacher, or a `--teacher-outputs` its outputs
            contradict.
        ModelSpecError: a student or trained teacher that does not output logits.
        ConfigError: `--teacher-outputs probabilities` for a teacher kd_keras
            trains (it outputs logits).
    """
    import dataclasses

    from kd_keras.errors import ConfigError

    folder = RunFolder(out)
    if all(folder.is_complete(stage) for stage in STAGES[1:]):
        return config
    images, _ = splits["train"]
    contract = {
        "input_shape": tuple(images.shape[1:]),
        "num_classes": len(splits.get("classes") or range(NUM_CLASSES)),
    }
    student_params = recipe.build_student(config, precision="float32", **contract).count_params()
    teacher_params = None
    kind = config.teacher_outputs
    if folder.is_complete("teacher"):
        try:
            teacher_params = (atomic.read_json_object(folder.stage_file("teacher")) or {}).get(
                "params"
            )
        except DamagedFileError:
            pass  # Reported and rebuilt by the run; only the warning needs it.
        teacher = _saved_teacher_or_none(folder, contract)
        if teacher is not None:
            kind = resolve_teacher_outputs(
                teacher,
                kind,
                name=f"'{folder.model_file('teacher')}'",
                images=_probe_images(splits),
            )
    elif config.teacher:
        name = f"'{config.teacher}'"
        kind = resolve_teacher_outputs(
            reused_teacher, kind, name=name, images=_probe_images(splits)
        )
        teacher_params = reused_teacher.count_params()
        if config.verbose:
            what = (
                "probabilities (a softmax: rows >= 0 summing to 1); distilling from log p"
                if kind == "probabilities"
                else "logits; distilling from them"
            )
            how = "detected" if config.teacher_outputs == "auto" else "as given"
            print(
                f"kd_keras: teacher {name} outputs {what} ({how}; teacher_outputs "
                f'"{kind}" in config.json)',
                flush=True,
            )
    else:
        if kind == "probabilities":
            raise ConfigError(
                "--teacher-outputs probabilities applies to a --teacher file; the teacher "
                "kd_keras trains outputs logits: drop --teacher-outputs or pass --teacher FILE"
            )
        kind = "logits"
        teacher_params = recipe.build_teacher(
            config, precision="float32", **contract
        ).count_params()
    if isinstance(teacher_params, int) and student_params >= teacher_params:
        _warn(
            f"the student ({_model_spec(config, 'student')}, {student_params:,} parameters) "
            f"is not smaller than the teacher ({teacher_params:,}); distillation usually "
            "compresses a large teacher into a small student (choose a smaller --student-model)"
        )
    if kind == config.teacher_outputs:
        return config
    return dataclasses.replace(config, teacher_outputs=kind)


def _saved_teacher_or_none(folder, contract):
    """The run's `models/teacher.keras`, or None if it is missing or damaged
    (the pipeline then rebuilds it)."""
    try:
        return load_teacher(
            folder.model_file("teacher"),
            contract["num_classes"],
            image_shape=contract["input_shape"],
        )
    except TeacherError:
        return None


def _model_spec(config, role):
    spec = getattr(config, f"{role}_model")
    return spec or f"resnet{getattr(config, f'{role}_depth')}"


DISK_FULL_HINT = "the disk is full: free some space"


def _mark(progress, **fields):
    """Records the run's end in `progress.json`. On a full disk, where the
    atomic write has no room for its new file, the file is rewritten in
    place instead (its blocks exist already), so the folder does not say
    "running"; if that fails too, the error being raised says more."""
    try:
        progress.update(**fields)
    except MemoryError:
        pass
    except OSError as error:
        if not is_disk_full(error):
            return
        data = (json.dumps(progress.state, indent=2, sort_keys=True, default=str) + "\n").encode()
        try:
            fd = os.open(progress.path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        except OSError:
            pass
        finally:
            os.close(fd)


def check_resumed_data(out, requested, saved, splits):
    """Refuses a resume whose sizes, once resolved on the data, differ from
    the saved ones, or whose data differs from the run's (for a run
    recorded before fingerprints: its classes.json's classes, image shape
    and split sizes).

    Raises:
        RunFolderError: one line naming each differing flag or fact.
    """
    from kd_keras.data.sizes import SIZE_FIELDS, SIZE_FLAGS, resolve_sizes
    from kd_keras.text import short_list

    counts = splits["counts"]
    asked = resolve_sizes(
        {field: getattr(requested, field) for field in SIZE_FIELDS},
        counts["train"],
        counts["test"],
        splits["classes"],
    )
    differences = [
        f"{SIZE_FLAGS[field]} (saved {splits['sizes'][field]}, asked {asked[field]})"
        for field in SIZE_FIELDS
        if asked[field] != splits["sizes"][field]
    ]
    if saved.data_fingerprint is None:
        recorded = atomic.read_json_object(RunFolder(out).classes_file, None) or {}
        images, _ = splits["train"]
        found = {
            "classes": list(splits["classes"]),
            "image_shape": list(images.shape[1:]),
            "images": {k: int(len(splits[k][1])) for k in ("train", "val", "test")},
        }
        for key in found:
            if key in recorded and recorded[key] != found[key]:
                mine, theirs = recorded[key], found[key]
                if key == "classes":
                    mine = f"{len(mine)}: {short_list(mine, 3)}"
                    theirs = f"{len(theirs)}: {short_list(theirs, 3)}"
                differences.append(
                    f"the data's {key.replace('_', ' ')} (saved {mine}, found {theirs})"
                )
    if differences:
        shown = differences[:4] + (
            [f"and {len(differences) - 4} more"] if len(differences) > 4 else []
        )
        raise RunFolderError(
            f"cannot resume '{out}': {'; '.join(shown)}. Resume with the saved settings "
            "and data, or start a new --out folder."
        )


def write_classes(out, config, splits):
    """Writes the run's `classes.json`: class names in label order, the
    data's kind, image shape and split sizes."""
    from kd_keras.data.sources import data_kind

    images, _ = splits["train"]
    atomic.write_json(
        RunFolder(out).classes_file,
        {
            "classes": list(splits.get("classes") or range(NUM_CLASSES)),
            "data": config.data,
            "kind": data_kind(config.data),
            "image_shape": list(images.shape[1:]),
            "images": {k: int(len(splits[k][1])) for k in ("train", "val", "test")},
        },
    )


def _resnet_depth(spec, depth):
    """The ResNet depth of a model spec (None for other architectures)."""
    from kd_keras.models.specs import parse_model_spec

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
    remove_planned(RunFolder(out).removal_plan())  # Only kd_keras's names.


def _in_main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()


def describe_models(config, data=None):
    """Parameter and FLOP counts of the config's teacher and student, for
    the data's image shape and classes.

    Args:
        config: a `RunConfig` (precisions may be "auto": counts do not
            depend on them).
        data: `kd_keras.data.splits.data_summary(config)`, if already known.

    Returns:
        `{"data": data, "teacher": {...}, "student": {...}}`; each model has
        `model` (its spec), `params`, `flops` (one image) and, for a ResNet,
        `blocks` per stage. A reused teacher (`config.teacher`) is loaded.
    """
    data = data or data_summary(config)
    shape = {"input_shape": tuple(data["image_shape"]), "num_classes": data["num_classes"]}
    if config.teacher:
        teacher = load_teacher(
            config.teacher, data["num_classes"], image_shape=shape["input_shape"]
        )
    else:
        teacher = recipe.build_teacher(config, precision="float32", **shape)
    student = recipe.build_student(config, precision="float32", **shape)
    summary = {"data": data}
    for role, model in (("teacher", teacher), ("student", student)):
        spec = (
            config.teacher
            if role == "teacher" and config.teacher
            else getattr(config, f"{role}_model") or f"resnet{getattr(config, f'{role}_depth')}"
        )
        depth = (
            None
            if role == "teacher" and config.teacher
            else _resnet_depth(getattr(config, f"{role}_model"), getattr(config, f"{role}_depth"))
        )
        summary[role] = {"model": spec, "params": model.count_params(), "flops": count_flops(model)}
        if depth is not None:
            summary[role]["blocks"] = stage_blocks(depth)[0]
    return summary
