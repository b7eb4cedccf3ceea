"""Where the app looks and what it offers: the runs root, the data
sources it may read, the presets.

The operator fixes the runs root (`kd-keras app -- --runs DIR`,
else `$KD_KERAS_RUNS_DIR`, else `runs`) and the data roots (`--data-root
DIR` / `$KD_KERAS_DATA_DIR`, the runs root, `$KD_KERAS_CIFAR10`); the page
cannot change them (see `kd_app.confine`). Searches live in `<runs>/tuning`.
"""

import re
from pathlib import Path

import kd_keras
from kd_keras import extras
from kd_keras.config import RunConfig  # noqa: F401 (used by checks, app)
from kd_keras.data.cifar10 import DATA_ENV_VAR  # noqa: F401 (used by the sidebar)
from kd_keras.presets import PRESETS

from . import confine
from .confine import DATA_ROOT_ENV_VAR, DEFAULT_RUNS_DIR, RUNS_ENV_VAR  # noqa: F401

# The folder holding the kd_keras package (the checkout, or site-packages
# once installed): runs and searches start there, with it on PYTHONPATH.
CODE_ROOT = Path(kd_keras.__file__).resolve().parents[1]
TUNING_SUBDIR = "tuning"  # <runs>/tuning/<search>: not a run.
TEACHERS_SUBDIR = "teachers"  # <runs>/teachers/<name>.keras: teachers uploaded on the page.
# A run or search name: one path component, safe in a command line.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def runs_root():
    """The operator's runs root, absolute (`kd_app.confine.runs_root`)."""
    return confine.runs_root()


def data_roots(runs_dir):
    """Where a data source may be: the data root (if set), the runs root,
    and the CIFAR-10 archive of `$KD_KERAS_CIFAR10` (that file only)."""
    roots = confine.data_roots(runs_dir)
    cifar = confine.cifar_default()
    return roots + ([cifar] if cifar is not None else [])


def default_data_path():
    """`$KD_KERAS_CIFAR10` as an absolute path (a relative one is taken from
    the directory the app started in, as the operator meant it, not from
    the runs root where the page's relative names live), else ""."""
    cifar = confine.cifar_default()
    return "" if cifar is None else str(cifar)


def presets():
    """`{preset name: {field: value}}` with every `RunConfig` default filled in."""
    defaults = RunConfig().to_dict()
    return {
        name: {**defaults, "preset": name, **preset.overrides} for name, preset in PRESETS.items()
    }


def tuning_available():
    """True if the T/alpha search's package is there (`kd_keras.tuning`
    installed, or the checkout's `tuning/`): `python -m kd_keras tune` runs it."""
    return extras.search_package() is not None
