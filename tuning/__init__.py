"""kd-keras tuning: a Keras Tuner search over the distillation temperature
T and the hard-label weight alpha of `kd_keras.Distiller`.

Built on kd_keras's public API only. See `run_search` (Python) and
`python -m tuning --help` (command line).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kd_keras.errors import SearchError
from tuning.apply import TUNED_STAGE, run_best  # noqa: E402
from tuning.cli import main  # noqa: E402
from tuning.hypermodel import DistillationHyperModel, SearchSpace  # noqa: E402
from tuning.report import best_row, load_best, load_trials, trial_rows, write_search_outputs
from tuning.search import SearchResult, run_search
from tuning.tuners import OBJECTIVE, TUNERS, build_tuner, objective

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
