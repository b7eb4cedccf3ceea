"""Attention transfer: Zagoruyko and Komodakis, "Paying More Attention to
Attention", ICLR 2017 (arXiv:1612.03928)."""

import keras

from kd_keras.distill.losses.base import (
    DistillationLoss,
    check_number,
    flatten_features,
    layer_names,
)

STAGES = ("stage1", "stage2", "stage3")


def attention_map(features, p=2.0):
    """`Q / ||Q||_2` with `Q = mean over channels of |features|**p`,
    flattened: `(batch, height * width)` (the authors' `at`)."""
    q = keras.ops.mean(keras.ops.power(keras.ops.abs(features), p), axis=-1)
    q = flatten_features(q)
    norm = keras.ops.sqrt(keras.ops.sum(keras.ops.square(q), axis=-1, keepdims=True))
    return q / keras.ops.maximum(norm, 1e-12)


@keras.saving.register_keras_serializable(package="kd_keras")
class AttentionTransfer(DistillationLoss):
    """`beta / 2 * sum over layer pairs j of mean((Q_s_j - Q_t_j)**2)`.

    `Q` are the normalised spatial attention maps (`attention_map`) at the
    ends of the stages; the mean runs over the spatial positions (and the
    batch), as the authors' code (github.com/szagoruyko/attention-transfer,
    `at_loss`). Defaults are the paper's CIFAR ones: p = 2, beta = 1000, the
    three stage ends. The channels may differ; the spatial sizes must match.

    Args:
        teacher_layer_names: the teacher's layers (default stage1..stage3).
        student_layer_names: the student's, as many (default stage1..stage3).
        beta: weight, > 0 (1000).
        p: the power of the activations, > 0 (2).
    """

    def __init__(self, teacher_layer_names=STAGES, student_layer_names=STAGES, beta=1000.0, p=2.0):
        self.teacher_layer_names = layer_names(
            "AttentionTransfer", "teacher_layer_names", teacher_layer_names
        )
        self.student_layer_names = layer_names(
            "AttentionTransfer", "student_layer_names", student_layer_names
        )
        if not self.teacher_layer_names or len(self.teacher_layer_names) != len(
            self.student_layer_names
        ):
            raise ValueError(
                "AttentionTransfer: teacher_layer_names and student_layer_names must "
                f"pair up, got {list(self.teacher_layer_names)} and {list(self.student_layer_names)}"
            )
        self.beta = check_number("AttentionTransfer", "beta", beta, 0.0, low_open=True)
        self.p = check_number("AttentionTransfer", "p", p, 0.0, low_open=True)

    def build(self, teacher_shapes, student_shapes):
        for t_name, t_shape, s_name, s_shape in zip(
            self.teacher_layer_names, teacher_shapes, self.student_layer_names, student_shapes
        ):
            if len(t_shape) != 3 or tuple(t_shape[:-1]) != tuple(s_shape[:-1]):
                raise self.shape_error(
                    t_name, t_shape, s_name, s_shape, "attention maps need equal height and width"
                )

    def per_example(self, teacher_outputs, student_outputs, y=None, training=None):
        total = 0.0
        for teacher, student in zip(teacher_outputs, student_outputs):
            difference = attention_map(student, self.p) - attention_map(teacher, self.p)
            total = total + keras.ops.mean(keras.ops.square(difference), axis=-1)
        return self.beta / 2.0 * total

    def get_config(self):
        return {
            "teacher_layer_names": list(self.teacher_layer_names),
            "student_layer_names": list(self.student_layer_names),
            "beta": self.beta,
            "p": self.p,
        }
