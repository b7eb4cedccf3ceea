"""Teacher and student models by name (see `kd_keras.models.specs`).

Every model built here maps raw pixels (float, 0..255) to logits, so the
data pipeline is the same for all of them:

- `resnet<depth>`: `kd_keras.models.resnet.build_resnet`, which normalises with
  fixed CIFAR-10 statistics in its first layer.
- `keras.applications` models: built with `include_top=True`,
  `classes=num_classes`, `classifier_activation=None` (logits) and
  `weights=None` or the given weights file. MobileNetV3 holds a
  `Rescaling(1 / 127.5, offset=-1)` layer (`include_preprocessing=True`),
  EfficientNet B0-B7 `Rescaling(1 / 255)` and an ImageNet `Normalization`,
  EfficientNetV2 a `Rescaling` (`include_preprocessing=True`): all three take
  0..255 pixels as they are. A float32 linear `Activation` named
  `logits_float32` closes the model, so the logits stay float32 under a
  mixed-precision policy.
- a `.keras` file: loaded in Keras's safe mode; it must take the data's
  images and return `num_classes` logits (a model ending in a softmax or
  sigmoid is refused: it would be trained on probabilities as logits).
"""

import warnings

import keras

from kd_keras.errors import ModelSpecError
from kd_keras.models.specs import parse_model_spec


def build_model(spec, *, role, depth, width, input_shape, num_classes, name=None, **resnet_options):
    """Builds (or loads) one teacher or student.

    Args:
        spec: a model name (see `kd_keras.models.specs`), or `None` for
            `resnet<depth>`.
        role: "teacher" or "student" (names and messages).
        depth: the ResNet depth used when `spec` is `None`.
        width: the ResNet width (for `spec` `None` or `resnet<depth>`).
        input_shape: `(height, width, 3)` of the data's images.
        num_classes: the number of classes.
        name: the model's name (default `"<role>_<name>"`).
        **resnet_options: more keywords of `build_resnet` (ResNets only).

    Returns:
        A functional `keras.Model` from raw 0..255 pixels to
        `(batch, num_classes)` logits.

    Raises:
        ModelSpecError: an unknown name or option, a weights file that does
            not fit, or a `.keras` file that does not take these images or
            classes.
    """
    try:
        parsed = parse_model_spec(spec or f"resnet{depth}", role=role)
    except ValueError as error:
        raise ModelSpecError(str(error)) from None
    input_shape = tuple(int(d) for d in input_shape)
    if parsed["kind"] == "resnet":
        from kd_keras.models.resnet import build_resnet

        return build_resnet(
            parsed["depth"],
            width=width,
            num_classes=num_classes,
            input_shape=input_shape,
            name=name or f"{role}_resnet{parsed['depth']}",
            **resnet_options,
        )
    if parsed["kind"] == "file":
        from kd_keras.distill.teacher import load_teacher
        from kd_keras.errors import TeacherError

        try:
            model = load_teacher(parsed["path"], num_classes, image_shape=input_shape, role=role)
        except TeacherError as error:
            raise ModelSpecError(f"{role} model: {error}") from None
        check_trains_on_logits(model, role=role, name=parsed["path"])
        return model
    return _build_application(parsed, role, input_shape, num_classes, name)


def check_trains_on_logits(model, *, role, name):
    """Raises `ModelSpecError` unless `model` (a `.keras` file to train as
    `role`) outputs logits: a model ending in a softmax or sigmoid would be
    trained by cross-entropy on its probabilities taken as logits."""
    from kd_keras.distill.outputs import outputs_kind

    kind = outputs_kind(model)
    if kind in ("probabilities", "bounded"):
        last = "a softmax" if kind == "probabilities" else "a sigmoid"
        raise ModelSpecError(
            f"{role} model '{name}' ends in {last}, but kd_keras trains {role}s on logits; "
            "save it without the final activation (keras.applications: "
            "classifier_activation=None; else activation=None on the last layer)"
        )


def _build_application(parsed, role, input_shape, num_classes, name):
    from kd_keras.models.specs import MIN_APPLICATION_SIZE

    if min(input_shape[:2]) < MIN_APPLICATION_SIZE:
        raise ModelSpecError(
            f"{role} model {parsed['name']!r} needs images of at least "
            f"{MIN_APPLICATION_SIZE}x{MIN_APPLICATION_SIZE}, the data's are "
            f"{input_shape[1]}x{input_shape[0]}; pass --image-size {MIN_APPLICATION_SIZE}"
        )
    options = dict(parsed["options"])
    kwargs = {}
    if "alpha" in options:
        kwargs["alpha"] = options["alpha"]
    if "minimalistic" in options:
        kwargs["minimalistic"] = options["minimalistic"]
    if "dropout" in options:
        kwargs["dropout_rate"] = options["dropout"]
    weights = options.get("weights")
    builder = getattr(keras.applications, parsed["builder"])
    inputs = keras.Input(shape=input_shape, name="image")
    try:
        with warnings.catch_warnings():
            # "input_shape is undefined or non-square": ours is on purpose.
            warnings.filterwarnings("ignore", message=".*input_shape.*")
            base = builder(
                input_tensor=inputs,
                include_top=True,
                weights=weights,
                classes=num_classes,
                classifier_activation=None,
                **kwargs,
            )
    except (ValueError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ModelSpecError(
            f"{role} model {parsed['name']!r} cannot be built with weights="
            f"{weights!r}, {num_classes} classes and {input_shape} images: {first}"
        ) from None
    logits = keras.layers.Activation("linear", dtype="float32", name="logits_float32")(base.output)
    return keras.Model(inputs, logits, name=name or f"{role}_{parsed['name']}")
