"""The launch and search forms' checks, as readable one-line messages.

The rules are kd_keras's own (`kd_keras.config`'s validators and
`RunConfig.validate`, `kd_keras.models.depth.stage_blocks`,
`kd_keras.models.specs.parse_model_spec`): the app words their messages
for the form (a field's label in place of its name) and collects every
problem at once instead of stopping at the first. What kd_keras cannot
know before a run starts, that files exist, is checked here.
"""

from pathlib import Path

from kd_app.settings import DATA_ENV_VAR, NAME_PATTERN
from kd_keras.config import RunConfig, validate_alpha, validate_temperature
from kd_keras.errors import ConfigError
from kd_keras.models.depth import stage_blocks
from kd_keras.models.specs import parse_model_spec


def labelled(error, labels):
    """`error`'s message as a sentence, its leading field name replaced by
    the form's label (`labels`: {field: label})."""
    text = str(error).rstrip(".")
    for field in sorted(labels, key=len, reverse=True):
        if text.startswith(f"{field} "):
            text = labels[field] + text[len(field) :]
            break
    return text + "."


def whole(value):
    """A whole-number float as an int (a number box may give `3.0`);
    anything else as it is, for the validators to refuse."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def check_data_path(data):
    """Errors about the dataset path (a list of readable messages)."""
    if not str(data or "").strip():
        return [
            "No CIFAR-10 dataset path. Set 'CIFAR-10 archive' in the sidebar "
            f"(or the environment variable {DATA_ENV_VAR}) to "
            "cifar-10-python.tar.gz or a cifar-10-batches-py/ folder."
        ]
    path = Path(str(data).strip()).expanduser()
    if not path.exists():
        return [
            f"The CIFAR-10 dataset path '{path}' does not exist. Point "
            "'CIFAR-10 archive' in the sidebar at cifar-10-python.tar.gz or a "
            "cifar-10-batches-py/ folder (or your own image folder with one "
            "subfolder per class, or a .npz file)."
        ]
    return []


def check_name(name, what, reserved=None):
    """Errors about a run or search name (`what`: "Run", "Search")."""
    if name and (not NAME_PATTERN.match(name) or name == reserved):
        besides = f" (not '{reserved}')" if reserved else ""
        return [
            f"{what} name '{name}' is not usable: use letters, digits, '.', '_' "
            f"or '-'{besides}, at most 100 characters."
        ]
    return []


def check_teacher(teacher):
    """Errors about a trained teacher file ('' = none)."""
    if not teacher:
        return []
    path = Path(teacher).expanduser()
    if path.suffix != ".keras":
        return [f"The teacher '{path}' must be a Keras '.keras' file."]
    if not path.is_file():
        return [f"The teacher file '{path}' does not exist; pick a trained teacher."]
    return []


def check_models(teacher_model, student_model):
    """Errors about the teacher and student model names (a .keras file must
    exist)."""
    errors = []
    for role, value in (("teacher", teacher_model), ("student", student_model)):
        value = str(value or "").strip()
        if not value:
            continue
        try:
            spec = parse_model_spec(value, role=role)
        except ValueError as error:
            errors.append(f"{str(error)[0].upper()}{str(error)[1:]}.")
            continue
        if spec["kind"] == "file" and not Path(value).expanduser().is_file():
            errors.append(f"The {role} model file '{value}' does not exist.")
    return errors


def check_hyperparameters(temperature, alpha):
    """Errors about T and alpha (None = the preset's), by kd_keras's rules."""
    errors = []
    for value, validate, labels in (
        (temperature, validate_temperature, {"temperature": "Temperature T"}),
        (alpha, validate_alpha, {}),
    ):
        try:
            if value is not None:
                validate(value)
        except ValueError as error:
            errors.append(labelled(error, labels))
    return errors


def check_depths(depths, labels):
    """Errors about ResNet depths (`depths`: {field: depth or None}), by
    `kd_keras.models.depth`'s rule: an int in [MIN_DEPTH, MAX_DEPTH]."""
    errors = []
    for field, depth in depths.items():
        try:
            if depth is not None:
                stage_blocks(whole(depth))
        except ValueError as error:
            errors.append(labelled(error, {"depth": labels.get(field, field)}))
    return errors


def check_settings(preset, overrides, labels):
    """Errors of `RunConfig.from_preset(preset, **overrides)`: whatever
    kd_keras would refuse of these settings (one message: it stops at the
    first problem)."""
    try:
        RunConfig.from_preset(preset, **overrides)
    except (ConfigError, TypeError) as error:
        return [labelled(error, labels)]
    return []
