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

The run's folder setup is `kd_keras.train.run_setup`, its up-front checks
`kd_keras.train.preflight`, and the measuring of a trained model
`kd_keras.train.measure`.
"""

import dataclasses
import time
from pathlib import Path

import numpy as np

from kd_keras import atomic
from kd_keras.data.splits import make_dataset, splits_for
from kd_keras.distill.losses.methods import method_summary
from kd_keras.distill.teacher import load_teacher, teacher_for_inference, teacher_sanity_check
from kd_keras.distill.teacher_cache import with_teacher_logits
from kd_keras.errors import DamagedFileError, RunStopped, TeacherError
from kd_keras.report.results import load_stage_rows, write_results
from kd_keras.run_folder import LEGACY_STUDENT_INIT_FILE, RunFolder
from kd_keras.stages import STAGES
from kd_keras.train import distribute, recipe
from kd_keras.train.callbacks import (
    HistoryWriter,
    NonFiniteLossGuard,
    ProgressReporter,
    TrainingCheckpoint,
    repair_history,
)
from kd_keras.train.measure import measure_model, resnet_depth, save_model
from kd_keras.train.preflight import check_run, data_contract, load_baseline, load_other_teachers
from kd_keras.train.recipe import compile_classifier, make_optimizer
from kd_keras.train.run_setup import (
    ProgressFile,
    catch_stop_signals,
    lock_run_folder,
    mark_progress,
    now,
    record_failure,
    record_start,
    remove_failed_start,
    restore_signals,
    warn,
)
from kd_keras.train.speed import effective_steps_per_execution
from kd_keras.validation import validation_reuses_teacher_logits


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
        baseline: the loaded `config.baseline` model, if already loaded.
        budget_plan: a `--budget` run's plan (`plan_budget`): the students
            are re-planned once the teacher's stage has run here
            (`replan_after_teacher`).
    """

    def __init__(
        self,
        config,
        out_dir,
        progress,
        *,
        splits=None,
        teacher=None,
        baseline=None,
        budget_plan=None,
    ):
        self.config = config
        self.budget_plan = budget_plan
        self.out = Path(out_dir)
        self.folder = RunFolder(self.out)
        self.progress = progress
        self.splits = splits
        self.reused_teacher = teacher
        self.reused_baseline = baseline
        self.datasets = {}
        # Each stage's step: called with the trained teacher (None for the
        # teacher's own stage), it returns `(model, extra row fields)`.
        self.stage_steps = {
            "teacher": self.stage_teacher,
            "student_baseline": self.stage_student_baseline,
            "student_distilled": self.stage_student_distilled,
        }

    # --- Data ---
    def data_contract(self):
        """`input_shape` and `num_classes` of the run's data (for `build_model`);
        loads the run's splits if they are not loaded yet."""
        if self.splits is None:
            self.splits = splits_for(self.config)
        return data_contract(self.splits)

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
    def fit(self, stage, trainable, epochs, validation_data=None):
        """Fits `trainable` (a model or a Distiller), resumable; restores
        the best-validation weights at the end. `validation_data` defaults
        to the validation split."""
        if validation_data is None:
            validation_data = self.datasets["val"]
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
            validation_data=validation_data,
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
                warn(
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

    def stage_teacher(self, teacher=None):
        """Trains the teacher, or saves the reused `config.teacher` as the
        run's; `teacher` is unused (every step takes the trained teacher)."""
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
        """Trains the baseline with cross-entropy, or takes the reused
        `config.baseline` (saved and evaluated as the run's)."""
        if self.config.baseline:
            student = self.reused_baseline or load_baseline(self.config, self.splits)
            return student, {
                "train_seconds": 0.0,
                "best_epoch": None,
                "epochs": 0,
                "source": str(self.config.baseline),
            }
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
        others = [
            teacher_for_inference(other, c.teacher_precision)
            for other in load_other_teachers(c, self.splits)
        ]
        distiller = recipe.compile_distiller(
            student,
            teacher,
            c,
            make_optimizer(c, self.steps_per_epoch, c.student_epochs),
            temperature=temperature,
            alpha=alpha,
            other_teachers=others,
            **self.compile_options(),
        )
        val = self.validation_with_teacher_logits(distiller, teacher)
        recipe.seed_training(c)
        seconds, best_epoch = self.fit(stage, distiller, c.student_epochs, validation_data=val)
        distiller_val = distribute.evaluate(distiller, val)
        return student, {
            "train_seconds": seconds,
            "best_epoch": best_epoch,
            "epochs": c.student_epochs,
            "distiller_val_loss": float(distiller_val["loss"]),
            "temperature": temperature,
            "alpha": alpha,
            **method_summary(c),
        }

    def validation_with_teacher_logits(self, distiller, teacher):
        """The validation split with the teacher's logits computed once.

        The validation images are neither shuffled nor augmented and the
        teacher is frozen, so its logits are the same every epoch: computed
        once here, each epoch's validation pass runs the student alone.
        Where the teacher must run (losses that read its layers) and under
        a tf.distribute strategy, the plain split
        (`kd_keras.validation.validation_reuses_teacher_logits`, which the
        estimates count by; `needs_live_teacher` checks the built losses)."""
        if distiller.needs_live_teacher or not validation_reuses_teacher_logits(self.config):
            return self.datasets["val"]
        return with_teacher_logits(self.datasets["val"], teacher)

    def finish_stage(self, stage, model, extra, started=None):
        """Saves the model, evaluates it and records the stage as complete.

        The teacher's stage, `started` at that `time.time()` in this
        process, re-plans a budgeted run's students first
        (`replan_after_teacher`): a kill before its row is written finishes
        the stage again on `--resume`, with the re-planned sizes saved."""
        model_path = self.folder.model_file(stage)
        if stage != "teacher" or not self.config.teacher:
            save_model(model, model_path)
        measured = measure_model(model, model_path, self.datasets)
        c = self.config
        if stage == "teacher":
            # A reused teacher's depth is whatever it was built with.
            depth = None if c.teacher else resnet_depth(c.teacher_model, c.teacher_depth)
            # Printed, recorded and (a reused teacher: already refused if
            # near chance) warned about before the students distil from it.
            check = teacher_sanity_check(
                model,
                self.splits,
                verbose=0 if c.teacher else c.verbose,  # A reused one's line came first.
                refuse=False,
                accuracy=measured["val_accuracy"],
            )
            extra = {**extra, "chance_accuracy": check["chance_accuracy"]}
        else:
            depth = resnet_depth(c.student_model, c.student_depth)
        row = {"stage": stage, "model": model.name, "depth": depth, **measured, **extra}
        if stage == "teacher" and started is not None:
            self.replan_after_teacher(time.time() - started)
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
            warn(
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
            warn(f"{error} (stage '{stage}' is finished and does not need it)")

    def replan_after_teacher(self, teacher_seconds):
        """A `--budget` run: the students' epochs re-sized from the teacher
        stage's wall time (`replan_students`), saved to `config.json` (what
        the run trains, and what a `--resume` keeps) and then recorded in
        `budget.json`, before the students train."""
        plan = self.budget_plan
        if plan is None or not plan["stages"]["teacher"]["epochs"]:
            return  # Not budgeted, or a reused teacher: nothing was timed.
        from kd_keras.train.budget import format_replan, replan_students

        replan = replan_students(
            plan,
            teacher_seconds=teacher_seconds,
            elapsed_seconds=time.time() - plan["started_unix"],
            warmup_epochs=self.config.warmup_epochs,
        )
        self.config = dataclasses.replace(
            self.config, student_epochs=replan["student_epochs"]
        ).validate()
        atomic.write_text(self.folder.config_file, self.config.to_json() + "\n")
        self.budget_plan = {**plan, "replan": replan}
        atomic.write_json(self.folder.budget_file, self.budget_plan)
        if self.config.verbose:
            print(format_replan(replan), flush=True)

    def saved_teacher(self):
        """The run's trained teacher (`models/teacher.keras`), or `None` if
        that file is missing or damaged (the teacher stage is then finished
        again from its checkpoint or `config.teacher`)."""
        path = self.folder.model_file("teacher")
        try:
            return load_teacher(path, **self.teacher_contract())
        except TeacherError as error:
            warn(f"{error}; rebuilding it")
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
                started = time.time()
                model, extra = self.stage_steps[stage](teacher)
                row = self.finish_stage(stage, model, extra, started=started)
                if stage == "teacher":
                    teacher = model
            rows[stage] = row
            completed.append(stage)
            if self.progress is not None:
                self.progress.update(completed_stages=completed)
        return [rows[stage] for stage in STAGES]


def run_pipeline(config, out_dir, *, resume=False, overwrite=False, budget_plan=None):
    """Runs teacher, student baseline and distilled student into `out_dir`.

    Args:
        config: a `RunConfig`.
        out_dir: the run folder (created; must be empty unless `resume` or
            `overwrite`).
        resume: skip completed stages and continue the interrupted one.
        overwrite: replace a previous kd_keras run in `out_dir`.
        budget_plan: for a new run of a config sized by
            `kd_keras.train.budget.plan_budget`, its plan: saved as
            `budget.json`, and the students' epochs re-sized to the budget's
            time left once the teacher's stage has run (a resumed run
            ignores it and keeps its config's sizes, as do a reused teacher
            and a `multi_worker` run).

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
    if budget_plan is not None and not resume:
        from kd_keras.train.budget import check_budget_plan

        check_budget_plan(budget_plan, config)  # Not after the teacher has trained.
    out = Path(out_dir)
    worker = None
    if config.strategy == "multi_worker" and not distribute.is_chief():
        # Only the chief writes the run folder; this worker writes a copy.
        worker = distribute.WorkerFolder(out, resume=resume)
        out = worker.path
    try:
        return _run_pipeline(
            config, out, resume=resume, overwrite=overwrite, budget_plan=budget_plan
        )
    finally:
        if worker is not None:
            worker.cleanup()


def _run_pipeline(config, out, *, resume, overwrite, budget_plan=None):
    # Everything that can be checked is checked before the folder is made
    # or touched: the folder's state, the teacher file, the data, the models.
    checked = check_run(config, out, resume=resume, overwrite=overwrite)
    config = checked.config
    lock, created, fresh = lock_run_folder(out, config, resume=resume, overwrite=overwrite)
    started = False
    if config.verbose:
        print(f"kd_keras: {checked.choice.describe()}", flush=True)
    progress = ProgressFile(out)
    previous = catch_stop_signals()
    try:
        record_start(out, config, checked.splits, progress)
        if budget_plan is not None and not resume:
            atomic.write_json(RunFolder(out).budget_file, budget_plan)
            if config.strategy == "multi_worker":
                budget_plan = None  # Each process would time its own teacher stage.
        else:
            budget_plan = None  # A resumed run keeps the sizes in its config.json.
        pipeline = Pipeline(
            config,
            out,
            progress,
            splits=checked.splits,
            teacher=checked.reused_teacher,
            baseline=checked.reused_baseline,
            budget_plan=budget_plan,
        )
        pipeline.load_data()
        started = True
        # Every worker has its copy of the run folder before the chief goes on.
        distribute.barrier(checked.strategy)
        with checked.strategy.scope():  # Models, optimizers and Distillers are built in it.
            rows = pipeline.run()
        write_results(out, load_stage_rows(out))  # Keeps stages added by tuning.
        progress.update(status="finished", finished_at=now())
        return rows
    except (RunStopped, KeyboardInterrupt) as error:
        if started or not fresh:
            mark_progress(progress, status="stopped", error=str(error) or "interrupted")
        raise
    except BaseException as error:
        if started or not fresh:
            record_failure(progress, out, error)  # A full disk: a DiskWriteError to resume.
        raise
    finally:
        restore_signals(previous)
        if not started:
            remove_failed_start(out, lock, created, fresh=fresh)
        lock.release()
