"""The keras-tuner tuners of a search, each recording its trials.

`build_tuner` selects random search, Bayesian optimisation or Hyperband;
every trial's wall time, epochs and (if it failed) error are saved beside
keras-tuner's own trial state, and the search's outputs are rewritten after
every trial (`tuning.report`).
"""

import json
import math
import time
from pathlib import Path

import keras_tuner

from kd_keras import atomic
from kd_keras.errors import SearchError, SearchFailedError
from kd_keras.search_folder import OBJECTIVE, TRIAL_COMPLETED, TRIAL_FILE, TUNERS

from . import distributed
from .report import write_search_outputs, write_strict_json

# The search stops when this many trials in a row failed.
MAX_CONSECUTIVE_FAILURES = 3

# keras-tuner's statuses of a trial that ended without a score.
TRIAL_FAILED = ("FAILED", "INVALID")

# Hyperband: each model trains at most `epochs`; successive halving keeps
# the best third of the models of each round.
HYPERBAND_FACTOR = 3


def objective():
    """The search objective: the student's best validation accuracy.

    Not `val_loss`: the distiller's loss blends cross-entropy with
    T**2 * KL at the trial's own T and alpha, so its value changes with the
    very knobs being tuned and cannot rank trials against each other. The
    student's accuracy on the validation split means the same in every
    trial.
    """
    return keras_tuner.Objective(OBJECTIVE, direction="max")


class _TrialRecorder:
    """Mixed into a keras-tuner `Tuner`: times each trial, counts its
    epochs, and rewrites the search's outputs after every trial, so an
    interrupted search still has an up-to-date `trials.csv`."""

    kd_report = None  # Optional callable(row) told about each finished trial.

    def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
        # keras-tuner 1.4 imports tensorboard here on the TensorFlow backend
        # even when no TensorBoard callback is used, failing every trial
        # where tensorboard is not installed (TF 2.21 does not pull it in).
        # Only a TensorBoard callback needs it.
        if any(type(c).__name__ == "TensorBoard" for c in callbacks):
            super()._configure_tensorboard_dir(callbacks, trial, execution)

    def _try_run_and_update_trial(self, trial, *fit_args, **fit_kwargs):
        # keras-tuner prints each failed trial's traceback (its DEBUG flag);
        # the error's last line is printed by the report and kept in
        # kd_trial.json, the traceback in keras-tuner's trial.json.
        from keras_tuner.src import config as keras_tuner_config

        previous, keras_tuner_config.DEBUG = keras_tuner_config.DEBUG, False
        try:
            super()._try_run_and_update_trial(trial, *fit_args, **fit_kwargs)
        finally:
            keras_tuner_config.DEBUG = previous

    def run_trial(self, trial, *args, **kwargs):
        # One history per execution (`--trial-seeds`): each seed's best
        # score, which keras-tuner averages into the trial's.
        histories = super().run_trial(trial, *args, **kwargs)
        self._kd_seed_scores = [execution_score(h) for h in histories]
        return histories

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        self._kd_seed_scores = []
        self._kd_started = time.time()
        self._kd_epochs = int(trial.hyperparameters.values.get("tuner/initial_epoch", 0))

    def on_epoch_end(self, trial, model, epoch, logs=None):
        super().on_epoch_end(trial, model, epoch, logs)
        self._kd_epochs = epoch + 1  # Keras counts from initial_epoch on.

    def on_trial_end(self, trial):
        # Stored beside keras-tuner's trial.json so it survives a resume.
        write_strict_json(
            Path(self.project_dir) / f"trial_{trial.trial_id}" / TRIAL_FILE,
            {
                "seconds": round(time.time() - self._kd_started, 3),
                "epochs": self._kd_epochs,
                "error": trial_error(trial),
                "worker": distributed.worker_id(),
                "seed_scores": [x for x in self._kd_seed_scores if x is not None],
            },
        )
        super().on_trial_end(trial)  # Scores the trial and saves the oracle.
        if distributed.role() == "worker":
            return  # The chief writes the outputs.
        rows = write_search_outputs(self)
        if self.kd_report is not None:
            self.kd_report(next(r for r in rows if r["trial_id"] == trial.trial_id))
        check_failures(rows)


class RandomSearch(_TrialRecorder, keras_tuner.RandomSearch):
    """`keras_tuner.RandomSearch` that records each trial (see `build_tuner`)."""


class BayesianOptimization(_TrialRecorder, keras_tuner.BayesianOptimization):
    """`keras_tuner.BayesianOptimization` that records each trial."""


class Hyperband(_TrialRecorder, keras_tuner.Hyperband):
    """`keras_tuner.Hyperband` that records each trial."""


def execution_score(history):
    """The best validation accuracy of one execution's `History` (or of
    the dict keras-tuner may be given instead), or None."""
    logs = getattr(history, "history", history)
    values = logs.get(OBJECTIVE) if isinstance(logs, dict) else None
    if isinstance(values, (int, float)):
        values = [values]
    finite = [float(v) for v in values or () if math.isfinite(float(v))]
    return max(finite) if finite else None


def trial_error(trial):
    """A failed trial's error on one line (keras-tuner keeps the traceback
    in `trial.message`: its last line, without the exception's module), or
    `None`."""
    if trial.status == TRIAL_COMPLETED or not trial.message:
        return None
    lines = [line.strip() for line in str(trial.message).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    name, sep, text = last.partition(": ")
    return text if sep and " " not in name else last


def check_failures(rows):
    """Raises `SearchFailedError` once the last `MAX_CONSECUTIVE_FAILURES`
    finished trials all failed (keras-tuner's own limit, which raises before
    it saves the last trial, is lifted in `build_tuner`)."""
    streak = []
    for row in sorted(rows, key=lambda r: int(r["trial_id"])):
        if row["status"] == TRIAL_COMPLETED:
            streak = []
        elif row["status"] in TRIAL_FAILED:
            streak.append(row)
    if len(streak) >= MAX_CONSECUTIVE_FAILURES:
        last = streak[-1]
        raise SearchFailedError(
            f"the last {len(streak)} trials failed and the search stopped (trial "
            f"{last['trial_id']}: {(last.get('error') or last['status']).rstrip('.')}); "
            "fix the cause and run again with --overwrite"
        )


def build_tuner(
    name, hypermodel, folder, *, max_trials, epochs, seed=0, overwrite=False, first_values=None
):
    """The keras-tuner `Tuner` of a search, selected by name.

    Args:
        name: `"random"` (random search), `"bayesian"` (Gaussian-process
            Bayesian optimisation; needs scikit-learn) or `"hyperband"`.
        hypermodel: a `DistillationHyperModel`.
        folder: the search folder (keras-tuner's `directory/project_name`).
        max_trials: the most trials to run. For Hyperband it caps the total
            number of trials, each successive-halving continuation counting
            as one; Hyperband brackets repeat until the cap is reached.
        epochs: epochs per trial; for Hyperband, the most epochs one model
            trains (`max_epochs`).
        seed: seed of the tuner's sampling.
        overwrite: delete the folder's previous search and start over;
            otherwise a previous search there is reloaded and continued.
        first_values: if given (random and Bayesian), the hyperparameter
            values of a new search's first trial, e.g. the default T and
            alpha (`SearchSpace.default_values`).

    Returns:
        A keras-tuner `Tuner` subclass instance whose search writes
        `trials.csv`, `best.json` and `search.png` into `folder`.

    Raises:
        SearchError: for an unknown name, or `"bayesian"` without
            scikit-learn.

    Example:

    >>> tuner = build_tuner("hyperband", hypermodel, "searches/hb",
    ...                     max_trials=30, epochs=9)
    >>> tuner.search(train_data, validation_data=val_ds, epochs=9)
    >>> write_search_outputs(tuner)
    """
    folder = Path(folder).resolve()
    save_state_atomically()  # Before the tuner reloads or writes its state.
    common = dict(
        hypermodel=hypermodel,
        objective=objective(),
        seed=seed,
        directory=str(folder.parent),
        project_name=folder.name,
        overwrite=overwrite,
        # Each trial's score: the mean over the hypermodel's seeds.
        executions_per_trial=getattr(hypermodel, "trial_seeds", 1),
    )
    check_tuner(name)
    if name == "random":
        tuner = RandomSearch(max_trials=max_trials, **common)
    elif name == "bayesian":
        tuner = BayesianOptimization(max_trials=max_trials, **common)
    else:
        tuner = Hyperband(
            max_epochs=epochs,
            factor=HYPERBAND_FACTOR,
            hyperband_iterations=None,  # Repeat brackets until max_trials.
            **common,
        )
        # HyperbandOracle takes no max_trials, but Oracle.create_trial stops
        # at `max_trials`: set it so --trials bounds Hyperband too.
        tuner.oracle.max_trials = max_trials
    # Failed trials are counted by `check_failures` after they are saved.
    tuner.oracle.max_consecutive_failed_trials = max_trials + 1
    drop_finished_retries(tuner.oracle)
    if first_values is not None and name != "hyperband":
        start_with(tuner.oracle, first_values)
    return tuner


def save_state_atomically():
    """Makes keras-tuner write its state files (`oracle.json`,
    `tuner0.json`, each `trial.json`) atomically.

    keras-tuner writes them in place (`keras_tuner.src.utils.save_json`
    opens the file for writing, then writes): a search killed in between
    leaves an empty or half-written `oracle.json`, and `--resume` then
    fails in keras-tuner's reload with a JSONDecodeError. Local files are
    written through `kd_keras.atomic` instead (a temporary file renamed
    over the old one), so a killed search leaves the last whole state.
    Remote paths (`gs://...`) keep keras-tuner's own write. Idempotent.
    """
    from keras_tuner.src import utils

    if getattr(utils.save_json, "kd_atomic", False):
        return
    original = utils.save_json

    def save_json(path, obj):
        if "://" in str(path):
            return original(path, obj)
        text = json.dumps(obj)  # As keras-tuner's own: compact, one line.
        atomic.write_text(path, text)
        return text

    save_json.kd_atomic = True
    utils.save_json = save_json


def start_with(oracle, values):
    """Makes a new search's first trial the hyperparameter `values` (the
    default T and alpha), so the search measures the default it must beat;
    later trials are the oracle's own (random or Bayesian) choices."""
    populate = oracle.populate_space

    def populate_first(trial_id):
        if not oracle.trials:
            return {"status": "RUNNING", "values": dict(values)}
        return populate(trial_id)

    oracle.populate_space = populate_first


def drop_finished_retries(oracle):
    """Keeps a reloaded oracle from running a finished trial again.

    keras-tuner saves `oracle.json` in `end_trial` before it removes the
    ended trial from `ongoing_trials`, and a reload sends every ongoing
    trial to the retry queue: a process killed in between would run a
    COMPLETED trial twice. Only trials that did not end are retried."""
    queue = getattr(oracle, "_retry_queue", None)
    if queue:
        queue[:] = [
            t
            for t in queue
            if getattr(oracle.trials.get(t), "status", None) not in (TRIAL_COMPLETED, *TRIAL_FAILED)
        ]


def check_tuner(name):
    """Raises `SearchError` unless the tuner `name` exists and can run here."""
    if name not in TUNERS:
        raise SearchError(f"unknown tuner '{name}'; choose one of {', '.join(TUNERS)}")
    if name == "bayesian":
        try:
            import scipy  # noqa: F401
            import sklearn  # noqa: F401
        except ImportError as error:
            raise SearchError(
                f"the bayesian tuner needs scikit-learn and scipy ({error}); install "
                "them with 'pip install scikit-learn' or use --tuner random"
            ) from None
