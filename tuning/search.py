"""Running, resuming and summarising a search over T and alpha.

A search lives in one folder (keras-tuner's `directory/project_name`; see
`tuning.search_folder`). Running the same search again resumes it: finished
trials are kept, an interrupted one is re-run, and only the missing trials
are trained. The tuners are in `tuning.tuners`, the outputs (`trials.csv`,
`best.json`, `search.png`) in `tuning.report`.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from kd_keras import (
    RunConfig,
    load_teacher,  # First: kd_keras sets KERAS_BACKEND.
    make_dataset,
)
from kd_keras.config import data_kind
from kd_keras.data.cifar10 import NUM_CLASSES
from kd_keras.data.splits import splits_for
from kd_keras.distill.teacher import check_teacher_file, teacher_sanity_check
from kd_keras.errors import SearchError
from kd_keras.owned_files import remove_planned
from kd_keras.presets import DEFAULT_PRESET
from kd_keras.search_folder import MAX_TRIALS, SEARCH_FILE, SearchFolder
from kd_keras.train.speed import apply_threading, resolve_run_precisions
from kd_keras.validation import MAX_EPOCHS

from . import distributed
from .hypermodel import DistillationHyperModel, SearchSpace
from .report import best_row, write_search_outputs, write_strict_json
from .search_folder import (
    check_search_folder,
    describe_data,
    format_data,
    hold_search_lock,
    search_settings,
    settings_differences,
    teacher_fingerprint,
)
from .tuners import build_tuner, check_tuner


@dataclass
class SearchResult:
    """What `run_search` returns.

    Attributes:
        tuner: the keras-tuner `Tuner` (its `oracle.trials` hold every trial).
        rows: one dict per trial, as in `trials.csv`.
        best: the best trial's dict, as in `best.json`, or `None` if no
            trial completed.
        folder: the search folder.
    """

    tuner: object
    rows: list
    best: object
    folder: Path


def _int_in_range(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise SearchError(f"{name} must be an int >= {low}, got {value!r}")
    if value > high:
        raise SearchError(f"{name} must be at most {high}, got {value}")
    return int(value)


def run_search(
    teacher,
    data,
    out_dir,
    *,
    config=None,
    space=None,
    tuner="random",
    max_trials=10,
    epochs=None,
    overwrite=False,
    verbose=1,
    report=None,
    cache_teacher_logits=True,
    local_workers=None,
    trial_seeds=1,
):
    """Runs, or resumes, a search over T and alpha in `out_dir`.

    The students train on the training split and are scored on the
    validation split of `kd_keras.prepare_splits` (carved from the training
    set); the test set is never looked at, so that it still gives an
    unbiased accuracy for the tuned T and alpha.

    Args:
        teacher: a trained teacher, as a `.keras` path or a `keras.Model`.
        data: the data for `kd_keras.data.splits.splits_for(config)`
            (CIFAR-10, an image folder or a `.npz` file; `None` for
            `config.data`, then `$KD_KERAS_CIFAR10`), or a splits dict as
            it returns (only `"train"`, `"val"` and `"classes"` are used).
            The teacher is loaded for the data's classes and image shape
            (after `config.image_size`), and the split sizes are checked
            against the data itself.
        out_dir: the search folder.
        config: a `kd_keras.RunConfig` for the data split and subsets
            (`seed`, `val_size`, `train_per_class`, `val_per_class`), the
            student (`student_depth`, `student_width`) and the recipe
            (`batch_size`, `learning_rate`, `momentum`, `weight_decay`,
            `warmup_epochs`); defaults to the `DEFAULT_PRESET` preset.
        space: a `SearchSpace`; defaults to T in [1, 20], alpha in [0, 1].
        tuner: `"random"`, `"bayesian"` or `"hyperband"`.
        max_trials: the number of trials (a cap, for Hyperband). A resumed
            search may be given a larger number to extend it.
        epochs: epochs per trial (Hyperband: at most); defaults to
            `config.student_epochs`.
        overwrite: delete the search in `out_dir` and start over. Without
            it, a search already in `out_dir` is continued, and must have
            been started with the same settings (all but `max_trials`).
        verbose: 0 silent, 1 progress bars, 2 one line per epoch.
        report: optional callable receiving each finished trial's row.
            With `report` or `verbose`, a line says what the data is
            (classes, image shape, training and validation images).
        cache_teacher_logits: replay the teacher's logits of the first
            trial in later trials instead of running the teacher again
            (same batches, same logits; see `DistillationHyperModel`).
        trial_seeds: score each trial as the mean of this many students
            of different initial weights (see `DistillationHyperModel`).
        local_workers: on the chief of a distributed search
            (`tuning.distributed`), a `LocalWorkers` to start once the
            chief serves trials.

    A distributed search (Keras Tuner's `KERASTUNER_*` environment
    variables, see `tuning.distributed`): the chief does all of the above
    but, instead of training, serves the trials to the workers and writes
    the outputs as they finish, recording which worker ran each trial in
    `search.json` (`"workers"`); a worker trains the trials it is given and
    returns a result with no rows.

    Returns:
        A `SearchResult`.

    Raises:
        SearchError: bad settings, a folder that is not a search, or a
            resume with different settings (the message lists them).
        kd_keras.TeacherError: a teacher file that cannot be loaded.
        kd_keras.DatasetError: missing or corrupt CIFAR-10 data.

    Example:

    >>> result = run_search("runs/quick/models/teacher.keras",
    ...                     "cifar-10-python.tar.gz", "searches/quick",
    ...                     tuner="bayesian", max_trials=12, epochs=5)
    >>> result.best["temperature"], result.best["alpha"]
    """
    max_trials, config, epochs, space = _checked_arguments(tuner, max_trials, config, epochs, space)
    folder = Path(out_dir).expanduser().resolve()
    if distributed.role() == "worker":
        return _run_worker(
            teacher,
            data,
            folder,
            config,
            space,
            tuner,
            max_trials,
            epochs,
            verbose,
            dict(cache_teacher_logits=cache_teacher_logits, trial_seeds=trial_seeds),
        )
    # One process per search folder: a second identical command is refused
    # instead of training every trial again beside the first.
    with hold_search_lock(folder):
        saved = check_search_folder(folder, overwrite=overwrite)
        splits, teacher_model = _load_data_and_teacher(teacher, data, config)
        data_facts = describe_data(splits)
        if verbose or report is not None:
            print(f"search data: {format_data(data_facts)}", flush=True)
        settings = search_settings(
            tuner=tuner,
            epochs=epochs,
            max_trials=max_trials,
            config=config,
            space=space,
            teacher_sha256=teacher_fingerprint(teacher_model),
            data=data_facts,
        )
        settings["trial_seeds"] = trial_seeds
        # The config's T and alpha: the first trial, the score to beat.
        settings["default"] = space.default_values(config.temperature, config.alpha, config.method)
        _check_resume(folder, saved, settings)
        # Printed before any trial, with a warning and the likely causes if
        # near chance (a search also serves to probe untrained teachers).
        teacher_sanity_check(
            teacher_model,
            splits,
            verbose=verbose,
            refuse=False,
            name=teacher if isinstance(teacher, str) else teacher_model.name,
        )
        train_dataset, val_dataset, steps_per_epoch = _datasets(splits, config)
        hypermodel = DistillationHyperModel(
            teacher_model,
            steps_per_epoch=steps_per_epoch,
            epochs=epochs,
            config=config,
            space=space,
            cache_teacher_logits=cache_teacher_logits,
            trial_seeds=trial_seeds,
            cache_folder=SearchFolder(folder).teacher_logits_dir,
        )
        if overwrite:
            # Only the search's own files go (never keras-tuner's rmtree of
            # the folder): a user's other files stay, links are unlinked.
            remove_planned(SearchFolder(folder).removal_plan())
        search_tuner = build_tuner(
            tuner,
            hypermodel,
            folder,
            max_trials=max_trials,
            epochs=epochs,
            seed=config.seed,
            first_values=settings["default"],
        )
        search_tuner.kd_report = report
        settings["workers"] = (saved or {}).get("workers") or {}
        write_strict_json(folder / SEARCH_FILE, settings)
        if distributed.role() == distributed.CHIEF:
            search_tuner.oracle.verbose = verbose  # As Tuner.search sets it.
            if local_workers is not None:
                # One teacher pass per epoch on all the cores, which every
                # worker then reads, instead of one pass per worker on its
                # share of them.
                hypermodel.fill_teacher_cache(train_dataset)
            _serve(search_tuner, folder, settings, report, local_workers)
        else:
            search_tuner.search(
                train_dataset, validation_data=val_dataset, epochs=epochs, verbose=verbose
            )
        rows = write_search_outputs(search_tuner)
        best = best_row(rows, data_facts["val_images"], settings["default"])
        return SearchResult(tuner=search_tuner, rows=rows, best=best, folder=folder)


def _serve(search_tuner, folder, settings, report, local_workers):
    """The chief's part: serves the trials; after each, records its worker in
    `search.json` and rewrites the outputs."""

    def trial_ended(trial_id, worker):
        settings["workers"][trial_id] = worker
        write_strict_json(folder / SEARCH_FILE, settings)
        rows = write_search_outputs(search_tuner)
        row = next((r for r in rows if r["trial_id"] == trial_id), None)
        if report is not None and row is not None:
            report(dict(row, worker=worker))

    distributed.serve(search_tuner, on_trial_end=trial_ended, workers=local_workers)


def _run_worker(teacher, data, folder, config, space, tuner, max_trials, epochs, verbose, options):
    """A worker's part: the same data, teacher and hypermodel as the chief,
    trials asked of the chief's oracle. It neither locks nor writes the
    search's outputs (the chief does)."""
    distributed.watch_chief()
    splits, teacher_model = _load_data_and_teacher(teacher, data, config)
    train_dataset, val_dataset, steps_per_epoch = _datasets(splits, config)
    hypermodel = DistillationHyperModel(
        teacher_model,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        config=config,
        space=space,
        cache_folder=SearchFolder(folder).teacher_logits_dir,
        **options,
    )
    search_tuner = build_tuner(
        tuner, hypermodel, folder, max_trials=max_trials, epochs=epochs, seed=config.seed
    )
    search_tuner.search(train_dataset, validation_data=val_dataset, epochs=epochs, verbose=verbose)
    return SearchResult(tuner=search_tuner, rows=[], best=None, folder=folder)


def _checked_arguments(tuner, max_trials, config, epochs, space):
    """`run_search`'s arguments, checked before anything loads: the trial
    and epoch counts within their caps, the config validated with its
    "auto" precisions resolved for this machine (saved resolved), the space
    validated."""
    check_tuner(tuner)
    max_trials = _int_in_range("max_trials", max_trials, 1, MAX_TRIALS)
    config = (config or RunConfig.from_preset(DEFAULT_PRESET)).validate()
    config, _ = resolve_run_precisions(config)
    apply_threading(config)  # Before TensorFlow's runtime starts.
    epochs = _int_in_range(
        "epochs", config.student_epochs if epochs is None else epochs, 1, MAX_EPOCHS
    )
    try:
        space = (space or SearchSpace()).validate().check_config(config)
    except ValueError as error:
        raise SearchError(str(error)) from None
    return max_trials, config, epochs, space


def _check_resume(folder, saved, settings):
    """Raises `SearchError` listing what differs between a saved search's
    settings and the ones asked (nothing for a new search)."""
    differences = settings_differences(saved, settings) if saved is not None else []
    if differences:
        raise SearchError(
            f"cannot resume the search in '{folder}': it was started with other "
            f"settings: {'; '.join(differences)}. Run it with the saved settings, "
            "pass --overwrite to start over, or choose another --out"
        )


def _datasets(splits, config):
    """`(train_dataset, val_dataset, steps_per_epoch)` of a search.

    `train_dataset(epochs, start_epoch)` is made per trial (see
    `DistillationHyperModel.fit`): epoch e's order and augmentation depend on
    (seed, e) only, as in kd_keras's runs."""
    train_images, train_labels = splits["train"]
    val_images, val_labels = splits["val"]

    def train_dataset(epochs, start_epoch):
        return make_dataset(
            train_images,
            train_labels,
            batch_size=config.batch_size,
            training=True,
            seed=config.seed,
            epochs=epochs,
            start_epoch=start_epoch,
        )

    val_dataset = make_dataset(val_images, val_labels, batch_size=256, training=False)
    return train_dataset, val_dataset, math.ceil(len(train_labels) / config.batch_size)


def _load_data_and_teacher(teacher, data, config):
    """The search's splits and its teacher, loaded for the data's classes
    and image shape (an image folder's or `.npz` file's, at the config's
    image size; not CIFAR-10's unless the data is CIFAR-10)."""
    if isinstance(teacher, keras.Model):
        teacher_model = teacher
    elif not isinstance(data, dict) and data_kind(data) == "cifar10" and config.image_size is None:
        teacher_model = load_teacher(teacher)  # CIFAR-10's shape: checked before the data loads.
    else:
        check_teacher_file(teacher)  # The cheap checks, before the data loads.
        teacher_model = None
    if isinstance(data, dict):
        splits = data
    else:
        # The library's splits of the config (its sizes checked against the
        # data itself); the test split is never used by a search: keep it tiny.
        splits = splits_for(config, data=data, test_per_class=1)
    if teacher_model is None:
        teacher_model = load_teacher(teacher, **_teacher_contract(splits))
    return splits, teacher_model


def _teacher_contract(splits):
    return {
        "num_classes": len(splits.get("classes") or range(NUM_CLASSES)),
        "image_shape": tuple(int(d) for d in splits["train"][0].shape[1:]),
    }
