"""benchmarks.seeds: one run per seed, the gain tabulated."""

import json
import shutil

import pytest

from benchmarks.seeds import (
    check_seed_folder,
    format_seed_table,
    main,
    run_argv,
    seed_result,
)
from kd_keras.config import RunConfig
from kd_keras.errors import ConfigError
from kd_keras.run_folder import RunFolder


def _summary(gains):
    seeds = {}
    for seed, (baseline, distilled) in enumerate(gains):
        seeds[str(seed)] = {
            "teacher": 0.74,
            "student_baseline": baseline,
            "student_distilled": distilled,
            "gain_points": 100 * (distilled - baseline),
            "precision": "float32",
            "teacher_precision": "float32",
            "wall_seconds": 372.4,
            "resumed": seed == 1,
        }
    return {
        "command": "python -m benchmarks.seeds --preset quick --seeds 0 1 2 --out x",
        "machine": "AMD EPYC (avx2 fma)",
        "date": "2026-11-26T12:00:00+00:00",
        "seeds": seeds,
    }


def test_table_has_each_seed_and_the_mean_gain():
    table = format_seed_table(_summary([(0.68, 0.70), (0.67, 0.69), (0.66, 0.71)]))
    lines = table.splitlines()
    assert "CPU: AMD EPYC (avx2 fma)" in table
    assert "| 0 | 0.7400 | 0.6800 | 0.7000 | +2.00 | float32 / float32 | 6:12 |" in lines
    assert "| 1 | 0.7400 | 0.6700 | 0.6900 | +2.00 | float32 / float32 | 6:12 (resumed) |" in lines
    # Gains +2, +2, +5: mean +3.00, sample sd 1.73.
    assert lines[-1].startswith("| mean ± sd (3 seeds) | 0.7400 ± 0.0000 | 0.6700 ± 0.0100 ")
    assert "**+3.00** ± 1.73" in lines[-1]


def test_an_incomplete_seed_is_named():
    summary = _summary([(0.68, 0.70)])
    summary["seeds"]["1"] = None
    table = format_seed_table(summary)
    assert "| 1 | not complete |" in table
    # One seed has no spread to show.
    assert "| mean (1 seed, no spread) | 0.7400 | 0.6800 | 0.7000 | **+2.00** |" in table


def test_the_run_command_carries_every_flag_and_resume_adds_one(tmp_path):
    extra = ["--data", "d.tar.gz", "--precision", "float32"]
    fresh = run_argv("quick", 2, tmp_path / "seed2", extra, resume=False)
    assert fresh[1:] == [
        "-m", "kd_keras", "run", "--preset", "quick", "--seed", "2",
        "--out", str(tmp_path / "seed2"), "--quiet", "--data", "d.tar.gz",
        "--precision", "float32",
    ]  # fmt: skip
    assert run_argv("quick", 2, tmp_path / "seed2", extra, resume=True) == [*fresh, "--resume"]


def test_a_seed_folder_of_another_run_is_refused(tmp_path):
    folder = tmp_path / "seed1"
    assert check_seed_folder(folder, "quick", 1) is False  # Nothing there yet.
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds files but no config.json"):
        check_seed_folder(folder, "quick", 1)
    (folder / "config.json").write_text(RunConfig.from_preset("smoke", seed=1).to_json())
    with pytest.raises(ConfigError, match="preset 'smoke' seed 1, not 'quick' seed 1"):
        check_seed_folder(folder, "quick", 1)
    assert check_seed_folder(folder, "smoke", 1) is True
    assert (folder / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("flag", ["--seed", "--seed=4", "--out", "--dry-run", "--data"])
def test_flags_the_command_sets_are_refused_after_the_separator(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as info:
        main(["--out", str(tmp_path), "--", flag, "4"])
    assert info.value.code == 2
    assert f"'{flag}' after -- is set by benchmarks.seeds" in capsys.readouterr().err
    assert not (tmp_path / "seeds.json").exists()


@pytest.mark.slow  # A kd_keras process.
def test_a_failing_seed_is_recorded_and_its_code_returned(tmp_path, capsys):
    out = tmp_path / "seeds"
    code = main(
        ["--preset", "smoke", "--seeds", "3", "--out", str(out), "--data", str(tmp_path / "no.npz")]
    )
    assert code == 2  # kd_keras run: bad input
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == {"3": None}
    assert "| 3 | not complete |" in (out / "seeds.md").read_text()
    assert "seed 3 stopped with exit code 2" in capsys.readouterr().out


def test_repeated_seeds_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--seeds", "0", "0", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "--seeds has a seed twice: [0, 0]" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.real_data
def test_runs_missing_seeds_and_keeps_complete_ones(smoke_run, cifar10_archive, tmp_path):
    run_dir, rows = smoke_run
    out = tmp_path / "seeds"
    shutil.copytree(run_dir, out / "seed0")  # Seed 0 is done already.
    assert seed_result(out / "seed0")["student_distilled"] == rows[2]["test_accuracy"]
    code = main(
        [
            "--preset",
            "smoke",
            "--seeds",
            "0",
            "1",
            "--out",
            str(out),
            "--data",
            str(cifar10_archive),
        ]
    )
    assert code == 0
    summary = json.loads((out / "seeds.json").read_text())
    assert list(summary["seeds"]) == ["0", "1"]
    assert summary["seeds"]["0"]["wall_seconds"] is None  # Not run here.
    one = summary["seeds"]["1"]
    assert one["wall_seconds"] > 0 and one["resumed"] is False
    assert RunFolder(out / "seed1").config().seed == 1
    assert one["precision"] == "float32"  # smoke is float32 everywhere
    assert one["gain_points"] == pytest.approx(
        100 * (one["student_distilled"] - one["student_baseline"])
    )
    assert "mean ± sd (2 seeds)" in (out / "seeds.md").read_text()
    # Run again: nothing is trained, the recorded wall time stays.
    assert main(["--preset", "smoke", "--seeds", "0", "1", "--out", str(out)]) == 0
    again = json.loads((out / "seeds.json").read_text())
    assert again["seeds"]["1"]["wall_seconds"] == one["wall_seconds"]
