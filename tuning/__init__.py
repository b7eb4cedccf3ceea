"""kd-keras tuning: a Keras Tuner search over the distillation temperature
T and the hard-label weight alpha of `kd_keras.Distiller`.

Built on kd_keras's public API only. See `run_search` (Python) and
`python -m tuning --help` (command line).
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from kd_keras import extras, quiet  # noqa: E402 (Keras-free)

# One line naming the extra (exit 2), before anything imports keras_tuner.
extras.require_extra("tuning", prog="tuning", what="the T/alpha search")
if extras.running_as_program():
    quiet.start_tensorflow(verbose="--verbose" in sys.argv)  # Before Keras starts below.

from kd_keras.errors import SearchError  # noqa: E402

from .apply import TUNED_STAGE, run_best  # noqa: E402
from .cli import main  # noqa: E402
from .hypermodel import DistillationHyperModel, SearchSpace  # noqa: E402
from .report import best_row, load_best, load_trials, trial_rows, write_search_outputs  # noqa: E402
from .search import SearchResult, run_search  # noqa: E402
from .tuners import OBJECTIVE, TUNERS, build_tuner, objective  # noqa: E402

__all__ = [
    "DistillationHyperModel",
    "OBJECTIVE",
    "SearchError",
    "SearchResult",
    "SearchSpace",
    "TUNED_STAGE",
    "TUNERS",
    "best_row",
    "build_tuner",
    "load_best",
    "load_trials",
    "main",
    "objective",
    "run_best",
    "run_search",
    "trial_rows",
    "write_search_outputs",
]
