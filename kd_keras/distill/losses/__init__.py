"""Distillation losses as objects, one method per module, on
`base.DistillationLoss`.

The names below are imported on first use (PEP 562), as `kd_keras`'s are:
`import kd_keras.distill.losses` alone starts no TensorFlow.

    from kd_keras.distill.losses import DKD, HintonKD, FitNets
"""

import importlib

_EXPORTS = {
    "DistillationLoss": "kd_keras.distill.losses.base",
    "HintonKD": "kd_keras.distill.losses.hinton",
    "DKD": "kd_keras.distill.losses.dkd",
    "standardize_logits": "kd_keras.distill.losses.logit_standardization",
    "FeatureDistillation": "kd_keras.distill.losses.feature",
    "FitNets": "kd_keras.distill.losses.fitnets",
    "AttentionTransfer": "kd_keras.distill.losses.attention",
    "MultiTeacherKD": "kd_keras.distill.losses.multi_teacher",
    "PKT": "kd_keras.distill.losses.pkt",
    "RKD": "kd_keras.distill.losses.rkd",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kd_keras.distill.losses' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
