"""benchmarks.methods: every method per seed on one shared baseline, one table."""

import json
import re

import pytest

from benchmarks.methods import format_methods_table, main, method_flags, run_folder
from kd_keras.errors import ConfigError


def test_method_names_become_run_flags():
    assert method_flags("dkd") == ["--method", "dkd"]
    assert method_flags("hinton+ls") == ["--method", "hinton", "--logit-standardization"]
    for bad in ("crd", "at+ls", "fitnets+ls", "hinton+"):
        with pytest.raises(ConfigError, match=re.escape(f"unknown method {bad!r}")):
            method_flags(bad)


def _result(baseline, distilled):
    return {
        "teacher": 0.8,
        "student_baseline": baseline,
        "student_distilled": distilled,
        "gain_points": 100 * (distilled - baseline),
        "distilled_seconds": 600.0,
        "wall_seconds": 700.0,
    }


def test_table_gives_gains_and_paired_differences_to_the_first_method():
    summary = {
        "command": "python -m benchmarks.methods ...",
        "machine": "AMD EPYC (avx2 fma)",
        "date": "2026-12-07T00:00:00+00:00",
        "methods": ["hinton", "dkd"],
        "seeds": [0, 1, 2],
        "runs": {
            "hinton": {"0": _result(0.70, 0.72), "1": _result(0.71, 0.72), "2": None},
            "dkd": {"0": _result(0.70, 0.74), "1": _result(0.71, 0.75)},
        },
    }
    table = format_methods_table(summary)
    # hinton: gains +2, +1 -> +1.50 ± 0.71; dkd: +4, +4 -> +4.00 ± 0.00;
    # paired dkd - hinton distilled: +2, +3 -> +2.50 ± 0.71.
    assert "| hinton | 2 | +1.50 ± 0.71 |  |" in table
    assert "| dkd | 2 | +4.00 ± 0.00 | +2.50 ± 0.71 |" in table
    assert "| hinton | 2 | not complete |" in table
    assert "| dkd | 1 | 0.7100 | 0.7500 | +4.00 | 10:00 | 11:40 |" in table


def test_flags_the_benchmark_sets_are_refused_after_the_separator(tmp_path, capsys):
    teacher = tmp_path / "t.keras"
    teacher.write_bytes(b"x")
    for flag in ("--baseline", "--method", "--seed"):
        with pytest.raises(SystemExit):
            main(["--teacher", str(teacher), "--out", str(tmp_path), "--", flag, "x"])
        assert "is set by benchmarks.methods" in capsys.readouterr().err


@pytest.mark.slow
def test_methods_share_each_seeds_baseline(tmp_path):
    from kd_keras.cli import main as kd_main
    from tests.test_losses_pipeline import tiny_npz

    data = tiny_npz(tmp_path / "d.npz")
    sizes = ["--val-size", "20", "--train-per-class", "15", "--val-per-class", "5"]
    sizes += ["--test-per-class", "10", "--student-width", "4", "--student-epochs", "2"]
    teacher_run = tmp_path / "teacher"
    argv = ["run", "--preset", "smoke", "--data", str(data), "--quiet", "--out", str(teacher_run)]
    assert kd_main([*argv, *sizes, "--teacher-epochs", "1", "--teacher-width", "8"]) == 0
    out = tmp_path / "methods"
    teacher = str(teacher_run / "models" / "teacher.keras")
    common = ["--preset", "smoke", "--seeds", "0", "--methods", "hinton", "dkd+ls"]
    common += ["--teacher", teacher, "--out", str(out), "--data", str(data)]
    assert main([*common, "--", *sizes, "--accept-weak-teacher"]) == 0
    summary = json.loads((out / "methods.json").read_text())
    hinton, dkd = (summary["runs"][m]["0"] for m in ("hinton", "dkd+ls"))
    assert dkd["student_baseline"] == hinton["student_baseline"]
    config = json.loads((run_folder(out, "dkd+ls", 0) / "config.json").read_text())
    assert (config["method"], config["logit_standardization"]) == ("dkd", True)
    assert config["baseline"].endswith("hinton/seed0/models/student_baseline.keras")
    row = json.loads(
        (run_folder(out, "dkd+ls", 0) / "stages" / "student_baseline.json").read_text()
    )
    assert row["train_seconds"] == 0.0
    assert "| dkd+ls | 1 |" in (out / "methods.md").read_text()
    # Run again: nothing trains, the recorded wall times stay.
    assert main([*common, "--", *sizes, "--accept-weak-teacher"]) == 0
    again = json.loads((out / "methods.json").read_text())
    assert again["runs"]["dkd+ls"]["0"]["wall_seconds"] == dkd["wall_seconds"] > 0
