"""What is checked before a run's folder is made or changed (`check_run`):
the folder's state, the devices, the precisions, the teacher file, the data,
and what the run's models imply (`check_models`); "auto" values are resolved
on the way, so a mistake costs seconds, not a stage's training."""

import dataclasses
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from kd_keras import atomic
from kd_keras.data.cifar10 import NUM_CLASSES
from kd_keras.data.splits import describe_splits, splits_for
from kd_keras.distill.teacher import (
    check_teacher_file,
    load_teacher,
    resolve_teacher_outputs,
    teacher_sanity_check,
)
from kd_keras.errors import ConfigError, DamagedFileError, TeacherError
from kd_keras.options import option_for
from kd_keras.run_folder import RunFolder
from kd_keras.stages import STAGES
from kd_keras.train import distribute, recipe
from kd_keras.train.run_setup import check_resumed_data, check_run_folder, warn
from kd_keras.train.speed import apply_threading, resolve_run_precisions
from kd_keras.validation import PRECISIONS, TEACHER_PRECISIONS, baseline_mismatch


class CheckedRun(NamedTuple):
    """`check_run`'s result: what the run needs once its folder is locked."""

    config: Any  # The RunConfig to run, resolved (data path, sizes, precisions, teacher outputs).
    choice: Any  # The precision choice (`kd_keras.train.speed`), printed when the run starts.
    strategy: Any  # The tf.distribute strategy the run trains under.
    splits: dict  # The run's data splits.
    reused_teacher: Any  # The loaded `config.teacher`, if the teacher stage is still to be done.
    reused_baseline: Any = None  # The loaded `config.baseline`, if its stage is still to be done.


def check_run(config, out, *, resume, overwrite):
    """Checks everything that can be checked before the run folder is made
    or touched, in the order that fails fastest; returns a `CheckedRun`.

    Raises:
        RunFolderError, ConfigError, DatasetError, TeacherError,
        ModelSpecError: each with a one-line message naming the fix.
    """
    requested = config
    config = check_run_folder(out, config, resume=resume, overwrite=overwrite)
    if resume:
        RunFolder(out).check_finished_models()  # Else "finished" without its models.
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
    teacher_to_load = config.teacher and not RunFolder(out).is_complete("teacher")
    if teacher_to_load:
        check_teacher_file(config.teacher)  # Before the data loads.
    others_to_load = (
        [] if RunFolder(out).is_complete("student_distilled") else list(config.other_teachers or ())
    )
    for path in others_to_load:
        check_teacher_file(path)
    baseline_to_load = config.baseline and not RunFolder(out).is_complete("student_baseline")
    if baseline_to_load:
        check_teacher_file(config.baseline, role="baseline")
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
    if teacher_to_load:
        contract = data_contract(splits)
        reused_teacher = load_teacher(
            config.teacher, contract["num_classes"], image_shape=contract["input_shape"]
        )
        # Refused here, before the run folder is made, if near chance.
        teacher_sanity_check(
            reused_teacher,
            splits,
            name=f"'{config.teacher}'",
            verbose=config.verbose,
            refuse=not config.accept_weak_teacher,
        )
    if others_to_load:
        load_other_teachers(config, splits, check=True)
    reused_baseline = load_baseline(config, splits) if baseline_to_load else None
    # What the teacher and student imply (classes, image size, output kind,
    # sizes) is checked before any stage trains; "auto" is resolved.
    config = check_models(config, out, splits, reused_teacher)
    return CheckedRun(config, choice, strategy, splits, reused_teacher, reused_baseline)


def load_baseline(config, splits):
    """The loaded `config.baseline` (`--baseline`): a trained student
    baseline that the run evaluates instead of training one.

    Refused, each in one line: a file that is no usable model for the data
    (`load_teacher`'s checks), one that does not output logits, one whose
    weights are not those of the run's student (another architecture), and
    one whose run folder's config.json (beside its `models/` folder, if
    there is one) differs from this run in what the baseline's training
    depends on (`BASELINE_FIELDS`: seed, data, sizes, student, recipe).

    Raises:
        TeacherError: a file that is no usable model, or not logits.
        ConfigError: another student, or another run's recipe.
    """
    path = Path(config.baseline)
    name = f"'{config.baseline}'"
    saved = _baseline_run_config(path)
    if saved is not None:
        ours = dataclasses.asdict(config)
        differs = baseline_mismatch(saved, ours)
        if differs:
            field, theirs, mine = differs[0]
            what = (
                "other data"
                if field == "data_fingerprint"
                else f"{option_for(field).flag} {theirs!r}, not this run's {mine!r}"
            )
            more = f" (and {len(differs) - 1} more)" if len(differs) > 1 else ""
            raise ConfigError(
                f"--baseline {name} was trained by a run with {what}{more}: the gain would "
                "compare two recipes; give the same settings as that run, or drop --baseline "
                "to train the baseline"
            )
    contract = data_contract(splits)
    model = load_teacher(
        path, contract["num_classes"], image_shape=contract["input_shape"], role="baseline"
    )
    kind = resolve_teacher_outputs(model, "auto", name=name, images=_probe_images(splits))
    if kind != "logits":
        raise TeacherError(
            f"baseline {name} outputs {kind}; a student baseline outputs logits: give a "
            "run's models/student_baseline.keras"
        )
    student = recipe.build_student(config, precision="float32", **contract)
    shapes = [tuple(w.shape) for w in model.weights]
    if shapes != [tuple(w.shape) for w in student.weights]:
        raise ConfigError(
            f"--baseline {name} is not this run's student: {model.count_params():,} "
            f"parameters in {len(shapes)} weights, where {_model_spec(config, 'student')} has "
            f"{student.count_params():,} in {len(student.weights)}; give the "
            "student_baseline.keras of a run with the same --student-model, "
            "--student-depth and --student-width"
        )
    if config.verbose:
        print(
            f"kd_keras: student baseline {name} reused (not trained; "
            + ("its run's settings match this run's" if saved else "no config.json beside it")
            + ")",
            flush=True,
        )
    return model


def _baseline_run_config(path):
    """The config.json of the run folder that holds `path` as
    `models/<file>`, or None (none there, or unreadable)."""
    if path.parent.name != "models":
        return None
    try:
        return RunFolder(path.parent.parent).config_dict(None)
    except DamagedFileError:
        return None


def load_other_teachers(config, splits, *, check=False):
    """The loaded `config.other_teachers` (`--teacher` given again).

    Each is loaded as the first teacher is (`load_teacher`: its classes and
    image size against the data) and must output logits, which the
    ensemble's loss softens. With `check`, each is also tried on the
    validation split and refused near chance (unless
    `--accept-weak-teacher`), as the first teacher is.

    Raises:
        TeacherError: a file that is no usable teacher, one that ends in a
            softmax or sigmoid, or (with `check`) one near chance.
    """
    contract = data_contract(splits)
    teachers = []
    for path in config.other_teachers or ():
        name = f"'{path}'"
        teacher = load_teacher(path, contract["num_classes"], image_shape=contract["input_shape"])
        kind = resolve_teacher_outputs(teacher, "auto", name=name, images=_probe_images(splits))
        if kind != "logits":
            raise TeacherError(
                f"teacher {name} outputs {kind}; several teachers are distilled from their "
                "logits: rebuild it without its final softmax (keras.applications: "
                "classifier_activation=None)"
            )
        if check:
            teacher_sanity_check(
                teacher,
                splits,
                name=name,
                verbose=config.verbose,
                refuse=not config.accept_weak_teacher,
            )
        teachers.append(teacher)
    return teachers


def data_contract(splits):
    """`input_shape` and `num_classes` of the splits (for `build_model`)."""
    images, _ = splits["train"]
    return {
        "input_shape": tuple(images.shape[1:]),
        "num_classes": len(splits.get("classes") or range(NUM_CLASSES)),
    }


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
    folder = RunFolder(out)
    if all(folder.is_complete(stage) for stage in STAGES[1:]):
        return config
    contract = data_contract(splits)
    student_params = recipe.build_student(config, precision="float32", **contract).count_params()
    if folder.is_complete("teacher"):
        kind, teacher_params = _saved_teacher_facts(config, folder, splits, contract)
    elif config.teacher:
        kind, teacher_params = _reused_teacher_facts(config, splits, reused_teacher)
    else:
        kind, teacher_params = _trained_teacher_facts(config, contract)
    if isinstance(teacher_params, int) and student_params >= teacher_params:
        warn(
            f"the student ({_model_spec(config, 'student')}, {student_params:,} parameters) "
            f"is not smaller than the teacher ({teacher_params:,}); distillation usually "
            "compresses a large teacher into a small student (choose a smaller --student-model)"
        )
    if kind == config.teacher_outputs:
        return config
    return dataclasses.replace(config, teacher_outputs=kind)


def _saved_teacher_facts(config, folder, splits, contract):
    """`(teacher_outputs, params)` of the run's trained `models/teacher.keras`
    (params None, kind unresolved, where its record or file is damaged)."""
    params = None
    kind = config.teacher_outputs
    try:
        params = (atomic.read_json_object(folder.stage_file("teacher")) or {}).get("params")
    except DamagedFileError:
        pass  # Reported and rebuilt by the run; only the warning needs it.
    teacher = _saved_teacher_or_none(folder, contract)
    if teacher is not None:
        kind = resolve_teacher_outputs(
            teacher, kind, name=f"'{folder.model_file('teacher')}'", images=_probe_images(splits)
        )
    return kind, params


def _reused_teacher_facts(config, splits, reused_teacher):
    """`(teacher_outputs, params)` of the reused `--teacher`, the kind printed."""
    name = f"'{config.teacher}'"
    kind = resolve_teacher_outputs(
        reused_teacher, config.teacher_outputs, name=name, images=_probe_images(splits)
    )
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
    return kind, reused_teacher.count_params()


def _trained_teacher_facts(config, contract):
    """`("logits", params)` of the teacher kd_keras trains."""
    if config.teacher_outputs == "probabilities":
        raise ConfigError(
            "--teacher-outputs probabilities applies to a --teacher file; the teacher "
            "kd_keras trains outputs logits: drop --teacher-outputs or pass --teacher FILE"
        )
    return "logits", recipe.build_teacher(config, precision="float32", **contract).count_params()


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
