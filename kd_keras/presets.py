"""The named presets of a run, as data: one `Preset` record each.

A preset is a set of `RunConfig` field overrides with a one-line
description and a rough cost. The `--preset` help of the command line, the
app's preset picker and the table in docs/guide.md all come from `PRESETS`
(`preset_help`, `describe_preset`, `markdown_table`). Measured accuracies and
times are in docs/results.md, each with its command.

This module imports neither Keras nor TensorFlow.
"""

import dataclasses
import types


@dataclasses.dataclass(frozen=True)
class Preset:
    """One named preset.

    Args:
        name: the `--preset` value.
        description: one line: what it runs and what it is for.
        cost: its rough cost on a 2-core CPU, as text.
        overrides: `{RunConfig field: value}` applied over the defaults
            (read-only).
    """

    name: str
    description: str
    cost: str
    overrides: types.MappingProxyType

    def __post_init__(self):
        object.__setattr__(self, "overrides", types.MappingProxyType(dict(self.overrides)))


# The preset of a run given no --preset (command line, app, search).
DEFAULT_PRESET = "quick"

_PRESET_LIST = (
    # Float32 everywhere, so it runs and gives the same numbers on any CPU.
    Preset(
        "smoke",
        "50 training, 20 validation and 20 test images a class; ResNet-8 teacher "
        "(width 8) and student (width 4); 4 epochs a stage: for tests",
        "seconds",
        {
            "precision": "float32",
            "teacher_precision": "float32",
            "train_per_class": 50,
            "val_size": 5000,
            "val_per_class": 20,
            "test_per_class": 20,
            "teacher_depth": 8,
            "teacher_width": 8,
            "student_depth": 8,
            "student_width": 4,
            "teacher_epochs": 4,
            "student_epochs": 4,
            "batch_size": 50,
            "learning_rate": 0.05,
            "warmup_epochs": 0,
        },
    ),
    # Real CIFAR-10 at reduced scale: shows the distillation gain on a CPU.
    Preset(
        "quick",
        "1,000 training and 200 validation images a class, the full test set; "
        "ResNet-20 teacher, ResNet-8 student; 20 epochs a stage: shows the "
        "distillation gain on a CPU",
        "6-10 min with native bfloat16, longer without",
        {
            "train_per_class": 1000,
            "val_size": 5000,
            "val_per_class": 200,
            "teacher_depth": 20,
            "student_depth": 8,
            "teacher_epochs": 20,
            "student_epochs": 20,
            "batch_size": 128,
            "warmup_epochs": 1,
        },
    ),
    # The reference setting at CPU scale: all 45,000 training images (5,000
    # held out), the full test set. Weight decay 5e-3 in Keras's decoupled
    # form is what PyTorch's SGD(weight_decay=5e-4, momentum=0.9) applies in
    # effect (docs/results.md).
    Preset(
        "full",
        "all images (5,000 held out for validation); ResNet-30 teacher, ResNet-15 "
        "student; 100 epochs a stage, weight decay 5e-3 decoupled: the reference's "
        "models and data",
        "about 4 h 50 min with native bfloat16",
        {
            "teacher_depth": 30,
            "student_depth": 15,
            "teacher_epochs": 100,
            "student_epochs": 100,
            "batch_size": 128,
            "warmup_epochs": 2,
            "weight_decay": 5e-3,
        },
    ),
    # The same models, data and recipe with the long schedule.
    Preset(
        "paper",
        "as full with 160 epochs a stage and 5 warm-up epochs: the long schedule, for a GPU",
        "days",
        {
            "teacher_depth": 30,
            "student_depth": 15,
            "teacher_epochs": 160,
            "student_epochs": 160,
            "batch_size": 128,
            "warmup_epochs": 5,
            "weight_decay": 5e-3,
        },
    ),
)

# Every preset by name, in the order above.
PRESETS = {preset.name: preset for preset in _PRESET_LIST}


def describe_preset(name):
    """`name: cost on a 2-core CPU; description`, for a picker (the bare
    name for an unknown one)."""
    preset = PRESETS.get(name)
    if preset is None:
        return name
    return f"{name}: {preset.cost} on a 2-core CPU; {preset.description}"


def preset_help():
    """The `--preset` help text: every preset, its cost and what it is for."""
    items = " ".join(
        f"{p.name}{', the default' if p.name == DEFAULT_PRESET else ''} ({p.cost}): "
        f"{p.description}."
        for p in PRESETS.values()
    )
    return f"named settings; costs on a 2-core CPU. {items}"


def markdown_table():
    """The presets table of docs/guide.md, as Markdown lines."""
    lines = ["| preset | what it runs, and for | cost on a 2-core CPU |", "|---|---|---|"]
    for preset in PRESETS.values():
        default = " (default)" if preset.name == DEFAULT_PRESET else ""
        lines.append(f"| `{preset.name}`{default} | {preset.description} | {preset.cost} |")
    return lines
