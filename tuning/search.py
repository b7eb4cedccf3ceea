"""Running, resuming and summarising a search over T and alpha.

A search lives in one folder (keras-tuner's `directory/project_name`):

```
search.json   the settings it was started with (checked on resume)
trials.csv    one row per trial: T, alpha, best val accuracy, time, ...
best.json     the best trial's T, alpha, score and trial id
search.png    val accuracy over T (log scale) and over alpha, best marked
oracle.json  tuner0.json  trial_<id>/   keras-tuner's own state
```

Running the same search again resumes it: finished trials are kept, an
interrupted one is re-run, and only the missing trials are trained.
"""

import contextlib
import csv
import hashlib
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

import keras  # noqa: E402
import keras_tuner  # noqa: E402
import numpy as np  # noqa: E402

from kd_keras import (
    RunConfig,
    atomic,  # First: kd_keras sets KERAS_BACKEND.
    load_teacher,
    make_dataset,
)
from kd_keras.config import data_kind
from kd_keras.data.cifar10 import NUM_CLASSES
from kd_keras.data.splits import splits_for
from kd_keras.distill.teacher import teacher_sanity_check
from kd_keras.errors import DamagedFileError, SearchError
from kd_keras.presets import DEFAULT_PRESET
from kd_keras.run_folder import (
    BEST_FILE,
    OBJECTIVE,
    SEARCH_FILE,
    SEARCH_PLOT,
    TRIAL_COLUMNS,
    TRIAL_COMPLETED,
    TRIAL_FILE,
    TRIALS_FILE,
    TUNERS,
    SearchFolder,
    describe_paths,
    remove_planned,
)
from kd_keras.train.speed import resolve_run_precisions
from tuning.hypermodel import DistillationHyperModel, SearchSpace  # noqa: E402

# RunConfig fields that change what a trial computes; a resumed search must
# agree on them (the teacher's fields do not matter: the teacher is given).
CONFIG_FIELDS = (
    "seed",
    "val_size",
    "train_per_class",
    "val_per_class",
    "student_depth",
    "student_width",
    "student_model",
    "image_size",
    "batch_size",
    "learning_rate",
    "momentum",
    "weight_decay",
    "warmup_epochs",
)
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

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        self._kd_started = time.time()
        self._kd_epochs = int(trial.hyperparameters.values.get("tuner/initial_epoch", 0))

    def on_epoch_end(self, trial, model, epoch, logs=None):
        super().on_epoch_end(trial, model, epoch, logs)
        self._kd_epochs = epoch + 1  # Keras counts from initial_epoch on.

    def on_trial_end(self, trial):
        # Stored beside keras-tuner's trial.json so it survives a resume.
        atomic.write_json(
            Path(self.project_dir) / f"trial_{trial.trial_id}" / TRIAL_FILE,
            {"seconds": round(time.time() - self._kd_started, 3), "epochs": self._kd_epochs},
        )
        super().on_trial_end(trial)  # Scores the trial and saves the oracle.
        rows = write_search_outputs(self)
        if self.kd_report is not None:
            self.kd_report(next(r for r in rows if r["trial_id"] == trial.trial_id))


class RandomSearch(_TrialRecorder, keras_tuner.RandomSearch):
    """`keras_tuner.RandomSearch` that records each trial (see `build_tuner`)."""


class BayesianOptimization(_TrialRecorder, keras_tuner.BayesianOptimization):
    """`keras_tuner.BayesianOptimization` that records each trial."""


class Hyperband(_TrialRecorder, keras_tuner.Hyperband):
    """`keras_tuner.Hyperband` that records each trial."""


def build_tuner(name, hypermodel, folder, *, max_trials, epochs, seed=0, overwrite=False):
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
    common = dict(
        hypermodel=hypermodel,
        objective=objective(),
        seed=seed,
        directory=str(folder.parent),
        project_name=folder.name,
        overwrite=overwrite,
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
    return tuner


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


def _int_at_least(name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise SearchError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def teacher_fingerprint(model):
    """A SHA-256 of the teacher's weights: a resumed search must distil from
    the same teacher, wherever its file now lives."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def search_settings(*, tuner, epochs, max_trials, config, space, teacher_sha256):
    """The dict saved as `search.json`."""
    return {
        "tuner": tuner,
        "objective": OBJECTIVE,
        "epochs": epochs,
        "max_trials": max_trials,
        "space": space.to_dict(),
        "config": {k: getattr(config, k) for k in CONFIG_FIELDS},
        "teacher_sha256": teacher_sha256,
    }


def _settings_differences(saved, new):
    differences = []
    for key in ("tuner", "objective", "epochs", "space", "config", "teacher_sha256"):
        old, now = saved.get(key), new.get(key)
        if isinstance(old, dict) and isinstance(now, dict):
            differences += [
                f"{key}.{k} (saved {old.get(k)!r}, asked {now.get(k)!r})"
                for k in sorted(set(old) | set(now))
                if old.get(k) != now.get(k)
            ]
        elif old != now:
            if key == "teacher_sha256":
                differences.append("the teacher (its weights differ)")
            else:
                differences.append(f"{key} (saved {old!r}, asked {now!r})")
    return differences


def check_search_folder(folder, *, overwrite=False):
    """Checks that `folder` can hold a search; returns its saved settings.

    Args:
        folder: the search folder.
        overwrite: whether the caller will replace a search there.

    Returns:
        The saved `search.json` dict, or `None` for a new search (or one
        that will be overwritten).

    Raises:
        SearchError: `folder` is a file; a non-empty folder that is not a
            search (no `search.json` nor `oracle.json`), which is never
            resumed into nor deleted; or, without `overwrite`, a Keras Tuner
            project without `search.json`.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SearchError(f"'{folder}' exists and is not a folder")
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    has_settings = (folder / SEARCH_FILE).is_file()
    if not has_settings and not (folder / "oracle.json").is_file():
        raise SearchError(
            f"'{folder}' is not empty and holds no search (no {SEARCH_FILE}); choose another --out"
        )
    if not has_settings:
        # run_search writes search.json before keras-tuner writes anything.
        raise SearchError(
            f"'{folder}' holds a Keras Tuner project that this package did not "
            f"start (no {SEARCH_FILE}); kd_keras replaces only its own searches: "
            "choose another --out"
        )
    search = SearchFolder(folder)
    if not overwrite:
        return search.saved_settings()
    # --overwrite removes only what a search writes (SearchFolder.removal_plan).
    try:
        search.saved_settings()
    except DamagedFileError as error:
        problem = error.problem if len(error.problem) <= 100 else error.problem[:97] + "..."
        raise SearchError(
            f"refusing to overwrite '{folder}': its {SEARCH_FILE} is not a kd_keras "
            f"search ({problem}); choose another --out"
        ) from None
    plan = search.removal_plan()
    if plan.refused:
        raise SearchError(
            f"refusing to overwrite '{folder}': {describe_paths(plan.refused, folder)} "
            "were not written by a search; move them out, or choose another --out"
        )
    return None


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
):
    """Runs, or resumes, a search over T and alpha in `out_dir`.

    The students train on the training split and are scored on the
    validation split of `kd_keras.prepare_splits` (carved from the training
    set); the test set is never looked at, so that it still gives an
    unbiased accuracy for the tuned T and alpha.

    Args:
        teacher: a trained teacher, as a `.keras` path or a `keras.Model`.
        data: the CIFAR-10 source for `kd_keras.prepare_splits` (archive
            path, folder, or `None` for `$KD_KERAS_CIFAR10`), or a splits
            dict as it returns (only `"train"` and `"val"` are used).
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
        cache_teacher_logits: replay the teacher's logits of the first
            trial in later trials instead of running the teacher again
            (same batches, same logits; see `DistillationHyperModel`).

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
    check_tuner(tuner)
    max_trials = _int_at_least("max_trials", max_trials, 1)
    config = (config or RunConfig.from_preset(DEFAULT_PRESET)).validate()
    # "auto" precisions are resolved for this machine and saved resolved.
    config, _ = resolve_run_precisions(config)
    epochs = _int_at_least("epochs", config.student_epochs if epochs is None else epochs, 1)
    try:
        space = (space or SearchSpace()).validate()
    except ValueError as error:
        raise SearchError(str(error)) from None
    folder = Path(out_dir).expanduser().resolve()
    # One process per search folder: a second identical command is refused
    # instead of training every trial again beside the first.
    with hold_search_lock(folder):
        saved = check_search_folder(folder, overwrite=overwrite)

        teacher_model = teacher if isinstance(teacher, keras.Model) else None
        if (
            teacher_model is None
            and not isinstance(data, dict)
            and (data_kind(data) == "cifar10" and config.image_size is None)
        ):
            teacher_model = load_teacher(teacher)  # Checked before the data loads.
        if isinstance(data, dict):
            splits = data
        else:
            # The test split is never used by a search; keep it tiny.
            splits = splits_for(config, data=data, test_per_class=1)
        if teacher_model is None:
            teacher_model = load_teacher(
                teacher,
                len(splits.get("classes") or range(NUM_CLASSES)),
                image_shape=tuple(splits["train"][0].shape[1:]),
            )
        settings = search_settings(
            tuner=tuner,
            epochs=epochs,
            max_trials=max_trials,
            config=config,
            space=space,
            teacher_sha256=teacher_fingerprint(teacher_model),
        )
        if saved is not None:
            differences = _settings_differences(saved, settings)
            if differences:
                raise SearchError(
                    f"cannot resume the search in '{folder}': it was started with other "
                    f"settings: {'; '.join(differences)}. Run it with the saved settings, "
                    "pass --overwrite to start over, or choose another --out"
                )
        # Printed before any trial, with a warning and the likely causes if
        # near chance (a search also serves to probe untrained teachers).
        teacher_sanity_check(
            teacher_model,
            splits,
            verbose=verbose,
            refuse=False,
            name=teacher if isinstance(teacher, str) else teacher_model.name,
        )

        train_images, train_labels = splits["train"]
        val_images, val_labels = splits["val"]

        def train_dataset(epochs, start_epoch):
            # Made per trial (see DistillationHyperModel.fit): epoch e's order
            # and augmentation depend on (seed, e) only, as in kd_keras's runs.
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
        hypermodel = DistillationHyperModel(
            teacher_model,
            steps_per_epoch=math.ceil(len(train_labels) / config.batch_size),
            epochs=epochs,
            config=config,
            space=space,
            cache_teacher_logits=cache_teacher_logits,
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
        )
        search_tuner.kd_report = report
        atomic.write_json(folder / SEARCH_FILE, settings)
        search_tuner.search(
            train_dataset, validation_data=val_dataset, epochs=epochs, verbose=verbose
        )
        rows = write_search_outputs(search_tuner)
        return SearchResult(tuner=search_tuner, rows=rows, best=best_row(rows), folder=folder)


def search_lock(folder):
    """The lock that keeps a search folder to one process.

    A `kd_keras.atomic.RunLock` on `.<name>.lock` beside the folder
    (`kd_keras.atomic.sibling_lock_path`): inside it, the file would be
    deleted with the folder by Keras Tuner's `overwrite`. The kernel
    releases it when the process exits.
    """
    return atomic.RunLock(folder, path=SearchFolder(folder).lock_file)


@contextlib.contextmanager
def hold_search_lock(folder):
    """Holds `search_lock(folder)` for the block.

    Raises:
        kd_keras.errors.RunLockedError: another process runs this search.
        SearchError: the lock file cannot be created beside the folder.
    """
    lock = search_lock(folder)
    try:
        lock.acquire()
    except OSError as error:
        raise SearchError(
            f"cannot write beside '{folder}': {error.strerror or error}; choose another --out"
        ) from None
    try:
        yield lock
    finally:
        lock.release()


def _metric(trial, name, best=False):
    if not trial.metrics.exists(name):
        return None
    value = trial.metrics.get_best_value(name) if best else trial.metrics.get_last_value(name)
    return None if value is None else float(value)


def trial_rows(tuner):
    """One dict per trial of `tuner`, in trial order, as in `trials.csv`.

    `val_accuracy` is the trial's best-epoch validation accuracy (its score),
    `val_loss` the student's validation cross-entropy at that epoch (the
    same quantity in every trial, unlike `distiller_val_loss`, the blended
    distillation loss at the trial's T and alpha), `epochs` the epochs the
    student had trained when the trial ended, `best_epoch` the epoch of the
    best score, `seconds` the trial's wall time.
    """
    rows = []
    for trial in sorted(tuner.oracle.trials.values(), key=lambda t: int(t.trial_id)):
        values = trial.hyperparameters.values
        extra = (
            atomic.read_json(Path(tuner.project_dir) / f"trial_{trial.trial_id}" / TRIAL_FILE, {})
            or {}
        )
        completed = trial.status == TRIAL_COMPLETED
        best_step = getattr(trial, "best_step", None)
        initial_epoch = int(values.get("tuner/initial_epoch", 0))
        rows.append(
            {
                "trial_id": trial.trial_id,
                "temperature": float(values["temperature"]) if "temperature" in values else None,
                "alpha": float(values["alpha"]) if "alpha" in values else None,
                "val_accuracy": _metric(trial, OBJECTIVE, best=True) if completed else None,
                # The metrics kept per trial are those of its best epoch.
                "val_loss": _metric(trial, "val_student_loss") if completed else None,
                "epochs": extra.get("epochs"),
                "seconds": extra.get("seconds"),
                "best_epoch": (initial_epoch + int(best_step) + 1)
                if completed and best_step is not None
                else None,
                "distiller_val_loss": _metric(trial, "val_loss") if completed else None,
                "status": trial.status,
            }
        )
    return rows


def best_row(rows):
    """The completed trial with the highest val accuracy (earliest on ties),
    as the `best.json` dict, or `None` if no trial completed."""
    completed = [
        r for r in rows if r["status"] == TRIAL_COMPLETED and r["val_accuracy"] is not None
    ]
    if not completed:
        return None
    best = max(completed, key=lambda r: (r["val_accuracy"], -int(r["trial_id"])))
    return {
        "trial_id": best["trial_id"],
        "temperature": best["temperature"],
        "alpha": best["alpha"],
        "score": best["val_accuracy"],
        "objective": OBJECTIVE,
        "val_loss": best["val_loss"],
        "epochs": best["epochs"],
        "completed_trials": len(completed),
    }


def write_search_outputs(tuner, folder=None):
    """Writes `trials.csv`, `best.json` and `search.png` of a tuner's trials.

    Args:
        tuner: a keras-tuner `Tuner`.
        folder: where to write; defaults to the tuner's project folder.

    Returns:
        The trial rows.
    """
    folder = Path(folder or tuner.project_dir)
    rows = trial_rows(tuner)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TRIAL_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(folder / TRIALS_FILE, buffer.getvalue())
    best = best_row(rows)
    if best is not None:
        atomic.write_json(folder / BEST_FILE, best)
    plot_search(rows, best, folder / SEARCH_PLOT)
    return rows


def load_trials(folder):
    """Reads a search's `trials.csv` into a list of dicts (numbers parsed)."""
    with open(Path(folder) / TRIALS_FILE, newline="") as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        for key, value in row.items():
            if key in ("trial_id", "status"):
                continue
            row[key] = float(value) if value not in ("", None) else None
    return rows


def load_best(folder):
    """Reads a search's `best.json`.

    Raises:
        SearchError: the folder holds no `best.json` (no search, or no
            completed trial yet).
    """
    best = atomic.read_json(Path(folder) / BEST_FILE)
    if best is None:
        raise SearchError(
            f"'{folder}' holds no {BEST_FILE}: run the search first (or let one trial complete)"
        )
    return best


def _log_ticks(low, high):
    # Round values for a log axis; None when fewer than two fall in range.
    ticks = [v for v in (0.5, 1, 2, 3, 5, 10, 20, 30, 50, 100) if low <= v <= high]
    return ticks if len(ticks) >= 2 else None


def plot_search(rows, best, path):
    """Scatter plots of val accuracy over T (log scale) and over alpha.

    Each point is a completed trial, coloured by the other knob; the best
    trial is marked with a red star.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    done = [r for r in rows if r["val_accuracy"] is not None]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.4), layout="constrained")
    if done:
        temps = np.array([r["temperature"] for r in done])
        alphas = np.array([r["alpha"] for r in done])
        scores = 100 * np.array([r["val_accuracy"] for r in done])
        # Each panel colours the points by the other knob.
        t_norm = (
            matplotlib.colors.LogNorm(temps.min(), temps.max())
            if temps.min() < temps.max()
            else None
        )
        panels = (
            (axes[0], temps, alphas, None, "alpha", "viridis", "temperature T (log scale)"),
            (
                axes[1],
                alphas,
                temps,
                t_norm,
                "T",
                "plasma",
                "alpha (weight of the hard-label loss)",
            ),
        )
        for axis, x, colour, norm, colour_label, cmap, xlabel in panels:
            points = axis.scatter(
                x, scores, c=colour, cmap=cmap, norm=norm, s=40, edgecolors="black", linewidths=0.4
            )
            bar = figure.colorbar(points, ax=axis, label=colour_label)
            if norm is not None:
                bar.set_ticks(_log_ticks(colour.min(), colour.max()) or bar.get_ticks())
            bar.ax.yaxis.set_major_formatter(plain)
            bar.ax.yaxis.set_minor_formatter(NullFormatter())
            axis.set_xlabel(xlabel)
            axis.set_ylabel("best val accuracy (%)")
            axis.grid(alpha=0.3)
        axes[0].set_xscale("log")
        low, high = temps.min() / 1.5, temps.max() * 1.5
        axes[0].set_xlim(low, high)
        axes[0].set_xticks(_log_ticks(low, high) or sorted({float(f"{t:.3g}") for t in temps})[:8])
        axes[0].xaxis.set_major_formatter(plain)
        axes[0].xaxis.set_minor_formatter(NullFormatter())
        if best is not None:
            for axis, x in ((axes[0], best["temperature"]), (axes[1], best["alpha"])):
                axis.scatter(
                    [x],
                    [100 * best["score"]],
                    marker="*",
                    s=300,
                    color="red",
                    edgecolors="black",
                    zorder=5,
                    label="best",
                )
                axis.legend(loc="best", fontsize=8)
            figure.suptitle(
                f"{len(done)} trials; best: T = {best['temperature']:.3g}, "
                f"alpha = {best['alpha']:.3g}, val accuracy {100 * best['score']:.2f}% "
                f"(trial {best['trial_id']})"
            )
    else:
        for axis in axes:
            axis.text(
                0.5,
                0.5,
                "no completed trial yet",
                ha="center",
                va="center",
                transform=axis.transAxes,
            )
    with atomic.atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(figure)
