"""kd-keras: Hinton-style knowledge distillation for Keras image classifiers."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kd_keras.config import PRESETS, ConfigError, RunConfig  # noqa: E402
from kd_keras.data import (  # noqa: E402
    DatasetError,
    load_cifar10,
    make_dataset,
    prepare_splits,
)
from kd_keras.distiller import Distiller  # noqa: E402
from kd_keras.models import build_resnet, count_flops  # noqa: E402
from kd_keras.pipeline import (  # noqa: E402
    STAGES,
    RunFolderError,
    TeacherError,
    evaluate_model,
    load_teacher,
    run_pipeline,
)
from kd_keras.results import format_table, load_stage_rows  # noqa: E402

__version__ = "0.1.0"
