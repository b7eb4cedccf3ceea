"""Several teachers: the student learns from an ensemble (Hinton et al.
2015, section 2's ensemble targets; You, Xu, Xu and Tao, "Learning from
Multiple Teacher Networks", KDD 2017, for the averaged soft targets)."""

import keras

from kd_keras.distill.losses.base import DistillationLoss, check_choice, check_number
from kd_keras.validation import DEFAULT_TEMPERATURE, validate_temperature

MODES = ("mean", "weighted")


@keras.saving.register_keras_serializable(package="kd_keras")
class MultiTeacherKD(DistillationLoss):
    """KD from the Distiller's teacher and `other_teachers`, all logits.

    - `mode="mean"`: `T**2 * KL(mean_k softmax(t_k / T) || softmax(s / T))`,
      the mean of the teachers' softened distributions as one target.
    - `mode="weighted"`: `sum_k w_k * T**2 * KL(softmax(t_k / T) ||
      softmax(s / T))`, one Hinton loss per teacher.

    Args:
        other_teachers: trained `keras.Model`s returning logits of the
            student's classes, next to the Distiller's teacher (frozen, run
            with `training=False`).
        mode: "mean" or "weighted".
        teacher_weights: with "weighted", one weight >= 0 per teacher, the
            Distiller's first (default: equal, summing to 1).
        temperature: T (default 4).
    """

    def __init__(
        self, other_teachers, mode="mean", teacher_weights=None, temperature=DEFAULT_TEMPERATURE
    ):
        other_teachers = list(other_teachers or [])
        if not other_teachers or not all(isinstance(t, keras.Model) for t in other_teachers):
            raise ValueError(
                "MultiTeacherKD: other_teachers must be a non-empty list of keras.Model, got "
                f"{other_teachers!r}"
            )
        self.other_teachers = other_teachers
        for teacher in other_teachers:
            teacher.trainable = False
        self.mode = check_choice("MultiTeacherKD", "mode", mode, MODES)
        count = len(other_teachers) + 1
        if teacher_weights is None:
            teacher_weights = [1.0 / count] * count
        teacher_weights = [
            check_number("MultiTeacherKD", "teacher_weights", w, 0.0) for w in teacher_weights
        ]
        if len(teacher_weights) != count:
            raise ValueError(
                f"MultiTeacherKD: teacher_weights needs {count} weights (the Distiller's "
                f"teacher first), got {len(teacher_weights)}"
            )
        self.teacher_weights = teacher_weights
        try:
            self.temperature = validate_temperature(temperature)
        except ValueError as error:
            raise ValueError(f"MultiTeacherKD: {error}") from None

    def per_example(self, teacher_outputs, student_outputs, y=None, training=None):
        temperature = self.temperature
        student = keras.ops.softmax(student_outputs / temperature, axis=-1)
        softened = [
            keras.ops.softmax(keras.ops.cast(t, "float32") / temperature, axis=-1)
            for t in teacher_outputs
        ]
        if self.mode == "mean":
            target = sum(softened) / float(len(softened))
            return temperature**2 * keras.losses.kl_divergence(target, student)
        return sum(
            w * temperature**2 * keras.losses.kl_divergence(p, student)
            for w, p in zip(self.teacher_weights, softened)
        )

    def get_config(self):
        return {
            "other_teachers": [keras.saving.serialize_keras_object(t) for t in self.other_teachers],
            "mode": self.mode,
            "teacher_weights": list(self.teacher_weights),
            "temperature": self.temperature,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["other_teachers"] = [
            keras.saving.deserialize_keras_object(t) for t in config["other_teachers"]
        ]
        return cls(**config)
