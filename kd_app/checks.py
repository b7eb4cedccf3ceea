"""The launch and search forms' checks, as readable one-line messages.

The rules are kd_keras's own (`kd_keras.validation`'s checks and
`RunConfig.validate`, `kd_keras.models.depth.stage_blocks`,
`kd_keras.models.specs.parse_model_spec`): the app words their messages
for the form (a field's label in place of its name) and collects every
problem at once instead of stopping at the first. What kd_keras cannot
know before a run starts, that files exist, is checked here, and every
path the page names must lie inside the operator's roots (`kd_app.confine`).
"""

import dataclasses
import re

from kd_keras.config import RunConfig
from kd_keras.errors import ConfigError, DataSourceError, LaunchError
from kd_keras.models.depth import stage_blocks
from kd_keras.models.specs import parse_model_spec
from kd_keras.validation import validate_alpha, validate_temperature

from . import confine
from .settings import DATA_ROOT_ENV_VAR, NAME_PATTERN, data_roots


def labelled(error, labels):
    """`error`'s message as a sentence, its leading field name and every
    command-line flag of a labelled field replaced by the form's label
    (`labels`: {field: label})."""
    text = str(error).rstrip(".")
    for field in sorted(labels, key=len, reverse=True):
        if text.startswith(f"{field} "):
            text = labels[field] + text[len(field) :]
            break
    fields = RunConfig.__dataclass_fields__
    for field in sorted(labels, key=len, reverse=True):
        flag = fields[field].metadata.get("flag") if field in fields else None
        if flag:
            text = re.sub(rf"{re.escape(flag)}(?![\w-])", labels[field], text)
    return text + "."


def whole(value):
    """A whole-number float as an int (a number box may give `3.0`);
    anything else as it is, for the validators to refuse."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


DATA_HINT = (
    "Name a CIFAR-10 archive or batches folder, an image folder (a subfolder per "
    f"class) or a .npz file inside the data folder (${DATA_ROOT_ENV_VAR}) or the runs folder."
)


def resolve_data(data, runs_dir):
    """`(absolute path, [])` of the data source named on the page, or
    `(None, [message])`. Only paths inside `settings.data_roots` count, and
    one outside gets the same message whether or not it exists."""
    if not str(data or "").strip():
        return None, [f"No data source given. {DATA_HINT}"]
    try:
        path = confine.confined_path(data, data_roots(runs_dir), "data source", DATA_HINT)
    except LaunchError as error:
        return None, [str(error)]
    if not path.exists():
        return None, [f"The data source '{confine.shown(path)}' does not exist. {DATA_HINT}"]
    return path, []


def describe_data(data, runs_dir):
    """`(SourceDescription, [])` of the data source named on the page
    (`kd_keras.data.describe`: classes, images, size, from headers only), or
    `(None, [message])`; only inside the operator's roots."""
    path, errors = resolve_data(data, runs_dir)
    if errors:
        return None, errors
    from kd_keras.data.describe import describe_source

    try:
        return describe_source(path), []
    except DataSourceError as error:
        return None, [f"The data source cannot be used: {error}"]
    except OSError as error:
        return None, [f"The data source '{path}' cannot be read: {error.strerror or error}."]


def check_data_path(data, runs_dir):
    """Errors about the data source (a list of readable messages)."""
    return resolve_data(data, runs_dir)[1]


def resolve_keras_file(value, runs_dir, what):
    """`(absolute path, [])` of a `.keras` file named on the page (inside the
    runs root: a run's own model, or one copied there), or `(None, [message])`."""
    hint = f"Pick a trained teacher, or put the {what} file inside the runs folder."
    try:
        path = confine.confined_path(value, [runs_dir], f"{what} file", hint)
    except LaunchError as error:
        return None, [str(error)]
    if path.suffix != ".keras":
        return None, [f"The {what} '{confine.shown(value)}' must be a Keras '.keras' file."]
    if not path.is_file():
        shown = confine.shown(path)
        return None, [f"The {what} file '{shown}' does not exist; {hint[0].lower()}{hint[1:]}"]
    return path, []


def check_name(name, what, reserved=()):
    """Errors about a run or search name (`what`: "Run", "Search";
    `reserved`: names it may not take)."""
    reserved = (reserved,) if isinstance(reserved, str) else tuple(reserved or ())
    if name and (not NAME_PATTERN.match(name) or name in reserved):
        besides = f" (not {' or '.join(repr(r) for r in reserved)})" if reserved else ""
        return [
            f"{what} name '{name}' is not usable: use letters, digits, '.', '_' "
            f"or '-'{besides}, at most 100 characters."
        ]
    return []


def check_teacher(teacher, runs_dir):
    """Errors about a trained teacher file ('' = none; inside the runs root)."""
    return resolve_keras_file(teacher, runs_dir, "teacher")[1] if teacher else []


def resolve_model(value, runs_dir, role):
    """`(model spec, [])` of a model named on the page, with every path in it
    (a `.keras` file, an application's `weights=` file) made absolute inside
    the runs root, or `(None, [message])`. A path outside the root gets the
    same message whether or not it exists (`kd_app.confine`).

    Args:
        value: the teacher or student model field, e.g. `resnet20`,
            `mobilenetv3small:weights=w.weights.h5`, `mine/model.keras`.
        runs_dir: the runs root.
        role: "teacher" or "student".
    """
    value = str(value or "").strip()
    try:
        spec = parse_model_spec(value, role=role)
    except ValueError as error:
        text = confine.shown(str(error), 400)
        return None, [f"{text[0].upper()}{text[1:]}."]
    if spec["kind"] == "file":
        path, errors = resolve_keras_file(value, runs_dir, f"{role} model")
        return (str(path) if path else None), errors
    weights = spec.get("options", {}).get("weights")
    if spec["kind"] != "application" or weights is None:
        return value, []
    what = f"{role} model's weights"
    hint = "Put the weights file inside the runs folder and name it there (weights=<file>.h5)."
    try:
        path = confine.confined_path(weights, [runs_dir], f"{what} file", hint)
    except LaunchError as error:
        return None, [str(error)]
    if not path.is_file():
        return None, [f"The {what} file '{confine.shown(path)}' does not exist. {hint}"]
    if "," in str(path):
        return None, [f"The {what} file '{confine.shown(path)}' has a ',' in its path; rename it."]
    name, _, options = value.partition(":")
    items = [
        f"weights={path}" if item.partition("=")[0].strip() == "weights" else item
        for item in options.split(",")
    ]
    return f"{name}:{','.join(items)}", []


def check_models(teacher_model, student_model, runs_dir):
    """Errors about the teacher and student model names: every path they
    name (a .keras file, a `weights=` file) must exist inside the runs root."""
    errors = []
    for role, value in (("teacher", teacher_model), ("student", student_model)):
        if str(value or "").strip():
            errors += resolve_model(value, runs_dir, role)[1]
    return errors


ALL = "all"  # A size field's "everything".


def size_value(value):
    """A size field's value: None (empty: the default that follows the
    data), "all", a whole number as an int, or the value as it is (for
    `check_sizes` to refuse)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text == ALL:
            return ALL
        return int(text) if text.isdigit() else value.strip()
    return whole(value)


def check_sizes(sizes, labels):
    """Errors about the size fields (`sizes`: {field: value}): each must be
    a whole number >= 1, "all", or empty."""
    errors = []
    for field, value in sizes.items():
        value = size_value(value)
        if value is None or value == ALL:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            errors.append(
                f"{labels.get(field, field)} must be a whole number >= 1, 'all', or empty "
                f"(the default that follows the data), got {value!r}."
            )
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
    fields = {field.name: field for field in dataclasses.fields(RunConfig)}
    # Fields RunConfig does not hold are left to the command line, and so is
    # "all" where RunConfig takes only a number: a per-class count is
    # checked as unset (every image), `val_size` not at all.
    overrides = {
        k: (None if v == ALL else v)
        for k, v in overrides.items()
        if k in fields and (v != ALL or fields[k].default is None)
    }
    try:
        RunConfig.from_preset(preset, **overrides)
    except (ConfigError, TypeError) as error:
        return [labelled(error, labels)]
    return []
