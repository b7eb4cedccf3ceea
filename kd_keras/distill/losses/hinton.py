"""Hinton KD: the soft-target loss of Hinton, Vinyals and Dean, "Distilling
the Knowledge in a Neural Network" (2015, arXiv:1503.02531)."""

import keras

from kd_keras.distill.losses.base import DistillationLoss, as_float32, as_loss
from kd_keras.distill.losses.logit_standardization import standardize_logits
from kd_keras.validation import DEFAULT_TEMPERATURE, validate_temperature


@keras.saving.register_keras_serializable(package="kd_keras")
class HintonKD(DistillationLoss):
    """`T**2 * KL(softmax(t / T) || softmax(s / T))` of the teacher's and
    the student's logits `t`, `s`, the batch mean.

    The T**2 keeps the soft term's gradients on the hard term's scale when T
    changes (Hinton et al., section 2). Defaults: T = 4 (kd_keras's; the
    paper uses 1-20; mdistiller's CIFAR-100 KD uses 4).

    The equivalent of keras.distillation's
    `LogitsDistillation(temperature=T, loss=keras.losses.KLDivergence())`,
    *not* of its default `loss="kl_divergence"` (a plain function: no
    softmax and no T**2; see docs/distiller.md).

    Args:
        temperature: T, in [0.01, 100].
        loss: the loss between the two *probability* rows at temperature T
            (a `keras.losses.Loss` or a function of per-example values);
            default `keras.losses.KLDivergence()`. Multiplied by T**2.
        standardize: z-score both logits first (Sun et al. 2024, see
            `logit_standardization`).
    """

    def __init__(self, temperature=DEFAULT_TEMPERATURE, loss=None, standardize=False):
        try:
            self.temperature = validate_temperature(temperature)
        except ValueError as error:
            raise ValueError(f"HintonKD: {error}") from None
        if not isinstance(standardize, bool):
            raise ValueError(f"HintonKD: standardize must be True or False, got {standardize!r}")
        self.standardize = standardize
        self.loss = keras.losses.get(loss or keras.losses.KLDivergence())
        if not callable(self.loss):
            raise ValueError(f"HintonKD: loss must be a Keras loss or function, got {loss!r}")
        # Reduced with Keras's own rules (sample weights, replicas).
        self._loss = as_loss(self.loss)

    def soften(self, teacher_logits, student_logits):
        if self.standardize:
            teacher_logits = standardize_logits(teacher_logits)
            student_logits = standardize_logits(student_logits)
        temperature = self.temperature
        return (
            keras.ops.softmax(teacher_logits / temperature, axis=-1),
            keras.ops.softmax(student_logits / temperature, axis=-1),
        )

    def compute(self, teacher_outputs, student_outputs, y=None, sample_weight=None, training=None):
        teacher_probs, student_probs = self.soften(*as_float32((teacher_outputs, student_outputs)))
        value = self._loss(teacher_probs, student_probs, sample_weight=sample_weight)
        value = keras.ops.cast(value, "float32")
        if len(value.shape):
            value = keras.ops.mean(value)
        return self.temperature**2 * value

    def per_example(self, teacher_outputs, student_outputs, y=None, training=None):
        teacher_probs, student_probs = self.soften(teacher_outputs, student_outputs)
        return self.temperature**2 * keras.losses.kl_divergence(teacher_probs, student_probs)

    def get_config(self):
        return {
            "temperature": self.temperature,
            "loss": keras.saving.serialize_keras_object(self.loss),
            "standardize": self.standardize,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return cls(**config)
