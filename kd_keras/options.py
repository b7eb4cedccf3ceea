"""Run options: the `RunConfig` fields a user sets by flag, in one table.

`python -m kd_keras run`, `python -m tuning` and the app all read
`RUN_OPTIONS`, built from the field metadata in `kd_keras/config.py`: a
field with a `"flag"` is a run option, a field without one (`preset`,
`verbose`) is set some other way. A new option is one field with metadata;
every front end then has it.

This module imports neither Keras nor TensorFlow.

Example:

```python
parser = argparse.ArgumentParser()
add_run_options(parser, fields=("seed", "alpha"))
args = parser.parse_args(["--seed", "3"])
overrides_from_args(args, fields=("seed", "alpha"))  # {"seed": 3}
command_line_flags({"alpha": 0.5, "sync_batch_norm": True})
# ["--alpha", "0.5", "--sync-batch-norm"]
```
"""

import argparse
import collections.abc
import dataclasses
import os
import types
import typing

from kd_keras.config import RunConfig

# Value types a run option may have (`Optional[X]` counts as `X`).
OPTION_TYPES = (int, float, str, bool, list)


@dataclasses.dataclass(frozen=True)
class Option:
    """One run option: a `RunConfig` field and its command-line flag.

    Args:
        field: the `RunConfig` field, also the argparse `dest`.
        flag: the flag, e.g. `"--teacher-depth"`.
        type: the value type: `int`, `float`, `str`, `bool` (a switch:
            the flag alone means `True`) or `list` (of names, given
            comma-separated).
        help: the flag's help text.
        choices: the accepted values where there is a fixed set, for front
            ends that offer a list; `RunConfig.validate` checks them.
        words: words the flag takes besides a value of `type` (e.g.
            `("all",)` for a size option).
        more: a list field that takes the values of this flag given again
            (`--teacher a --teacher b`: `teacher` "a", `other_teachers`
            `["b"]`); `None`: a flag given again replaces its value.
    """

    field: str
    flag: str
    type: type
    help: str
    choices: typing.Optional[tuple] = None
    words: tuple = ()
    more: typing.Optional[str] = None


def _value_type(field):
    """`field`'s value type from its annotation (`Optional[X]` -> `X`)."""
    kind = field.type
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        kind = args[0] if len(args) == 1 else None
    kind = typing.get_origin(kind) or kind
    if kind not in OPTION_TYPES:
        raise TypeError(
            f"RunConfig.{field.name} has a flag but its type {field.type!r} is not "
            f"one of {', '.join(t.__name__ for t in OPTION_TYPES)} (or Optional of one)"
        )
    return kind


def _build_options():
    options = []
    for field in dataclasses.fields(RunConfig):
        if "flag" not in field.metadata:
            continue
        choices = field.metadata.get("choices")
        options.append(
            Option(
                field=field.name,
                flag=field.metadata["flag"],
                type=_value_type(field),
                help=field.metadata["help"],
                choices=tuple(choices) if choices is not None else None,
                words=tuple(field.metadata.get("words", ())),
                more=field.metadata.get("more"),
            )
        )
    return tuple(options)


# Every run option, in `RunConfig`'s field order.
RUN_OPTIONS = _build_options()
_BY_FIELD = {option.field: option for option in RUN_OPTIONS}


def option_for(field):
    """The `Option` of the `RunConfig` field named `field`.

    Raises:
        ValueError: `field` is not a `RunConfig` field, or has no flag.
    """
    if field in _BY_FIELD:
        return _BY_FIELD[field]
    if field in RunConfig.__dataclass_fields__:
        raise ValueError(
            f"RunConfig field {field!r} is not a run option (it has no flag); "
            f"run options: {', '.join(_BY_FIELD)}"
        )
    raise ValueError(f"{field!r} is not a RunConfig field; run options: {', '.join(_BY_FIELD)}")


def _options(fields):
    """The options of `fields` (`None` = all), in the order given."""
    if fields is None:
        return RUN_OPTIONS
    if isinstance(fields, str):
        raise ValueError(
            f"fields must be a list of field names, not the string {fields!r}; use [{fields!r}]"
        )
    options = tuple(option_for(field) for field in fields)
    if len({o.field for o in options}) != len(options):
        raise ValueError(f"fields lists a field twice: {list(fields)!r}")
    return options


def _comma_list(flag):
    """argparse `type` of a list option: comma-separated names."""

    def parse(text):
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(
                f"{flag} needs one or more comma-separated names, got {text!r}"
            )
        return items

    return parse


class _FirstAndMore(argparse.Action):
    """A flag whose first value goes to `dest` and whose values given
    again are appended to the list `more` (an `Option.more`)."""

    def __init__(self, *args, more, **kwargs):
        self.more = more
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is None:
            setattr(namespace, self.dest, values)
        else:
            setattr(namespace, self.more, [*(getattr(namespace, self.more, None) or []), values])


def _with_words(kind, words, flag):
    """argparse `type` of an option that also takes `words` (e.g. `all`)."""

    def parse(text):
        if text.strip().lower() in words:
            return text.strip().lower()
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} takes {'an integer' if kind is int else 'a number'} or "
                f"{' or '.join(words)}, got {text!r}"
            ) from None

    return parse


def add_run_options(parser, fields=None, help_texts=None):
    """Adds run options to an `argparse` parser.

    Each becomes `flag` with `dest` the field name and default `None`, so a
    flag not given leaves the preset's (or a resumed run's) value. A `bool`
    option is a switch (`store_true`); a `list` option takes comma-separated
    names. Choices are not given to argparse: `RunConfig.validate` checks
    values and names the fix.

    Args:
        parser: an `argparse.ArgumentParser` (or argument group).
        fields: field names to add, in this order; `None` = all of
            `RUN_OPTIONS`.
        help_texts: optional `{field: help}` replacing the table's help
            for some of `fields`.

    Returns:
        The `Option`s added.
    """
    options = _options(fields)
    help_texts = dict(help_texts or {})
    unknown = sorted(set(help_texts) - {o.field for o in options})
    if unknown:
        raise ValueError(
            f"help_texts names fields that are not added: {', '.join(unknown)}; "
            "add them to fields or drop their help"
        )
    for option in options:
        text = help_texts.get(option.field, option.help)
        if option.type is bool:
            parser.add_argument(
                option.flag, dest=option.field, action="store_true", default=None, help=text
            )
            continue
        kind = _comma_list(option.flag) if option.type is list else option.type
        if option.words:
            kind = _with_words(kind, option.words, option.flag)
        if option.more:
            parser.add_argument(
                option.flag,
                dest=option.field,
                type=kind,
                default=None,
                help=text,
                action=_FirstAndMore,
                more=option.more,
            )
            parser.set_defaults(**{option.more: None})
            continue
        parser.add_argument(option.flag, dest=option.field, type=kind, default=None, help=text)
    return options


def overrides_from_args(args, fields=None):
    """`{field: value}` of the run options given on the command line.

    Args:
        args: the `argparse.Namespace` of a parser set up by
            `add_run_options`.
        fields: the fields it was given (`None` = all of `RUN_OPTIONS`).

    Returns:
        The options whose value is not `None` (a flag not given is `None`),
        ready for `RunConfig.from_preset(name, **overrides)`.
    """
    overrides = {}
    values = vars(args)
    for option in _options(fields):
        if option.field not in values:
            raise ValueError(
                f"args has no {option.field!r} ({option.flag}); add it with "
                "add_run_options(parser, fields=...) or leave it out of fields"
            )
        if values[option.field] is not None:
            overrides[option.field] = values[option.field]
        if option.more and values.get(option.more):
            overrides[option.more] = list(values[option.more])
    return overrides


def _flag_value(option, value):
    """The command-line text of one option value."""
    kind, name = option.type, option.field
    if isinstance(value, str) and value.strip().lower() in option.words:
        return value.strip().lower()
    if kind is int:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (isinstance(value, float) and not value.is_integer())
        ):
            raise ValueError(f"{name} must be an int, got {value!r}")
        return str(int(value))
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        return repr(float(value))
    if kind is list:
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(item, str) and item.strip() and "," not in item for item in value
        ):
            raise ValueError(f"{name} must be a list of names without commas, got {value!r}")
        return ",".join(item.strip() for item in value)
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"{name} must be a string, got {value!r}")
    return os.fspath(value).strip()


def command_line_flags(settings):
    """The flags that set `settings` on `python -m kd_keras run`.

    Args:
        settings: `{field: value}` of run options. `None`, empty strings
            and empty lists (unset form fields) add nothing; a `bool` adds
            its flag when `True` and nothing when `False` (the default); a
            list is joined with commas; the list field of an option's
            `more` repeats its flag (`--teacher a --teacher b`).

    Returns:
        A list of argv strings, in `RUN_OPTIONS` order, e.g.
        `["--seed", "3", "--alpha", "0.5"]`. A value starting with `-` is
        given as `--flag=value`, so that it is not taken for a flag.

    Raises:
        ValueError: a key is not a run option, or a value has the wrong type.
    """
    if not isinstance(settings, collections.abc.Mapping):
        raise ValueError(f"settings must be a dict of {{field: value}}, got {settings!r}")
    more = {option.more: option for option in RUN_OPTIONS if option.more}
    for field in settings:
        if field not in more:
            option_for(field)  # Unknown fields raise, naming the run options.
    argv = []
    for option in RUN_OPTIONS:
        value = settings.get(option.field)
        if value is None or (
            isinstance(value, (str, list, tuple))
            and not (value.strip() if isinstance(value, str) else value)
        ):
            continue
        if option.type is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{option.field} must be True or False, got {value!r}")
            if value:
                argv.append(option.flag)
            continue
        values = [value]
        if option.more:  # The flag again for each value of its list field.
            extra = settings.get(option.more) or []
            if not isinstance(extra, (list, tuple)):
                raise ValueError(f"{option.more} must be a list, got {extra!r}")
            values += list(extra)
        for item in values:
            text = _flag_value(option, item)
            if text.startswith("-"):
                argv.append(f"{option.flag}={text}")
            else:
                argv += [option.flag, text]
    return argv
