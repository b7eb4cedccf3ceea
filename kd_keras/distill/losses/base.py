"""`DistillationLoss`: the small base class of every distillation loss.

A loss compares the teacher's and the student's outputs of one batch: their
logits, or the outputs of named layers (`teacher_layer_names`,
`student_layer_names`; `"stage1"`..`"stage3"` name the ends of a kd_keras
ResNet's stages). It returns one float32 scalar: the mean over the batch of
a per-example value, each example weighted by its `sample_weight`, as Keras
reduces a compiled loss (and, under a `tf.distribute` strategy, each
replica's share, as Keras's losses are).

A subclass implements `per_example`; it may own `adapters` (Keras layers on
the student's side that train with the student and never ship with it), and
it returns its constructor's keywords from `get_config`.
"""

import re

import keras

STAGE_NAME = re.compile(r"^stage(\d+)$")
_BLOCK_OUTPUT = re.compile(r"^s(\d+)b(\d+)_out$")


def check_number(owner, name, value, low=None, high=None, *, low_open=False):
    """`value` as a float; a one-line `ValueError` naming `owner`'s keyword
    `name`, the bad value and the accepted range otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{owner}: {name} must be a number, got {value!r}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high or value in (float("inf"), float("-inf")):
        bound = (">" if low_open else ">=") + f" {low:g}" if low is not None else ""
        upper = f"<= {high:g}" if high is not None else ""
        accepted = " and ".join(part for part in (bound, upper) if part) or "finite"
        raise ValueError(f"{owner}: {name} must be {accepted}, got {value!r}")
    return value


def check_choice(owner, name, value, choices):
    if value not in choices:
        raise ValueError(
            f"{owner}: {name} must be one of {', '.join(map(str, choices))}, got {value!r}"
        )
    return value


def layer_names(owner, name, value):
    """A tuple of layer names from a name, a list of names or None."""
    if value is None:
        return ()
    names = (value,) if isinstance(value, str) else tuple(value)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{owner}: {name} must be a layer name or a list of them, got {value!r}")
    return names


def resolve_layer(model, name, role):
    """The layer of `model` called `name`; `"stageK"` (when no layer has
    that name) is the last block of stage K of a kd_keras ResNet
    (`sKbN_out`). A one-line `ValueError` names the model and the fix."""
    try:
        return model.get_layer(name=name)
    except ValueError:
        pass
    match = STAGE_NAME.match(name)
    if match:
        stage = int(match.group(1))
        blocks = [
            (int(m.group(2)), layer)
            for layer in model.layers
            for m in [_BLOCK_OUTPUT.match(layer.name)]
            if m and int(m.group(1)) == stage
        ]
        if blocks:
            return max(blocks, key=lambda block: block[0])[1]
        raise ValueError(
            f"The {role} {model.name} has no stage {stage}: stage names "
            "(stage1..stage3) work for kd_keras ResNets; name the layer instead."
        )
    raise ValueError(
        f"The {role} {model.name} has no layer named {name!r}; pass one of its "
        "layer names (model.summary() lists them) or stage1..stage3 for a kd_keras ResNet."
    )


class _PerExample(keras.losses.Loss):
    """Per-example values reduced as Keras reduces a compiled loss: the sum
    of `sample_weight * value` over the batch size, scaled for the replicas
    of a `tf.distribute` strategy."""

    def __init__(self):
        super().__init__(name="per_example", dtype="float32")

    def call(self, y_true, y_pred):
        return y_pred


_REDUCE = None


def reduce_per_example(values, sample_weight=None):
    """The float32 scalar of per-example `values` `(batch,)` (see `_PerExample`)."""
    global _REDUCE
    if _REDUCE is None:
        _REDUCE = _PerExample()
    values = keras.ops.cast(values, "float32")
    return _REDUCE(values, values, sample_weight=sample_weight)


class PerSampleLoss(keras.losses.Loss):
    """A loss function of per-example values (`fn(y_true, y_pred)` of shape
    `(batch,)`) as a `keras.losses.Loss`: sample weights and the mean over
    the batch (scaled for `tf.distribute`) as `keras.Model.compile` applies
    them to a function."""

    def __init__(self, fn):
        super().__init__(name=getattr(fn, "__name__", type(fn).__name__))
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


def as_loss(loss):
    """`loss` as a `keras.losses.Loss` (a function is wrapped)."""
    return loss if isinstance(loss, keras.losses.Loss) else PerSampleLoss(loss)


def as_float32(outputs):
    return keras.tree.map_structure(lambda t: keras.ops.cast(t, "float32"), outputs)


def flatten_features(features):
    """`(batch, d)` of `(batch, ...)`."""
    return keras.ops.reshape(features, (keras.ops.shape(features)[0], -1))


class DistillationLoss:
    """Base class of a distillation loss.

    Subclasses set `teacher_layer_names` / `student_layer_names` (empty: the
    loss compares logits) and implement `per_example(teacher_outputs,
    student_outputs, y)`, returning a `(batch,)` float32 tensor. Outputs are
    cast to float32 first. A loss comparing logits gets the two logits
    tensors; a feature loss gets the lists of the named layers' outputs,
    in the order of its names.

    `__call__`, `compute` and `compute_loss` (the name keras.distillation
    uses) all return the weighted batch mean, a float32 scalar.
    """

    teacher_layer_names = ()
    student_layer_names = ()
    # True if `per_example` needs the hard labels `y` (DKD).
    needs_labels = False

    @property
    def name(self):
        return type(self).__name__

    @property
    def adapters(self):
        """Keras layers on the student's side, trained with it (FitNets'
        regressor); never part of the student."""
        return []

    @property
    def uses_features(self):
        return bool(self.teacher_layer_names or self.student_layer_names)

    def per_example(self, teacher_outputs, student_outputs, y=None, training=None):
        raise NotImplementedError(f"{type(self).__name__} must implement per_example")

    def compute(self, teacher_outputs, student_outputs, y=None, sample_weight=None, training=None):
        """The loss of one batch: a float32 scalar.

        Args:
            teacher_outputs: the teacher's logits `(batch, classes)`, or the
                list of its named layers' outputs for a feature loss.
            student_outputs: the student's, alike.
            y: int labels `(batch,)` (needed by losses with `needs_labels`).
            sample_weight: optional `(batch,)` weights of the examples.
            training: whether the adapters run in training mode.
        """
        if self.needs_labels and y is None:
            raise ValueError(f"{self.name} needs the hard labels y.")
        values = self.per_example(
            as_float32(teacher_outputs), as_float32(student_outputs), y, training=training
        )
        return reduce_per_example(values, sample_weight)

    def __call__(self, teacher_outputs, student_outputs, y=None, sample_weight=None, training=None):
        return self.compute(
            teacher_outputs, student_outputs, y=y, sample_weight=sample_weight, training=training
        )

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        """keras.distillation's name for `compute`."""
        return self.compute(teacher_outputs, student_outputs, **kwargs)

    def build(self, teacher_shapes, student_shapes):
        """Checks the shapes of the compared outputs (without the batch
        axis: a list per side, in name order) and builds the adapters.
        Called by the Distiller when it is made. Raises a one-line
        `ValueError` naming both layers and both shapes on a mismatch."""

    # {"teacher" | "student": {asked name: layer name}}, set by the
    # Distiller before `build` ("stage1" -> "s1b3_out"), for messages.
    resolved_layer_names = None

    def _shown(self, role, name):
        layer = ((self.resolved_layer_names or {}).get(role) or {}).get(name, name)
        return repr(name) if layer == name else f"{name!r} ({layer})"

    def shape_error(self, teacher_name, teacher_shape, student_name, student_shape, need):
        return ValueError(
            f"{self.name}: teacher layer {self._shown('teacher', teacher_name)} "
            f"{tuple(teacher_shape)} and student layer {self._shown('student', student_name)} "
            f"{tuple(student_shape)} do not match: {need}."
        )

    def set_epoch(self, epoch):
        """Called by the Distiller at the start of every epoch (0-based)."""

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({arguments})"
