"""The teacher: loading a trained one, checking it can teach, and the fast
frozen copy that runs while distilling.

`load_teacher` checks a `.keras` file's zip directory (`check_keras_archive`:
complete, members of sane sizes), reads it in Keras's safe mode and checks
its contract once (one image input, one output per class of the run,
finite values on blank images), so no stage fails on it later.
`resolve_teacher_outputs` says whether it outputs logits or a softmax's
probabilities (refusing a sigmoid's).
`teacher_sanity_check` refuses a teacher that is near chance on the run's
validation split (wrong preprocessing, class order or data), and
`teacher_for_inference` folds batch norm and casts to the teacher precision.
"""

import sys
import warnings

import keras
import numpy as np

from kd_keras.data.cifar10 import IMAGE_SHAPE, NUM_CLASSES
from kd_keras.data.splits import make_dataset
from kd_keras.errors import TeacherError
from kd_keras.keras_files import (  # noqa: F401 (re-exported)
    KERAS_JSON_MAX_BYTES,
    KERAS_MAX_MEMBERS,
    KERAS_MEMBER_MAX_BYTES,
    check_keras_archive,
    check_teacher_file,
)
from kd_keras.models.folding import fold_batch_norm
from kd_keras.validation import TEACHER_PRECISIONS


def load_teacher(path, num_classes=NUM_CLASSES, *, image_shape=IMAGE_SHAPE, role="teacher"):
    """Loads a trained teacher `.keras` file in Keras's safe mode and checks
    that it can serve as a teacher.

    The contract, checked once here so that no stage fails on it later: one
    input that accepts `(batch, 32, 32, 3)` images (a dimension may be
    `None`), one output of `(batch, num_classes)` (logits, or a softmax's
    probabilities: see `resolve_teacher_outputs`), and a forward pass on two
    blank images that returns that shape with finite values. The file's
    zip directory is checked first (`check_keras_archive`).

    Args:
        path: path of a `.keras` model file.
        num_classes: the number of classes its logits must have.
        image_shape: the data's `(height, width, channels)`.
        role: "teacher" or "student", for messages.

    Returns:
        The `keras.Model`.

    Raises:
        TeacherError: the file is missing, a folder (e.g. a SavedModel),
            not a regular file or a damaged/truncated archive, is not a
            Keras model, needs unsafe deserialisation (e.g. a `Lambda`
            layer), has the wrong inputs or outputs, or fails on a batch of
            images.
    """
    path = check_teacher_file(path, role=role)
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for bad files.
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "safe_mode" in str(error) or "unsafe" in str(error).lower():
            message = (
                "it needs unsafe deserialisation (e.g. a Lambda layer), which "
                "kd_keras refuses; rebuild it from stock layers"
            )
        raise TeacherError(
            f"{role} file '{path}' is not a loadable Keras model: {message[:300]}"
        ) from None
    check_teacher(model, num_classes, name=f"'{path}'", image_shape=image_shape, role=role)
    return model


def resolve_teacher_outputs(teacher, requested="auto", *, name="the teacher", images=None):
    """What the teacher outputs, as the Distiller takes it: "logits" or
    "probabilities" (a softmax's, distilled from log p).

    Detected from its last layer (`kd_keras.distill.outputs.outputs_kind`),
    or from its outputs on `images` (a few of the run's images) when the
    last layer cannot be inspected.

    Args:
        teacher: the loaded teacher.
        requested: the run's `teacher_outputs`: "auto", "logits" or
            "probabilities".
        name: the teacher, for messages.
        images: a few images of the data, for the probe.

    Returns:
        "logits" or "probabilities".

    Raises:
        TeacherError: a sigmoid-ended teacher (outputs in [0, 1] that do
            not sum to 1), or a `requested` kind the outputs contradict.
    """
    from kd_keras.distill.outputs import outputs_kind

    detected = outputs_kind(teacher, images)
    if detected == "bounded":
        raise TeacherError(
            f"teacher {name} ends in a sigmoid (its outputs lie in [0, 1] and do not sum "
            "to 1), neither logits nor softmax probabilities; save it with its last "
            "layer's activation=None (logits) or softmax"
        )
    if requested == "auto":
        return detected or "logits"
    if detected is not None and detected != requested:
        what = "probabilities (it ends in a softmax)" if detected == "probabilities" else "logits"
        raise TeacherError(
            f"teacher {name} outputs {what}, but --teacher-outputs {requested} was given; "
            f"pass --teacher-outputs auto (or {detected})"
        )
    return requested


def _symbolic(model, attribute):
    try:
        return list(getattr(model, attribute) or [])
    except (AttributeError, ValueError):  # An unbuilt model has none.
        return []


def check_teacher(
    model, num_classes=NUM_CLASSES, *, name="model", image_shape=IMAGE_SHAPE, role="teacher"
):
    """Checks a model's input and output contract as a teacher (see
    `load_teacher`), for images of `image_shape`; raises `TeacherError`
    naming what does not fit."""
    IMAGE_SHAPE = tuple(image_shape)  # noqa: N806 (the data's, not CIFAR's)
    if not isinstance(model, keras.Model):
        raise TeacherError(f"{role} {name} is a {type(model).__name__}, not a Keras model")
    inputs, outputs = _symbolic(model, "inputs"), _symbolic(model, "outputs")
    if not inputs or not outputs:
        raise TeacherError(
            f"{role} {name} has no defined inputs or outputs (an unbuilt "
            "Sequential model?); build it on (32, 32, 3) images before saving, "
            "e.g. with keras.Input((32, 32, 3)) as its first layer"
        )
    if len(inputs) != 1:
        raise TeacherError(
            f"{role} {name} takes {len(inputs)} inputs; a teacher takes one batch "
            f"of images of shape {IMAGE_SHAPE}"
        )
    if len(outputs) != 1:
        raise TeacherError(
            f"{role} {name} has {len(outputs)} outputs; a teacher returns one "
            f"batch of logits of shape (batch, {num_classes})"
        )
    in_shape = tuple(inputs[0].shape[1:])
    if len(in_shape) != len(IMAGE_SHAPE) or any(
        dim is not None and dim != want for dim, want in zip(in_shape, IMAGE_SHAPE)
    ):
        square = len(in_shape) == 3 and in_shape[0] == in_shape[1] and in_shape[0] is not None
        fix = (
            f"pass --image-size {in_shape[0]} to resize the data to its size"
            if square and in_shape[2] == IMAGE_SHAPE[2]
            else f"use a {role} built for {IMAGE_SHAPE} images"
        )
        raise TeacherError(
            f"{role} {name} takes inputs of shape {in_shape}, not {IMAGE_SHAPE} (the data's); {fix}"
        )
    out_shape = tuple(outputs[0].shape)
    if out_shape[-1] != num_classes:
        raise TeacherError(
            f"{role} {name} predicts {out_shape[-1]} classes (output {out_shape}) "
            f"but the student predicts {num_classes}; use a teacher trained on "
            "the same classes"
        )
    if len(out_shape) != 2:
        raise TeacherError(
            f"{role} {name} outputs shape {out_shape}; a teacher must output "
            f"logits of shape (batch, {num_classes}) (add pooling and a Dense "
            f"layer of {num_classes} units)"
        )
    try:
        with warnings.catch_warnings():
            # A reloaded functional model names its input; a bare array is fine.
            warnings.filterwarnings("ignore", message="The structure of `inputs`")
            logits = keras.ops.convert_to_numpy(
                model(np.zeros((2,) + IMAGE_SHAPE, "float32"), training=False)
            )
    except Exception as error:  # Whatever the model raises, it cannot serve.
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise TeacherError(
            f"{role} {name} fails on a batch of {IMAGE_SHAPE} images: "
            f"{type(error).__name__}: {first}"
        ) from None
    if logits.shape != (2, num_classes):
        raise TeacherError(
            f"{role} {name} returned shape {logits.shape} for 2 images, not (2, {num_classes})"
        )
    if not np.all(np.isfinite(logits.astype("float32"))):
        raise TeacherError(f"{role} {name} returns non-finite logits for blank images")


def validation_accuracy(teacher, images, labels, *, batch_size=256):
    """Top-1 accuracy of `teacher` (raw 0..255 pixels in, logits out) on
    `images`/`labels`."""
    dataset = make_dataset(images, labels, batch_size=batch_size, training=False)
    predicted = np.argmax(teacher.predict(dataset.map(lambda x, y: x), verbose=0), axis=-1)
    return float(np.mean(predicted == np.asarray(labels).reshape(-1)))


# A teacher whose validation accuracy is below this many times chance
# (1 / classes) is taken as broken: 15% for 10 classes, 3 standard errors
# above chance on a validation split of 360 images.
NEAR_CHANCE_FACTOR = 1.5


def teacher_sanity_check(teacher, splits, *, name=None, verbose=1, refuse=True, accuracy=None):
    """The teacher's accuracy on the run's validation split, checked
    against chance before anything is distilled from it.

    Args:
        teacher: the teacher model (raw 0..255 pixels in, logits out).
        splits: the run's splits (`prepare_splits`); `"val"` is used.
        name: the teacher, for messages (`None`: "the teacher").
        verbose: print the accuracy if non-zero.
        refuse: raise for a near-chance teacher (else warn).
        accuracy: the validation accuracy, if already measured.

    Returns:
        `{"val_accuracy": float, "chance_accuracy": float}`.

    Raises:
        TeacherError: with `refuse`, an accuracy below `NEAR_CHANCE_FACTOR`
            times chance; the message lists the usual causes.
    """
    classes = list(splits.get("classes") or range(NUM_CLASSES))
    images, labels = splits["val"]
    if accuracy is None:
        accuracy = validation_accuracy(teacher, images, labels)
    chance = 1.0 / len(classes)
    subject = "the teacher" if name is None else f"teacher {name}"
    if verbose:
        print(
            f"kd_keras: {subject}: validation accuracy {accuracy:.4f} on "
            f"{len(labels)} images (chance {chance:.4f})",
            flush=True,
        )
    if accuracy < NEAR_CHANCE_FACTOR * chance:
        shown = ", ".join(map(str, classes[:10])) + (", ..." if len(classes) > 10 else "")
        message = (
            f"{subject} is near chance on this data: validation accuracy "
            f"{accuracy:.4f} on {len(labels)} images, chance {chance:.4f} (refused below "
            f"{NEAR_CHANCE_FACTOR * chance:.4f}). Likely causes: wrong preprocessing "
            "(kd_keras feeds raw 0-255 pixels; a teacher trained on 0-1 inputs needs "
            "keras.layers.Rescaling(1/255) as its first layer), wrong class order "
            f"(class i here is: {shown}; see classes.json), or a teacher trained on "
            "other data or outputs not matching its classes"
        )
        if refuse:  # Only a reused --teacher is refused; the run's flag overrides it.
            raise TeacherError(f"{message}; if the teacher is meant, pass --accept-weak-teacher")
        print(f"kd_keras: warning: {message}", file=sys.stderr, flush=True)
    return {"val_accuracy": float(accuracy), "chance_accuracy": float(chance)}


def _output_layer_names(model):
    names = set()
    for tensor in model.outputs or []:
        history = getattr(tensor, "_keras_history", None)
        if history is not None:
            names.add(history.operation.name)
    return names


def teacher_for_inference(teacher, precision="float32", *, fold=True):
    """The frozen teacher to run while distilling: folded, and in `precision`.

    Args:
        teacher: a trained `keras.Model` returning logits.
        precision: "float32" keeps the teacher's own compute dtype.
            "bfloat16" (or "float16") makes its layers compute in that
            type (policy `mixed_bfloat16` / `mixed_float16`: weights stay
            float32), except the output layer, which keeps its own policy
            (float32 logits for kd_keras models).
        fold: fold batch norm into the convolutions before it
            (`kd_keras.fold_batch_norm`): the same outputs up to round-off,
            faster. A model that cannot be rebuilt from its config (a
            subclassed model) is used unfolded.

    Returns:
        `teacher` itself if there is nothing to change, else a frozen copy
        (`trainable = False`) with the same weights, for inference only.

    Raises:
        ValueError: for another precision, or a model Keras cannot clone
            in bfloat16 (a subclassed model).
    """
    if precision not in TEACHER_PRECISIONS or precision == "auto":
        raise ValueError(
            "teacher_precision must be one of "
            f"{', '.join(p for p in TEACHER_PRECISIONS if p != 'auto')}, got "
            f"{precision!r} (resolve 'auto' with resolve_run_precisions)"
        )
    if fold:
        try:
            teacher = fold_batch_norm(teacher)
        except ValueError:
            pass  # Not rebuildable: run it as it is.
    if precision == "float32":
        return teacher
    keep = _output_layer_names(teacher)

    def clone_layer(layer):
        config = layer.get_config()
        if (
            "dtype" in config
            and layer.name not in keep
            and not isinstance(layer, keras.layers.InputLayer)
        ):
            config["dtype"] = f"mixed_{precision}"
        return layer.__class__.from_config(config)

    try:
        copy = keras.models.clone_model(teacher, clone_function=clone_layer)
    except Exception as error:  # Keras raises several types here.
        raise ValueError(
            f"cannot run teacher '{teacher.name}' in {precision}: Keras cannot "
            f"clone it ({error}); use teacher_precision='float32'"
        ) from None
    copy.set_weights(teacher.get_weights())
    copy.trainable = False
    return copy
