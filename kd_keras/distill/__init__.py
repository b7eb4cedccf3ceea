"""Distillation: the Distiller, teacher loading and checks, the teacher-logit cache.

This package imports nothing on its own, so its Keras-free modules stay
Keras-free."""
