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

_EXPORTS = {
    "PRESETS": "kd_keras.presets",
    "ConfigError": "kd_keras.errors",
    "RunConfig": "kd_keras.config",
    "Machine": "kd_keras.hardware",
    "resolve_precisions": "kd_keras.hardware",
    "resolve_run_precisions": "kd_keras.train.speed",
    "DatasetError": "kd_keras.errors",
    "load_cifar10": "kd_keras.data.cifar10",
    "make_dataset": "kd_keras.data.splits",
    "prepare_splits": "kd_keras.data.splits",
    "Distiller": "kd_keras.distill.distiller",
    "FusedBatchNormalization": "kd_keras.models.fused_batch_norm",
    "with_keras_batch_norm": "kd_keras.models.fused_batch_norm",
    "with_fused_batch_norm": "kd_keras.models.fused_batch_norm",
    "fold_batch_norm": "kd_keras.models.folding",
    "TeacherLogitCache": "kd_keras.distill.teacher_cache",
    "build_resnet": "kd_keras.models.resnet",
    "count_flops": "kd_keras.models.resnet",
    "STAGES": "kd_keras.stages",
    "RunFolderError": "kd_keras.errors",
    "TeacherError": "kd_keras.errors",
    "evaluate_model": "kd_keras.train.pipeline",
    "load_teacher": "kd_keras.distill.teacher",
    "run_pipeline": "kd_keras.train.pipeline",
    "RunFolder": "kd_keras.run_folder",
    "format_table": "kd_keras.report.results",
    "load_stage_rows": "kd_keras.report.results",
    "ExportError": "kd_keras.errors",
    "export_model": "kd_keras.export.exporter",
    "export_run": "kd_keras.export.exporter",
    "evaluate_litert": "kd_keras.export.exporter",
    "evaluate_saved_model": "kd_keras.export.exporter",
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
