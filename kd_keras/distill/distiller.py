"""`Distiller`: Hinton-style knowledge distillation as a `keras.Model`.

A drop-in for the `Distiller` of the keras.io example "Knowledge
Distillation" (same constructor and `compile` keywords) that also takes
subclassed models, teachers that end in a softmax, sample and class
weights, precomputed teacher logits, Keras's callbacks and
`tf.distribute` strategies. What the models output is checked by
`kd_keras.distill.outputs`; how the losses read the models' layers is
`kd_keras.distill.features`.
"""

import keras
import numpy as np
import tensorflow as tf

from kd_keras.distill.features import LOGITS, FeatureExtraction, check_losses
from kd_keras.distill.losses.base import as_loss
from kd_keras.distill.losses.hinton import HintonKD
from kd_keras.distill.outputs import (
    TEACHER_OUTPUTS,
    check_models,
    check_same_classes,
    single_output_shape,
)
from kd_keras.distill.teacher_cache import IMAGES, TEACHER_LOGITS
from kd_keras.validation import (
    DEFAULT_ALPHA,
    DEFAULT_TEMPERATURE,
    validate_alpha,
    validate_temperature,
)

# log(p) of a probability p = 0 would be -inf; it is taken as the log of
# the smallest normal float32 instead (about -87.3), which softmax(. / T)
# maps to (1.2e-38)**(1/T) before renormalising: nothing next to the other
# classes' probabilities.
_TINY = float(np.finfo("float32").tiny)


def split_teacher_logits(x):
    """`(inputs, teacher_logits)` of a Distiller batch's `x`.

    `x` is the student's input, or a dict `{"images": inputs,
    "teacher_logits": logits}` carrying the teacher's precomputed outputs of
    those inputs (`kd_keras.distill.teacher_cache` makes such batches); other keys
    next to `"teacher_logits"` are passed to the student as its (named)
    inputs. `teacher_logits` is None when `x` carries none.
    """
    if not isinstance(x, dict) or TEACHER_LOGITS not in x:
        return x, None
    rest = {key: value for key, value in x.items() if key != TEACHER_LOGITS}
    if not rest:
        raise ValueError(
            f"x has '{TEACHER_LOGITS}' but no inputs: pass "
            f"{{'{IMAGES}': images, '{TEACHER_LOGITS}': logits}}."
        )
    inputs = rest[IMAGES] if list(rest) == [IMAGES] else rest
    return inputs, x[TEACHER_LOGITS]


def _check_sample_weight(sample_weight):
    if sample_weight is None:
        return None
    shape = tuple(sample_weight.shape)
    if len(shape) > 2 or (len(shape) == 2 and shape[-1] not in (1, None)):
        raise ValueError(
            f"sample_weight must have shape (batch,), got {shape}. The third "
            "element of a batch is Keras's sample weights; the teacher's "
            "logits, precomputed, go in x: "
            f"{{'{IMAGES}': images, '{TEACHER_LOGITS}': logits}} "
            "(kd_keras.distill.teacher_cache makes such batches)."
        )
    return sample_weight


# compile's alpha and temperature when not given.
_UNSET = object()


def _replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


def _scale_for_replicas(value):
    # As keras.src.losses.loss.scale_loss_for_distribution: each replica's
    # share of a loss that the replicas' gradients sum.
    replicas = _replicas()
    return value * (1.0 / replicas) if replicas > 1 else value


def _unscale_for_replicas(value):
    # As keras.src.losses.loss.unscale_loss_for_distribution: the value to
    # report, whatever the number of replicas.
    replicas = _replicas()
    return value * float(replicas) if replicas > 1 else value


def _scalar(value):
    """A loss's value as a float32 scalar (the mean of a per-example
    result, as Keras's own Distiller takes)."""
    value = keras.ops.cast(value, "float32")
    return keras.ops.mean(value) if len(value.shape) else value


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
    That is the default. Other methods are loss objects
    (`kd_keras.distill.losses`: DKD, logit standardization, FitNets,
    attention transfer, several teachers, keras.distillation's
    FeatureDistillation), passed as keras.distillation takes them:

    ```
    loss = student_loss_weight * CE(y, student_logits)
         + (1 - student_loss_weight) * sum_i(w_i * distillation_losses[i])
    ```

    with `student_loss_weight` = alpha and the default losses
    `[HintonKD(temperature)]`. The teacher runs with `training=False` and
    is never updated; only the student's weights (and the losses'
    adapters, e.g. FitNets' regressor) get gradients. `call` returns the student's logits, so
    `predict` and `evaluate` behave like the student's.

    Batches are Keras's: `(x, y)` or `(x, y, sample_weight)`, and `fit`'s
    `sample_weight=` and `class_weight=` work as for any Keras model. A
    weight `w_i` scales example i's CE *and* its KL term, and each term is
    `sum_i(w_i * l_i) / batch_size`, as Keras weights a compiled per-example
    loss. `x` is the student's input, or `{"images": inputs,
    "teacher_logits": t}` with the teacher's outputs of those inputs,
    precomputed (`kd_keras.distill.teacher_cache`): the teacher then does not run.

    `train_step` and `test_step` report `loss` (the blended loss plus the
    student's regularisation losses, as Keras reports a model's loss),
    `student_loss` (the CE term), `distillation_loss` (the T**2 * KL term)
    and the metrics passed to `compile`. Under a `tf.distribute` strategy
    they report the same values as on one device, and the regularisation
    losses count once, not once per replica.

    The student and teacher may be functional, Sequential or subclassed
    models. A subclassed student that was never called is built, and its
    output shape checked against the teacher's, when the Distiller first
    sees data (or at `distiller.build(input_shape)`).

    Requires the TensorFlow backend.

    Args:
        student: a `keras.Model` returning logits.
        teacher: a trained (built) `keras.Model` returning one output of the
            student's shape: logits, or probabilities with
            `teacher_outputs="probabilities"`.
        teacher_outputs: "logits" (default) or "probabilities": the
            teacher's outputs are a softmax's (keras.applications models
            by default). Probabilities `p` are distilled from `log(p)`,
            which is exact: `softmax(log(p) / T)` is `p**(1/T)`
            renormalised, what the logits would give.
        distillation_losses: a `DistillationLoss` or a list of them
            (default: `[HintonKD(T)]` with compile's `temperature`). Feature
            losses name layers of functional models (`"stage1"`..`"stage3"`
            for kd_keras ResNets); their shapes are checked here.
        distillation_loss_weights: one weight >= 0 per loss (default 1 each).
        student_loss_weight: the hard-label weight in [0, 1] (compile's
            `alpha`; default `kd_keras.validation.DEFAULT_ALPHA`).
        **kwargs: passed to `keras.Model`.

    Raises:
        ValueError: if either model is not a `keras.Model` with one output,
            the teacher is unbuilt, their input or output shapes differ, the
            student ends in a softmax or sigmoid, the teacher ends in a
            sigmoid, or the teacher's outputs are not what `teacher_outputs`
            says (detected from its last layer, or else from its outputs on
            a synthetic batch: rows >= 0 summing to 1).

    Example:

    >>> distiller = Distiller(student=build_resnet(8), teacher=teacher)
    >>> distiller.compile(optimizer="sgd", metrics=["accuracy"],
    ...                   alpha=0.3, temperature=4.0)
    >>> distiller.fit(train_ds, validation_data=val_ds, epochs=10,
    ...               callbacks=[keras.callbacks.EarlyStopping("val_accuracy")])
    >>> distiller.student.save("student.keras")
    """

    def __init__(
        self,
        student,
        teacher,
        teacher_outputs="logits",
        distillation_losses=None,
        distillation_loss_weights=None,
        student_loss_weight=None,
        **kwargs,
    ):
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                "kd_keras.Distiller needs the TensorFlow backend, got "
                f"'{keras.backend.backend()}'. Set KERAS_BACKEND=tensorflow."
            )
        for role, model in (("student", student), ("teacher", teacher)):
            if not isinstance(model, keras.Model):
                raise ValueError(f"{role} must be a keras.Model, got {type(model).__name__}")
        if teacher_outputs not in TEACHER_OUTPUTS:
            raise ValueError(
                f"teacher_outputs must be one of {', '.join(TEACHER_OUTPUTS)}, "
                f"got {teacher_outputs!r}"
            )
        if not teacher.built:
            raise ValueError(
                f"The teacher must be a trained, built keras.Model; "
                f"{teacher.name} ({type(teacher).__name__}) is unbuilt. Build it "
                "(call it on a batch, or teacher.build(input_shape)) and load its "
                "weights first."
            )
        check_models(student, teacher, teacher_outputs)
        losses, weights = check_losses(distillation_losses, distillation_loss_weights)
        if student_loss_weight is not None:
            student_loss_weight = validate_alpha(student_loss_weight)
        features = FeatureExtraction(student, teacher, losses or [])
        super().__init__(**kwargs)
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.teacher_outputs = teacher_outputs
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        self.student_loss_weight = student_loss_weight
        self.alpha = DEFAULT_ALPHA if student_loss_weight is None else student_loss_weight
        # None: the default [HintonKD(T)], made by compile with its T.
        self._given_losses = losses
        self.distillation_losses = losses
        self.distillation_loss_weights = weights
        self.temperature = DEFAULT_TEMPERATURE if losses is None else None
        # Feature extractors (not tracked: their layers are the models');
        # the adapters (tracked: checkpointed) train with the student.
        self._features = features
        self.adapters = [a for loss in losses or [] for a in loss.adapters]
        # Tracked so a saved Distiller keeps their weights (MultiTeacherKD).
        self.other_teachers = [
            t for loss in losses or [] for t in getattr(loss, "other_teachers", None) or []
        ]
        self.student_loss_fn = None
        self.distillation_loss_fn = None
        self._student_loss = None
        self._metrics_config = {}
        if student.built:
            # Both models have their weights: so has the Distiller (what
            # BackupAndRestore and save_weights ask before the first step).
            self.built = True

    def build(self, input_shape):
        """Builds the student (a subclassed student never called before) on
        `input_shape` and checks that its logits match the teacher's.

        Args:
            input_shape: the shape of the student's input, `(batch, ...)`
                (or a dict of them; a `"teacher_logits"` entry is ignored).

        Raises:
            ValueError: if the student's output is not one tensor of the
                teacher's output shape.
        """
        if isinstance(input_shape, dict) and TEACHER_LOGITS in input_shape:
            input_shape, _ = split_teacher_logits(input_shape)
        symbolic = keras.tree.map_shape_structure(
            lambda shape: keras.KerasTensor((None,) + tuple(shape)[1:]), input_shape
        )
        student_shape = single_output_shape(self.student(symbolic), "student", self.student)
        teacher_shape = single_output_shape(self.teacher(symbolic), "teacher", self.teacher)
        check_same_classes(student_shape, teacher_shape)

    def compile(
        self,
        optimizer="sgd",
        metrics=None,
        student_loss_fn=None,
        distillation_loss_fn=None,
        alpha=_UNSET,
        temperature=_UNSET,
        weighted_metrics=None,
        **kwargs,
    ):
        """Configures the distiller for training.

        The keywords of the keras.io example's `Distiller.compile`.

        Args:
            optimizer: optimizer of the student's weights.
            metrics: metrics of the student's predictions against the hard
                labels, e.g. `["accuracy"]` (resolved from the labels' and
                logits' shapes, as by `keras.Model.compile`), unweighted.
            student_loss_fn: hard-label loss on logits; defaults to
                `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`.
                A `keras.losses.Loss` or a function of per-example values.
            distillation_loss_fn: loss between the teacher's and the
                student's *probabilities* at temperature T; defaults to
                `keras.losses.KLDivergence()`. It is multiplied by T**2.
                Only with the default loss (no `distillation_losses`).
            alpha: weight of the hard-label loss, in [0, 1] (default: the
                constructor's `student_loss_weight`, else 0.3).
            temperature: softmax temperature T > 0 (default 4) of the
                default loss; loss objects carry their own.
            weighted_metrics: metrics weighted by `sample_weight` or
                `class_weight`.
            **kwargs: passed to `keras.Model.compile` (e.g. `jit_compile`,
                `steps_per_execution`).

        Raises:
            ValueError: for alpha outside [0, 1], T <= 0, a `loss`, an
                alpha other than `student_loss_weight`, or a temperature or
                distillation_loss_fn next to `distillation_losses`.
        """
        for key in ("loss", "loss_weights"):
            if key in kwargs:
                raise ValueError(
                    f"Distiller.compile takes student_loss_fn and "
                    f"distillation_loss_fn, not {key}={kwargs[key]!r}."
                )
        if alpha is not _UNSET:
            alpha = validate_alpha(alpha)
            if self.student_loss_weight is not None and alpha != self.student_loss_weight:
                raise ValueError(
                    f"alpha={alpha} contradicts student_loss_weight="
                    f"{self.student_loss_weight} given to the Distiller: pass one of them."
                )
        elif self.student_loss_weight is not None:
            alpha = self.student_loss_weight
        self.alpha = DEFAULT_ALPHA if alpha is _UNSET else alpha
        self.student_loss_fn = keras.losses.get(
            student_loss_fn or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        self._student_loss = as_loss(self.student_loss_fn)
        if self._given_losses is None:
            self.temperature = validate_temperature(
                DEFAULT_TEMPERATURE if temperature is _UNSET else temperature
            )
            self.distillation_loss_fn = keras.losses.get(
                distillation_loss_fn or keras.losses.KLDivergence()
            )
            self.distillation_losses = [
                HintonKD(temperature=self.temperature, loss=self.distillation_loss_fn)
            ]
        else:
            for key, value in (
                ("temperature", temperature),
                ("distillation_loss_fn", distillation_loss_fn),
            ):
                if value is not _UNSET and value is not None:
                    raise ValueError(
                        f"compile({key}=...) applies to the default loss only; this Distiller "
                        "has distillation_losses: set it on the loss objects instead."
                    )
            self.distillation_loss_fn = None
        self._metrics_config = {
            key: keras.saving.serialize_keras_object(value)
            for key, value in (("metrics", metrics), ("weighted_metrics", weighted_metrics))
            if value is not None
        }
        super().compile(
            optimizer=optimizer, metrics=metrics, weighted_metrics=weighted_metrics, **kwargs
        )
        if self.built:
            # The optimizer's slots exist from here on, so a Distiller saved
            # before training holds the state a reload builds (else Keras
            # warns "Skipping variable loading for optimizer" on load).
            self.optimizer.build(self.trained_variables())

    @property
    def metrics(self):
        metrics = [self.loss_tracker, self.student_loss_tracker, self.distillation_loss_tracker]
        # keras.Model.compile's metrics, in the container (CompileMetrics)
        # where callbacks look up whether a metric improves up or down.
        compiled = getattr(self, "_compile_metrics", None)
        if self.compiled and compiled is not None:
            metrics.append(compiled)
        return metrics

    def call(self, inputs, training=None):
        inputs, _ = split_teacher_logits(inputs)
        return self.student(inputs, training=training)

    def compute_losses(
        self,
        y,
        teacher_logits,
        student_logits,
        sample_weight=None,
        *,
        teacher_features=None,
        student_features=None,
        other_teacher_logits=None,
        training=None,
    ):
        """The two loss terms and their blend, all float32 scalars.

        Backend-agnostic (`keras.ops`). Under a `tf.distribute` strategy the
        values are each replica's share (divided by the number of replicas,
        as Keras's losses are); `train_step` reports them whole.

        Args:
            y: int labels, shape `(batch,)`.
            teacher_logits: the teacher's outputs, `(batch, classes)`: its
                logits, or its probabilities if the Distiller was made with
                `teacher_outputs="probabilities"`.
            student_logits: `(batch, classes)`.
            sample_weight: optional `(batch,)` weights of the examples, in
                both terms.
            teacher_features: for feature losses, a dict of the teacher's
                layer outputs by layer name (what `train_step` extracts).
            student_features: the student's, alike.
            other_teacher_logits: for losses with `other_teachers`, a dict of
                their logits lists by loss index.
            training: whether the losses' adapters run in training mode.

        Returns:
            `(loss, student_loss, distillation_loss)`, where `loss` is
            `alpha * student_loss + (1 - alpha) * distillation_loss` and
            `distillation_loss` is the weighted sum of the distillation
            losses (the default: T**2 * KL).

        Raises:
            RuntimeError: if the Distiller is not compiled.
        """
        if self._student_loss is None:
            raise RuntimeError("Call Distiller.compile() before computing its losses.")
        # Softmax and KL in float32 even under mixed precision: the soft
        # targets' small probabilities carry the signal.
        teacher_logits = keras.ops.cast(teacher_logits, "float32")
        student_logits = keras.ops.cast(student_logits, "float32")
        if self.teacher_outputs == "probabilities":
            teacher_logits = keras.ops.log(keras.ops.maximum(teacher_logits, _TINY))
        student_loss = _scalar(self._student_loss(y, student_logits, sample_weight=sample_weight))
        distillation_loss = None
        for index, (loss, weight) in enumerate(
            zip(self.distillation_losses, self.distillation_loss_weights or [1.0])
        ):
            if loss.uses_features:
                teacher_out, student_out = self._features.loss_inputs(
                    index, teacher_features, student_features
                )
            else:
                teacher_out, student_out = teacher_logits, student_logits
                if getattr(loss, "other_teachers", None):
                    teacher_out = [teacher_logits, *other_teacher_logits[index]]
            value = loss.compute(
                teacher_out, student_out, y=y, sample_weight=sample_weight, training=training
            )
            if weight != 1.0:
                value = weight * value
            distillation_loss = value if distillation_loss is None else distillation_loss + value
        loss = self.alpha * student_loss + (1.0 - self.alpha) * distillation_loss
        return loss, student_loss, distillation_loss

    def _regularised(self, loss):
        """`loss` plus the student's regularisation losses, each replica's
        share of them (as Keras's `compute_loss` adds `self.losses`)."""
        if not self.student.losses:
            return loss
        regularisation = sum(
            keras.ops.sum(keras.ops.cast(value, "float32")) for value in self.student.losses
        )
        return loss + _scale_for_replicas(regularisation)

    def _unpack(self, data):
        """`(inputs, y, sample_weight, teacher_logits, cached, teacher_features,
        other_teacher_logits)` of a batch; the teacher runs here unless the
        batch carries its logits (`cached`)."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        inputs, teacher_logits = split_teacher_logits(x)
        sample_weight = _check_sample_weight(sample_weight)
        if not self.built:
            # A subclassed student seen for the first time (while tracing).
            self.build(keras.tree.map_structure(lambda t: tuple(t.shape), inputs))
        cached = teacher_logits is not None
        teacher_features = None
        if self._features.teacher is not None:
            if cached:
                raise ValueError(
                    f"x carries '{TEACHER_LOGITS}', but feature losses need the teacher's "
                    "layers: pass the images alone so the teacher runs."
                )
            teacher_features = self._features.teacher(inputs, training=False)
            teacher_logits = teacher_features[LOGITS]
        elif not cached:
            teacher_logits = self.teacher(inputs, training=False)
        other_teacher_logits = {
            index: [t(inputs, training=False) for t in loss.other_teachers]
            for index, loss in enumerate(self.distillation_losses or [])
            if getattr(loss, "other_teachers", None)
        }
        return (
            inputs,
            y,
            sample_weight,
            teacher_logits,
            cached,
            teacher_features,
            (other_teacher_logits),
        )

    def _student_outputs(self, inputs, teacher_logits, cached, training):
        """`(student_logits, student_features)`."""
        student_features = None
        if self._features.student is not None:
            student_features = self._features.student(inputs, training=training)
            student_logits = student_features[LOGITS]
        else:
            student_logits = self.student(inputs, training=training)
        check_same_classes(
            single_output_shape(student_logits, "student", self.student),
            single_output_shape(teacher_logits, "teacher", self.teacher),
            cached=cached,
        )
        return student_logits, student_features

    def _update_metrics(self, inputs, y, student_logits, losses, sample_weight):
        # As keras.Model's train_step: each loss tracker gets the value
        # whole (not a replica's share), weighted by the batch size.
        batch_size = keras.ops.shape(student_logits)[0]
        trackers = (self.loss_tracker, self.student_loss_tracker, self.distillation_loss_tracker)
        for tracker, value in zip(trackers, losses):
            tracker.update_state(_unscale_for_replicas(value), sample_weight=batch_size)
        return self.compute_metrics(inputs, y, student_logits, sample_weight=sample_weight)

    @property
    def needs_live_teacher(self):
        """True if a loss reads the teacher's layers: the teacher must run
        on every batch (batches with precomputed logits are refused)."""
        return self._features.teacher is not None

    def trained_variables(self):
        """What the optimizer updates: the student's trainable variables,
        then the adapters'."""
        return self.student.trainable_variables + [
            v for adapter in self.adapters for v in adapter.trainable_variables
        ]

    def _step(self, data, training):
        inputs, y, sample_weight, teacher_logits, cached, teacher_features, others = self._unpack(
            data
        )
        student_logits, student_features = self._student_outputs(
            inputs, teacher_logits, cached, training=training
        )
        loss, student_loss, distillation_loss = self.compute_losses(
            y,
            teacher_logits,
            student_logits,
            sample_weight=sample_weight,
            teacher_features=teacher_features,
            student_features=student_features,
            other_teacher_logits=others,
            training=training,
        )
        loss = self._regularised(loss)
        return inputs, y, sample_weight, student_logits, (loss, student_loss, distillation_loss)

    def train_step(self, data):
        with tf.GradientTape() as tape:
            inputs, y, sample_weight, student_logits, losses = self._step(data, training=True)
            objective = self.optimizer.scale_loss(losses[0])
        variables = self.trained_variables()
        gradients = tape.gradient(objective, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._update_metrics(inputs, y, student_logits, losses, sample_weight)

    def test_step(self, data):
        inputs, y, sample_weight, student_logits, losses = self._step(data, training=False)
        return self._update_metrics(inputs, y, student_logits, losses, sample_weight)

    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`, telling the losses each epoch's number
        (DKD's warm-up) at its start, resumed runs included."""
        callbacks = list(callbacks or [])
        callbacks.append(_EpochToLosses(self))
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def get_config(self):
        config = {
            **super().get_config(),
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "teacher_outputs": self.teacher_outputs,
        }
        if self._given_losses is not None:
            config["distillation_losses"] = [
                keras.saving.serialize_keras_object(loss) for loss in self._given_losses
            ]
            config["distillation_loss_weights"] = list(self.distillation_loss_weights)
        if self.student_loss_weight is not None:
            config["student_loss_weight"] = self.student_loss_weight
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("student", "teacher"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        if config.get("distillation_losses") is not None:
            config["distillation_losses"] = [
                keras.saving.deserialize_keras_object(loss)
                for loss in config["distillation_losses"]
            ]
        return cls(**config)

    def get_compile_config(self):
        if not self.compiled:
            return None
        config = {
            "optimizer": keras.saving.serialize_keras_object(self.optimizer),
            **self._metrics_config,
            "student_loss_fn": keras.saving.serialize_keras_object(self.student_loss_fn),
            "alpha": self.alpha,
        }
        if self._given_losses is None:
            config["distillation_loss_fn"] = keras.saving.serialize_keras_object(
                self.distillation_loss_fn
            )
            config["temperature"] = self.temperature
        return config

    def compile_from_config(self, config):
        config = dict(config)
        for key in ("optimizer", "student_loss_fn", "distillation_loss_fn"):
            if key in config:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        for key in ("metrics", "weighted_metrics"):
            if config.get(key) is not None:
                config[key] = [keras.saving.deserialize_keras_object(m) for m in config[key]]
        self.compile(**config)
        if self.built:
            # As keras.Model.compile_from_config: the optimizer's variables
            # exist, so a saved optimizer state loads into them.
            self.optimizer.build(self.trained_variables())


class _EpochToLosses(keras.callbacks.Callback):
    def __init__(self, distiller):
        super().__init__()
        self._distiller = distiller

    def on_epoch_begin(self, epoch, logs=None):
        for loss in self._distiller.distillation_losses or []:
            loss.set_epoch(epoch)
