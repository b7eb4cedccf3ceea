"""PKT: Probabilistic Knowledge Transfer (Passalis and Tefas, "Learning
Deep Representations with Probabilistic Knowledge Transfer", ECCV 2018,
arXiv:1803.10837)."""

import keras

from kd_keras.distill.losses.base import DistillationLoss, flatten_features, layer_names

_EPSILON = 1e-7


def _conditional(features):
    """Row-normalised `(cos + 1) / 2` similarities of the batch's examples."""
    features = flatten_features(features)
    norm = keras.ops.sqrt(keras.ops.sum(keras.ops.square(features), axis=-1, keepdims=True))
    features = features / (norm + _EPSILON)
    similarity = (keras.ops.matmul(features, keras.ops.transpose(features)) + 1.0) / 2.0
    return similarity / keras.ops.sum(similarity, axis=-1, keepdims=True)


@keras.saving.register_keras_serializable(package="kd_keras")
class PKT(DistillationLoss):
    """`mean_ij(p_t,ij * log((p_t,ij + eps) / (p_s,ij + eps)))`, with `p`
    the conditional probabilities of the cosine similarities between the
    batch's examples (the authors' cosine kernel, as in CRD's code,
    github.com/HobbitLong/RepDistiller `PKT`, used there with weight
    30000). The features' sizes may differ.

    A relational loss: under a `tf.distribute` strategy the relations are
    those within each replica's part of the batch.

    Args:
        teacher_layer_name: default `"pool"`, the pooled features of a
            kd_keras ResNet.
        student_layer_name: default `"pool"`.
    """

    def __init__(self, teacher_layer_name="pool", student_layer_name="pool"):
        self.teacher_layer_names = layer_names("PKT", "teacher_layer_name", teacher_layer_name)
        self.student_layer_names = layer_names("PKT", "student_layer_name", student_layer_name)
        if len(self.teacher_layer_names) != 1 or len(self.student_layer_names) != 1:
            raise ValueError(
                "PKT: give one teacher_layer_name and one student_layer_name, got "
                f"{teacher_layer_name!r} and {student_layer_name!r}"
            )

    def per_example(self, teacher_outputs, student_outputs, y=None, training=None):
        teacher = keras.ops.stop_gradient(_conditional(teacher_outputs[0]))
        student = _conditional(student_outputs[0])
        ratio = keras.ops.log((teacher + _EPSILON) / (student + _EPSILON))
        return keras.ops.mean(teacher * ratio, axis=-1)

    def get_config(self):
        return {
            "teacher_layer_name": self.teacher_layer_names[0],
            "student_layer_name": self.student_layer_names[0],
        }
