"""`Distiller`: Hinton-style knowledge distillation as a `keras.Model`."""

import keras
import tensorflow as tf

from kd_keras.config import (
    DEFAULT_ALPHA,
    DEFAULT_TEMPERATURE,
    validate_alpha,
    validate_temperature,
)


def _output_shape(model, role):
    outputs = getattr(model, "outputs", None)
    if not outputs or len(outputs) != 1:
        raise ValueError(
            f"The {role} must be a built keras.Model with one output (logits); "
            f"got {type(model).__name__} with outputs {outputs}"
        )
    return tuple(outputs[0].shape)


def _student_metric(metric):
    if isinstance(metric, str) and metric in ("accuracy", "acc"):
        # Labels are class indices, so "accuracy" means sparse accuracy.
        return keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    metric = keras.metrics.get(metric)
    if isinstance(metric, keras.metrics.Metric):
        return metric
    return keras.metrics.MeanMetricWrapper(metric, name=metric.__name__)


@keras.saving.register_keras_serializable(package="kd_keras")
class Distiller(keras.Model):
    """Trains a student on hard labels and on a frozen teacher's soft labels.

    The loss of Hinton, Vinyals and Dean (2015), "Distilling the Knowledge in
    a Neural Network" (arXiv:1503.02531):

    ```
    loss = alpha * CE(y, student_logits)
         + (1 - alpha) * T**2 * KL(softmax(teacher_logits / T)
                                   || softmax(student_logits / T))
    ```

    `alpha` weights the hard-label term; the T**2 factor keeps the soft
    term's gradients on the same scale as the hard term's when T changes.
    The teacher runs with `training=False` and is never updated; only the
    student's weights get gradients. `call` returns the student's logits, so
    `predict` and `evaluate` behave like the student's.

    The data are `(images, labels)` batches, or `(images, labels,
    teacher_logits)` batches whose third element is the teacher's logits of
    those very images, precomputed (`kd_keras.teacher_cache`); the teacher
    then does not run. Sample weights are not supported.

    `train_step` and `test_step` report `loss` (the blended loss),
    `student_loss` (the CE term, unweighted), `distillation_loss` (the
    T**2 * KL term, unweighted) and the metrics passed to `compile`.

    Requires the TensorFlow backend.

    Args:
        student: a `keras.Model` returning logits.
        teacher: a trained `keras.Model` returning logits of the same shape.
        **kwargs: passed to `keras.Model`.

    Raises:
        ValueError: if either model is not a single-output `keras.Model`, or
            their input or output shapes differ.

    Example:

    >>> distiller = Distiller(student=build_resnet(8), teacher=teacher)
    >>> distiller.compile(optimizer="sgd", metrics=["accuracy"],
    ...                   alpha=0.3, temperature=4.0)
    >>> distiller.fit(train_ds, validation_data=val_ds, epochs=10)
    >>> distiller.student.save("student.keras")
    """

    def __init__(self, student, teacher, **kwargs):
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                "kd_keras.Distiller needs the TensorFlow backend, got "
                f"'{keras.backend.backend()}'. Set KERAS_BACKEND=tensorflow."
            )
        for role, model in (("student", student), ("teacher", teacher)):
            if not isinstance(model, keras.Model):
                raise ValueError(
                    f"{role} must be a keras.Model, got {type(model).__name__}"
                )
        student_shape = _output_shape(student, "student")
        teacher_shape = _output_shape(teacher, "teacher")
        if student_shape[1:] != teacher_shape[1:]:
            raise ValueError(
                f"The teacher's output shape {teacher_shape} does not match the "
                f"student's {student_shape}: they must predict the same classes. "
                "Build the student with num_classes equal to the teacher's."
            )
        if tuple(student.inputs[0].shape[1:]) != tuple(teacher.inputs[0].shape[1:]):
            raise ValueError(
                f"The teacher's input shape {tuple(teacher.inputs[0].shape)} does "
                f"not match the student's {tuple(student.inputs[0].shape)}."
            )
        super().__init__(**kwargs)
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        self.student_metrics = []
        self.alpha = DEFAULT_ALPHA
        self.temperature = DEFAULT_TEMPERATURE
        self.student_loss_fn = None
        self.distillation_loss_fn = None

    def compile(
        self,
        optimizer="sgd",
        metrics=None,
        student_loss_fn=None,
        distillation_loss_fn=None,
        alpha=DEFAULT_ALPHA,
        temperature=DEFAULT_TEMPERATURE,
        **kwargs,
    ):
        """Configures the distiller for training.

        Args:
            optimizer: optimizer of the student's weights.
            metrics: metrics of the student's predictions against the hard
                labels, e.g. `["accuracy"]`.
            student_loss_fn: hard-label loss on logits; defaults to
                `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`.
            distillation_loss_fn: loss between the teacher's and the
                student's *probabilities* at temperature T; defaults to
                `keras.losses.KLDivergence()`. It is multiplied by T**2.
            alpha: weight of the hard-label loss, in [0, 1].
            temperature: softmax temperature T > 0.
            **kwargs: passed to `keras.Model.compile` (e.g. `jit_compile`,
                `steps_per_execution`).

        Raises:
            ValueError: for alpha outside [0, 1] or T <= 0.
        """
        self.alpha = validate_alpha(alpha)
        self.temperature = validate_temperature(temperature)
        self.student_loss_fn = keras.losses.get(
            student_loss_fn or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        self.distillation_loss_fn = keras.losses.get(
            distillation_loss_fn or keras.losses.KLDivergence()
        )
        self.student_metrics = [_student_metric(m) for m in (metrics or [])]
        super().compile(optimizer=optimizer, **kwargs)

    @property
    def metrics(self):
        return [
            self.loss_tracker,
            self.student_loss_tracker,
            self.distillation_loss_tracker,
            *self.student_metrics,
        ]

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def compute_losses(self, y, teacher_logits, student_logits):
        """The two loss terms and their blend, all float32 scalars.

        Args:
            y: int labels, shape `(batch,)`.
            teacher_logits: `(batch, classes)`.
            student_logits: `(batch, classes)`.

        Returns:
            `(loss, student_loss, distillation_loss)`, where `loss` is
            `alpha * student_loss + (1 - alpha) * distillation_loss` and
            `distillation_loss` already includes the T**2 factor.
        """
        # Softmax and KL in float32 even under mixed precision: the soft
        # targets' small probabilities carry the signal.
        teacher_logits = keras.ops.cast(teacher_logits, "float32")
        student_logits = keras.ops.cast(student_logits, "float32")
        temperature = self.temperature
        student_loss = self.student_loss_fn(y, student_logits)
        distillation_loss = temperature**2 * self.distillation_loss_fn(
            keras.ops.softmax(teacher_logits / temperature, axis=-1),
            keras.ops.softmax(student_logits / temperature, axis=-1),
        )
        loss = self.alpha * student_loss + (1.0 - self.alpha) * distillation_loss
        return loss, student_loss, distillation_loss

    def _update_metrics(self, y, student_logits, losses):
        loss, student_loss, distillation_loss = losses
        self.loss_tracker.update_state(loss)
        self.student_loss_tracker.update_state(student_loss)
        self.distillation_loss_tracker.update_state(distillation_loss)
        for metric in self.student_metrics:
            metric.update_state(y, student_logits)
        return {m.name: m.result() for m in self.metrics}

    def _teacher_logits(self, data):
        # A third element holds precomputed teacher logits (see
        # `kd_keras.teacher_cache`); otherwise the teacher runs on the batch.
        if len(data) > 2 and data[2] is not None:
            teacher_logits = data[2]
            expected = tuple(self.teacher.outputs[0].shape[1:])
            if tuple(teacher_logits.shape[1:]) != expected:
                raise ValueError(
                    "The third element of a Distiller batch must be the "
                    f"teacher's logits, shape (batch,) + {expected}; got shape "
                    f"{tuple(teacher_logits.shape)}. Sample weights are not "
                    "supported: pass (images, labels) batches."
                )
            return teacher_logits
        return self.teacher(data[0], training=False)

    def train_step(self, data):
        x, y = data[0], data[1]
        teacher_logits = self._teacher_logits(data)
        with tf.GradientTape() as tape:
            student_logits = self.student(x, training=True)
            losses = self.compute_losses(y, teacher_logits, student_logits)
            objective = losses[0]
            if self.student.losses:  # Kernel regularisers, if any.
                objective = objective + keras.ops.sum(self.student.losses)
            objective = self.optimizer.scale_loss(objective)
        variables = self.student.trainable_variables
        gradients = tape.gradient(objective, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._update_metrics(y, student_logits, losses)

    def test_step(self, data):
        x, y = data[0], data[1]
        teacher_logits = self._teacher_logits(data)
        student_logits = self.student(x, training=False)
        losses = self.compute_losses(y, teacher_logits, student_logits)
        return self._update_metrics(y, student_logits, losses)

    def get_config(self):
        return {
            **super().get_config(),
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("student", "teacher"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    def get_compile_config(self):
        if not self.compiled:
            return None
        return {
            "optimizer": keras.saving.serialize_keras_object(self.optimizer),
            "metrics": [keras.saving.serialize_keras_object(m) for m in self.student_metrics],
            "student_loss_fn": keras.saving.serialize_keras_object(self.student_loss_fn),
            "distillation_loss_fn": keras.saving.serialize_keras_object(
                self.distillation_loss_fn
            ),
            "alpha": self.alpha,
            "temperature": self.temperature,
        }

    def compile_from_config(self, config):
        config = dict(config)
        for key in ("optimizer", "student_loss_fn", "distillation_loss_fn"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        config["metrics"] = [
            keras.saving.deserialize_keras_object(m) for m in config["metrics"]
        ]
        self.compile(**config)
