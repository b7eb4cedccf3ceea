"""The layout of a T/alpha search folder (`python -m tuning --out`).

Keras-free: the search and the app name a search's files through
`SearchFolder`:

```
<search>/search.json  trials.csv  best.json  search.png  trial_<id>/  teacher_logits/
.<search>.lock        beside the folder (`SearchFolder.lock_file`)
```

What a search writes is listed once, as patterns (`SEARCH_LAYOUT`):
`--overwrite` removes only those entries (`kd_keras.owned_files`).
"""

import dataclasses
from pathlib import Path

from kd_keras import atomic
from kd_keras.errors import DamagedFileError
from kd_keras.owned_files import Layout, plan_removal
from kd_keras.run_folder import read_results_csv

SEARCH_FILE = "search.json"
TRIALS_FILE = "trials.csv"
BEST_FILE = "best.json"
SEARCH_PLOT = "search.png"
TRIAL_FILE = "kd_trial.json"  # Per trial folder: wall time and epochs.
# The teacher's logits of each epoch's batches, shared by the trials and
# the workers (`kd_keras.TeacherLogitCache(folder=)`): `epoch_<e>.npz`.
TEACHER_LOGITS_DIR = "teacher_logits"
TUNERS = ("random", "bayesian", "hyperband")  # `--tuner`; the first is the default.
MAX_TRIALS = 1000  # `--trials`: each trial keeps a folder and a checkpoint.
MAX_WORKERS = 64  # `--workers`: local worker processes under one chief.
MAX_TRIAL_SEEDS = 100  # `--trial-seeds`: each seed trains the trial once more.
OBJECTIVE = "val_accuracy"
# The columns of `trials.csv`.
TRIAL_COLUMNS = (
    "trial_id",
    "temperature",
    "alpha",
    "method",  # The trial's distillation method (searched, or the config's).
    "dkd_beta",  # DKD's beta, in trials whose method is "dkd".
    "val_accuracy",
    "seed_sd",  # With --trial-seeds k >= 2: the sd of the k seeds' scores.
    "val_loss",
    "epochs",
    "seconds",
    "best_epoch",
    "distiller_val_loss",
    "status",
)
TRIAL_COMPLETED = "COMPLETED"  # A finished trial's `status` (keras-tuner's).
# The entries `search.json` always has.
SEARCH_KEYS = ("tuner", "objective", "epochs", "max_trials", "space", "config")
# What a search writes in its folder: kd_keras's files, then Keras Tuner's.
SEARCH_LAYOUT = Layout(
    files=(SEARCH_FILE, TRIALS_FILE, BEST_FILE, SEARCH_PLOT, "oracle.json", "tuner*.json"),
    dirs=(
        (
            "trial_*",
            Layout(files=("trial.json", "build_config.json", "checkpoint*", TRIAL_FILE)),
        ),
        (TEACHER_LOGITS_DIR, Layout(files=("epoch_*.npz",))),
    ),
)


@dataclasses.dataclass(frozen=True)
class SearchFolder:
    """The files of one T/alpha search folder (`python -m tuning --out`)."""

    path: Path

    def __init__(self, path):
        object.__setattr__(self, "path", Path(path))

    @property
    def settings_file(self):
        return self.path / SEARCH_FILE

    @property
    def trials_file(self):
        return self.path / TRIALS_FILE

    @property
    def best_file(self):
        return self.path / BEST_FILE

    @property
    def plot_file(self):
        return self.path / SEARCH_PLOT

    @property
    def teacher_logits_dir(self):
        """`teacher_logits/`: each epoch's teacher logits, `epoch_<e>.npz`."""
        return self.path / TEACHER_LOGITS_DIR

    @property
    def lock_file(self):
        """Beside the folder, not in it (`atomic.sibling_lock_path`): keras-tuner
        owns the folder's contents and `--overwrite` deletes it whole."""
        return atomic.sibling_lock_path(self.path)

    def removal_plan(self):
        """What `--overwrite` removes: kd_keras's and Keras Tuner's files
        (`SEARCH_LAYOUT`), never a user's other files."""
        return plan_removal(self.path, SEARCH_LAYOUT)

    def saved_settings(self):
        """`search.json` as a dict holding `SEARCH_KEYS`, or `None` if absent.

        Raises:
            DamagedFileError: the file is not such an object.
        """
        values = atomic.read_json_object(self.settings_file, None, keys=SEARCH_KEYS)
        if values is not None and not (
            values["tuner"] in TUNERS
            and all(isinstance(values[k], dict) for k in ("space", "config"))
        ):
            raise DamagedFileError(self.settings_file, "not the settings of a kd_keras search")
        return values

    def settings(self):
        """`search.json` as a dict (empty if absent)."""
        return atomic.read_json_object(self.settings_file, {}) or {}

    def best(self):
        """`best.json` as a dict, or `None`."""
        return atomic.read_json_object(self.best_file, None)

    def trials(self):
        """`trials.csv` as a list of dicts (numbers parsed), or `[]`."""
        if not self.trials_file.is_file():
            return []
        return read_results_csv(self.trials_file)
