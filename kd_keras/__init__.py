"""kd-keras: Hinton-style knowledge distillation for Keras image classifiers.

The public names below are imported on first use (PEP 562), so
`import kd_keras.config` or `kd_keras.atomic` does not start TensorFlow:
front ends such as the Streamlit app read presets and run folders without it.
"""

import importlib
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

_EXPORTS = {
    "PRESETS": "kd_keras.config",
    "ConfigError": "kd_keras.config",
    "RunConfig": "kd_keras.config",
    "Machine": "kd_keras.hardware",
    "resolve_precisions": "kd_keras.hardware",
    "resolve_run_precisions": "kd_keras.speed",
    "DatasetError": "kd_keras.data",
    "load_cifar10": "kd_keras.data",
    "make_dataset": "kd_keras.data",
    "prepare_splits": "kd_keras.data",
    "Distiller": "kd_keras.distiller",
    "FusedBatchNormalization": "kd_keras.fused_batch_norm",
    "with_keras_batch_norm": "kd_keras.fused_batch_norm",
    "with_fused_batch_norm": "kd_keras.fused_batch_norm",
    "fold_batch_norm": "kd_keras.folding",
    "TeacherLogitCache": "kd_keras.teacher_cache",
    "build_resnet": "kd_keras.models",
    "count_flops": "kd_keras.models",
    "STAGES": "kd_keras.pipeline",
    "RunFolderError": "kd_keras.pipeline",
    "TeacherError": "kd_keras.pipeline",
    "evaluate_model": "kd_keras.pipeline",
    "load_teacher": "kd_keras.pipeline",
    "run_pipeline": "kd_keras.pipeline",
    "format_table": "kd_keras.results",
    "load_stage_rows": "kd_keras.results",
    "ExportError": "kd_keras.export_spec",
    "export_model": "kd_keras.export",
    "export_run": "kd_keras.export",
    "evaluate_litert": "kd_keras.export",
    "evaluate_saved_model": "kd_keras.export",
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
