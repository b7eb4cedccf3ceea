"""`FeatureDistillation`: keras.distillation's feature loss, ported.

The same constructor and the same value as
`keras.distillation.FeatureDistillation` (Keras 3.12+): `mean(loss(teacher
features, student features))` of one teacher and one student layer (or of
the final outputs), on features of the same shape.
"""

import keras

from kd_keras.distill.losses.base import DistillationLoss, layer_names


def _loss_function(loss):
    resolved = keras.losses.get(loss)
    if resolved is None or not callable(resolved):
        raise ValueError(
            f"FeatureDistillation: loss must be a Keras loss name (e.g. 'mse'), a "
            f"keras.losses.Loss or a function, got {loss!r}"
        )
    return resolved


@keras.saving.register_keras_serializable(package="kd_keras")
class FeatureDistillation(DistillationLoss):
    """`mean(loss(teacher_features, student_features))` over the batch and
    the features' other axes.

    Args:
        loss: a Keras loss name ('mse', 'mae', 'cosine_similarity', ...), a
            `keras.losses.Loss` or a function `(y_true, y_pred)`; the
            teacher's features are `y_true`. Default 'mse'.
        teacher_layer_name: the teacher's layer (`"stage1"`..`"stage3"`
            for a kd_keras ResNet); None = its logits.
        student_layer_name: the student's, alike. The two outputs must have
            the same shape (checked when the Distiller is made).
    """

    def __init__(self, loss="mse", teacher_layer_name=None, student_layer_name=None):
        self.loss = _loss_function(loss)
        self._loss_config = loss if isinstance(loss, str) else None
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        teacher = layer_names("FeatureDistillation", "teacher_layer_name", teacher_layer_name)
        student = layer_names("FeatureDistillation", "student_layer_name", student_layer_name)
        if len(teacher) > 1 or len(student) > 1:
            raise ValueError(
                "FeatureDistillation compares one layer per side; use one loss per pair of layers."
            )
        if bool(teacher) != bool(student):
            raise ValueError(
                "FeatureDistillation: give both teacher_layer_name and "
                f"student_layer_name or neither, got {teacher_layer_name!r} and "
                f"{student_layer_name!r}"
            )
        self.teacher_layer_names, self.student_layer_names = teacher, student

    def build(self, teacher_shapes, student_shapes):
        for t_name, t_shape, s_name, s_shape in zip(
            self.teacher_layer_names, teacher_shapes, self.student_layer_names, student_shapes
        ):
            if tuple(t_shape) != tuple(s_shape):
                raise self.shape_error(t_name, t_shape, s_name, s_shape, "they need the same shape")

    def per_example(self, teacher_outputs, student_outputs, y=None, training=None):
        if self.uses_features:
            teacher_outputs, student_outputs = teacher_outputs[0], student_outputs[0]
        function = self.loss.call if isinstance(self.loss, keras.losses.Loss) else self.loss
        values = keras.ops.cast(function(teacher_outputs, student_outputs), "float32")
        if len(values.shape) > 1:
            values = keras.ops.mean(
                keras.ops.reshape(values, (keras.ops.shape(values)[0], -1)), axis=-1
            )
        return values

    def get_config(self):
        return {
            "loss": self._loss_config or keras.saving.serialize_keras_object(self.loss),
            "teacher_layer_name": self.teacher_layer_name,
            "student_layer_name": self.student_layer_name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if not isinstance(config["loss"], str):
            config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return cls(**config)
