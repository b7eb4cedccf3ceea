import json
import re
from pathlib import Path

import pytest

from kd_keras.config import RunConfig
from kd_keras.errors import ConfigError
from kd_keras.models.specs import APPLICATIONS, application_names_help
from kd_keras.presets import DEFAULT_PRESET, PRESETS, describe_preset, markdown_table, preset_help

_NUMBERED = re.compile(r"(.*[a-z])(\d+)")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_config(name):
    config = RunConfig.from_preset(name)
    assert config.preset == name
    assert (config.temperature, config.alpha) == (4.0, 0.3)


def test_paper_preset_uses_the_reference_depths():
    config = RunConfig.from_preset("paper")
    assert (config.teacher_depth, config.student_depth) == (30, 15)
    assert config.train_per_class is None  # All 45,000 training images.
    # The recipe of `full`, longer.
    assert config.weight_decay == RunConfig.from_preset("full").weight_decay == 5e-3


def test_overrides_replace_preset_values_and_none_keeps_them():
    config = RunConfig.from_preset("quick", alpha=0.5, temperature=None, student_depth=14)
    assert (config.alpha, config.temperature, config.student_depth) == (0.5, 4.0, 14)
    assert config.teacher_depth == PRESETS["quick"].overrides["teacher_depth"]


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("alpha", 1.2, "alpha must be in [0, 1]"),
        ("temperature", 0.0, "temperature must be a finite number > 0, got 0.0"),
        ("temperature", -3.0, "got -3.0"),
        ("student_depth", 5, "depth must be an int >= 8"),
        ("batch_size", 0, "batch_size must be an int >= 1, got 0"),
        ("learning_rate", 0.0, "learning_rate must be > 0, got 0.0"),
        ("train_per_class", 0, "--train-per-class must be a positive integer or 'all', got 0"),
        ("val_size", "most", "--val-size must be a positive integer or 'all', got 'most'"),
        ("test_per_class", 2.5, "--test-per-class must be a positive integer or 'all', got 2.5"),
        ("val_size", 50000, "--val-size 50000 leaves no training image in class 'airplane'"),
    ],
)
def test_bad_values_are_refused_with_the_value(field, value, fragment):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_preset("smoke", **{field: value})
    assert fragment in str(info.value)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(
        ConfigError, match="unknown preset 'fast'; choose one of smoke, quick, full, paper"
    ):
        RunConfig.from_preset("fast")


def test_json_round_trip_and_result_differences(tmp_path):
    config = RunConfig.from_preset("quick", data="/a/cifar.tar.gz", seed=3)
    path = tmp_path / "config.json"
    path.write_text(config.to_json())
    loaded = RunConfig.load(path)
    assert loaded == config
    moved = RunConfig.from_preset("quick", data="/elsewhere/cifar.tar.gz", seed=3, verbose=0)
    assert config.result_differences(moved) == []  # Where the data lives changes nothing.
    changed = RunConfig.from_preset("quick", seed=4, alpha=0.5)
    assert set(config.result_differences(changed)) == {"alpha", "seed"}


def test_unknown_fields_in_saved_config_are_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**RunConfig().to_dict(), "tempreature": 3}))
    with pytest.raises(ConfigError, match="unknown config fields: tempreature"):
        RunConfig.load(path)


def test_zero_teacher_epochs_needs_a_teacher_file():
    with pytest.raises(ConfigError, match="no --teacher file"):
        RunConfig.from_preset("smoke", teacher_epochs=0)
    assert RunConfig.from_preset("smoke", teacher_epochs=0, teacher="t.keras").teacher == "t.keras"


def test_presets_table_in_the_guide_is_the_preset_records():
    guide = (Path(__file__).resolve().parents[1] / "docs" / "guide.md").read_text()
    table = markdown_table()
    start = guide.index(table[0])
    assert guide[start:].splitlines()[: len(table)] == table
    assert len(table) == 2 + len(PRESETS)


def test_preset_help_and_picker_come_from_the_records():
    text = preset_help()
    for name, preset in PRESETS.items():
        default = ", the default" if name == DEFAULT_PRESET else ""
        assert f"{name}{default} ({preset.cost}): {preset.description}." in text
        assert (
            describe_preset(name) == f"{name}: {preset.cost} on a 2-core CPU; {preset.description}"
        )
    assert describe_preset("custom") == "custom"
    assert DEFAULT_PRESET in PRESETS


def test_preset_overrides_are_read_only_runconfig_fields():
    fields = set(RunConfig.__dataclass_fields__)
    for preset in PRESETS.values():
        assert set(preset.overrides) <= fields - {"preset"}
        with pytest.raises(TypeError):
            preset.overrides["seed"] = 1


def test_application_names_help_covers_the_table_and_the_model_help():
    text = application_names_help()
    assert text.startswith("mobilenetv3small, mobilenetv3large, efficientnetb0 to efficientnetb7, ")
    assert text.endswith("efficientnetv2b0 to efficientnetv2b3, efficientnetv2s")
    named = [name for name in APPLICATIONS if name in text]
    assert {"efficientnetb1", "efficientnetv2b1"}.isdisjoint(named)  # Shown as ranges.
    assert text in RunConfig.__dataclass_fields__["teacher_model"].metadata["help"]


def test_guide_models_table_lists_exactly_the_applications():
    guide = (Path(__file__).resolve().parents[1] / "docs" / "guide.md").read_text()
    rows = guide[guide.index("### Models (`--teacher-model`") :].split("\n\n")[1].splitlines()
    listed = set()
    for row in rows:
        first = row.split("|")[1]
        names = re.findall(r"`([a-z0-9]+)`", first)
        if " ... " in first:  # `efficientnetb0` ... `efficientnetb7`: every number between.
            low, high = (_NUMBERED.fullmatch(n).groups() for n in names[:2])
            names += [f"{low[0]}{i}" for i in range(int(low[1]), int(high[1]) + 1)]
        listed.update(n for n in names if not n.startswith("resnet"))
    assert listed == set(APPLICATIONS)
