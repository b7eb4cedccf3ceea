"""`Distiller`: Hinton-style knowledge distillation as a `keras.Model`.

A drop-in for the `Distiller` of the keras.io example "Knowledge
Distillation" (same constructor and `compile` keywords) that also takes
subclassed models, teachers that end in a softmax, sample and class
weights, precomputed teacher logits, Keras's callbacks and
`tf.distribute` strategies.
"""

import keras
import numpy as np
import tensorflow as tf

from kd_keras.distill.losses.base import DistillationLoss, as_loss, resolve_layer
from kd_keras.distill.losses.hinton import HintonKD
from kd_keras.distill.teacher_cache import IMAGES, TEACHER_LOGITS
from kd_keras.validation import (
    DEFAULT_ALPHA,
    DEFAULT_TEMPERATURE,
    validate_alpha,
    validate_temperature,
)

# What the teacher's outputs are: "logits" (used as they are) or
# "probabilities" (a softmax's output; distilled from their log).
TEACHER_OUTPUTS = ("logits", "probabilities")

# log(p) of a probability p = 0 would be -inf; it is taken as the log of
# the smallest normal float32 instead (about -87.3), which softmax(. / T)
# maps to (1.2e-38)**(1/T) before renormalising: nothing next to the other
# classes' probabilities.
_TINY = float(np.finfo("float32").tiny)

# Largest |row sum - 1| (and most negative entry) of outputs taken for
# probabilities. A softmax's rows sum to 1 within float round-off (~1e-3 in
# float16 over many classes); logits essentially never do.
_PROBABILITY_TOLERANCE = 1e-2


def _producer(tensor):
    history = getattr(tensor, "_keras_history", None)
    return None if history is None else history.operation


def _single_input(tensor):
    """The one input tensor of the layer call that made `tensor`, or None."""
    history = getattr(tensor, "_keras_history", None)
    nodes = getattr(getattr(history, "operation", None), "_inbound_nodes", None)
    if history is None or not nodes or history.node_index >= len(nodes):
        return None
    inputs = nodes[history.node_index].input_tensors
    return inputs[0] if len(inputs) == 1 else None


# Activations whose outputs lie in [0, 1] without summing to 1 per row.
_BOUNDED_ACTIVATIONS = ("sigmoid", "hard_sigmoid")


def _passes_values_on(operation):
    """True for a layer that hands its input's values on unchanged at
    inference (a linear Activation, such as a float32 cast layer, Dropout,
    Identity): what made its input decides the output kind."""
    if isinstance(operation, keras.layers.Activation):
        return getattr(operation.activation, "__name__", None) == "linear"
    return isinstance(operation, (keras.layers.Dropout, keras.layers.Identity))


def _static_outputs_kind(model):
    """ "probabilities" if `model`'s single output is made by a softmax,
    "bounded" if by a sigmoid (values in [0, 1] that do not sum to 1),
    "logits" if by a layer with a linear activation (Dense, Conv...), else
    None (not inspectable: a subclassed model, a Lambda, ...). Layers that
    pass values on (a linear Activation, Dropout) are looked through."""
    outputs = getattr(model, "outputs", None)
    if not outputs or len(outputs) != 1:
        return None
    tensor = outputs[0]
    operation = _producer(tensor)
    for _ in range(32):  # A chain of pass-through layers, bounded.
        if operation is None or not _passes_values_on(operation):
            break
        tensor = _single_input(tensor)
        operation = _producer(tensor)
    if operation is None or operation is model:
        return None
    if isinstance(operation, keras.Model):
        return _static_outputs_kind(operation)
    name = type(operation).__name__
    if name == "Softmax":  # The layer or keras.ops.softmax.
        return "probabilities"
    if name in ("Sigmoid", "HardSigmoid"):  # keras.ops.sigmoid, hard_sigmoid.
        return "bounded"
    activation = getattr(getattr(operation, "activation", None), "__name__", None)
    if activation == "softmax":
        return "probabilities"
    if activation in _BOUNDED_ACTIVATIONS:
        return "bounded"
    if activation == "linear" and not isinstance(operation, keras.layers.Activation):
        return "logits"
    return None


def _rows_are_probabilities(outputs):
    """True if every row of `outputs` (a NumPy array, classes last) is
    non-negative and sums to 1, as a softmax's output does."""
    outputs = np.asarray(outputs, dtype="float64")
    if outputs.ndim < 2 or outputs.shape[-1] < 2 or not np.all(np.isfinite(outputs)):
        return False
    return bool(
        outputs.min() >= -_PROBABILITY_TOLERANCE
        and np.max(np.abs(outputs.sum(axis=-1) - 1.0)) <= _PROBABILITY_TOLERANCE
    )


def _outputs_kind_of_values(outputs):
    """What a batch of outputs (classes last) looks like: "probabilities"
    (rows >= 0 summing to 1), "bounded" (every value in [0, 1], rows not
    summing to 1: a sigmoid's) or "logits"."""
    if _rows_are_probabilities(outputs):
        return "probabilities"
    outputs = np.asarray(outputs, dtype="float64")
    if (
        outputs.ndim >= 2
        and outputs.shape[-1] >= 2
        and np.all(np.isfinite(outputs))
        and outputs.min() >= 0.0
        and outputs.max() <= 1.0
    ):
        return "bounded"
    return "logits"


def _input_shape(model):
    """The shape of `model`'s single input, `(None, ...)`, if known: from
    its `inputs` (functional, Sequential) or the shape it was built with
    (a subclassed model that was built or called); else None."""
    inputs = getattr(model, "inputs", None)
    if inputs:
        return tuple(inputs[0].shape) if len(inputs) == 1 else None
    config = model.get_build_config() if model.built else None
    shape = (config or {}).get("input_shape")
    if isinstance(shape, (list, tuple)) and all(d is None or isinstance(d, int) for d in shape):
        return (None,) + tuple(shape[1:])
    return None


# Synthetic inputs the teacher is probed with: enough rows that logits are
# essentially never all in [0, 1] by chance (2 classes: 2**-16).
_PROBE_ROWS = 8


def _probe_outputs_kind(teacher, input_shape, images=None):
    """Runs the teacher on fixed synthetic inputs (or on `images`):
    "probabilities" if its output rows are non-negative and sum to 1,
    "bounded" if all its outputs lie in [0, 1] without summing to 1, else
    "logits"; None if the input shape is not fully known. Being a
    probability row is a property of the last layer, not of the input, so
    any input shows it."""
    if images is None:
        if input_shape is None or any(d is None for d in input_shape[1:]):
            return None
        inputs = getattr(teacher, "inputs", None)
        dtype = keras.backend.standardize_dtype(inputs[0].dtype) if inputs else "float32"
        rng = np.random.default_rng(0)
        shape = (_PROBE_ROWS,) + tuple(input_shape[1:])
        if "int" in dtype:
            images = rng.integers(0, 256, shape).astype(dtype)
        else:
            images = rng.uniform(0.0, 1.0, shape).astype("float32")
    outputs = teacher(images, training=False)
    if not keras.ops.is_tensor(outputs):
        return None  # Several outputs: refused by the shape checks.
    return _outputs_kind_of_values(keras.ops.convert_to_numpy(outputs))


def outputs_kind(model, images=None):
    """What `model` outputs: "logits", "probabilities" (a softmax's) or
    "bounded" (a sigmoid's: values in [0, 1] not summing to 1).

    From its last layer where that can be inspected (looking through
    linear pass-through layers), else from its outputs on `images` (or on
    synthetic inputs of its input shape); None if neither is possible.
    """
    kind = _static_outputs_kind(model)
    if kind is None:
        kind = _probe_outputs_kind(model, _input_shape(model), images)
    return kind


def _single_output_shape(outputs, role, model):
    if isinstance(outputs, (list, tuple, dict)):
        raise ValueError(
            f"The {role} must return one tensor of logits; {model.name} "
            f"({type(model).__name__}) returns a {type(outputs).__name__} of "
            f"{len(outputs)}."
        )
    return tuple(outputs.shape)


def _output_shape(model, role, input_shape):
    """`model`'s output shape `(None, classes)`, or None if it cannot be
    known before the model is built or called."""
    outputs = getattr(model, "outputs", None)
    if outputs:
        if len(outputs) != 1:
            raise ValueError(
                f"The {role} must be a keras.Model with one output (logits); "
                f"{model.name} has {len(outputs)} outputs."
            )
        return tuple(outputs[0].shape)
    if not model.built or input_shape is None:
        return None
    return _single_output_shape(model(keras.KerasTensor(input_shape)), role, model)


def _check_same_classes(student_shape, teacher_shape, cached=False):
    if student_shape is None or teacher_shape is None:
        return
    if tuple(student_shape[1:]) == tuple(teacher_shape[1:]):
        return
    if cached:
        raise ValueError(
            f"x['{TEACHER_LOGITS}'] has shape {tuple(teacher_shape)}, but the "
            f"student's logits have shape {tuple(student_shape)}: it must hold "
            "the teacher's outputs of the very images of the batch."
        )
    raise ValueError(
        f"The teacher's output shape {tuple(teacher_shape)} does not match the "
        f"student's {tuple(student_shape)}: they must predict the same classes. "
        "Build the student with num_classes equal to the teacher's."
    )


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


_as_loss = as_loss

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
        student_input = _input_shape(student)
        teacher_input = _input_shape(teacher)
        if (
            student_input is not None
            and teacher_input is not None
            and student_input[1:] != teacher_input[1:]
        ):
            raise ValueError(
                f"The teacher's input shape {teacher_input} does "
                f"not match the student's {student_input}."
            )
        input_shape = student_input or teacher_input
        _check_same_classes(
            _output_shape(student, "student", input_shape),
            _output_shape(teacher, "teacher", input_shape),
        )
        if _static_outputs_kind(student) in ("probabilities", "bounded"):
            raise ValueError(
                f"The student {student.name} ends in a softmax or sigmoid: the Distiller "
                "trains on its logits. Remove the softmax (activation=None on the "
                "last layer); apply it at inference if needed."
            )
        kind = _static_outputs_kind(teacher) or _probe_outputs_kind(teacher, input_shape)
        if kind is not None and kind != teacher_outputs:
            raise ValueError(self._teacher_outputs_message(teacher, kind, teacher_outputs))
        losses, weights = _check_losses(distillation_losses, distillation_loss_weights)
        if student_loss_weight is not None:
            student_loss_weight = validate_alpha(student_loss_weight)
        features = _FeatureExtraction(student, teacher, losses or [])
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

    @staticmethod
    def _teacher_outputs_message(teacher, kind, teacher_outputs):
        if kind == "bounded":
            return (
                f"The teacher {teacher.name} ends in a sigmoid (its outputs lie in "
                "[0, 1] and do not sum to 1), neither logits nor probabilities: "
                "rebuild its last layer with activation=None (logits) or a softmax."
            )
        if kind == "probabilities":
            return (
                f"The teacher {teacher.name} outputs probabilities (it ends in a "
                "softmax, or its output rows are >= 0 and sum to 1), not logits: "
                "build it without the softmax (keras.applications: "
                "classifier_activation=None), or pass "
                "teacher_outputs='probabilities' to distil from log(probabilities)."
            )
        return (
            f"teacher_outputs={teacher_outputs!r}, but the teacher {teacher.name} "
            "outputs logits (its output rows are not probabilities): leave "
            "teacher_outputs='logits'."
        )

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
        student_shape = _single_output_shape(self.student(symbolic), "student", self.student)
        teacher_shape = _single_output_shape(self.teacher(symbolic), "teacher", self.teacher)
        _check_same_classes(student_shape, teacher_shape)

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
        self._student_loss = _as_loss(self.student_loss_fn)
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
                teacher_out = [teacher_features[n] for n in self._features.teacher_names[index]]
                student_out = [student_features[n] for n in self._features.student_names[index]]
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
            teacher_logits = teacher_features[_LOGITS]
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
            student_logits = student_features[_LOGITS]
        else:
            student_logits = self.student(inputs, training=training)
        _check_same_classes(
            _single_output_shape(student_logits, "student", self.student),
            _single_output_shape(teacher_logits, "teacher", self.teacher),
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


# The key of the final output (logits) in a feature extractor's outputs.
_LOGITS = "__logits__"


def _check_losses(losses, weights):
    """`(losses, weights)` as lists (None, None: the default loss)."""
    if losses is None:
        if weights is not None:
            raise ValueError(
                "distillation_loss_weights needs distillation_losses (one weight per loss)."
            )
        return None, None
    losses = list(losses) if isinstance(losses, (list, tuple)) else [losses]
    for loss in losses:
        if not isinstance(loss, DistillationLoss):
            raise ValueError(
                "distillation_losses must be kd_keras.distill.losses objects (HintonKD, DKD, "
                f"FitNets, ...), got {type(loss).__name__}; for keras.distillation's "
                "LogitsDistillation use HintonKD, for FeatureDistillation kd_keras's own."
            )
    if not losses:
        raise ValueError("distillation_losses is empty: give at least one loss.")
    if weights is None:
        weights = [1.0] * len(losses)
    weights = list(weights) if isinstance(weights, (list, tuple)) else [weights]
    if len(weights) != len(losses):
        raise ValueError(
            f"distillation_loss_weights has {len(weights)} weights for "
            f"{len(losses)} distillation_losses: give one per loss."
        )
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"distillation_loss_weights must be numbers >= 0, got {weight!r}")
    return losses, [float(w) for w in weights]


def _feature_shape(layer):
    return tuple(layer.output.shape[1:])


class _FeatureExtraction:
    """The models returning the logits and the feature losses' layer
    outputs in one pass (teacher, student), and each loss's layer names as
    resolved (`"stage2"` -> `"s2b3_out"`). Builds the losses (shape checks,
    adapters)."""

    def __init__(self, student, teacher, losses):
        self.teacher = self.student = None
        self.teacher_names, self.student_names = {}, {}
        feature_losses = [(i, loss) for i, loss in enumerate(losses) if loss.uses_features]
        if not feature_losses:
            return
        for role, model in (("teacher", teacher), ("student", student)):
            if not getattr(model, "inputs", None):
                raise ValueError(
                    f"Feature losses read named layers of functional or Sequential models; "
                    f"the {role} {model.name} ({type(model).__name__}) is subclassed."
                )
        teacher_layers, student_layers = {}, {}
        for index, loss in feature_losses:
            t_layers = [resolve_layer(teacher, n, "teacher") for n in loss.teacher_layer_names]
            s_layers = [resolve_layer(student, n, "student") for n in loss.student_layer_names]
            self.teacher_names[index] = [layer.name for layer in t_layers]
            self.student_names[index] = [layer.name for layer in s_layers]
            teacher_layers.update((layer.name, layer) for layer in t_layers)
            student_layers.update((layer.name, layer) for layer in s_layers)
            loss.resolved_layer_names = {
                "teacher": dict(zip(loss.teacher_layer_names, self.teacher_names[index])),
                "student": dict(zip(loss.student_layer_names, self.student_names[index])),
            }
            loss.build([_feature_shape(x) for x in t_layers], [_feature_shape(x) for x in s_layers])
        self.teacher = self._extractor(teacher, teacher_layers)
        self.student = self._extractor(student, student_layers)

    @staticmethod
    def _extractor(model, layers):
        outputs = {_LOGITS: model.outputs[0]}
        outputs.update((name, layer.output) for name, layer in layers.items())
        return keras.Model(model.inputs, outputs, name=f"{model.name}_features")
