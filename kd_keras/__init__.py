"""kd-keras: Hinton-style knowledge distillation for Keras image classifiers.

The public names below are imported on first use (PEP 562), so
`import kd_keras.config` or `kd_keras.atomic` does not start TensorFlow:
front ends such as the Streamlit app read presets and run folders without it.
"""

import importlib
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow's C++ log level is left to the user; the front ends quiet its
# start-up themselves (kd_keras/quiet.py).

__version__ = "0.1.0"

# The public API: what a user calls. Everything else (errors, presets,
# evaluation helpers, ...) is imported from its own module, e.g.
# `from kd_keras.errors import DatasetError`.
_EXPORTS = {
    "Distiller": "kd_keras.distill.distiller",
    "RunConfig": "kd_keras.config",
    "run_pipeline": "kd_keras.train.pipeline",
    "RunFolder": "kd_keras.run_folder",
    "load_teacher": "kd_keras.distill.teacher",
    "build_resnet": "kd_keras.models.resnet",
    "with_keras_batch_norm": "kd_keras.models.fused_batch_norm",
    "prepare_splits": "kd_keras.data.splits",
    "make_dataset": "kd_keras.data.splits",
    "TeacherLogitCache": "kd_keras.distill.teacher_cache",
    "export_run": "kd_keras.export.exporter",
    "export_model": "kd_keras.export.exporter",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kd_keras' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # Later look-ups skip this function.
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
