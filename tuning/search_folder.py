"""The search folder: its saved settings (`search.json`), what may be
resumed or overwritten, and the lock that keeps it to one process.

```
search.json   the settings it was started with (checked on resume)
trials.csv    one row per trial: T, alpha, best val accuracy, time, ...
best.json     the best trial's T, alpha, score and trial id
search.png    val accuracy over T (log scale) and over alpha, best marked
oracle.json  tuner0.json  trial_<id>/   keras-tuner's own state
```
"""

import contextlib
import dataclasses
import hashlib
from pathlib import Path

import keras
import numpy as np

from kd_keras import RunConfig, atomic  # First: kd_keras sets KERAS_BACKEND.
from kd_keras.data.cifar10 import NUM_CLASSES
from kd_keras.errors import DamagedFileError, SearchError
from kd_keras.owned_files import describe_paths
from kd_keras.search_folder import OBJECTIVE, SEARCH_FILE, SearchFolder
from kd_keras.text import clip
from kd_keras.validation import METHOD_FIELDS

# RunConfig fields that change what a trial computes; a resumed search must
# agree on them (the teacher's fields do not matter: the teacher is given).
CONFIG_FIELDS = (
    (
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
    + METHOD_FIELDS
    + tuple(
        # The teacher's output kind, where the run has that option.
        f.name
        for f in dataclasses.fields(RunConfig)
        if f.name == "teacher_outputs"
    )
)


def teacher_fingerprint(model):
    """A SHA-256 of the teacher's weights: a resumed search must distil from
    the same teacher, wherever its file now lives."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def search_settings(*, tuner, epochs, max_trials, config, space, teacher_sha256, data=None):
    """The dict saved as `search.json`; `data` is `describe_data(splits)`."""
    return {
        "tuner": tuner,
        "objective": OBJECTIVE,
        "epochs": epochs,
        "max_trials": max_trials,
        "space": space.to_dict(),
        "config": {k: getattr(config, k) for k in CONFIG_FIELDS},
        "teacher_sha256": teacher_sha256,
        "data": data,
    }


def settings_differences(saved, new):
    differences = []
    for key in (
        "tuner",
        "objective",
        "epochs",
        "space",
        "config",
        "teacher_sha256",
        "data",
        "trial_seeds",
        "default",
    ):
        old, now = saved.get(key), new.get(key)
        if key in ("data", "trial_seeds", "default") and old is None:
            continue  # Saved before it was recorded.
        if isinstance(old, dict) and isinstance(now, dict):
            differences += [
                f"{key}.{k} (saved {old.get(k)!r}, asked {now.get(k)!r})"
                for k in sorted(set(old) | set(now))
                # A field missing from the saved settings is newer than the search.
                if old.get(k) != now.get(k) and (k in old or key != "config")
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
        settings = search.saved_settings()
        check_tuner_state(folder)
        return settings
    # --overwrite removes only what a search writes (SearchFolder.removal_plan).
    try:
        search.saved_settings()
    except DamagedFileError as error:
        problem = clip(error.problem, 100)
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


def check_tuner_state(folder):
    """Raises `DamagedFileError` for a keras-tuner state file in `folder`
    (`oracle.json`, `tuner*.json`, `trial_*/trial.json`) that is not a JSON
    object, before keras-tuner's reload fails on it with a bare
    JSONDecodeError. Such a file comes from an edit, a damaged disk, or a
    search killed mid-write by a version that wrote them in place (they are
    now written atomically: `tuning.tuners.save_state_atomically`)."""
    folder = Path(folder)
    fix = (
        "keras-tuner cannot resume the search from it: start the search again with "
        "--overwrite, or in a new --out"
    )
    state = [
        folder / "oracle.json",
        *sorted(folder.glob("tuner*.json")),
        *sorted(folder.glob("trial_*/trial.json")),
    ]
    for path in state:
        atomic.read_json_object(path, fix=fix)


def describe_data(splits):
    """What a search trains and scores on: `{"classes", "image_shape",
    "train_images", "val_images"}` (saved in `search.json`; a resumed search
    must see the same)."""
    return {
        "classes": [str(c) for c in (splits.get("classes") or range(NUM_CLASSES))],
        "image_shape": [int(d) for d in splits["train"][0].shape[1:]],
        "train_images": int(len(splits["train"][1])),
        "val_images": int(len(splits["val"][1])),
    }


def format_data(facts):
    """One line of `describe_data`'s facts, e.g. `3 classes, 20x20x3 images:
    60 training, 30 validation`."""
    shape = "x".join(str(d) for d in facts["image_shape"])
    return (
        f"{len(facts['classes'])} classes, {shape} images: {facts['train_images']} "
        f"training, {facts['val_images']} validation"
    )


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
