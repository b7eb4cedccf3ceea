"""DKD: Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu and Liang,
CVPR 2022, arXiv:2203.08679)."""

import keras

from kd_keras.distill.losses.base import DistillationLoss, check_number
from kd_keras.distill.losses.logit_standardization import standardize_logits
from kd_keras.validation import DEFAULT_TEMPERATURE

# Subtracted from the target logit to leave it out of the non-target
# softmax, as in mdistiller (dkd.py: `logits / T - 1000 * gt_mask`).
_MASK = 1000.0
_TINY = 1e-7  # Clip of the binary probabilities before their log.


@keras.saving.register_keras_serializable(package="kd_keras")
class DKD(DistillationLoss):
    """`warm-up * (alpha * TCKD + beta * NCKD)`, both terms times T**2.

    With `b = [p_target, 1 - p_target]` the binary (target / rest)
    probabilities at temperature T and `p^` the distribution over the
    non-target classes only:

    ```
    TCKD = T**2 * KL(b_teacher || b_student)
    NCKD = T**2 * KL(p^_teacher || p^_student)
    ```

    Defaults are the paper's CIFAR-100 settings in its code (mdistiller,
    configs/cifar100/dkd: `ALPHA 1.0`, `BETA 8.0`, `T 4.0`, `WARMUP 20`):
    the loss is multiplied by `min(epoch / warmup_epochs, 1)`, epochs
    counted from 1, so it grows linearly over the first 20 epochs. mdistiller
    adds it to the cross-entropy with weight 1 (`CE_WEIGHT 1.0`).

    Args:
        alpha: weight of TCKD, >= 0.
        beta: weight of NCKD, >= 0 (8 on CIFAR-100 in the paper).
        temperature: T > 0.
        warmup_epochs: epochs of the linear warm-up (0: none). The
            Distiller sets the epoch at the start of each (`set_epoch`).
        standardize: z-score both logits first (Sun et al. 2024).
    """

    needs_labels = True

    def __init__(
        self,
        alpha=1.0,
        beta=8.0,
        temperature=DEFAULT_TEMPERATURE,
        warmup_epochs=20,
        standardize=False,
    ):
        self.alpha = check_number("DKD", "alpha", alpha, 0.0)
        self.beta = check_number("DKD", "beta", beta, 0.0)
        self.temperature = check_number(
            "DKD", "temperature", temperature, 0.0, 100.0, low_open=True
        )
        if (
            isinstance(warmup_epochs, bool)
            or not isinstance(warmup_epochs, int)
            or warmup_epochs < 0
        ):
            raise ValueError(f"DKD: warmup_epochs must be an int >= 0, got {warmup_epochs!r}")
        self.warmup_epochs = warmup_epochs
        if not isinstance(standardize, bool):
            raise ValueError(f"DKD: standardize must be True or False, got {standardize!r}")
        self.standardize = standardize
        # The warm-up factor: a variable, so a new epoch retraces nothing.
        self._warmup = None
        if warmup_epochs:
            self._warmup = keras.Variable(
                self.warmup_factor(0), trainable=False, dtype="float32", name="dkd_warmup"
            )

    def warmup_factor(self, epoch):
        """`min((epoch + 1) / warmup_epochs, 1)` of a 0-based epoch."""
        if not self.warmup_epochs:
            return 1.0
        return min((epoch + 1) / self.warmup_epochs, 1.0)

    def set_epoch(self, epoch):
        if self._warmup is not None:
            self._warmup.assign(self.warmup_factor(epoch))

    def per_example(self, teacher_outputs, student_outputs, y=None, training=None):
        teacher, student = teacher_outputs, student_outputs
        if self.standardize:
            teacher, student = standardize_logits(teacher), standardize_logits(student)
        temperature = self.temperature
        classes = keras.ops.shape(student)[-1]
        target = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y, (-1,)), "int32"), classes)
        target = keras.ops.cast(target, "float32")
        teacher_probs = keras.ops.softmax(teacher / temperature, axis=-1)
        student_probs = keras.ops.softmax(student / temperature, axis=-1)

        def binary(probs):
            p_target = keras.ops.sum(probs * target, axis=-1)
            p_rest = keras.ops.sum(probs * (1.0 - target), axis=-1)
            return keras.ops.stack([p_target, p_rest], axis=-1)

        teacher_binary = binary(teacher_probs)
        student_binary = keras.ops.clip(binary(student_probs), _TINY, 1.0)
        tckd = keras.ops.sum(
            teacher_binary
            * (
                keras.ops.log(keras.ops.clip(teacher_binary, _TINY, 1.0))
                - keras.ops.log(student_binary)
            ),
            axis=-1,
        )
        teacher_rest = keras.ops.softmax(teacher / temperature - _MASK * target, axis=-1)
        student_log_rest = keras.ops.log_softmax(student / temperature - _MASK * target, axis=-1)
        # 0 * log(0) is 0: the target's (masked) entry contributes nothing.
        teacher_log_rest = keras.ops.log_softmax(teacher / temperature - _MASK * target, axis=-1)
        nckd = keras.ops.sum(teacher_rest * (teacher_log_rest - student_log_rest), axis=-1)
        value = temperature**2 * (self.alpha * tckd + self.beta * nckd)
        if self._warmup is not None:
            value = value * keras.ops.cast(self._warmup, "float32")
        return value

    def get_config(self):
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "temperature": self.temperature,
            "warmup_epochs": self.warmup_epochs,
            "standardize": self.standardize,
        }
