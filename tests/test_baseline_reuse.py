"""`--baseline FILE`: a run reuses another run's trained student baseline,
so distillation methods compare for the cost of the distilled stage alone."""

import json
import shutil

import pytest

from kd_keras.cli import main
from kd_keras.config import RunConfig
from kd_keras.errors import ConfigError
from kd_keras.validation import BASELINE_FIELDS, baseline_mismatch, validate_baseline


def test_baseline_with_budget_is_refused_in_one_line():
    with pytest.raises(ConfigError) as error:
        RunConfig.from_preset("smoke", baseline="b.keras", budget="10m")
    message = str(error.value)
    assert "--baseline b.keras" in message and "--budget 10m" in message
    assert "\n" not in message


@pytest.mark.parametrize("value", ["", "  ", 3, ["b.keras"]])
def test_baseline_that_is_no_path_is_refused(value):
    with pytest.raises(ValueError, match=r"\(--baseline\)"):
        validate_baseline(value, None)


def test_baseline_mismatch_names_each_differing_field_and_skips_missing_ones():
    saved = {"seed": 0, "student_epochs": 20, "learning_rate": 0.1, "method": "hinton"}
    ours = {"seed": 1, "student_epochs": 20, "learning_rate": 0.05, "method": "dkd"}
    assert baseline_mismatch(saved, ours) == [("seed", 0, 1), ("learning_rate", 0.1, 0.05)]
    # The method, the teacher and T/alpha do not touch the baseline.
    assert not {"method", "teacher", "temperature", "alpha"} & set(BASELINE_FIELDS)
    assert baseline_mismatch({"seed": 0}, {"student_epochs": 3}) == []


def test_baseline_round_trips_through_config_json_and_is_a_result_field():
    config = RunConfig.from_preset("smoke", baseline="runs/a/models/student_baseline.keras")
    saved = RunConfig.from_dict(json.loads(config.to_json()))
    assert saved.baseline == "runs/a/models/student_baseline.keras"
    from kd_keras.config import NON_RESULT_FIELDS

    assert "baseline" not in NON_RESULT_FIELDS  # A resume with another one is refused.


@pytest.mark.slow
def test_run_reuses_a_baseline_and_refuses_another_recipe(tmp_path, capsys):
    from tests.test_losses_pipeline import tiny_npz

    data = tiny_npz(tmp_path / "d.npz")
    argv = ["run", "--preset", "smoke", "--data", str(data), "--quiet"]
    argv += ["--val-size", "20", "--teacher-epochs", "1", "--student-epochs", "2"]
    argv += ["--train-per-class", "15", "--val-per-class", "5", "--test-per-class", "10"]
    argv += ["--teacher-width", "8", "--student-width", "4"]
    first = tmp_path / "hinton"
    assert main([*argv, "--out", str(first)]) == 0
    trained = json.loads((first / "stages" / "student_baseline.json").read_text())
    baseline = str(first / "models" / "student_baseline.keras")
    teacher = str(first / "models" / "teacher.keras")
    reuse = [*argv, "--teacher", teacher, "--accept-weak-teacher", "--baseline", baseline]

    # Another seed, another student, or the teacher's file: refused in one
    # line before a folder is made.
    for extra, words in [
        (["--seed", "1"], "with --seed 0, not this run's 1"),
        (["--student-epochs", "3"], "--student-epochs 2, not this run's 3"),
    ]:
        bad = tmp_path / "bad"
        assert main([*reuse, *extra, "--out", str(bad)]) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert words in error and "drop --baseline" in error, error
        assert not bad.exists()
    lone = tmp_path / "elsewhere" / "teacher.keras"  # No config.json beside it.
    lone.parent.mkdir()
    shutil.copy(teacher, lone)
    assert main([*argv, "--out", str(tmp_path / "bad"), "--baseline", str(lone)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "is not this run's student" in error and "--student-depth" in error
    assert not (tmp_path / "bad").exists()

    # Reused: evaluated, not trained; the same test accuracy on the same data.
    second = tmp_path / "dkd"
    assert main([*reuse, "--method", "dkd", "--out", str(second)]) == 0
    row = json.loads((second / "stages" / "student_baseline.json").read_text())
    assert row["source"] == baseline
    assert (row["train_seconds"], row["epochs"], row["best_epoch"]) == (0.0, 0, None)
    assert row["test_accuracy"] == pytest.approx(trained["test_accuracy"])
    assert row["params"] == trained["params"]
    assert json.loads((second / "config.json").read_text())["baseline"] == baseline
    distilled = json.loads((second / "stages" / "student_distilled.json").read_text())
    assert distilled["method"] == "dkd" and distilled["epochs"] == 2
    # The distilled student started from the same seeded weights as the
    # first run's: its initial-weights file is identical.
    first_init = next((first / "checkpoints").glob("student_init*"))
    second_init = second / "checkpoints" / first_init.name
    assert first_init.read_bytes() == second_init.read_bytes()
