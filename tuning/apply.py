"""`run_best`: the full distillation stage of a run folder with tuned T, alpha.

The stage is the run's own distilled stage (`kd_keras.train.pipeline.Pipeline.
distill`: same student initial weights, data order, optimizer, schedule,
resumable checkpoint and best-validation restore) with the search's best
temperature and alpha, so its row compares directly with the run's
`student_distilled` and `student_baseline` rows.
"""

import shutil
from pathlib import Path

from kd_keras import (
    atomic,  # First: kd_keras sets KERAS_BACKEND.
    load_teacher,
)
from kd_keras.errors import RunFolderError
from kd_keras.report.results import load_stage_rows, write_results
from kd_keras.run_folder import RunFolder
from kd_keras.stages import STAGES, TUNED_STAGE
from kd_keras.train.pipeline import Pipeline

from .report import load_best


def check_run_folder(run_dir):
    """Raises `kd_keras.RunFolderError` unless `run_dir` is a kd_keras run
    folder with a teacher (`config.json`, `models/teacher.keras`)."""
    run = RunFolder(run_dir)
    if not run.config_file.is_file():
        raise RunFolderError(
            f"'{run_dir}' is not a kd_keras run folder (no config.json); "
            "make one with 'python -m kd_keras run --out ...'"
        )
    if not run.model_file("teacher").is_file():
        raise RunFolderError(
            f"run folder '{run_dir}' has no models/teacher.keras: let its teacher "
            "stage finish first ('python -m kd_keras run --resume --out ...')"
        )


def run_best(search_dir, run_dir, *, stage=TUNED_STAGE, data=None, verbose=None):
    """Distils the run folder's student with the search's best T and alpha
    (and method and DKD beta, when the search chose them).

    Trains the run's distilled stage again, from the same student initial
    weights, with the same recipe and data order, but with the best
    temperature and alpha of the search in `search_dir`; saves
    `models/<stage>.keras`, `history/<stage>.csv` and `stages/<stage>.json`;
    and rewrites the run's `results.csv`, `results.json` and
    `test_accuracy_bar.png` with the new row after the run's own rows.

    Running it again does not retrain if the stage already holds the same
    T and alpha (an interrupted training resumes from its last epoch); a
    search with a new best retrains it.

    Note that the tuned T and alpha were chosen on the validation split, so
    the new row's `val_accuracy` is optimistic: compare stages by
    `test_accuracy`.

    Args:
        search_dir: a search folder holding `best.json`.
        run_dir: a kd_keras run folder (with `config.json` and
            `models/teacher.keras`).
        stage: the new stage's name in the results.
        data: the CIFAR-10 source, if not the one in the run's
            `config.json` (e.g. the run was made on another machine).
        verbose: Keras verbosity; defaults to the run's.

    Returns:
        The new result row (a dict, as in `results.json`).

    Raises:
        SearchError: `search_dir` holds no `best.json`.
        kd_keras.RunFolderError: `run_dir` is not a run folder.
        kd_keras.errors.RunLockedError: another process is using the run.
        kd_keras.TeacherError, kd_keras.DatasetError: as for a run.

    Example:

    >>> row = run_best("searches/quick", "runs/quick")
    >>> row["test_accuracy"], row["temperature"], row["alpha"]
    """
    search_dir, run_dir = Path(search_dir), Path(run_dir)
    if stage in STAGES:
        raise ValueError(f"stage '{stage}' is one of the run's own stages; pick a new name")
    best = load_best(search_dir)
    check_run_folder(run_dir)
    temperature, alpha = float(best["temperature"]), float(best["alpha"])
    # A search of methods: the best trial's method (and DKD's beta).
    method = {key: best[key] for key in ("method", "dkd_beta") if best.get(key) is not None}
    with atomic.RunLock(run_dir):
        config = RunFolder(run_dir).config()
        for key, value in method.items():
            setattr(config, key, value)
        config.validate()
        if data is not None:
            config.data = str(data)
        if verbose is not None:
            config.verbose = verbose
        row = RunFolder(run_dir).stage_row(stage)
        if not (
            row is not None
            and row.get("temperature") == temperature
            and row.get("alpha") == alpha
            and row.get("epochs") == config.student_epochs
            and all(row.get(key) == value for key, value in method.items())
        ):
            row = _train_stage(config, run_dir, stage, temperature, alpha, best, search_dir)
        write_results(run_dir, load_stage_rows(run_dir))
    return row


def _train_stage(config, run_dir, stage, temperature, alpha, best, search_dir):
    pipeline = Pipeline(config, run_dir, progress=None)  # The run's progress stays.
    pipeline.load_data()
    run = RunFolder(run_dir)
    # Loaded for the run's classes and image size, as the run loaded it.
    teacher = load_teacher(run.model_file("teacher"), **pipeline.teacher_contract())
    checkpoint_dir = run.checkpoint_dir(stage)
    params = {"temperature": temperature, "alpha": alpha, "epochs": config.student_epochs}
    if config.method != "hinton":
        params.update(method=config.method, dkd_beta=config.dkd_beta)
    if atomic.read_json(checkpoint_dir / "params.json") != params:
        # A checkpoint of other T/alpha (an older best) must not be resumed.
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        run.history_file(stage).unlink(missing_ok=True)
    atomic.write_json(checkpoint_dir / "params.json", params)
    student, extra = pipeline.distill(teacher, stage, temperature, alpha)
    extra.update(
        search_dir=str(search_dir),
        search_trial_id=best.get("trial_id"),
        search_score=best.get("score"),
    )
    return pipeline.finish_stage(stage, student, extra)
