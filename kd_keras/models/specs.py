"""Model names a run accepts for its teacher and student, as data.

This module imports neither Keras nor TensorFlow: the config, the command
line and the app validate a model name here before anything loads.
`kd_keras.models.zoo` builds the model a name stands for.

A model is given as one of:

- `resnet<depth>`: kd_keras's CIFAR ResNet (`kd_keras.models.resnet.build_resnet`)
  of that depth (any int >= 8; 6n + 2 gives He et al.'s ResNet-20/32/56);
  its width is the run's `teacher_width` / `student_width`.
- a `keras.applications` architecture by its lower-case name, with options
  after a colon: `mobilenetv3small`, `mobilenetv3small:alpha=0.35`,
  `mobilenetv3small:minimalistic=true,alpha=0.75`, `efficientnetb0`,
  `efficientnetb0:weights=/path/to/my.weights.h5`. Built with random
  weights (or the given weights file) and a logits head with the data's
  number of classes. ImageNet weights are never downloaded: download the
  file yourself and pass its path as `weights=`.
- a path ending in `.keras`: that model (architecture and weights), which
  must take the data's images and return one logit per class.
"""

import re

# keras.applications architectures whose models hold their own input
# preprocessing, so that they take raw 0..255 pixels like kd_keras's
# ResNets: MobileNetV3 (Rescaling to [-1, 1], `include_preprocessing=True`),
# EfficientNet B0-B7 (Rescaling to [0, 1] and ImageNet normalisation),
# EfficientNetV2 (Rescaling, `include_preprocessing=True`).
# name -> (keras.applications attribute, options it takes)
_MOBILENET_OPTIONS = ("alpha", "minimalistic", "dropout", "weights")
APPLICATIONS = {
    "mobilenetv3small": ("MobileNetV3Small", _MOBILENET_OPTIONS),
    "mobilenetv3large": ("MobileNetV3Large", _MOBILENET_OPTIONS),
    **{f"efficientnetb{i}": (f"EfficientNetB{i}", ("weights",)) for i in range(8)},
    **{f"efficientnetv2b{i}": (f"EfficientNetV2B{i}", ("weights",)) for i in range(4)},
    "efficientnetv2s": ("EfficientNetV2S", ("weights",)),
}
# keras.applications models refuse inputs smaller than this.
MIN_APPLICATION_SIZE = 32
RESNET_PATTERN = re.compile(r"resnet(\d+)")
_NAME_PATTERN = re.compile(r"[a-z0-9]+")
_NUMBERED_PATTERN = re.compile(r"(.*[a-z])(\d+)")


def application_names_help():
    """The `keras.applications` names, numbered families in short, e.g.
    `mobilenetv3small, ..., efficientnetb0 to efficientnetb7, ...`: the one
    list that `--help`, error messages and the app show."""
    families = {}  # prefix (or whole name) -> numbers, in table order.
    for name in APPLICATIONS:
        numbered = _NUMBERED_PATTERN.fullmatch(name)
        prefix, number = numbered.groups() if numbered else (name, None)
        families.setdefault(prefix, []).append(number)
    parts = []
    for prefix, numbers in families.items():
        if numbers == [None]:
            parts.append(prefix)
        elif len(numbers) == 1:
            parts.append(f"{prefix}{numbers[0]}")
        else:
            parts.append(f"{prefix}{numbers[0]} to {prefix}{numbers[-1]}")
    return ", ".join(parts)


def _names_hint():
    return (
        f"choose resnet<depth> (e.g. resnet20), one of {application_names_help()} "
        "(options after a colon, e.g. mobilenetv3small:alpha=0.35), or a "
        "path to a '.keras' file"
    )


def _parse_bool(key, value):
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"option {key} must be true or false, got {value!r}")


def _parse_float(key, value, low, high):
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"option {key} must be a number, got {value!r}") from None
    if not low < number <= high:
        raise ValueError(f"option {key} must be in ({low:g}, {high:g}], got {value}")
    return number


def parse_model_spec(spec, *, role="model"):
    """Parses a teacher or student model name.

    Args:
        spec: `resnet<depth>`, a `keras.applications` name with options
            (see the module docstring), or a path ending in `.keras`.
        role: "teacher" or "student", for messages.

    Returns:
        A dict: `{"kind": "resnet", "depth": int}`,
        `{"kind": "application", "name": str, "builder": str,
        "options": dict}` or `{"kind": "file", "path": str}`.

    Raises:
        ValueError: an unknown name or option, naming the bad value and the
            valid names.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{role} model must be a non-empty string; {_names_hint()}")
    spec = spec.strip()
    if spec.endswith(".keras"):
        return {"kind": "file", "path": spec}
    name, _, options_text = spec.partition(":")
    name = name.strip().lower()
    if not _NAME_PATTERN.fullmatch(name):
        raise ValueError(f"unknown {role} model {spec!r}; {_names_hint()}")
    resnet = RESNET_PATTERN.fullmatch(name)
    if resnet:
        if options_text:
            raise ValueError(
                f"{role} model {spec!r}: resnet<depth> takes no options (its width "
                f"is --{role}-width)"
            )
        depth = int(resnet.group(1))
        if depth < 8:
            raise ValueError(f"{role} model {spec!r}: the ResNet depth must be >= 8")
        return {"kind": "resnet", "depth": depth}
    if name not in APPLICATIONS:
        raise ValueError(f"unknown {role} model {spec!r}; {_names_hint()}")
    builder, allowed = APPLICATIONS[name]
    options = _parse_options(spec, name, allowed, options_text, role)
    return {"kind": "application", "name": name, "builder": builder, "options": options}


def _parse_options(spec, name, allowed, options_text, role):
    """The `key=value` options after the colon of an application's name, as
    a dict; raises `ValueError` for an unknown option or a bad value."""
    options = {}
    for item in filter(None, (options_text or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in allowed:
            raise ValueError(
                f"{role} model {spec!r}: unknown option {item!r}; {name} takes "
                f"{', '.join(k + '=...' for k in allowed)}"
            )
        if key == "alpha":
            options[key] = _parse_float(key, value, 0.0, 4.0)
        elif key == "dropout":
            number = _parse_float(key, value, -1.0, 1.0)
            if number < 0 or number >= 1:
                raise ValueError(f"option dropout must be in [0, 1), got {value}")
            options[key] = number
        elif key == "minimalistic":
            options[key] = _parse_bool(key, value)
        else:  # weights
            value = value.strip()
            if value.lower() == "imagenet":
                raise ValueError(
                    f"{role} model {spec!r}: kd_keras never downloads weights; "
                    "download the ImageNet weights file yourself and pass its path "
                    "as weights=/path/file.weights.h5 (its head must have the "
                    "data's classes)"
                )
            if not value.endswith(".h5"):
                raise ValueError(
                    f"{role} model {spec!r}: weights= must be a '.weights.h5' or "
                    f"'.h5' file, got {value!r}"
                )
            options[key] = value
    return options
