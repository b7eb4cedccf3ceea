"""RKD: Relational Knowledge Distillation (Park, Kim, Lu and Cho, CVPR
2019, arXiv:1904.05068)."""

import keras

from kd_keras.distill.losses.base import (
    DistillationLoss,
    check_number,
    flatten_features,
    layer_names,
)


def _huber(a, b):
    """Smooth L1 (PyTorch's, beta 1), elementwise."""
    difference = keras.ops.abs(a - b)
    return keras.ops.where(difference < 1.0, 0.5 * keras.ops.square(difference), difference - 0.5)


def _distances(features):
    """Pairwise Euclidean distances over their mean non-zero distance."""
    square = keras.ops.sum(keras.ops.square(features), axis=-1)
    product = keras.ops.matmul(features, keras.ops.transpose(features))
    distances = keras.ops.sqrt(
        keras.ops.maximum(square[:, None] + square[None, :] - 2.0 * product, 1e-12)
    )
    batch = keras.ops.shape(features)[0]
    distances = distances * (1.0 - keras.ops.eye(batch, dtype=distances.dtype))
    positive = keras.ops.cast(distances > 0, distances.dtype)
    mean = keras.ops.sum(distances) / keras.ops.maximum(keras.ops.sum(positive), 1.0)
    return distances / mean


def _angles(features):
    """`angles[a, b, c]`: cosine of the angle at example a between b and c."""
    differences = features[None, :, :] - features[:, None, :]
    norm = keras.ops.sqrt(keras.ops.sum(keras.ops.square(differences), axis=-1, keepdims=True))
    unit = differences / keras.ops.maximum(norm, 1e-12)
    return keras.ops.matmul(unit, keras.ops.transpose(unit, (0, 2, 1)))


@keras.saving.register_keras_serializable(package="kd_keras")
class RKD(DistillationLoss):
    """`distance_weight * Huber(psi_D) + angle_weight * Huber(psi_A)`.

    `psi_D`: the pairwise distances between the batch's examples, divided
    by their mean; `psi_A`: the cosines of the angles each triplet forms
    (the paper's equations 3-6). Defaults as the paper's and CRD's code
    (github.com/HobbitLong/RepDistiller `RKDLoss`): weights 25 and 50, on
    the pooled features. The features' sizes may differ.

    A relational loss: under a `tf.distribute` strategy the relations are
    those within each replica's part of the batch.

    Args:
        teacher_layer_name: default `"pool"`.
        student_layer_name: default `"pool"`.
        distance_weight: >= 0 (25).
        angle_weight: >= 0 (50).
    """

    def __init__(
        self,
        teacher_layer_name="pool",
        student_layer_name="pool",
        distance_weight=25.0,
        angle_weight=50.0,
    ):
        self.teacher_layer_names = layer_names("RKD", "teacher_layer_name", teacher_layer_name)
        self.student_layer_names = layer_names("RKD", "student_layer_name", student_layer_name)
        if len(self.teacher_layer_names) != 1 or len(self.student_layer_names) != 1:
            raise ValueError(
                "RKD: give one teacher_layer_name and one student_layer_name, got "
                f"{teacher_layer_name!r} and {student_layer_name!r}"
            )
        self.distance_weight = check_number("RKD", "distance_weight", distance_weight, 0.0)
        self.angle_weight = check_number("RKD", "angle_weight", angle_weight, 0.0)

    def per_example(self, teacher_outputs, student_outputs, y=None, training=None):
        teacher = keras.ops.stop_gradient(flatten_features(teacher_outputs[0]))
        student = flatten_features(student_outputs[0])
        distance = keras.ops.mean(_huber(_distances(student), _distances(teacher)), axis=-1)
        angle = keras.ops.mean(_huber(_angles(student), _angles(teacher)), axis=(1, 2))
        return self.distance_weight * distance + self.angle_weight * angle

    def get_config(self):
        return {
            "teacher_layer_name": self.teacher_layer_names[0],
            "student_layer_name": self.student_layer_names[0],
            "distance_weight": self.distance_weight,
            "angle_weight": self.angle_weight,
        }
