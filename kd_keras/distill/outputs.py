"""What a model outputs, before the Distiller trusts it: logits,
probabilities (a softmax's) or bounded values (a sigmoid's), and of what
shape.

The kind is read from the model's last layer where it can be inspected
(looking through linear pass-through layers), else from its outputs on a
batch. `check_models` is the Distiller's check of a student and a teacher.
"""

import keras
import numpy as np

from kd_keras.distill.teacher_cache import TEACHER_LOGITS

# What the teacher's outputs are: "logits" (used as they are) or
# "probabilities" (a softmax's output; distilled from their log).
TEACHER_OUTPUTS = ("logits", "probabilities")

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


def single_output_shape(outputs, role, model):
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
    return single_output_shape(model(keras.KerasTensor(input_shape)), role, model)


def check_same_classes(student_shape, teacher_shape, cached=False):
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


def check_models(student, teacher, teacher_outputs):
    """Checks a Distiller's student and teacher against each other: same
    input shape, same output shape where known, a student that ends in
    logits, and a teacher whose outputs are the `teacher_outputs` kind.

    Raises:
        ValueError: the first mismatch, with what to change.
    """
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
    check_same_classes(
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
        raise ValueError(_teacher_outputs_message(teacher, kind, teacher_outputs))
